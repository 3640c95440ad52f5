"""The finite-sample risk bound behind the accept threshold: a one-sided Clopper-Pearson bound.

:func:`binomial_upper_bound` inverts the binomial tail (the ``B*`` of Geifman & El-Yaniv,
"Selective Classification for Deep Neural Networks", NeurIPS 2017): with probability at least
``1 - delta`` the true error rate is below it. Only numpy and the standard library are used (no
scipy).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["check_unit_interval", "binomial_upper_bound"]


def check_unit_interval(value, name: str) -> float:
    """``value`` as a float strictly inside (0, 1), or ValueError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    v = float(value) if ok else float("nan")
    if not (ok and 0.0 < v < 1.0):
        raise ValueError(f"{name} should be in (0, 1), but got {value!r}")
    return v


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
    delta = check_unit_interval(delta, "delta")
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
