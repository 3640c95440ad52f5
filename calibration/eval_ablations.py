"""Ablations of the evaluation on the clean data: shots per class (k) over shot seeds, and lambda.

Both take a dataset's embeddings as :class:`trustvlm.calibration.evaluate.DatasetEmbeddings`
(shots drawn with its ``draw_shots``, so a split file's shots still come from its "train" rows)
and score the test images with the paper rows' lambda and T.
"""

from __future__ import annotations

import numpy as np

from trustvlm.calibration.calibrate import LAMBDA_GRID, PAPER_LAMBDA
from trustvlm.calibration.image_prototypes import prototypes_from_embeddings
from trustvlm.calibration.metrics import evaluate_selective
from trustvlm.calibration.scores import DEFAULT_TEMPERATURE, compute_scores
from trustvlm.contract.bundle import UNIT_MEAN

ABLATION_SHOTS = (1, 2, 4, 8, 16)
ABLATION_SEEDS = 5


def _mean_std(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "values": [float(v) for v in array]}


def ablate_shots(data, text: np.ndarray, logit_scale: float, seed: int,
                 shots: tuple[int, ...] = ABLATION_SHOTS, n_seeds: int = ABLATION_SEEDS, lam: float = PAPER_LAMBDA,
                 temperature: float = DEFAULT_TEMPERATURE, recipe: str = UNIT_MEAN) -> list[dict]:
    """Per k: prototype-classifier accuracy, TrustVLM and TrustVLM* metrics over `n_seeds` shot seeds.

    Values of k above the smallest class's number of shot candidates are left out.
    """
    candidates = np.arange(len(data.calib_labels)) if data.shot_pool is None else data.shot_pool
    fewest = int(np.bincount(data.calib_labels[candidates], minlength=text.shape[0]).min())
    rows = []
    for k in (k for k in shots if k <= fewest):
        runs = {"proto_acc": [], "trustvlm_aurc": [], "trustvlm_auroc": [], "trustvlm_fpr95": [],
                "star_acc": [], "star_aurc": []}
        for shot_seed in range(seed, seed + n_seeds):
            image = prototypes_from_embeddings(data.calib, data.draw_shots(text.shape[0], k, shot_seed), recipe)
            s = compute_scores(data.test, text, image, logit_scale, lam, temperature)
            tv = evaluate_selective(s.trustvlm, s.pred == data.test_labels)
            star = evaluate_selective(s.trustvlm_star, s.pred_star == data.test_labels)
            runs["proto_acc"].append(float(np.mean(s.proto_pred == data.test_labels)))
            runs["trustvlm_aurc"].append(tv["aurc_x1000"])
            runs["trustvlm_auroc"].append(tv["auroc"])
            runs["trustvlm_fpr95"].append(tv["fpr_at_95_tpr"])
            runs["star_acc"].append(star["accuracy"])
            runs["star_aurc"].append(star["aurc_x1000"])
        rows.append({"k": int(k), "seeds": list(range(seed, seed + n_seeds)),
                     **{name: _mean_std(values) for name, values in runs.items()}})
    return rows


def ablate_lambda(data, text: np.ndarray, logit_scale: float, k: int, seed: int,
                  lambdas: tuple[float, ...] = LAMBDA_GRID, temperature: float = DEFAULT_TEMPERATURE,
                  recipe: str = UNIT_MEAN) -> list[dict]:
    """Per lambda (k shots, one seed): TrustVLM metrics and TrustVLM*'s accuracy and AURC on test."""
    image = prototypes_from_embeddings(data.calib, data.draw_shots(text.shape[0], k, seed), recipe)
    rows = []
    for lam in lambdas:
        s = compute_scores(data.test, text, image, logit_scale, lam, temperature)
        tv = evaluate_selective(s.trustvlm, s.pred == data.test_labels)
        star = evaluate_selective(s.trustvlm_star, s.pred_star == data.test_labels)
        rows.append({"lambda": float(lam), "trustvlm_aurc": tv["aurc_x1000"], "trustvlm_auroc": tv["auroc"],
                     "trustvlm_fpr95": tv["fpr_at_95_tpr"], "star_acc": star["accuracy"],
                     "star_aurc": star["aurc_x1000"]})
    return rows
