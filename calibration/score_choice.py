"""``--score auto``: the score, lambda and T chosen on the lambda half by the coverage they can guarantee.

Candidates, all scored on the lambda half of the held-out calibration images only:

* MSP (TrustVLM at lambda = 0) and TrustVLM for every lambda of the grid;
* TrustVLM* for every (lambda > 0, T) of the grids (its prediction, so correctness, moves with them);
* ``fused`` and ``fused_star`` (:mod:`fused_score`; ``fused_star`` with TrustVLM*'s (lambda, T) of the
  lowest AURC), scored out of fold so that a fitted score is not judged on the images it was fitted on.

Each is ranked by what the user asked for: the calibration coverage of the threshold the selection
procedure (:func:`trustvlm.calibration.threshold_selection.select_threshold`) finds at (alpha, delta)
on these images (0 when it finds none); ties go to the lower AURC, then to the earlier candidate
(simpler scores first). The accept threshold is then selected afresh on the threshold half, which took
no part in the choice, so its guarantee holds for the chosen score as for a fixed one. The fused
models a bundle records are fitted on the whole lambda half.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trustvlm.calibration.fused_score import cross_fitted_confidence, fit_fused_model
from trustvlm.calibration.lambda_choice import choose_lambda, choose_lambda_temperature, trustvlm_star_scores
from trustvlm.calibration.metrics import AURC_SCALE
from trustvlm.calibration.numerics import l2_normalize, softmax
from trustvlm.calibration.ranking import aurc_fraction
from trustvlm.calibration.scores import DEFAULT_TEMPERATURE, trustvlm_confidence
from trustvlm.calibration.threshold_selection import select_threshold
from trustvlm.contract.fused import FusedModel

__all__ = ["CRITERION", "ScoreChoice", "logits_and_similarities", "fit_fused_models", "choose_score"]

CRITERION = ("largest calibration coverage of the guaranteed threshold (select_threshold at alpha, delta) on "
             "the lambda half; ties: lower AURC, then the earlier candidate")


@dataclass(frozen=True)
class ScoreChoice:
    """The chosen score with the lambda and T of the trust head, and how it was chosen.

    Attributes:
        score: A name of ``trustvlm.contract.scores.SCORES`` (MSP is ``trustvlm`` at lambda 0).
        lam: Lambda of the trust head.
        temperature: T of the trust head.
        label: How the table names the winner (``msp``, ``trustvlm``, ...).
        table: One row per candidate (score, label, lambda, T, coverage, feasible, AURC x1000, accuracy).
        fused: The fused models fitted on the whole lambda half, by score name.
    """

    score: str
    lam: float
    temperature: float
    label: str
    table: list = field(default_factory=list)
    fused: dict[str, FusedModel] = field(default_factory=dict)

    def record(self) -> dict:
        """What a bundle records of the choice (``BundleInfo.score_choice``)."""
        return {"method": "auto", "criterion": CRITERION,
                "chosen": {"score": self.score, "label": self.label, "lambda": self.lam,
                           "temperature": self.temperature},
                "table": self.table}


def logits_and_similarities(embeddings: np.ndarray, text: np.ndarray, image: np.ndarray, logit_scale: float,
                            aux_embeddings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scaled VLM logits and image-prototype cosines, ``N x C`` each (float64)."""
    f = l2_normalize(embeddings, axis=1, name="image embeddings")
    g = f if aux_embeddings is None else l2_normalize(aux_embeddings, axis=1, name="auxiliary image embeddings")
    return logit_scale * f @ l2_normalize(text, axis=1).T, g @ l2_normalize(image, axis=1).T


def fit_fused_models(logits: np.ndarray, sims: np.ndarray, labels: np.ndarray, lambdas, temperatures
                     ) -> tuple[dict[str, FusedModel], tuple[float, float]]:
    """Both fused models on these images; ``fused_star`` with TrustVLM*'s (lambda, T) of the lowest AURC.

    Returns:
        ``({name: model}, (lambda, T) of fused_star)``.
    """
    lam, temperature, _ = choose_lambda_temperature(softmax(logits, axis=1), sims, labels, lambdas, temperatures)
    return ({"fused": fit_fused_model("fused", logits, sims, labels),
             "fused_star": fit_fused_model("fused_star", logits, sims, labels, lam, temperature)}, (lam, temperature))


def _row(score: str, label: str, lam: float, temperature: float, confidence: np.ndarray, correct: np.ndarray,
         alpha: float, delta: float) -> dict:
    threshold = select_threshold(confidence, correct, alpha, delta)
    return {"score": score, "label": label, "lambda": float(lam), "temperature": float(temperature),
            "coverage": float(threshold.coverage) if threshold.feasible else 0.0, "feasible": bool(threshold.feasible),
            "aurc_x1000": AURC_SCALE * aurc_fraction(np.asarray(confidence, np.float64), np.asarray(correct, bool)),
            "accuracy": float(np.mean(correct))}


def choose_score(logits: np.ndarray, sims: np.ndarray, labels: np.ndarray, alpha: float, delta: float,
                 lambdas, temperatures, seed: int = 0) -> ScoreChoice:
    """The candidate of the module docstring with the largest guaranteed coverage on these images.

    Args:
        logits: ``N x C`` scaled VLM logits of the lambda half.
        sims: ``N x C`` image-prototype cosines of the same images.
        labels: ``N`` true classes.
        alpha: Target risk among accepted images.
        delta: Allowed probability that the risk exceeds alpha.
        lambdas: Lambda grid (0 is added: MSP).
        temperatures: TrustVLM*'s temperature grid.
        seed: Seed of the folds of the fused scores' out-of-fold scoring.

    Returns:
        The :class:`ScoreChoice`.
    """
    labels = np.asarray(labels)
    probs = softmax(logits, axis=1)
    pred = np.argmax(logits, axis=1)
    msp, s_ii = np.max(probs, axis=1), np.take_along_axis(sims, pred[:, None], axis=1)[:, 0]
    correct = pred == labels
    rows = []
    for lam in sorted(set(map(float, lambdas)) | {0.0}):
        rows.append(_row("trustvlm", "msp" if lam == 0 else "trustvlm", lam, DEFAULT_TEMPERATURE,
                         trustvlm_confidence(msp, s_ii, lam), correct, alpha, delta))
    for lam in sorted(set(map(float, lambdas)) - {0.0}):
        for temperature in sorted(set(map(float, temperatures))):
            star_pred, confidence = trustvlm_star_scores(probs, sims, lam, temperature)
            rows.append(_row("trustvlm_star", "trustvlm_star", lam, temperature, confidence, star_pred == labels,
                             alpha, delta))
    fused, (star_lam, star_t) = fit_fused_models(logits, sims, labels, lambdas, temperatures)
    tv_lam, _ = choose_lambda(msp, s_ii, correct, lambdas)  # the head's kappa when a fused score wins
    for name, (lam, temperature) in (("fused", (tv_lam, DEFAULT_TEMPERATURE)), ("fused_star", (star_lam, star_t))):
        model = fused[name]
        confidence, rated = cross_fitted_confidence(name, logits, sims, labels, model.lam, model.temperature,
                                                    seed=seed)
        rows.append(_row(name, name, lam, temperature, confidence, rated == labels, alpha, delta))
    best = min(range(len(rows)), key=lambda i: (-rows[i]["coverage"], rows[i]["aurc_x1000"], i))
    for i, row in enumerate(rows):
        row["chosen"] = i == best
    winner = rows[best]
    return ScoreChoice(winner["score"], winner["lambda"], winner["temperature"], winner["label"], rows, fused)
