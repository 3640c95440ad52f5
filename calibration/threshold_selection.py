"""Acceptance thresholds with a risk guarantee: Learn-then-Test fixed-sequence testing (default) or SGR.

The risk controlled is the *selective* risk ``R(t) = P(wrong | confidence >= t)``: the error rate
among accepted predictions. Given calibration scores and correctness, a target ``alpha`` and a
failure probability ``delta``, :func:`select_threshold` returns a threshold t, or "infeasible"
(``threshold = +inf``: defer everything). What is proven depends on where the tested thresholds
come from (assuming calibration and deployment data i.i.d. from one distribution):

* with a ``grid`` fixed independently of the calibration sample (what ``calibrate`` and ``eval``
  pass when lambda is chosen on its own half): ``P(R(t) > alpha) <= delta`` over the draw of the
  calibration data, for the population risk;
* without one (the default grid: the calibration scores themselves; ``calibrate``'s fixed-lambda
  path): for delta <= 1/4 and alpha <= 1/2, the same statement for the *in-sample* risk (the mean
  error probability over the accepted calibration scores, conditional on the scores); nothing is
  proven for the population risk there: its gap to the in-sample one is measured by simulation
  (BENCHMARKS.md section 9).

``method="ltt"`` (default): Learn then Test (Angelopoulos, Bates, Candes, Jordan, Lei, "Learn then
Test: Calibrating Predictive Algorithms to Achieve Risk Control", 2021) with fixed-sequence
testing.

* **The test at one threshold.** For a threshold t fixed before the labels are seen, let
  ``N_t`` be the number of calibration samples accepted (``confidence >= t``; a tied score is
  accepted as a whole) and ``E_t`` the errors among them. Conditional on ``N_t = n``, the n
  accepted samples are i.i.d. draws from the population restricted to ``confidence >= t``, so
  ``E_t ~ Binomial(n, R(t))``. The p-value of ``H_t: R(t) > alpha`` is
  ``p_t = P(Binomial(n, alpha) <= E_t)`` (:func:`~trustvlm.calibration.risk_bound.binomial_pvalue`;
  ``p_t = 1`` when n = 0). Under ``H_t``, Binomial(n, R(t)) is stochastically larger than
  Binomial(n, alpha), so ``P(p_t <= delta | N_t = n) <= delta`` for every n, hence also
  unconditionally: conditioning on the accepted count is what turns the selective risk into a
  plain binomial rate. ``p_t <= delta`` is the same as the one-sided Clopper-Pearson bound at
  level delta being <= alpha; it is read from a table of critical error counts
  (:func:`~trustvlm.calibration.risk_bound.binomial_critical_errors`).
* **Fixed sequence.** Thresholds are tested in a fixed order, from the most conservative
  (highest) down, and testing stops at the first one not rejected. A false rejection needs the
  first true null in the order to be rejected, which happens with probability <= the test's
  level; so one sequence has family-wise error rate <= its level with no correction for the
  number of thresholds it tests.
* **Several starts.** One sequence that starts too high stops at once: a handful of samples
  cannot show a small risk, and one early error ends it. So the default runs K sequences,
  each at level ``delta / K`` (Bonferroni: with probability >= 1 - delta no sequence rejects a
  true null, so every rejected threshold has ``R(t) <= alpha`` at once). Sequence i starts at
  the first distinct calibration score that accepts ``n_min * 4^i`` samples, where ``n_min``
  is the fewest accepted samples with which a zero-error test at ``delta / K`` rejects, and K
  is the smallest number for which these starts reach m (:func:`sequence_starts`: it depends
  on m, alpha and delta only). Each walks down every distinct calibration score below its
  start. The lowest rejected threshold of all (the largest coverage) is returned.
* **The grid.** With ``grid=`` (thresholds fixed independently of the calibration sample, e.g.
  scores of other images from the same camera) the sequences walk the grid instead, each
  starting at the grid point that accepts ``ceil(G * (n_start + 3 sqrt(n_start)) / m)`` of the G
  grid samples: where a grid sampled like the calibration data would accept a few standard
  deviations more than the start's count (:func:`_grid_start`). Grid and starts then depend
  on nothing in the calibration data but its size, and the argument above is exact as
  written (a grid point with too few accepted samples to be rejected stops its sequence, as
  it must). The default grid and starts use the calibration *scores*
  but never the labels, so they are fixed once the scores are. Conditional on the scores the
  errors are independent with probabilities ``r(c_i) = P(wrong | c_i)``, and ``E_t`` is a sum
  of independent Bernoulli variables with mean ``n * rbar(t)``, ``rbar(t)`` the mean of r over
  the accepted calibration scores. A test rejects only at error counts below the
  ``delta``-quantile of Binomial(n, alpha), hence (for delta <= 1/4 and alpha <= 1/2, as then
  P(Binomial(n, alpha) <= n alpha) > 1/4 for every n) at most ``n alpha - 1``; there such a
  sum is less likely to be that small than Binomial(n, rbar(t)) is (Hoeffding 1956, Theorem 4),
  so the p-values are valid for ``rbar(t) > alpha`` and the whole argument holds exactly,
  conditional on the scores, for the in-sample risk ``rbar``. The gap between ``rbar(t)`` and the population ``R(t)`` at a
  score-chosen t is a sampling fluctuation; its effect on the violation rate is measured by
  ``python -m trustvlm.benchmarks.threshold_simulation`` (BENCHMARKS.md section 9: at most
  3.8% violations at delta = 10% in 24 settings).
* **What calibration uses.** ``trustvlm calibrate`` and ``trustvlm eval`` pass the scores of the
  lambda half of the held-out images as the grid (:func:`threshold_grid`): those images never
  take part in the threshold test, so the bundle's guarantee is the exact one. Only with a fixed
  lambda (no lambda half) does calibration fall back to the default grid; the bundle says which
  (``selection["threshold_grid"]``).

``method="sgr"``: Selection with Guaranteed Risk (Geifman & El-Yaniv, "Selective Classification
for Deep Neural Networks", NeurIPS 2017, Algorithm 1), kept for comparison:

1. sort the m calibration scores increasingly, ``zmin = 1``, ``zmax = m``;
2. for ``i = 1 .. k = ceil(log2 m)``: ``z = ceil((zmin + zmax) / 2)``, ``theta`` = the
   z-th smallest score; accept ``confidence >= theta``; with ``n`` accepted and ``e`` errors
   among them, compute the one-sided Clopper-Pearson upper bound ``b`` at level ``delta / k``
   (:func:`~trustvlm.calibration.risk_bound.binomial_upper_bound`); if ``b < alpha`` move
   down (``zmax = z``, more coverage) else move up (``zmin = z``).

It returns the tested threshold with the largest calibration coverage among those with
``b < alpha``. Its union bound over the k tests is not strictly valid (which thresholds are
tested after the first depends on the labels) and is conservative.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from trustvlm.calibration.ranking import tie_blocks, validate_scores
from trustvlm.calibration.risk_bound import binomial_critical_errors, binomial_upper_bound, check_unit_interval
from trustvlm.contract.threshold import ThresholdChoice

__all__ = ["GRID_NOTES", "threshold_grid", "LTT_METHOD", "SGR_METHOD", "THRESHOLD_METHODS", "DEFAULT_THRESHOLD_METHOD",
           "START_RATIO", "select_threshold", "score_blocks", "sequence_starts", "ltt_block"]

#: ``ThresholdChoice.method`` of the two procedures.
LTT_METHOD = "ltt-fixed-sequence-binomial"
SGR_METHOD = "sgr-clopper-pearson"
#: Names accepted by ``select_threshold(method=...)`` and the CLIs' ``--threshold-method``.
THRESHOLD_METHODS = {"ltt": LTT_METHOD, "sgr": SGR_METHOD}
DEFAULT_THRESHOLD_METHOD = "ltt"
#: Each default LTT sequence starts at this many times the accepted count of the previous one.
START_RATIO = 4


def _infeasible(alpha: float, delta: float, m: int, method: str) -> ThresholdChoice:
    return ThresholdChoice(threshold=math.inf, alpha=alpha, delta=delta, coverage=0.0, empirical_risk=math.nan,
                           risk_upper_bound=math.nan, n_calibration=m, feasible=False, method=method)


def _feasible(threshold: float, n_acc: int, errors: int, bound: float, alpha: float, delta: float, m: int,
              method: str) -> ThresholdChoice:
    return ThresholdChoice(threshold=float(threshold), alpha=alpha, delta=delta, coverage=n_acc / m,
                           empirical_risk=errors / n_acc, risk_upper_bound=float(bound), n_calibration=m,
                           feasible=True, method=method)


def score_blocks(conf: np.ndarray, corr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct score, highest first, with the samples accepted at it and the errors among them.

    Returns:
        ``(thresholds, accepted, errors)``: float64, int64, int64 arrays; ``accepted[b]`` counts
        ``conf >= thresholds[b]``.
    """
    thresholds, counts, tps = tie_blocks(conf, corr)
    accepted = counts.astype(np.int64)
    return thresholds, accepted, accepted - tps.astype(np.int64)


def _fixed_sequence(accepted: np.ndarray, errors: np.ndarray, critical: np.ndarray, start: int) -> int:
    """Test from grid point `start` down, stop at the first non-rejection: the last rejected index, or -1."""
    rejected = errors[start:] <= critical[accepted[start:]]
    if rejected.size == 0 or not rejected[0]:
        return -1
    return start + (rejected.size - 1 if rejected.all() else int(np.argmin(rejected)) - 1)


def sequence_starts(m: int, alpha: float, delta: float, ratio: int = START_RATIO) -> tuple[list[int], float]:
    """Where the default LTT sequences start (accepted counts) and the level of each test.

    With K sequences, each test is at level delta / K; the first starts at ``n_min``, the fewest
    accepted samples with which a zero-error test at that level rejects, the next at
    ``ratio * n_min`` and so on while <= m. K is the smallest count for which this fits.
    Depends on m, alpha and delta only.
    """
    for k in itertools.count(1):
        critical = binomial_critical_errors(m, alpha, delta / k)
        if critical[-1] < 0:  # not even m error-free samples would reject
            return [], delta / k
        n_min = int(np.argmax(critical >= 0))
        starts = [n_min * ratio**i for i in range(k + 1) if n_min * ratio**i <= m]
        if len(starts) <= k:  # k sequences at delta / k cover 1 .. m (n_min grows with k)
            return starts, delta / k


def ltt_block(accepted: np.ndarray, errors: np.ndarray, alpha: float, delta: float,
              ratio: int = START_RATIO) -> tuple[int, float]:
    """The default LTT choice over blocks in decreasing-threshold order: the lowest rejected, or -1.

    Args:
        accepted: Samples accepted at each grid point (non-decreasing, the last is m).
        errors: Errors among them.
        alpha: Target selective risk.
        delta: Family-wise error rate, split evenly over the sequences of :func:`sequence_starts`.
        ratio: Accepted-count ratio between consecutive starts.

    Returns:
        ``(index, level)``: the index of the lowest threshold rejected by any sequence (-1 when
        none rejects) and the level of each test (``delta / K``).
    """
    if accepted.size == 0:
        return -1, delta
    m = int(accepted[-1])
    starts, level = sequence_starts(m, alpha, delta, ratio)
    critical = binomial_critical_errors(m, alpha, level)
    best = -1
    for n_start in starts:
        first = int(np.searchsorted(accepted, n_start))  # the first block accepting >= n_start
        best = max(best, _fixed_sequence(accepted, errors, critical, first))
    return best, level


def _grid_start(raw: np.ndarray, thresholds: np.ndarray, n_start: int, m: int) -> int:
    """Index in `thresholds` (distinct, highest first) where a sequence meant to start at `n_start` accepted starts.

    The grid point that accepts ``ceil(G * target / m)`` of the G grid samples (ties counted), with
    ``target = n_start + ceil(3 sqrt(n_start))``: a grid sampled like the calibration data then accepts
    about `target` calibration samples there, about three standard deviations above `n_start`, the fewest
    that can reject. Without the margin a start sits at the edge and half the time cannot reject, which
    ends its sequence at once. It depends on the grid, m, alpha and delta only.
    """
    target = min(m, n_start + math.ceil(3 * math.sqrt(n_start)))
    value = raw[max(1, min(raw.size, math.ceil(raw.size * target / m))) - 1]
    return int(np.flatnonzero(thresholds == value)[0])


def _select_ltt(conf: np.ndarray, corr: np.ndarray, alpha: float, delta: float, grid) -> ThresholdChoice:
    m = int(conf.shape[0])
    if grid is None:
        thresholds, accepted, errors = score_blocks(conf, corr)
        best, level = ltt_block(accepted, errors, alpha, delta)
    else:
        raw = np.sort(np.asarray(grid, dtype=np.float64).ravel())[::-1]  # highest first, ties kept
        thresholds = np.unique(raw)[::-1]
        if thresholds.size == 0 or not np.all(np.isfinite(thresholds)):
            raise ValueError("grid should hold at least one finite threshold")
        order = np.sort(conf)
        first = np.searchsorted(order, thresholds, side="left")
        accepted = (m - first).astype(np.int64)
        wrong_from = np.r_[np.cumsum((~corr[np.argsort(conf, kind="mergesort")])[::-1])[::-1], 0]
        errors = wrong_from[first].astype(np.int64)
        starts, level = sequence_starts(m, alpha, delta)
        ranks = sorted({_grid_start(raw, thresholds, n_start, m) for n_start in starts})
        critical = binomial_critical_errors(m, alpha, level)
        best = max([-1] + [_fixed_sequence(accepted, errors, critical, rank) for rank in ranks if rank < thresholds.size])
    if best < 0:
        return _infeasible(alpha, delta, m, LTT_METHOD)
    n_acc, e = int(accepted[best]), int(errors[best])
    return _feasible(thresholds[best], n_acc, e, binomial_upper_bound(e, n_acc, level), alpha, delta, m, LTT_METHOD)


def _select_sgr(conf: np.ndarray, corr: np.ndarray, alpha: float, delta: float) -> ThresholdChoice:
    m = int(conf.shape[0])
    order = np.argsort(conf, kind="mergesort")
    s = conf[order]
    wrong = (~corr[order]).astype(np.int64)
    err_from = np.r_[np.cumsum(wrong[::-1])[::-1], 0]  # errors among s[i:], i = 0..m
    k_steps = max(1, math.ceil(math.log2(m)))
    delta_step = delta / k_steps
    cache: dict[int, tuple[int, int, float]] = {}
    best = None  # (first accepted index, n_acc, errors, bound)
    zmin, zmax = 1, m
    for _ in range(k_steps):
        z = (zmin + zmax + 1) // 2  # ceil((zmin + zmax) / 2), 1-based
        first = int(np.searchsorted(s, s[z - 1], side="left"))  # ties accepted as a whole
        if first not in cache:
            n_acc = m - first
            e = int(err_from[first])
            cache[first] = (n_acc, e, binomial_upper_bound(e, n_acc, delta_step))
        n_acc, e, bound = cache[first]
        if bound < alpha:
            zmax = z
            if best is None or first < best[0]:
                best = (first, n_acc, e, bound)
        else:
            zmin = z
    if best is None:
        return _infeasible(alpha, delta, m, SGR_METHOD)
    first, n_acc, e, bound = best
    return _feasible(s[first], n_acc, e, bound, alpha, delta, m, SGR_METHOD)


def select_threshold(confidence, correct, alpha: float, delta: float, *, method: str = DEFAULT_THRESHOLD_METHOD,
                     grid=None) -> ThresholdChoice:
    """Chooses an acceptance threshold with a risk guarantee (see the module docstring).

    Args:
        confidence: 1-D finite calibration scores, higher = more confident.
        correct: 1-D 0/1 or bool, whether each calibration prediction was right.
        alpha: target selective risk, in (0, 1).
        delta: failure probability of the guarantee, in (0, 1).
        method: ``"ltt"`` (Learn then Test, fixed-sequence testing) or ``"sgr"``.
        grid: LTT only: thresholds fixed independently of this calibration data, tested from
            the highest down from a few starts (None: every distinct calibration score; see the
            module docstring).

    Returns:
        A :class:`ThresholdChoice` (``method`` is :data:`LTT_METHOD` or :data:`SGR_METHOD`).
        With probability >= 1 - delta over i.i.d. calibration data, a feasible choice has
        selective risk <= alpha: the population risk with a `grid` fixed independently of this
        data; without one, only the in-sample risk, conditional on the scores, and only for
        delta <= 1/4 and alpha <= 1/2 (see the module docstring). An infeasible one (also
        for empty input) has ``threshold = +inf``, ``coverage = 0``: defer everything.
        ``risk_upper_bound`` is the Clopper-Pearson bound of the chosen threshold at the level its
        test used: delta / K for LTT with K sequences (with or without a `grid`), delta /
        max(1, ceil(log2 m)) for SGR; not at level delta.

    Raises:
        ValueError: for alpha or delta outside (0, 1), an unknown method, a grid with SGR or
            with no finite value, non-finite confidence, or the input errors of
            :func:`trustvlm.calibration.ranking.validate_scores`.
    """
    alpha = check_unit_interval(alpha, "alpha")
    delta = check_unit_interval(delta, "delta")
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method should be one of {list(THRESHOLD_METHODS)}, but got {method!r}")
    if grid is not None and method != "ltt":
        raise ValueError(f"a threshold grid is only used by method 'ltt', not {method!r}")
    conf, corr = validate_scores(confidence, correct)
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidence must be finite for threshold selection (found +-inf)")
    if conf.shape[0] == 0:
        return _infeasible(alpha, delta, 0, THRESHOLD_METHODS[method])
    if method == "sgr":
        return _select_sgr(conf, corr, alpha, delta)
    return _select_ltt(conf, corr, alpha, delta, grid)


#: What ``selection["threshold_grid"]`` of a bundle says, by whether an independent grid was used.
GRID_NOTES = {True: "ltt grid: scores of the lambda half, independent of the threshold half (exact guarantee)",
              False: "grid: the threshold half's own scores (labels unused)"}


def threshold_grid(independent_scores, method: str = DEFAULT_THRESHOLD_METHOD) -> np.ndarray | None:
    """The LTT grid from scores of images the threshold is *not* selected on, or None to use the default.

    The lambda half of the held-out calibration images never takes part in the threshold test, so
    its scores are fixed independently of the threshold half: tested on them, the fixed-sequence
    argument of this module holds exactly as written (see "The grid" above). None (the default
    grid, the calibration scores themselves) for SGR or when there are no such scores.
    """
    if method != "ltt" or independent_scores is None:
        return None
    scores = np.asarray(independent_scores, dtype=np.float64).ravel()
    scores = scores[np.isfinite(scores)]
    return scores if scores.size else None

