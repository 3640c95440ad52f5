"""The trust head's input and output names, and the table of scores a bundle can threshold on.

The trust head (built by calibration, run by the runtime) takes image embeddings and returns,
per image, the zero-shot prediction and the TrustVLM scores. Both sides use the names below;
neither spells them out again.

Each :class:`ScoreSpec` of :data:`SCORES` says which head output carries the score and which
head output carries the prediction it rates: the VLM's own zero-shot prediction (``pred``) or
TrustVLM*'s corrected one (``pred_star``). Adding a score means a new entry here, its float64
reference in ``trustvlm.calibration.scores`` and its outputs in the head builder.

Fitted scores (``fitted=True``: the fused scores of :mod:`trustvlm.contract.fused`) have parameters
learnt on calibration images; their outputs (:data:`FUSED_OUTPUTS`) follow :data:`HEAD_OUTPUTS` in
heads built with those parameters, and heads without them (older bundles) lack them.
:data:`AUTO_SCORE` is not a score but the request to choose one on calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HEAD_INPUT", "AUX_HEAD_INPUT", "TEXT_PROTOTYPES_INPUT", "IMAGE_PROTOTYPES_INPUT", "VLM_PREDICTION",
           "STAR_PREDICTION", "HEAD_OUTPUTS", "FLOAT_OUTPUTS", "FUSED_OUTPUTS", "ScoreSpec", "SCORES", "DEFAULT_SCORE",
           "AUTO_SCORE", "score_spec"]

#: The image embedding input, float32 ``[batch, D]``.
HEAD_INPUT = "embedding"
#: The auxiliary image encoder's embedding input, float32 ``[batch, D_aux]`` (heads of bundles whose
#: image prototypes come from an auxiliary encoder).
AUX_HEAD_INPUT = "aux_embedding"
#: Prototype inputs of a head built with the prototypes as inputs instead of constants.
TEXT_PROTOTYPES_INPUT = "text_prototypes"
IMAGE_PROTOTYPES_INPUT = "image_prototypes"

#: The VLM's zero-shot prediction ``argmax(logits)``.
VLM_PREDICTION = "pred"
#: TrustVLM*'s prediction ``argmax(softmax(logits) + lam * softmax(f @ P.T / T))``.
STAR_PREDICTION = "pred_star"
#: The trust head's outputs, in graph order.
HEAD_OUTPUTS: tuple[str, ...] = (VLM_PREDICTION, "kappa", "msp", "s_ii", STAR_PREDICTION, "kappa_star",
                                 "topk_ids", "topk_probs")
#: The float outputs (the others are int64 class indices).
FLOAT_OUTPUTS: tuple[str, ...] = ("kappa", "msp", "s_ii", "kappa_star", "topk_probs")
#: The fitted scores' outputs (float32 ``[batch]``), after ``HEAD_OUTPUTS`` in a head that has them.
FUSED_OUTPUTS: tuple[str, ...] = ("fused", "fused_star")


@dataclass(frozen=True)
class ScoreSpec:
    """One score a bundle's accept threshold can apply to.

    Attributes:
        name: The score's name (``bundle.json``'s ``score``, ``trustvlm calibrate --score``).
        output: The trust head output that carries it (float32 ``[batch]``).
        prediction: The trust head output of the prediction it rates (int64 ``[batch]``):
            ``VLM_PREDICTION`` or ``STAR_PREDICTION``.
        title: How reports name it.
        fitted: Whether its parameters are fitted on calibration images (a fused score: the bundle
            records them, and its output is one of ``FUSED_OUTPUTS``).
    """

    name: str
    output: str
    prediction: str
    title: str
    fitted: bool = False

    def __post_init__(self) -> None:
        outputs = HEAD_OUTPUTS + FUSED_OUTPUTS
        for field_name in ("output", "prediction"):
            value = getattr(self, field_name)
            if value not in outputs:
                raise ValueError(f"score {self.name}: {field_name} should be a trust head output "
                                 f"{outputs}, but got {value!r}")


#: Every score a bundle can threshold on, by name (higher = more confident).
SCORES: dict[str, ScoreSpec] = {spec.name: spec for spec in (
    ScoreSpec("trustvlm", "kappa", VLM_PREDICTION, "TrustVLM"),
    ScoreSpec("trustvlm_star", "kappa_star", STAR_PREDICTION, "TrustVLM*"),
    ScoreSpec("fused", "fused", VLM_PREDICTION, "Fused (logistic)", fitted=True),
    ScoreSpec("fused_star", "fused_star", STAR_PREDICTION, "Fused* (logistic, TrustVLM* prediction)", fitted=True),
)}
#: The score of a bundle that does not say otherwise.
DEFAULT_SCORE = "trustvlm"
#: ``trustvlm calibrate --score auto``: choose the score on calibration data (its default).
AUTO_SCORE = "auto"


def score_spec(name: str) -> ScoreSpec:
    """The table entry of `name`.

    Raises:
        ValueError: For a name not in :data:`SCORES`, listing the known ones.
    """
    spec = SCORES.get(name)
    if spec is None:
        raise ValueError(f"score should be one of {tuple(SCORES)}, but got {name!r}")
    return spec
