"""The Clopper-Pearson upper bound of a binomial proportion, in numpy and the standard library only.

For ``k`` successes in ``n`` trials the upper bound at level ``delta`` is the ``q`` with
``P(Binomial(n, q) <= k) = delta``; equivalently the upper ``1 - delta`` quantile of
``Beta(k + 1, n - k)``. The drift monitor (:mod:`.drift`) uses it for the law of an order
statistic: if ``X_(1) <= ... <= X_(n)`` are ``n`` i.i.d. draws of a continuous law ``F``, then
``F(X_(b))`` is ``Beta(b, n + 1 - b)`` distributed, so ``F(X_(b)) <= binomial_upper(b - 1, n, d)``
with probability at least ``1 - d`` over the draws.

The binomial distribution function is summed in log space (``log C(n, i)`` as a running sum of
``log((n - i + 1) / i)``, so there is no cancellation of large ``lgamma`` values) and the bound is
found by bisection on ``q``, to about 1e-13 relative: plenty for a bet size. The cost is
``O(k)`` per evaluation times ~100 bisection steps, paid once per bound (the results are cached).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["binomial_log_cdf", "binomial_upper"]


def _check(k: int, n: int) -> None:
    if not (isinstance(n, (int, np.integer)) and isinstance(k, (int, np.integer))) or n < 1 or not 0 <= k <= n:
        raise ValueError(f"a binomial bound needs integers 0 <= k <= n and n >= 1, but got k={k!r}, n={n!r}")


def binomial_log_cdf(k: int, n: int, q: float) -> float:
    """``log P(Binomial(n, q) <= k)``.

    Args:
        k: Successes, ``0 <= k <= n``.
        n: Trials, at least 1.
        q: Success probability in ``[0, 1]``.

    Returns:
        The natural log of the distribution function (0 at ``k = n``, ``-inf`` where it is 0).
    """
    _check(k, n)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a success probability should be in [0, 1], but got {q!r}")
    if k == n or q == 0.0:
        return 0.0
    if q == 1.0:
        return -math.inf
    i = np.arange(k + 1, dtype=np.float64)
    log_choose = np.concatenate(([0.0], np.cumsum(np.log(n - i[:-1]) - np.log(i[1:]))))
    terms = log_choose + i * math.log(q) + (n - i) * math.log1p(-q)
    top = float(terms.max())
    return top + math.log(float(np.exp(terms - top).sum()))


@lru_cache(maxsize=1024)
def binomial_upper(k: int, n: int, delta: float) -> float:
    """The Clopper-Pearson upper bound: the ``q`` with ``P(Binomial(n, q) <= k) = delta``.

    Args:
        k: Successes seen, ``0 <= k <= n``.
        n: Trials, at least 1.
        delta: The level, in ``(0, 1)``: the bound is exceeded by the true proportion with probability
            at most ``delta``.

    Returns:
        The bound in ``(0, 1]`` (1 when ``k = n``), equal to ``scipy.stats.beta.ppf(1 - delta, k + 1, n - k)``.
    """
    _check(k, n)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"a binomial bound's level should be in (0, 1), but got {delta!r}")
    k, n = int(k), int(n)
    if k == n:
        return 1.0
    if k == 0:  # closed form: (1 - q)^n = delta
        return -math.expm1(math.log(delta) / n)
    target = math.log(delta)
    lo, hi = 0.0, 1.0  # log cdf falls from 0 at q = 0 to -inf at q = 1
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if binomial_log_cdf(k, n, mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
