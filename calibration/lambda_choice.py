"""The choice of TrustVLM's lambda (and TrustVLM*'s temperature) by calibration AURC.

TrustVLM scores ``MSP + lambda * cos(f, P[pred])``; :func:`choose_lambda` picks lambda from a
grid by AURC on calibration data, :func:`choose_lambda_temperature` does the same for TrustVLM*
over (lambda, temperature). Both always evaluate lambda = 0 (plain MSP) and break ties towards
the smaller lambda, so the choice is never worse than MSP in calibration AURC. Use data
disjoint from the split the threshold is selected on, or at least from the test split.

The scores themselves are those of :mod:`trustvlm.calibration.scores` (float64).
"""

from __future__ import annotations

import math

import numpy as np

from trustvlm.calibration.metrics import AURC_SCALE, auroc
from trustvlm.calibration.ranking import aurc_fraction, validate_scores
from trustvlm.calibration.scores import trustvlm_confidence, trustvlm_star

__all__ = ["choose_lambda", "choose_lambda_temperature", "trustvlm_star_scores"]

#: AURC values closer than this (relative) count as a tie in the lambda choice.
_AURC_TIE_RTOL = 1e-12


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
        score = trustvlm_confidence(msp_a, sim_a, lam)
        a = AURC_SCALE * aurc_fraction(score, corr)
        table.append({"lambda": lam, "aurc_x1000": a, "auroc": auroc(score, corr)})
        if best_lam is None or _is_better(a, best_aurc):
            best_lam, best_aurc = lam, a
    return best_lam, table


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
    confidence, pred = trustvlm_star(p, sim, np.argmax(p, axis=1), lam, temperature)
    return pred, confidence


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
            a = AURC_SCALE * aurc_fraction(conf, corr)
            table.append(
                {"lambda": lam, "temperature": t, "aurc_x1000": a, "accuracy": float(np.mean(corr))}
            )
            if best is None or _is_better(a, best[2]):
                best = (lam, t, a)
    return best[0], best[1], table
