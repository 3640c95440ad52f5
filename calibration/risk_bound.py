"""The finite-sample risk bound behind the accept threshold: the exact binomial test and its inversion.

:func:`binomial_upper_bound` inverts the binomial tail (the ``B*`` of Geifman & El-Yaniv,
"Selective Classification for Deep Neural Networks", NeurIPS 2017): with probability at least
``1 - delta`` the true error rate is below it. :func:`binomial_pvalue` is the same test read the
other way (the p-value of "error rate > alpha"), and :func:`binomial_critical_errors` tabulates,
for every number of trials, the most errors at which that test still rejects. Only numpy and the
standard library are used (no scipy).
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np

__all__ = ["check_unit_interval", "binomial_upper_bound", "binomial_pvalue", "binomial_critical_errors"]


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


def binomial_pvalue(errors: int, n: int, alpha: float) -> float:
    """Exact p-value of "error rate > alpha" after `errors` errors in `n` trials: ``P(Binomial(n, alpha) <= errors)``.

    If the true rate is p > alpha, ``P(pvalue <= u) <= u`` for every u (Binomial(n, p) is
    stochastically larger than Binomial(n, alpha)). ``pvalue <= delta`` exactly when
    ``errors <= binomial_critical_errors(n, alpha, delta)[n]``, and (up to the bound's numerical
    tolerance) when ``binomial_upper_bound(errors, n, delta) <= alpha``. n = 0 gives 1.
    """
    alpha = check_unit_interval(alpha, "alpha")
    errors, n = int(errors), int(n)
    if n < 0 or not 0 <= errors <= max(n, 0):
        raise ValueError(f"need 0 <= errors <= n, got errors={errors}, n={n}")
    if errors == n:
        return 1.0
    return min(1.0, math.exp(_log_cdf_at(errors, n, math.log(alpha), math.log1p(-alpha))))


def _log_cdf_at(k: int, n: int, log_p: float, log_q: float) -> float:
    """``log P(Binomial(n, p) <= k)`` for 0 <= k < n; log C(n, j) by a cumulative sum (no lgamma loop)."""
    j = np.arange(1, k + 1, dtype=np.float64)
    log_comb = np.r_[0.0, np.cumsum(np.log(n - j + 1.0) - np.log(j))]
    i = np.arange(k + 1, dtype=np.float64)
    terms = log_comb + i * log_p + (n - i) * log_q
    top = float(np.max(terms))
    return top + math.log(float(np.sum(np.exp(terms - top))))


@functools.lru_cache(maxsize=64)
def _critical_table(n_max: int, alpha: float, delta: float) -> np.ndarray:
    # k_crit(n) never decreases with n and grows by at most 1 per trial (X_{n+1} <= X_n + 1), so one
    # candidate c = k_crit + 1 is followed along n, its log CDF and log pmf updated in O(1) per step:
    # P(X_{n+1} <= c) = P(X_n <= c) - alpha P(X_n = c) and P(X_{n+1} = c) = P(X_n = c) (n+1)/(n+1-c) (1-alpha);
    # moving to c + 1 adds P(X_n = c + 1) = P(X_n = c) (n-c)/(c+1) alpha/(1-alpha).
    log_q, log_delta, log_odds = math.log1p(-alpha), math.log(delta), math.log(alpha) - math.log1p(-alpha)
    table = np.full(n_max + 1, -1, dtype=np.int64)
    c, log_cdf, log_pmf = 0, 0.0, 0.0  # n = 0: X = 0
    for n in range(1, n_max + 1):
        # n - 1 -> n at fixed c (c <= n - 1 here); the subtraction keeps >= (1 - alpha) of the CDF
        log_cdf += math.log1p(-alpha * math.exp(log_pmf - log_cdf))
        log_pmf += math.log(n / (n - c)) + log_q
        if c < n and log_cdf <= log_delta:
            table[n] = c
            c += 1
            log_pmf += math.log((n - c + 1) / c) + log_odds
            log_cdf = float(np.logaddexp(log_cdf, log_pmf))
        else:
            table[n] = c - 1
    table.setflags(write=False)
    return table


def binomial_critical_errors(n_max: int, alpha: float, delta: float) -> np.ndarray:
    """For n = 0 .. n_max trials, the largest error count whose exact binomial test of "rate > alpha" rejects at `delta`.

    ``table[n]`` is the largest e with ``P(Binomial(n, alpha) <= e) <= delta``, or -1 when no
    count rejects (too few trials: ``(1 - alpha)^n > delta``). It never decreases with n.

    Args:
        n_max: Largest number of trials, >= 0.
        alpha: The rate tested against, in (0, 1).
        delta: The test's level, in (0, 1).

    Returns:
        Read-only int64 array of length ``n_max + 1`` (the last 64 are cached).
    """
    alpha = check_unit_interval(alpha, "alpha")
    delta = check_unit_interval(delta, "delta")
    if isinstance(n_max, bool) or not isinstance(n_max, numbers.Integral) or n_max < 0:
        raise ValueError(f"n_max should be an integer >= 0, but got {n_max!r}")
    return _critical_table(int(n_max), alpha, delta)
