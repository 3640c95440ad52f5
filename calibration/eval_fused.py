"""The evaluation rows of the fused scores and of ``--score auto``, as calibration would build them.

On each dataset the fused models are fitted on the lambda half of the held-out calibration images, and
``auto`` chooses among MSP, TrustVLM, TrustVLM* and the fused scores there
(:func:`trustvlm.calibration.score_choice.choose_score`); their thresholds are selected on the threshold
half, and everything is measured on the test split like the other rows.
"""

from __future__ import annotations

import numpy as np

from trustvlm.calibration.calibrate import LAMBDA_GRID, TEMPERATURE_GRID
from trustvlm.calibration.fused_score import fused_confidence
from trustvlm.calibration.score_choice import ScoreChoice, choose_score, logits_and_similarities
from trustvlm.calibration.scores import compute_scores

__all__ = ["FUSED_METHODS", "FUSED_STAR_PREDICTIONS", "evaluate_fused"]

#: (key, table label) of the rows added here, in table order.
FUSED_METHODS: tuple[tuple[str, str], ...] = (
    ("fused", "Fused (logistic on the lambda half)"),
    ("fused_star", "Fused* (logistic, TrustVLM* prediction)"),
    ("auto", "auto (score chosen on the lambda half)"),
)
#: Per-sample prediction keys of the rows whose prediction is not the VLM's own.
FUSED_STAR_PREDICTIONS = {"fused_star": "pred_fused_star", "auto": "pred_auto"}


def _scored(choice: ScoreChoice, score: str, embeddings: np.ndarray, text: np.ndarray, image: np.ndarray,
            logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, prediction)`` of `score` with the choice's fused models, lambda and T."""
    if score in choice.fused:
        logits, sims = logits_and_similarities(embeddings, text, image, logit_scale)
        return fused_confidence(choice.fused[score], logits, sims)
    scores = compute_scores(embeddings, text, image, logit_scale, choice.lam, choice.temperature)
    return getattr(scores, score), scores.prediction_for(score)


def evaluate_fused(calib: np.ndarray, calib_labels: np.ndarray, test: np.ndarray, text: np.ndarray,
                   image: np.ndarray, logit_scale: float, lambda_part: np.ndarray, threshold_part: np.ndarray,
                   alpha: float, delta: float, seed: int) -> dict:
    """The rows of :data:`FUSED_METHODS` on one dataset.

    Returns:
        ``{"scored": {key: (test confidence, test prediction)}, "calib_scored": {key: (threshold-half
        confidence, prediction)}, "grids": {key: lambda-half confidence (the LTT grid)},
        "per_sample": {...}, "info": {"auto_choice": ...}}``.
    """
    logits, sims = logits_and_similarities(calib[lambda_part], text, image, logit_scale)
    choice = choose_score(logits, sims, calib_labels[lambda_part], alpha, delta, LAMBDA_GRID, TEMPERATURE_GRID,
                          seed)
    scored, calib_scored, grids = {}, {}, {}
    for key, score in (("fused", "fused"), ("fused_star", "fused_star"), ("auto", choice.score)):
        scored[key] = _scored(choice, score, test, text, image, logit_scale)
        calib_scored[key] = _scored(choice, score, calib[threshold_part], text, image, logit_scale)
        grids[key] = _scored(choice, score, calib[lambda_part], text, image, logit_scale)[0]
    chosen = {"score": choice.score, "label": choice.label, "lambda": choice.lam, "temperature": choice.temperature}
    return {"scored": scored, "calib_scored": calib_scored, "grids": grids,
            "per_sample": {"pred_fused_star": scored["fused_star"][1], "pred_auto": scored["auto"][1]},
            "info": {"auto_choice": chosen, "auto_table": choice.table}}
