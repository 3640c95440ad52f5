"""Acceptance thresholds with a risk guarantee: Selection with Guaranteed Risk (SGR).

Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks", NeurIPS 2017,
Algorithm 1. Given calibration scores and correctness, a target selective risk ``alpha`` (the
error rate among *accepted* predictions) and a failure probability ``delta``:

1. sort the m calibration scores increasingly, ``zmin = 1``, ``zmax = m``;
2. for ``i = 1 .. k = ceil(log2 m)``: ``z = ceil((zmin + zmax) / 2)``, ``theta`` = the
   z-th smallest score; accept ``confidence >= theta`` (a tied score is accepted as a
   whole); with ``n`` accepted and ``e`` errors among them, compute the one-sided
   Clopper-Pearson upper bound ``b`` on the selective risk at level ``delta / k``
   (:func:`trustvlm.calibration.risk_bound.binomial_upper_bound`); if ``b < alpha`` move
   down (``zmax = z``, more coverage) else move up (``zmin = z``).

By a union bound over the k tested thresholds, with probability >= 1 - delta over the
calibration draw every tested bound holds at once. Unlike the paper, which outputs the
*last* tested threshold and its bound, :func:`select_threshold` returns the tested
threshold with the largest calibration coverage among those with ``b < alpha``; so its
true selective risk is <= alpha with probability >= 1 - delta (assuming calibration and
deployment data are i.i.d. from one distribution). If no tested threshold has
``b < alpha`` the choice is infeasible: ``threshold = +inf`` (defer everything).
"""

from __future__ import annotations

import math

import numpy as np

from trustvlm.calibration.ranking import validate_scores
from trustvlm.calibration.risk_bound import binomial_upper_bound, check_unit_interval
from trustvlm.contract.threshold import ThresholdChoice

__all__ = ["SGR_METHOD", "select_threshold"]

#: ``ThresholdChoice.method`` of :func:`select_threshold`.
SGR_METHOD = "sgr-clopper-pearson"


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
            input errors of :func:`trustvlm.calibration.ranking.validate_scores`.
    """
    alpha = check_unit_interval(alpha, "alpha")
    delta = check_unit_interval(delta, "delta")
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
