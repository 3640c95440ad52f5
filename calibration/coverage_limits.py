"""How much coverage a risk guarantee could reach on given calibration data: two yardsticks for a threshold.

* :func:`certifiable_limit`: the largest calibration coverage at which a *single* exact binomial
  (Clopper-Pearson) test at level delta, with no correction for having looked at many thresholds,
  shows the selective risk below alpha. No procedure built on the same non-randomised exact
  binomial tests at level delta on the same data certifies more (a randomised test, or one that
  brings in other information, could), and
  :func:`~trustvlm.calibration.threshold_selection.select_threshold` with ``method="ltt"`` never
  exceeds it.
* :func:`oracle_coverage`: the largest calibration coverage whose *empirical* selective risk is
  <= alpha (no guarantee at all; on test data, the coverage a threshold chosen knowing the labels
  would reach).

Both scan every distinct score as a threshold (accept ``confidence >= t``; a tied score is
accepted or deferred as a whole), so on the same data certifiable >= the LTT choice's coverage,
and, for delta < 1/2, oracle >= certifiable (a test at a level below 1/2 never passes an observed
error rate above alpha; at delta >= 1/2 it can, and certifiable may exceed oracle). Computed on
different sets, as :func:`risk_control_row` does (certifiable on the calibration scores, oracle
on the test ones), the two are not ordered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trustvlm.calibration.ranking import validate_scores
from trustvlm.calibration.risk_bound import binomial_critical_errors, check_unit_interval
from trustvlm.calibration.threshold_selection import DEFAULT_THRESHOLD_METHOD, score_blocks, select_threshold

__all__ = ["CoverageLimit", "certifiable_limit", "oracle_coverage", "risk_control_row"]


@dataclass(frozen=True)
class CoverageLimit:
    """The lowest threshold meeting a criterion, and what it accepts.

    Attributes:
        coverage: share of the samples accepted (0.0 when no threshold qualifies).
        threshold: the score cut (accept ``confidence >= threshold``); ``+inf`` when none qualifies.
        empirical_risk: error rate among the accepted (NaN when none qualifies).
    """

    coverage: float
    threshold: float
    empirical_risk: float


def _checked_blocks(confidence, correct) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    conf, corr = validate_scores(confidence, correct)
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidence must be finite to compute a coverage limit (found +-inf)")
    if conf.shape[0] == 0:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    return (*score_blocks(conf, corr), int(conf.shape[0]))


def _lowest(ok: np.ndarray, thresholds: np.ndarray, accepted: np.ndarray, errors: np.ndarray, m: int) -> CoverageLimit:
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return CoverageLimit(0.0, float("inf"), float("nan"))
    b = int(hits[-1])  # blocks are ordered by decreasing threshold: the last hit covers most
    return CoverageLimit(int(accepted[b]) / m, float(thresholds[b]), int(errors[b]) / int(accepted[b]))


def certifiable_limit(confidence, correct, alpha: float, delta: float) -> CoverageLimit:
    """The largest coverage one exact binomial test at level `delta` certifies at selective risk `alpha`.

    Over every distinct calibration score t: accept ``confidence >= t`` (n samples, e errors) and
    keep t if ``P(Binomial(n, alpha) <= e) <= delta`` (equivalently, the one-sided Clopper-Pearson
    upper bound at level delta is <= alpha). Each threshold is judged as if it were the only one
    tested, so this is an upper yardstick, not a guarantee.

    Args:
        confidence: 1-D finite calibration scores, higher = more confident.
        correct: 1-D 0/1 or bool, whether each prediction was right.
        alpha: target selective risk, in (0, 1).
        delta: level of the test, in (0, 1).

    Returns:
        A :class:`CoverageLimit` (coverage 0 when no threshold passes, or for empty input).

    Raises:
        ValueError: alpha or delta outside (0, 1), non-finite confidence, or the input errors
            of :func:`trustvlm.calibration.ranking.validate_scores`.
    """
    alpha = check_unit_interval(alpha, "alpha")
    delta = check_unit_interval(delta, "delta")
    thresholds, accepted, errors, m = _checked_blocks(confidence, correct)
    critical = binomial_critical_errors(m, alpha, delta)
    return _lowest(errors <= critical[accepted], thresholds, accepted, errors, m)


def oracle_coverage(confidence, correct, alpha: float) -> CoverageLimit:
    """The largest coverage whose empirical selective risk is <= `alpha` (no guarantee).

    Args:
        confidence: 1-D finite scores, higher = more confident.
        correct: 1-D 0/1 or bool, whether each prediction was right.
        alpha: target selective risk, in (0, 1).

    Returns:
        A :class:`CoverageLimit` (coverage 0 when even the most confident block errs too often).

    Raises:
        ValueError: alpha outside (0, 1), non-finite confidence, or the input errors of
            :func:`trustvlm.calibration.ranking.validate_scores`.
    """
    alpha = check_unit_interval(alpha, "alpha")
    thresholds, accepted, errors, m = _checked_blocks(confidence, correct)
    # e / n <= alpha without dividing (every block accepts n >= 1)
    return _lowest(errors <= alpha * accepted, thresholds, accepted, errors, m)


def risk_control_row(calib_conf: np.ndarray, calib_correct: np.ndarray, test_conf: np.ndarray,
                     test_correct: np.ndarray, alpha: float, delta: float, *,
                     method: str = DEFAULT_THRESHOLD_METHOD, grid=None) -> dict:
    """The risk-guaranteed threshold (`method`) on calibration scores, what it does on the test set, and the two limits.

    ``certifiable_limit`` is computed on the same calibration scores, ``oracle_coverage`` on the test ones: on
    different data, so either may be the larger.
    """
    choice = select_threshold(calib_conf, calib_correct, alpha, delta, method=method, grid=grid)
    accepted = test_conf >= choice.threshold
    n_accepted = int(accepted.sum())
    return {"threshold": choice.to_dict(), "test_coverage": float(accepted.mean()),
            "test_accepted": n_accepted,
            "test_risk": float(np.mean(~test_correct[accepted])) if n_accepted else float("nan"),
            "certifiable_limit": certifiable_limit(calib_conf, calib_correct, alpha, delta).coverage,
            "oracle_coverage": oracle_coverage(test_conf, test_correct, alpha).coverage}
