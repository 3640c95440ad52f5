"""Selective-prediction (misclassification-detection) metrics, in float64 numpy.

Every function takes a confidence score per prediction (higher = more confident)
and ``correct`` (1/True where the VLM's prediction equals the label). "Accept"
means ``confidence >= threshold``; correct predictions are the positive class.

The definitions follow the official TrustVLM code (EPFL-IMOS/TrustVLM,
``TrustVLM.py``: ``calc_aurc_eaurc``, ``coverage_risk``, ``aurc_eaurc`` and
``calc_fpr_aupr``), rewritten without scikit-learn:

=================  ==========================================================
metric             definition (official code in brackets)
=================  ==========================================================
``aurc``           mean over n of the selective risk after accepting the k most
                   confident samples, k = 1..n [``coverage_risk`` +
                   ``aurc_eaurc``]; returned x1000 by default, the scale the
                   paper and the official script report (``aurc * 1000``).
``e_aurc``         ``aurc - (r + (1 - r) * ln(1 - r))`` with r the overall error
                   rate (the official continuous approximation of the optimal
                   AURC), same x1000 scale.
``auroc``          area under the ROC curve, correct = positive class
                   [``roc_curve`` + ``auc``]; a fraction in [0, 1] (the paper
                   prints x100).
``fpr_at_95_tpr``  FPR at the ROC point whose TPR is nearest 0.95, taken on
                   scikit-learn's default ROC curve (``drop_intermediate=True``);
                   first such point on ties [``np.argmin(np.abs(tpr - 0.95))``].
``aupr_success``   trapezoidal area under the precision-recall curve, correct =
                   positive [``auc(recall, precision)`` on
                   ``precision_recall_curve``]. Note: *not* average precision.
``aupr_error``     average precision with errors as the positive class and
                   ``-confidence`` as the score [``average_precision_score(1 -
                   correct, -score)``].
``accuracy``       mean of ``correct``.
=================  ==========================================================

Ties. The official ``coverage_risk`` walks samples one by one in a stable sort,
so tied scores are broken by input order. Here a tie is one block: a threshold
accepts all of it or none of it (:func:`risk_coverage_curve`). For AURC, the
per-sample positions inside a tied block are scored with the cumulative error
count interpolated linearly across the block, which is exactly the average of
the official AURC over every order of the tied samples. Without ties this *is*
the official AURC. ROC/PR metrics treat ties as scikit-learn does (one curve
point per distinct score).

Degenerate input. Rather than raise or warn, a metric that is undefined returns
``float('nan')``:

* ``aurc``, ``e_aurc``: fewer than 2 samples;
* ``auroc``, ``fpr_at_95_tpr``, ``aupr_success``, ``aupr_error``: fewer than 2
  samples, or only one class present (all correct or all wrong);
* ``accuracy``: no samples.

Invalid input raises ``ValueError``: NaN confidence, ``correct`` values other
than 0/1/True/False, mismatched lengths or non-1-D arrays. Infinite confidence
values are allowed (they sort first or last).
"""

from __future__ import annotations

import math

import numpy as np

from trustvlm.calibration.ranking import aurc_fraction, tie_blocks, validate_scores

__all__ = [
    "AURC_SCALE",
    "risk_coverage_curve",
    "aurc",
    "e_aurc",
    "auroc",
    "fpr_at_95_tpr",
    "aupr_success",
    "aupr_error",
    "accuracy",
    "evaluate_selective",
]

#: Default multiplier of :func:`aurc` and :func:`e_aurc` (the official script prints AURC x1000).
AURC_SCALE = 1000.0

_NAN = float("nan")


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


# --------------------------------------------------------------------------- risk / coverage


def risk_coverage_curve(confidence, correct) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Achievable (coverage, selective risk) points, one per distinct confidence value.

    Point i accepts every sample with ``confidence >= thresholds[i]``; a tied score is
    accepted or deferred as a whole. Points are ordered by decreasing threshold, i.e.
    increasing coverage; the last point accepts everything (coverage 1). The point
    "accept nothing" (coverage 0, risk undefined) is not included.

    Args:
        confidence: 1-D scores, higher = more confident.
        correct: 1-D 0/1 or bool, same length.

    Returns:
        ``(coverage, risk, thresholds)`` float64 arrays of equal length (empty for empty
        input): ``coverage`` = accepted / n, ``risk`` = errors among accepted / accepted.
    """
    conf, corr = validate_scores(confidence, correct)
    n = conf.shape[0]
    if n == 0:
        empty = np.zeros(0, dtype=np.float64)
        return empty, empty.copy(), empty.copy()
    thresholds, counts, tps = tie_blocks(conf, corr)
    return counts / n, (counts - tps) / counts, thresholds


def aurc(confidence, correct, *, scale: float = AURC_SCALE) -> float:
    """Area under the risk-coverage curve, multiplied by ``scale`` (default x1000).

    ``AURC = (1/n) * sum_{k=1..n} errors(top k) / k`` over samples ranked by decreasing
    confidence, as in the official ``coverage_risk``/``aurc_eaurc``; lower is better.
    With ties, ``errors(top k)`` inside a tied block is interpolated linearly (the mean
    of the official value over all orders of the tie).

    Args:
        confidence: 1-D scores, higher = more confident.
        correct: 1-D 0/1 or bool.
        scale: multiplier of the result; 1000 (default) gives the paper's unit, 1 the
            raw fraction in [0, 1].

    Returns:
        ``scale * AURC``, or NaN for fewer than 2 samples.
    """
    conf, corr = validate_scores(confidence, correct)
    if conf.shape[0] < 2:
        return _NAN
    return float(scale) * aurc_fraction(conf, corr)


def e_aurc(confidence, correct, *, scale: float = AURC_SCALE) -> float:
    """Excess AURC: ``AURC - (r + (1 - r) * ln(1 - r))``, times ``scale`` (default x1000).

    ``r`` is the overall error rate; the subtracted term is the official continuous
    approximation of the AURC of a perfect ranking, ``integral over coverage c from 1 - r
    to 1 of (c - (1 - r)) / c``. At ``r = 1`` the term is its limit, 1.

    The result is never negative (up to float rounding, about 1e-12 at the x1000 scale):
    any ranking, tie-averaged or not, accepts at least ``max(0, k - n_correct)`` errors
    among its top k, so its AURC is at least the perfect ranking's discrete AURC
    ``(1/n) * sum_k g(k/n)`` with ``g(c) = max(0, c - (1 - r)) / c``. That sum is a
    right-endpoint Riemann sum of the increasing ``g``, so it is at least the integral.

    Returns:
        ``scale * E-AURC``, or NaN for fewer than 2 samples.
    """
    conf, corr = validate_scores(confidence, correct)
    n = conf.shape[0]
    if n < 2:
        return _NAN
    r = float(n - np.count_nonzero(corr)) / n
    optimal = 1.0 if r >= 1.0 else r + (1.0 - r) * math.log(1.0 - r)
    return float(scale) * (aurc_fraction(conf, corr) - optimal)


# --------------------------------------------------------------------------- ROC / PR


def _two_classes(corr: np.ndarray) -> bool:
    n_pos = int(np.count_nonzero(corr))
    return corr.shape[0] >= 2 and 0 < n_pos < corr.shape[0]


def _roc_points(conf: np.ndarray, corr: np.ndarray, drop_intermediate: bool):
    """(fpr, tpr) exactly as ``sklearn.metrics.roc_curve`` builds them (with (0, 0) first)."""
    _, counts, tps = tie_blocks(conf, corr)
    fps = counts - tps
    if drop_intermediate and fps.shape[0] > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[keep], tps[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1]


def auroc(confidence, correct) -> float:
    """Area under the ROC curve with correct predictions as the positive class.

    Trapezoidal area over one ROC point per distinct score, equal to
    ``sklearn.metrics.roc_auc_score(correct, confidence)`` (a tie between a correct and
    a wrong sample counts 1/2).

    Returns:
        AUROC in [0, 1], or NaN for fewer than 2 samples or a single class.
    """
    conf, corr = validate_scores(confidence, correct)
    if not _two_classes(corr):
        return _NAN
    fpr, tpr = _roc_points(conf, corr, drop_intermediate=False)
    return _trapezoid(tpr, fpr)


def fpr_at_95_tpr(
    confidence,
    correct,
    *,
    target_tpr: float = 0.95,
    rule: str = "nearest",
    drop_intermediate: bool = True,
) -> float:
    """False-positive rate (wrong predictions accepted) at 95% true-positive rate.

    The official code takes ``fpr, tpr, _ = roc_curve(correct, score)`` (scikit-learn's
    defaults, which drop collinear intermediate points) and reports
    ``fpr[np.argmin(np.abs(tpr - 0.95))]``: the first ROC point whose TPR is nearest
    0.95. ``rule="nearest"`` (default) with ``drop_intermediate=True`` (default)
    reproduces that exactly, including which points exist on the curve.

    Args:
        confidence: 1-D scores, higher = more confident.
        correct: 1-D 0/1 or bool.
        target_tpr: TPR target in [0, 1], 0.95 by default.
        rule: ``"nearest"`` (official FPR95) or ``"first_at_least"``: the FPR at the first
            point with TPR >= target (the official ``tnr_in_tpr_95`` is 1 minus this).
        drop_intermediate: build the ROC curve as ``roc_curve(drop_intermediate=...)``.

    Returns:
        FPR in [0, 1], or NaN for fewer than 2 samples or a single class.
    """
    if rule not in ("nearest", "first_at_least"):
        raise ValueError(f"rule should be 'nearest' or 'first_at_least', but got {rule!r}")
    target = float(target_tpr)
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target_tpr should be in [0, 1], but got {target_tpr!r}")
    conf, corr = validate_scores(confidence, correct)
    if not _two_classes(corr):
        return _NAN
    fpr, tpr = _roc_points(conf, corr, drop_intermediate=drop_intermediate)
    if rule == "nearest":
        idx = int(np.argmin(np.abs(tpr - target)))
    else:
        idx = int(np.argmax(tpr >= target))
    return float(fpr[idx])


def _pr_blocks(score: np.ndarray, positive: np.ndarray):
    _, counts, tps = tie_blocks(score, positive)
    return tps / counts, tps / tps[-1]  # precision, recall per block (decreasing score)


def _aupr(score: np.ndarray, positive: np.ndarray, method: str) -> float:
    precision, recall = _pr_blocks(score, positive)
    if method == "trapezoid":
        # sklearn.metrics.auc(recall, precision) on precision_recall_curve, whose last
        # point is (recall 0, precision 1).
        return _trapezoid(np.r_[1.0, precision], np.r_[0.0, recall])
    # average_precision_score: step integral sum (R_b - R_{b-1}) * P_b.
    return max(0.0, float(np.sum(np.diff(np.r_[0.0, recall]) * precision)))


_AUPR_METHODS = ("trapezoid", "average_precision")


def _check_aupr_method(method: str) -> None:
    if method not in _AUPR_METHODS:
        raise ValueError(f"method should be one of {_AUPR_METHODS}, but got {method!r}")


def aupr_success(confidence, correct, *, method: str = "trapezoid") -> float:
    """Area under the precision-recall curve with correct predictions as positives.

    Args:
        confidence: 1-D scores, higher = more confident.
        correct: 1-D 0/1 or bool.
        method: ``"trapezoid"`` (default, official: ``auc(recall, precision)`` on
            ``precision_recall_curve``) or ``"average_precision"``
            (``average_precision_score(correct, confidence)``).

    Returns:
        Area in [0, 1], or NaN for fewer than 2 samples or a single class.
    """
    _check_aupr_method(method)
    conf, corr = validate_scores(confidence, correct)
    if not _two_classes(corr):
        return _NAN
    return _aupr(conf, corr, method)


def aupr_error(confidence, correct, *, method: str = "average_precision") -> float:
    """Area under the precision-recall curve with *errors* as positives, scored by ``-confidence``.

    Args:
        confidence: 1-D scores, higher = more confident.
        correct: 1-D 0/1 or bool.
        method: ``"average_precision"`` (default, official:
            ``average_precision_score(1 - correct, -confidence)``) or ``"trapezoid"``.

    Returns:
        Area in [0, 1], or NaN for fewer than 2 samples or a single class.
    """
    _check_aupr_method(method)
    conf, corr = validate_scores(confidence, correct)
    if not _two_classes(corr):
        return _NAN
    return _aupr(-conf, ~corr, method)


def accuracy(correct) -> float:
    """Share of correct predictions; NaN for no samples.

    Raises:
        ValueError: if ``correct`` is not 1-D 0/1 or bool.
    """
    corr_raw = np.asarray(correct)
    _, corr = validate_scores(np.zeros(corr_raw.shape, dtype=np.float64), corr_raw)
    if corr.shape[0] == 0:
        return _NAN
    return float(np.count_nonzero(corr)) / corr.shape[0]


def evaluate_selective(confidence, correct) -> dict:
    """All metrics of this module at once.

    Returns:
        ``{"n": int, "accuracy", "aurc_x1000", "e_aurc_x1000", "auroc",
        "fpr_at_95_tpr", "aupr_success", "aupr_error"}`` as Python floats, each with the
        default options of its function (official definitions) and its NaN rule.
    """
    conf, corr = validate_scores(confidence, correct)
    return {
        "n": int(conf.shape[0]),
        "accuracy": accuracy(corr),
        "aurc_x1000": aurc(conf, corr, scale=1000.0),
        "e_aurc_x1000": e_aurc(conf, corr, scale=1000.0),
        "auroc": auroc(conf, corr),
        "fpr_at_95_tpr": fpr_at_95_tpr(conf, corr),
        "aupr_success": aupr_success(conf, corr),
        "aupr_error": aupr_error(conf, corr),
    }
