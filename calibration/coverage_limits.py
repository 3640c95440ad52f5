"""Two coverages to read a guaranteed threshold against: the certifiable limit and the oracle.

A threshold chosen on calibration data with a risk guarantee (:mod:`threshold_selection`) covers less
than the data would allow, for two reasons:

* **certifiable limit** (:func:`certifiable_limit`): even a single Clopper-Pearson test, with no
  correction for testing several thresholds, can only certify ``risk <= alpha`` at confidence
  ``1 - delta`` where the errors among the accepted calibration images are few enough. The largest
  such coverage is what any guarantee from these calibration images can reach with this score; a
  procedure valid over many thresholds stays at or below it. A better score raises it.
* **oracle coverage** (:func:`oracle_coverage`): the largest coverage whose *observed* risk is at most
  alpha, i.e. a threshold chosen knowing the labels of the very data it is measured on (usually the
  test data). No procedure can promise it; it bounds what the score itself ranks.

Both accept ``confidence >= threshold`` with tied scores accepted as a whole, as the thresholds do.
"""

from __future__ import annotations

import numpy as np

from trustvlm.calibration.ranking import validate_scores
from trustvlm.calibration.risk_bound import binomial_upper_bound, check_unit_interval

__all__ = ["certifiable_limit", "oracle_coverage"]


def _accepted_counts(confidence, correct) -> tuple[np.ndarray, np.ndarray, int]:
    """Per distinct threshold (highest coverage first): accepted count and errors among them."""
    conf, corr = validate_scores(confidence, correct)
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidence must be finite (found NaN or inf)")
    m = int(conf.shape[0])
    order = np.argsort(conf, kind="mergesort")
    s, wrong = conf[order], (~corr[order]).astype(np.int64)
    errors_from = np.r_[np.cumsum(wrong[::-1])[::-1], 0]
    first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if m else np.zeros(0, np.int64)
    return m - first, errors_from[first], m


def certifiable_limit(confidence, correct, alpha: float, delta: float) -> float:
    """The largest coverage a single Clopper-Pearson test could certify at (alpha, delta).

    Args:
        confidence: 1-D finite scores of the calibration images, higher = more confident.
        correct: 1-D 0/1 or bool, whether each prediction was right.
        alpha: Target risk among accepted images, in (0, 1).
        delta: Allowed probability that the true risk exceeds alpha, in (0, 1).

    Returns:
        ``n / m`` of the lowest threshold whose ``n`` accepted images with ``e`` errors have a one-sided
        Clopper-Pearson upper bound (level delta, no multiplicity correction) below alpha; 0.0 when no
        threshold has one (or there is no image).
    """
    alpha = check_unit_interval(alpha, "alpha")
    delta = check_unit_interval(delta, "delta")
    accepted, errors, m = _accepted_counts(confidence, correct)
    for n, e in zip(accepted, errors):  # highest coverage first: the first that passes is the limit
        if e < alpha * n and binomial_upper_bound(int(e), int(n), delta) < alpha:  # bound >= e / n
            return float(n / m)
    return 0.0


def oracle_coverage(confidence, correct, alpha: float) -> float:
    """The largest coverage whose observed risk among the accepted images is at most alpha.

    Args:
        confidence: 1-D finite scores, higher = more confident (usually of test images).
        correct: 1-D 0/1 or bool.
        alpha: Risk level, in (0, 1).

    Returns:
        The coverage of the lowest threshold with ``errors / accepted <= alpha``; 0.0 when none.
    """
    alpha = check_unit_interval(alpha, "alpha")
    accepted, errors, m = _accepted_counts(confidence, correct)
    ok = errors <= alpha * accepted
    return float(accepted[ok].max() / m) if ok.any() else 0.0
