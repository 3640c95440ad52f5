"""Ranking samples by confidence: validated (confidence, correct) pairs, tie blocks, raw AURC.

The shared ground of :mod:`trustvlm.calibration.metrics` and the threshold and lambda choices.
"""

from __future__ import annotations

import numpy as np

__all__ = ["validate_scores", "tie_blocks", "aurc_fraction"]


def validate_scores(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """Checks and converts a (confidence, correct) pair.

    Args:
        confidence: 1-D array-like of scores, higher = more confident. NaN is rejected;
            +-inf is allowed.
        correct: 1-D array-like of the same length; bool, or numbers equal to 0 or 1.

    Returns:
        ``(confidence as float64, correct as bool)``, both 1-D (fresh arrays).

    Raises:
        ValueError: on NaN confidence, non-binary ``correct``, wrong shapes or lengths.
    """
    try:
        conf = np.array(confidence, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"confidence must be numeric, got {type(confidence).__name__}") from exc
    if conf.ndim != 1:
        raise ValueError(f"confidence must be 1-D, got shape {conf.shape}")
    nan_mask = np.isnan(conf)
    if nan_mask.any():
        first = int(np.flatnonzero(nan_mask)[0])
        raise ValueError(
            f"confidence contains {int(nan_mask.sum())} NaN value(s) (first at index {first}); "
            "every prediction needs a numeric confidence score"
        )

    corr_raw = np.asarray(correct)
    if corr_raw.ndim != 1:
        raise ValueError(f"correct must be 1-D, got shape {corr_raw.shape}")
    if corr_raw.dtype == np.bool_:
        corr = corr_raw.copy()
    else:
        try:
            corr_f = corr_raw.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"correct must hold 0/1 or booleans, got dtype {corr_raw.dtype}") from exc
        bad = ~((corr_f == 0.0) | (corr_f == 1.0))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"correct must hold only 0/1 or booleans, got {corr_raw[first]!r} at index {first}"
            )
        corr = corr_f == 1.0
    if conf.shape[0] != corr.shape[0]:
        raise ValueError(
            f"confidence and correct must have the same length, got {conf.shape[0]} and {corr.shape[0]}"
        )
    return conf, corr


def tie_blocks(conf: np.ndarray, positive: np.ndarray):
    """Sorts by decreasing score and groups equal scores into blocks.

    Returns:
        ``(thresholds, counts, tps)``: for each block b in decreasing score order, its
        score, the number of samples with score >= it, and how many of those are positive
        (float64 cumulative counts, like scikit-learn's ``_binary_clf_curve``).
    """
    order = np.argsort(-conf, kind="mergesort")
    s = conf[order]
    pos = positive[order].astype(np.float64)
    # s[1:] != s[:-1] (not np.diff) so that runs of +inf or -inf stay one block.
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.shape[0] - 1]
    tps = np.cumsum(pos)[ends]
    counts = (ends + 1).astype(np.float64)
    return s[ends], counts, tps


def aurc_fraction(conf: np.ndarray, corr: np.ndarray) -> float:
    """Unscaled AURC; ties averaged over their orders (see :mod:`trustvlm.calibration.metrics`)."""
    n = conf.shape[0]
    _, counts, tps = tie_blocks(conf, corr)
    cum_err = counts - tps  # errors accepted once block b is in
    sizes = np.diff(np.r_[0.0, counts])
    block_err = np.diff(np.r_[0.0, cum_err])
    err_before = cum_err - block_err
    start = counts - sizes  # samples accepted before block b
    block_of = np.repeat(np.arange(sizes.shape[0]), sizes.astype(np.int64))
    k = np.arange(1, n + 1, dtype=np.float64)  # position in the ranking, 1-based
    within = k - start[block_of]  # 1..size inside the block
    expected_err = err_before[block_of] + within * (block_err[block_of] / sizes[block_of])
    return float(np.sum(expected_err / k) / n)
