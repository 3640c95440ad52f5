"""Acceptance thresholds with a risk guarantee, and the choice of TrustVLM's lambda.

Threshold with a guarantee: Selection with Guaranteed Risk (SGR; Geifman & El-Yaniv,
"Selective Classification for Deep Neural Networks", NeurIPS 2017, Algorithm 1).

Given calibration scores and correctness, a target selective risk ``alpha`` (the error
rate among *accepted* predictions) and a failure probability ``delta``:

1. sort the m calibration scores increasingly, ``zmin = 1``, ``zmax = m``;
2. for ``i = 1 .. k = ceil(log2 m)``: ``z = ceil((zmin + zmax) / 2)``, ``theta`` = the
   z-th smallest score; accept ``confidence >= theta`` (a tied score is accepted as a
   whole); with ``n`` accepted and ``e`` errors among them, compute the one-sided
   Clopper-Pearson upper bound ``b`` on the selective risk at level ``delta / k``
   (:func:`binomial_upper_bound`); if ``b < alpha`` move down (``zmax = z``, more
   coverage) else move up (``zmin = z``).

By a union bound over the k tested thresholds, with probability >= 1 - delta over the
calibration draw every tested bound holds at once. Unlike the paper, which outputs the
*last* tested threshold and its bound, :func:`select_threshold` returns the tested
threshold with the largest calibration coverage among those with ``b < alpha``; so its
true selective risk is <= alpha with probability >= 1 - delta (assuming calibration and
deployment data are i.i.d. from one distribution). If no tested threshold has
``b < alpha`` the choice is infeasible: ``threshold = +inf`` (defer everything).

Choice of lambda: TrustVLM scores ``MSP + lambda * cos(f, P[pred])``;
:func:`choose_lambda` picks lambda from a grid by AURC on calibration data,
:func:`choose_lambda_temperature` does the same for TrustVLM* over (lambda,
temperature). Both always evaluate lambda = 0 (plain MSP) and break ties towards the
smaller lambda, so the choice is never worse than MSP in calibration AURC. Use data
disjoint from the split :func:`select_threshold` calibrates on, or at least from the
test split.

Only numpy and the standard library are used (no scipy).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

import numpy as np

from trustvlm.calibration.metrics import AURC_SCALE, _aurc_fraction, auroc, validate_scores

__all__ = [
    "SGR_METHOD",
    "ThresholdChoice",
    "binomial_upper_bound",
    "select_threshold",
    "choose_lambda",
    "choose_lambda_temperature",
    "trustvlm_star_scores",
]

#: ``ThresholdChoice.method`` of :func:`select_threshold`.
SGR_METHOD = "sgr-clopper-pearson"

#: AURC values closer than this (relative) count as a tie in the lambda choice.
_AURC_TIE_RTOL = 1e-12


# --------------------------------------------------------------------------- validation


def _check_unit_interval(value, name: str) -> float:
    """``value`` as a float strictly inside (0, 1), or ValueError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    v = float(value) if ok else float("nan")
    if not (ok and 0.0 < v < 1.0):
        raise ValueError(f"{name} should be in (0, 1), but got {value!r}")
    return v


# --------------------------------------------------------------------------- binomial tail


def _log_binom_coefs(k: int, n: int) -> np.ndarray:
    """``log C(n, j)`` for j = 0..k."""
    lg = math.lgamma
    return np.array([lg(n + 1) - lg(j + 1) - lg(n - j + 1) for j in range(k + 1)])


def _binom_log_cdf(k: int, n: int, p, log_comb: np.ndarray | None = None) -> np.ndarray:
    """``log P(X <= k)`` for ``X ~ Binomial(n, p)``, vectorized over ``p`` in (0, 1)."""
    i = np.arange(k + 1, dtype=np.float64)
    if log_comb is None:
        log_comb = _log_binom_coefs(k, n)
    p = np.atleast_1d(np.asarray(p, dtype=np.float64))[:, None]
    terms = log_comb[None, :] + i[None, :] * np.log(p) + (n - i)[None, :] * np.log1p(-p)
    top = np.max(terms, axis=1, keepdims=True)
    return (top + np.log(np.sum(np.exp(terms - top), axis=1, keepdims=True)))[:, 0]


def binomial_upper_bound(errors: int, n: int, delta: float, *, tol: float = 1e-12) -> float:
    """One-sided Clopper-Pearson upper confidence bound on a Bernoulli rate.

    The largest ``p`` with ``P(Binomial(n, p) <= errors) >= delta`` (the binomial tail
    inversion ``B*`` of Geifman & El-Yaniv), equal to the ``1 - delta`` quantile of
    ``Beta(errors + 1, n - errors)``. If the true rate is p, then
    ``P(bound < p) <= delta``.

    Computed with numpy + ``math.lgamma`` (log-space binomial tail sum) and a
    bracketed Newton iteration on p that approaches the bound from above, so the result
    errs on the conservative (larger) side; it matches ``scipy.stats.beta.ppf`` to
    about 1e-12.

    Args:
        errors: observed failures, 0 <= errors <= n.
        n: trials; n = 0 gives the vacuous bound 1.
        delta: in (0, 1).
        tol: relative step/bracket size at which the iteration stops.

    Returns:
        The bound in [errors / n, 1].
    """
    delta = _check_unit_interval(delta, "delta")
    errors, n = int(errors), int(n)
    if n < 0 or not 0 <= errors <= max(n, 0):
        raise ValueError(f"need 0 <= errors <= n, got errors={errors}, n={n}")
    if n == 0 or errors == n:
        return 1.0
    k = errors
    log_delta = math.log(delta)
    log_comb = _log_binom_coefs(k, n)
    i = np.arange(k + 1, dtype=np.float64)
    n_minus_i = n - i

    def g_and_slope(p: float) -> tuple[float, float]:
        # g = log CDF(p) - log delta and dg/dp = -(n - k) * pmf(k; n, p) / ((1 - p) * CDF(p)).
        terms = log_comb + i * math.log(p) + n_minus_i * math.log1p(-p)
        top = float(np.max(terms))
        log_cdf = top + math.log(float(np.sum(np.exp(terms - top))))
        slope = -(n - k) * math.exp(float(terms[-1]) - log_cdf) / (1.0 - p)
        return log_cdf - log_delta, slope

    # As a function of p, P(Bin(n, p) <= k) is the survival function of Beta(k + 1, n - k),
    # log-concave because that density is (k + 1 >= 1, n - k >= 1); so g is concave and
    # decreasing: from the right of the root (g < 0) Newton steps stay right
    # of it and converge monotonically; the last right-side iterate is conservative.
    # [lo, hi] brackets the root: g(lo) >= 0 > g(hi); bisection is the fallback.
    lo, hi = 0.0, 1.0
    p = (k + 1.0) / (n + 1.0)
    for _ in range(500):
        g, slope = g_and_slope(p)
        if g >= 0.0:
            lo = p
        else:
            hi = p
        if hi - lo <= tol * hi:
            break
        newton = p - g / slope if slope < 0.0 else math.inf
        if g < 0.0 and p - newton <= tol * p:
            break
        p_next = newton if lo < newton < hi else 0.5 * (lo + hi)
        if p_next == p or not lo < p_next < hi:
            break
        p = p_next
    return hi


# --------------------------------------------------------------------------- threshold choice


def _float_to_json(v: float):
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


def _float_from_json(v, name: str) -> float:
    if isinstance(v, str):
        if v not in ("nan", "inf", "-inf"):
            raise ValueError(f"{name}: expected a number or 'nan'/'inf'/'-inf', got {v!r}")
        return float(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class ThresholdChoice:
    """An acceptance threshold: accept a prediction iff ``confidence >= threshold``.

    Attributes:
        threshold: the score cut; ``+inf`` when infeasible (defer everything).
        alpha: target selective risk (error rate among accepted).
        delta: allowed probability that the true selective risk exceeds ``alpha``.
        coverage: share of calibration samples accepted (0.0 when infeasible).
        empirical_risk: error rate among accepted calibration samples (NaN when
            infeasible: nothing is accepted).
        risk_upper_bound: the upper confidence bound used for the decision (NaN when
            infeasible).
        n_calibration: number of calibration samples.
        feasible: whether a threshold with ``risk_upper_bound < alpha`` was found.
        method: how it was chosen (``SGR_METHOD`` for :func:`select_threshold`).
    """

    threshold: float
    alpha: float
    delta: float
    coverage: float
    empirical_risk: float
    risk_upper_bound: float
    n_calibration: int
    feasible: bool
    method: str

    def to_dict(self) -> dict:
        """JSON-safe dict (non-finite floats as the strings 'inf', '-inf', 'nan').

        ``ThresholdChoice.from_dict(d)`` restores every field exactly, also after
        ``json.loads(json.dumps(d, allow_nan=False))``.
        """
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "n_calibration":
                out[f.name] = int(v)
            elif f.name == "feasible":
                out[f.name] = bool(v)
            elif f.name == "method":
                out[f.name] = str(v)
            else:
                out[f.name] = _float_to_json(float(v))
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ThresholdChoice":
        """Inverse of :meth:`to_dict`; ValueError on missing, unknown or mistyped keys."""
        names = [f.name for f in fields(cls)]
        missing = [k for k in names if k not in d]
        unknown = sorted(set(d) - set(names))
        if missing or unknown:
            raise ValueError(f"ThresholdChoice.from_dict: missing keys {missing}, unknown keys {unknown}")
        kwargs = {}
        for k in names:
            v = d[k]
            if k == "n_calibration":
                if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                    raise ValueError(f"n_calibration: expected an int, got {v!r}")
                kwargs[k] = int(v)
            elif k == "feasible":
                if not isinstance(v, bool):
                    raise ValueError(f"feasible: expected a bool, got {v!r}")
                kwargs[k] = v
            elif k == "method":
                if not isinstance(v, str):
                    raise ValueError(f"method: expected a str, got {v!r}")
                kwargs[k] = v
            else:
                kwargs[k] = _float_from_json(v, k)
        return cls(**kwargs)


def _infeasible(alpha: float, delta: float, m: int) -> ThresholdChoice:
    return ThresholdChoice(
        threshold=math.inf,
        alpha=alpha,
        delta=delta,
        coverage=0.0,
        empirical_risk=math.nan,
        risk_upper_bound=math.nan,
        n_calibration=m,
        feasible=False,
        method=SGR_METHOD,
    )


def select_threshold(confidence, correct, alpha: float, delta: float) -> ThresholdChoice:
    """Chooses an acceptance threshold by SGR (see the module docstring).

    Args:
        confidence: 1-D finite calibration scores, higher = more confident.
        correct: 1-D 0/1 or bool, whether each calibration prediction was right.
        alpha: target selective risk, in (0, 1).
        delta: failure probability of the guarantee, in (0, 1).

    Returns:
        A :class:`ThresholdChoice`. With probability >= 1 - delta over i.i.d. calibration
        data, a feasible choice has true selective risk <= alpha. An infeasible one (also
        for empty input) has ``threshold = +inf``, ``coverage = 0``.

    Raises:
        ValueError: for alpha or delta outside (0, 1), non-finite confidence, or the
            input errors of :func:`trustvlm.calibration.metrics.validate_scores`.
    """
    alpha = _check_unit_interval(alpha, "alpha")
    delta = _check_unit_interval(delta, "delta")
    conf, corr = validate_scores(confidence, correct)
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidence must be finite for threshold selection (found +-inf)")
    m = int(conf.shape[0])
    if m == 0:
        return _infeasible(alpha, delta, m)

    order = np.argsort(conf, kind="mergesort")
    s = conf[order]
    wrong = (~corr[order]).astype(np.int64)
    # errors among s[i:], i = 0..m
    err_from = np.r_[np.cumsum(wrong[::-1])[::-1], 0]

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
        return _infeasible(alpha, delta, m)
    first, n_acc, e, bound = best
    return ThresholdChoice(
        threshold=float(s[first]),
        alpha=alpha,
        delta=delta,
        coverage=n_acc / m,
        empirical_risk=e / n_acc,
        risk_upper_bound=float(bound),
        n_calibration=m,
        feasible=True,
        method=SGR_METHOD,
    )


# --------------------------------------------------------------------------- lambda choice


def _check_grid(values, name: str, *, positive: bool) -> list[float]:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers, got {values!r}") from exc
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must not be empty")
    bad = ~np.isfinite(arr) | ((arr <= 0.0) if positive else (arr < 0.0))
    if bad.any():
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {values!r}")
    return sorted(set(float(v) for v in arr))


def _is_better(a: float, b: float) -> bool:
    """True if AURC ``a`` beats ``b`` by more than the tie tolerance."""
    return a < b - _AURC_TIE_RTOL * max(1.0, abs(b))


def choose_lambda(msp, proto_sim, correct, lambdas=(0, 0.25, 0.5, 1, 2, 4)):
    """Picks lambda for the TrustVLM score ``msp + lambda * proto_sim`` by calibration AURC.

    Args:
        msp: 1-D finite maximum softmax probabilities of the VLM.
        proto_sim: 1-D finite cosine similarity of each image to the prototype of its
            predicted class.
        correct: 1-D 0/1 or bool (the VLM prediction, which does not depend on lambda).
        lambdas: finite, >= 0 candidates; 0 is added if missing, duplicates dropped.

    Returns:
        ``(best_lambda, table)``: ``table`` is a list, by increasing lambda, of
        ``{"lambda", "aurc_x1000", "auroc"}`` (floats; auroc NaN with a single class).
        ``best_lambda`` has the lowest AURC; AURCs within a relative 1e-12 tie and the
        smaller lambda wins, so the result is never worse than MSP (lambda = 0).

    Raises:
        ValueError: on fewer than 2 samples, mismatched lengths, NaN/inf scores or a bad
            grid.
    """
    msp_a, corr = validate_scores(msp, correct)
    sim_a, _ = validate_scores(proto_sim, corr)
    for arr, name in ((msp_a, "msp"), (sim_a, "proto_sim")):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite")
    if msp_a.shape[0] < 2:
        raise ValueError(f"choose_lambda needs at least 2 samples, got {msp_a.shape[0]}")
    grid = _check_grid(tuple(lambdas) + (0.0,), "lambdas", positive=False)

    table = []
    best_lam, best_aurc = None, math.inf
    for lam in grid:
        score = msp_a + lam * sim_a
        a = AURC_SCALE * _aurc_fraction(score, corr)
        table.append({"lambda": lam, "aurc_x1000": a, "auroc": auroc(score, corr)})
        if best_lam is None or _is_better(a, best_aurc):
            best_lam, best_aurc = lam, a
    return best_lam, table


def _softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=1, keepdims=True))
    return e / np.sum(e, axis=1, keepdims=True)


def trustvlm_star_scores(probs, proto_sim, lam: float, temperature: float):
    """TrustVLM* prediction and confidence, as in the official ``--use_trustvlm_v2`` path.

    ``q = probs + lam * softmax(proto_sim / temperature)``, ``pred = argmax q`` (first
    index on ties), ``confidence = max q + lam * proto_sim[pred]``.

    Args:
        probs: ``(N, C)`` VLM class probabilities (softmax of its logits).
        proto_sim: ``(N, C)`` cosine similarity of each image embedding to each class's
            image prototype (normalized), i.e. ``normalize(f) @ P.T``.
        lam: weight >= 0; 0 gives the VLM's own prediction and MSP.
        temperature: > 0, of the prototype softmax (the paper uses 0.01 or 0.1).

    Returns:
        ``(pred, confidence)``: int64 ``(N,)`` and float64 ``(N,)``.
    """
    p = np.asarray(probs, dtype=np.float64)
    sim = np.asarray(proto_sim, dtype=np.float64)
    q = p + lam * _softmax_rows(sim / temperature)
    pred = np.argmax(q, axis=1)
    rows = np.arange(p.shape[0])
    return pred.astype(np.int64), q[rows, pred] + lam * sim[rows, pred]


def choose_lambda_temperature(
    probs,
    proto_sim,
    labels,
    lambdas=(0, 0.25, 0.5, 1, 2, 4),
    temperatures=(0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
):
    """Picks (lambda, temperature) for TrustVLM* by calibration AURC.

    For each pair, :func:`trustvlm_star_scores` gives a prediction and a confidence;
    the prediction can change with the pair, so correctness is recomputed against
    ``labels`` and AURC (which rewards both accuracy and ranking) decides.

    Args:
        probs: ``(N, C)`` finite VLM class probabilities.
        proto_sim: ``(N, C)`` finite image-prototype cosine similarities.
        labels: ``(N,)`` integer labels in ``[0, C)``.
        lambdas: finite, >= 0 candidates; 0 is added if missing.
        temperatures: finite, > 0 candidates.

    Returns:
        ``(best_lambda, best_temperature, table)``; ``table`` lists, by increasing lambda
        then temperature, ``{"lambda", "temperature", "aurc_x1000", "accuracy"}``. Ties
        (relative 1e-12) go to the smaller lambda, then the smaller temperature. Lambda
        0 is the VLM with MSP (temperature then has no effect), so the choice is never
        worse than MSP in calibration AURC.

    Raises:
        ValueError: on shape mismatch, NaN/inf, labels out of range, fewer than 2
            samples or a bad grid.
    """
    p = np.asarray(probs, dtype=np.float64)
    sim = np.asarray(proto_sim, dtype=np.float64)
    if p.ndim != 2 or sim.shape != p.shape:
        raise ValueError(f"probs and proto_sim must be (N, C) of one shape, got {p.shape} and {sim.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(sim))):
        raise ValueError("probs and proto_sim must be finite")
    y = np.asarray(labels)
    if y.shape != (p.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be ({p.shape[0]},) integers, got shape {y.shape}, dtype {y.dtype}")
    if y.shape[0] and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must be in [0, {p.shape[1]}), got range [{y.min()}, {y.max()}]")
    if p.shape[0] < 2:
        raise ValueError(f"choose_lambda_temperature needs at least 2 samples, got {p.shape[0]}")
    lam_grid = _check_grid(tuple(lambdas) + (0.0,), "lambdas", positive=False)
    t_grid = _check_grid(temperatures, "temperatures", positive=True)

    table = []
    best = None  # (lambda, temperature, aurc)
    for lam in lam_grid:
        for t in t_grid:
            pred, conf = trustvlm_star_scores(p, sim, lam, t)
            corr = pred == y
            a = AURC_SCALE * _aurc_fraction(conf, corr)
            table.append(
                {"lambda": lam, "temperature": t, "aurc_x1000": a, "accuracy": float(np.mean(corr))}
            )
            if best is None or _is_better(a, best[2]):
                best = (lam, t, a)
    return best[0], best[1], table
