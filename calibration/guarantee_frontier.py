"""What calibration data can certify, and how many images like them would certify a target.

* :func:`guarantee_frontier`: for each alpha of :data:`FRONTIER_ALPHAS` (and the requested one), the
  coverage (share of the threshold images accepted) and the threshold that
  :func:`~trustvlm.calibration.threshold_selection.select_threshold` certifies on this data at the
  same delta, with the same method and grid: the procedure calibration runs, run once per alpha.
* :func:`sample_size_estimate`: when the requested alpha certifies nothing, or less than
  :data:`LOW_COVERAGE` of the images, how many threshold images like these would certify it.

**The assumption of the estimate.** New images err like these at every confidence rank: a new
image's rank fraction q is uniform on (0, 1), and it is wrong with the observed error rate at rank
``q m`` (the observed images sorted by decreasing confidence, tied scores sharing their errors
evenly). Among the most confident share c of new images the expected error rate is then the
observed one, ``R(c) = err(c m) / (c m)``, ``err`` the observed cumulative error count
interpolated linearly between ranks (:class:`ErrorCurve`).

**The rule.** For a candidate count N, the *expected images* (:func:`expected_images`): N images
with distinct confidences, with at least ``ceil(N err(r m / N) / m)`` errors among every top k,
where ``r = k + sqrt(k (1 - k / N))`` (the ranks the top k of N random images span, one standard
deviation wide), and as few errors as that allows in a 0/1 sequence. Rounding up puts a count at
or above its binomial median; the wider span covers the chance that the top k reach further down
the observed curve, which matters where its errors are sparse. With an independent grid, the
expected grid: G = round(N * grid_ratio) points, the j-th highest accepting about ``j N / (G + 1)``
of the images, where a grid sampled like the images lies on average. The procedure itself
(:func:`~trustvlm.calibration.threshold_selection.select_threshold`, same method, alpha and delta)
runs on them; N *certifies* when it returns a threshold accepting at least the target coverage.
The estimate is the first count of a scan from 1 up (each step x1.1) that certifies, bisected
down to 1% against the count before it; certification is not monotone in N (the sequence
starts are fixed counts, which fall on different parts of the curve as N grows), so it is the
smallest certifying count on that scan. That this N certifies in at least half of random draws
of N images under the assumption is a rule of thumb, checked by simulation in the tests (no
theorem: the fixed sequence needs every test from a start down to the target to pass).

When the observed error rate is >= alpha among every most confident share (:func:`error_curve`),
no amount of images like these certifies alpha (under the assumption every threshold's risk is
then >= alpha, so a valid guarantee certifies it only by chance, with probability about delta at
most); any alpha above the lowest observed rate is reachable with enough of them, and
:func:`smallest_certified_alpha` says what these images certify now.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from trustvlm.calibration.ranking import validate_scores
from trustvlm.calibration.risk_bound import check_unit_interval
from trustvlm.calibration.threshold_selection import (DEFAULT_THRESHOLD_METHOD, score_blocks, select_threshold,
                                                      threshold_grid)
from trustvlm.contract.threshold import ThresholdChoice

__all__ = ["FRONTIER_ALPHAS", "LOW_COVERAGE", "MAX_IMAGES", "ErrorCurve", "SampleSizeEstimate", "error_curve",
           "guarantee_frontier", "expected_images", "sample_size_estimate", "smallest_certified_alpha",
           "data_guarantee", "record_guarantee", "dataset_guarantee", "guarantee_lines", "frontier_line",
           "estimate_line"]

#: The alphas of the frontier (the requested alpha is added).
FRONTIER_ALPHAS = (0.01, 0.02, 0.05, 0.10, 0.20)
#: Below this coverage a certified alpha "covers little": the estimate then targets this coverage.
LOW_COVERAGE = 0.10
#: The most threshold images the estimate searches up to.
MAX_IMAGES = 100_000
#: The estimate's scan multiplies the count by this; its bisection stops at this relative step.
_SCAN_RATIO, _RELATIVE_STEP = 1.1, 0.01
#: The grid :func:`smallest_certified_alpha` searches on.
_ALPHA_STEP = 0.001


@dataclass(frozen=True)
class ErrorCurve:
    """The observed cumulative errors by confidence rank: tie blocks, highest score first.

    Attributes:
        accepted: images with a score >= each block's (int64, increasing, the last is m).
        errors: errors among them (int64).
    """

    accepted: np.ndarray
    errors: np.ndarray

    @property
    def size(self) -> int:
        """The number of observed images, m."""
        return int(self.accepted[-1]) if self.accepted.size else 0

    def errors_at(self, rank) -> np.ndarray:
        """The cumulative error count among the top `rank` images (real ranks; linear inside a block)."""
        return np.interp(rank, np.r_[0, self.accepted], np.r_[0, self.errors])

    @property
    def lowest_rate(self) -> float:
        """The lowest observed error rate among a most confident share (between block ends err(x) / x is monotone)."""
        return float(np.min(self.errors / self.accepted)) if self.accepted.size else math.nan

    def coverage_below(self, alpha: float) -> float:
        """The largest coverage at a block end whose observed error rate is below `alpha` (0: none)."""
        ok = np.flatnonzero(self.errors < alpha * self.accepted)
        return float(self.accepted[ok[-1]]) / self.size if ok.size else 0.0


def error_curve(confidence, correct) -> ErrorCurve:
    """The observed error curve of (confidence, correct); ValueError as ``validate_scores`` (and for +-inf)."""
    conf, corr = validate_scores(confidence, correct)
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidence must be finite to estimate an error curve (found +-inf)")
    _, accepted, errors = score_blocks(conf, corr)
    return ErrorCurve(accepted, errors)


def guarantee_frontier(confidence, correct, delta: float, *, alphas=FRONTIER_ALPHAS,
                       method: str = DEFAULT_THRESHOLD_METHOD, grid=None) -> list[dict]:
    """What the threshold selection certifies on this data, alpha by alpha.

    Args:
        confidence: 1-D finite scores of the threshold images, higher = more confident.
        correct: 1-D 0/1 or bool, whether each prediction was right.
        delta: Failure probability of each guarantee, in (0, 1).
        alphas: Target selective risks, each in (0, 1) (sorted, duplicates dropped).
        method: ``select_threshold``'s method.
        grid: ``select_threshold``'s grid (None: the scores themselves).

    Returns:
        ``[{"alpha", "coverage", "threshold"}]`` by increasing alpha: ``select_threshold``'s
        coverage and threshold at that alpha, ``threshold`` None (and coverage 0) when it certifies
        nothing. Each entry holds with probability >= 1 - delta on its own, not all at once.
    """
    points = []
    for alpha in sorted({check_unit_interval(a, "alpha") for a in alphas}):
        choice = select_threshold(confidence, correct, alpha, delta, method=method, grid=grid)
        points.append({"alpha": alpha, "coverage": float(choice.coverage),
                       "threshold": float(choice.threshold) if choice.feasible else None})
    return points


def expected_images(curve: ErrorCurve, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The expected images of the module docstring: ``(confidence, correct)`` of n images, confidences n .. 1."""
    k = np.arange(n + 1, dtype=np.float64)
    reach = np.minimum(n, k + np.sqrt(k * (1 - k / n)))  # the top k's rank span, one standard deviation wide
    wanted = np.ceil(curve.errors_at(reach * curve.size / n) * (n / curve.size) - 1e-9)
    # the fewest errors per rank, a 0/1 sequence, with at least `wanted` among every top k (at most k)
    cumulative = np.minimum(k, np.maximum(np.maximum.accumulate(wanted),
                                          k + np.maximum.accumulate((wanted - k)[::-1])[::-1]))
    wrong = np.diff(cumulative)
    assert wrong.min(initial=0) >= 0 and wrong.max(initial=0) <= 1, "a valid 0/1 error sequence"
    return np.arange(n, 0, -1, dtype=np.float64), wrong == 0


def _expected_grid(n: int, grid_ratio: float) -> np.ndarray:
    """G = round(n * grid_ratio) grid points, the j-th highest accepting about ``j n / (G + 1)`` expected images."""
    g = max(1, round(n * grid_ratio))
    return n + 0.5 - np.arange(1, g + 1) * (n / (g + 1))


def _certified(curve: ErrorCurve, n: int, alpha: float, delta: float, method: str, grid_ratio: float | None,
               min_coverage: float) -> ThresholdChoice | None:
    conf, corr = expected_images(curve, n)
    grid = None if grid_ratio is None or method != "ltt" else _expected_grid(n, grid_ratio)
    choice = select_threshold(conf, corr, alpha, delta, method=method, grid=grid)
    return choice if choice.feasible and choice.coverage >= min_coverage else None


@dataclass(frozen=True)
class SampleSizeEstimate:
    """How many threshold images like the observed ones would certify alpha (see the module docstring).

    Attributes:
        alpha: The target selective risk.
        delta: The guarantee's failure probability.
        target_coverage: The coverage to reach (0: any threshold at all).
        status: ``"estimated"``, ``"unreachable"`` (no amount of such images reaches the target) or
            ``"beyond_max"`` (more than ``max_images`` needed).
        threshold_images: The estimate N (None unless estimated).
        coverage: The coverage certified on N expected images (0 unless estimated).
        images_now: The observed count m.
        lowest_rate: The lowest observed error rate among a most confident share: alphas above it
            are reachable with enough images.
        coverage_limit: The largest observed coverage whose error rate is below alpha.
        smallest_alpha_now: The smallest alpha, on a 0.1% grid, that ``select_threshold`` certifies
            on the observed images (None: none below 99.9%).
    """

    alpha: float
    delta: float
    target_coverage: float
    status: str
    threshold_images: int | None
    coverage: float
    images_now: int
    lowest_rate: float
    coverage_limit: float
    smallest_alpha_now: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def smallest_certified_alpha(confidence, correct, delta: float, *, method: str = DEFAULT_THRESHOLD_METHOD,
                             grid=None) -> float | None:
    """The smallest alpha on a 0.1% grid at which ``select_threshold`` certifies a threshold on this data.

    Found by bisection between 99.9% and, for delta < 1/2, the lowest observed error rate among a
    most confident share (at a test level below 1/2 no alpha at or below it can be certified: the
    exact test needs errors below the median of Binomial(n, alpha), which is at least n alpha);
    otherwise 0. Certification is taken as monotone in alpha: raising alpha raises every critical
    count, but it also moves the sequence starts, so the result is the boundary the bisection finds.

    Returns:
        That alpha, or None when even 99.9% certifies nothing (or no data).
    """
    curve = error_curve(confidence, correct)
    if curve.size == 0:
        return None
    steps = round(1 / _ALPHA_STEP)

    def ok(k: int) -> bool:
        return select_threshold(confidence, correct, k / steps, delta, method=method, grid=grid).feasible

    lo, hi = int(math.floor(curve.lowest_rate * steps)) if delta < 0.5 else 0, steps - 1  # lo fails (or is 0)
    if not ok(hi):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi / steps


def sample_size_estimate(confidence, correct, alpha: float, delta: float, *, method: str = DEFAULT_THRESHOLD_METHOD,
                         grid=None, grid_ratio: float | None = None, target_coverage: float = 0.0,
                         max_images: int = MAX_IMAGES) -> SampleSizeEstimate:
    """How many threshold images like these would certify `alpha` at `target_coverage` (module docstring).

    Args:
        confidence: 1-D finite scores of the observed threshold images.
        correct: 1-D 0/1 or bool, whether each prediction was right.
        alpha: Target selective risk, in (0, 1).
        delta: Failure probability of the guarantee, in (0, 1).
        method: ``select_threshold``'s method.
        grid: The observed images' grid (only for ``smallest_alpha_now``).
        grid_ratio: Grid size per threshold image of the independent grid the procedure would get
            (None: no grid, the scores themselves).
        target_coverage: The least coverage to certify (0: any threshold).
        max_images: The most threshold images searched.

    Returns:
        A :class:`SampleSizeEstimate`.
    """
    alpha, delta = check_unit_interval(alpha, "alpha"), check_unit_interval(delta, "delta")
    curve = error_curve(confidence, correct)
    m = curve.size
    if m == 0:
        raise ValueError("an estimate needs at least one observed image")
    limit = curve.coverage_below(alpha)
    now = smallest_certified_alpha(confidence, correct, delta, method=method, grid=grid)
    base = dict(alpha=alpha, delta=delta, target_coverage=float(target_coverage), images_now=m,
                lowest_rate=curve.lowest_rate, coverage_limit=limit, smallest_alpha_now=now)
    if limit == 0.0 or limit <= target_coverage:
        return SampleSizeEstimate(status="unreachable", threshold_images=None, coverage=0.0, **base)

    def certified(n: int) -> ThresholdChoice | None:
        return _certified(curve, n, alpha, delta, method, grid_ratio, target_coverage)

    lo, hi, best = 0, 0, None  # lo: a count that fails; hi: the first count of the scan that certifies
    while best is None:
        if hi >= max_images:
            return SampleSizeEstimate(status="beyond_max", threshold_images=None, coverage=0.0, **base)
        lo, hi = hi, min(max_images, max(hi + 1, math.ceil(hi * _SCAN_RATIO)))
        best = certified(hi)
    while hi - lo > max(1, int(hi * _RELATIVE_STEP)):
        mid = (lo + hi) // 2
        choice = certified(mid)
        lo, hi, best = (lo, mid, choice) if choice is not None else (mid, hi, best)
    return SampleSizeEstimate(status="estimated", threshold_images=hi, coverage=float(best.coverage), **base)


def data_guarantee(confidence, correct, alpha: float, delta: float, *, method: str, grid, shots: int,
                   lambda_images: int) -> dict:
    """The frontier of a calibration's threshold images, and an estimate when `alpha` certifies little.

    Args:
        confidence: Scores of the threshold images.
        correct: Whether each prediction was right.
        alpha: The requested selective risk (added to the frontier's alphas).
        delta: The guarantee's failure probability.
        method: The threshold method (``"ltt"`` or ``"sgr"``).
        grid: The grid the threshold is selected on (None: the scores themselves).
        shots: Images spent on shots (counted in the estimate's total, not scaled).
        lambda_images: Images of the lambda half (scaled with the threshold images in the total).

    Returns:
        ``{"guarantee_frontier": [...]}``, plus ``"sample_size_estimate"`` (the fields of
        :class:`SampleSizeEstimate`, with ``images``, ``images_total_now`` and ``max_images``:
        labelled images in all, shots and lambda half included) when `alpha` certifies nothing or
        less than :data:`LOW_COVERAGE` of the threshold images.
    """
    frontier = guarantee_frontier(confidence, correct, delta, alphas=(*FRONTIER_ALPHAS, alpha), method=method,
                                  grid=grid)
    out = {"guarantee_frontier": frontier}
    m = int(np.size(confidence))
    asked = next(point for point in frontier if point["alpha"] == alpha)
    feasible = asked["threshold"] is not None
    if m == 0 or (feasible and asked["coverage"] >= LOW_COVERAGE):
        return out
    per_image = (m + lambda_images) / m  # held-out images per threshold image
    estimate = sample_size_estimate(confidence, correct, alpha, delta, method=method, grid=grid,
                                    grid_ratio=None if grid is None else np.size(grid) / m,
                                    target_coverage=LOW_COVERAGE if feasible else 0.0).to_dict()
    n = estimate["threshold_images"]
    estimate["images"] = None if n is None else shots + math.ceil(n * per_image)
    estimate["images_total_now"] = shots + m + lambda_images
    estimate["max_images"] = shots + math.ceil(MAX_IMAGES * per_image)
    out["sample_size_estimate"] = estimate
    return out


def record_guarantee(selection: dict, confidence, correct, alpha: float, delta: float, method: str, grid) -> list:
    """:func:`data_guarantee` for ``calibrate``: the estimate goes into `selection`, the frontier is returned.

    `selection` is calibrate's record, with ``shots`` and ``lambda_images``.
    """
    out = data_guarantee(confidence, correct, alpha, delta, method=method, grid=grid, shots=selection["shots"],
                         lambda_images=selection["lambda_images"])
    if "sample_size_estimate" in out:
        selection["sample_size_estimate"] = out["sample_size_estimate"]
    return out["guarantee_frontier"]


def dataset_guarantee(scored: tuple, labels: np.ndarray, grid_scores, config, info: dict) -> dict:
    """:func:`data_guarantee` for one ``eval`` dataset.

    Args:
        scored: ``(confidence, prediction)`` on the threshold half.
        labels: Its labels.
        grid_scores: The lambda half's scores (the LTT grid), or None.
        config: The ``EvalConfig`` (alpha, delta, threshold_method).
        info: The dataset's info, with ``n_calib_shots`` and ``n_calib_lambda``.
    """
    grid = threshold_grid(grid_scores, config.threshold_method)
    return data_guarantee(scored[0], scored[1] == labels, config.alpha, config.delta, method=config.threshold_method,
                          grid=grid, shots=info["n_calib_shots"], lambda_images=info["n_calib_lambda"])


def guarantee_lines(frontier: list, delta: float, images: int, estimate: dict | None,
                    subject: str = "what this data can certify") -> list[str]:
    """The frontier line, and the estimate's line when there is one (nothing without a frontier)."""
    if not frontier:
        return []
    return [frontier_line(frontier, delta, images, subject)] + ([estimate_line(estimate)] if estimate else [])


def _pct(share: float) -> str:
    value = 100 * share
    if 99.5 <= value < 100:
        return f"{value:.1f}%"
    return f"{value:.0f}%" if value >= 10 else f"{value:.2g}%"


def frontier_line(points: list[dict], delta: float, images: int | None = None,
                  subject: str = "what this data can certify") -> str:
    """One line: ``what this data can certify (delta 10%): alpha 1% -> nothing, 5% -> 41% of images, ...``."""
    cells, unit = [], " of images"
    for point in points:
        reached = "nothing" if point["threshold"] is None else _pct(point["coverage"]) + unit
        unit = unit if point["threshold"] is None else ""
        cells.append(f"{_pct(point['alpha'])} -> {reached}")
    count = "" if images is None else f", {images:,} threshold images"
    return f"{subject} (delta {_pct(delta)}{count}): alpha " + ", ".join(cells)


def estimate_line(estimate: dict) -> str:
    """One line saying what the estimate (a ``data_guarantee`` entry) found."""
    alpha, target = _pct(estimate["alpha"]), estimate["target_coverage"]
    at = f" at >= {_pct(target)} coverage" if target > 0 else ""
    assumes = "assumes new images err like these at each confidence rank"
    if estimate["status"] == "estimated":
        images, now = estimate["images"], estimate["images_total_now"]
        short = "; these fell short by chance" if images <= now else ""
        return (f"about {images:,} labelled images of this camera (now {now:,}) would certify alpha {alpha} at "
                f"~{_pct(estimate['coverage'])} coverage in at least half of such samples{short} ({assumes})")
    if estimate["status"] == "beyond_max":
        return (f"more than {estimate['max_images']:,} labelled images of this camera would be needed to certify "
                f"alpha {alpha}{at} ({assumes})")
    if target > 0 and estimate["coverage_limit"] > 0:
        return (f"no amount of images like these certifies alpha {alpha}{at}: their error rate is below {alpha} only "
                f"among the most confident {_pct(estimate['coverage_limit'])}")
    now = estimate["smallest_alpha_now"]
    now_text = f"these images certify alpha {_pct(now)}" if now is not None else "these images certify no alpha"
    return (f"no amount of images like these certifies alpha {alpha}: the model errs on at least "
            f"{_pct(estimate['lowest_rate'])} of every most confident share of them; any alpha above that is "
            f"reachable with more images, {now_text}")
