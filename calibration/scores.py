"""Reference confidence scores for zero-shot VLM predictions (float64 numpy).

This module is the numerical reference for TrustVLM (arXiv 2505.23745) and the
baseline scores it is compared with. Every score follows one convention:
**higher means more confident**. A CLIP-style model predicts zero-shot from
L2-normalized text prototypes ``T`` (``C x D``)::

    logits = s * normalize(f) @ T.T        # s: the model's learned logit scale
    pred   = argmax(logits)

Image prototypes ``P`` (``C x D``) are the normalized means of a few normalized
shot embeddings per class. With ``p = softmax(logits)``:

==============  ===========================================================
name            confidence
==============  ===========================================================
msp             ``max p``
max_logit       ``max logits``
energy          ``logsumexp(logits)`` (the *negative* free energy at T=1)
neg_entropy     ``sum p * log p`` (minus the entropy)
doctor          ``sum p**2`` (DOCTOR's Gini term; see below)
s_ii            ``cos(f, P[pred])`` (image-prototype similarity alone)
trustvlm        ``msp + lam * cos(f, P[pred])``
trustvlm_star   ``max q + lam * cos(f, P[pred_star])`` with
                ``q = p + lam * softmax(normalize(f) @ P.T / temperature)``
                and ``pred_star = argmax q``
==============  ===========================================================

With an auxiliary image encoder (TrustVLM's DINOv2 option), ``P`` is built from
that encoder's embeddings (``C x D_aux``) and every ``cos(f, P[.])`` above uses
the sample's auxiliary embedding ``g`` instead of ``f``: pass it as
``aux_embeddings`` to :func:`compute_scores`. Logits and ``pred`` still come
from the VLM.

DOCTOR (Granese et al., 2021) rejects when ``g / (1 - g)`` exceeds a threshold,
with ``g = 1 - sum p**2``. Both ``g`` and its odds rise as confidence falls, and
both are monotone in ``sum p**2``, so ``doctor = sum p**2`` ranks samples
identically while keeping the "higher = more confident" convention.

Everything is computed in float64. In float32, ``softmax`` at a logit scale of
100 rounds MSP to exactly 1.0 once the top-2 logit gap exceeds about 17
(a cosine gap of 0.17), so distinct samples tie. float64 pushes that limit to
a gap of about 37; beyond it MSP ties even in float64, while ``max_logit``,
``energy`` and the TrustVLM scores (through the cosine term) still separate
samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

from trustvlm.calibration.fused_score import fused_confidence
from trustvlm.calibration.numerics import (as_float64, check_finite, check_scalar, l2_normalize, log_softmax,
                                           logsumexp, softmax)
from trustvlm.contract.scores import SCORES, VLM_PREDICTION

__all__ = [
    "SCORE_NAMES",
    "DEFAULT_TEMPERATURE",
    "NamedScore",
    "TrustScores",
    "SCORE_FUNCTIONS",
    "FITTED_SCORE_FUNCTIONS",
    "trustvlm_confidence",
    "trustvlm",
    "trustvlm_star",
    "check_prototypes",
    "check_prototype_shapes",
    "compute_scores",
]

#: Ordered score names used by evaluation tables (each: higher = more confident); the fitted scores
#: of the table need their fitted parameters and are computed by ``FITTED_SCORE_FUNCTIONS`` instead.
SCORE_NAMES: tuple[str, ...] = (
    "msp",
    "max_logit",
    "energy",
    "neg_entropy",
    "doctor",
    "s_ii",
    *(name for name, spec in SCORES.items() if not spec.fitted),
)

#: Temperature of the image-prototype softmax in TrustVLM* (paper default).
DEFAULT_TEMPERATURE = 0.01


class NamedScore(NamedTuple):
    """A confidence score with the prediction it rates."""

    confidence: np.ndarray
    pred: np.ndarray


@dataclass(frozen=True)
class TrustScores:
    """Per-sample predictions and confidence scores (float64; higher = more confident).

    Attributes:
        pred: Zero-shot prediction ``argmax(logits)``, int64 ``[B]``.
        msp: Maximum softmax probability.
        max_logit: Largest scaled logit.
        energy: ``logsumexp(logits)``, the negative free energy.
        neg_entropy: ``sum p log p`` (minus the softmax entropy).
        doctor: ``sum p**2`` (DOCTOR's Gini term, flipped to higher = confident).
        s_ii: ``cos(f, P[pred])``, image-prototype similarity of the prediction.
        trustvlm: ``msp + lam * s_ii``.
        pred_star: TrustVLM* prediction ``argmax(p + lam * p_proto)``, int64.
        trustvlm_star: ``max(p + lam * p_proto) + lam * cos(f, P[pred_star])``.
        proto_pred: The image-prototype classifier's own ``argmax(f @ P.T)``, int64.
        proto_sim: Same values as ``s_ii`` (image-prototype similarity alone).
    """

    pred: np.ndarray
    msp: np.ndarray
    max_logit: np.ndarray
    energy: np.ndarray
    neg_entropy: np.ndarray
    doctor: np.ndarray
    s_ii: np.ndarray
    trustvlm: np.ndarray
    pred_star: np.ndarray
    trustvlm_star: np.ndarray
    proto_pred: np.ndarray
    proto_sim: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        """Returns every field as ``{field_name: array}`` (predictions included)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def prediction_for(self, score_name: str) -> np.ndarray:
        """Returns the prediction that ``score_name`` rates (``pred`` or ``pred_star``).

        A score of the bundle score table rates the prediction its ``ScoreSpec`` names; the
        baselines rate the VLM's own prediction.

        Raises:
            KeyError: If ``score_name`` is not in ``SCORE_NAMES``.
        """
        if score_name not in SCORE_NAMES:
            raise KeyError(f"unknown score {score_name!r}; expected one of {list(SCORE_NAMES)}")
        spec = SCORES.get(score_name)
        return getattr(self, VLM_PREDICTION if spec is None else spec.prediction)

    def named(self) -> dict[str, NamedScore]:
        """Returns ``{score_name: NamedScore(confidence, pred)}`` in ``SCORE_NAMES`` order.

        ``trustvlm_star`` goes with ``pred_star``; every other score with ``pred``.
        """
        return {n: NamedScore(getattr(self, n), self.prediction_for(n)) for n in SCORE_NAMES}


def _check_matrix(x: object, name: str) -> np.ndarray:
    """Returns ``x`` as a 2-D float64 array with at least one column."""
    arr = as_float64(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {arr.ndim}-D array of shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have embedding size >= 1, got shape {arr.shape}")
    return arr


def check_prototypes(text_prototypes: object, image_prototypes: object, *,
                     same_dim: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validates prototype shapes and returns them L2-normalized in float64.

    Args:
        text_prototypes: ``C x D`` text prototypes.
        image_prototypes: ``C x D`` image prototypes (``C x D_aux`` when they come from an
            auxiliary image encoder and ``same_dim`` is False).
        same_dim: Whether both must have the same embedding size.

    Returns:
        ``(text, image)`` float64, rows L2-normalized.

    Raises:
        ValueError: On non-2-D input, zero classes, mismatched class counts or
            embedding sizes, NaN/inf, or zero-norm rows.
    """
    t = _check_matrix(text_prototypes, "text_prototypes")
    p = _check_matrix(image_prototypes, "image_prototypes")
    check_prototype_shapes(t.shape, p.shape, same_dim=same_dim)
    return (
        l2_normalize(t, axis=1, name="text_prototypes"),
        l2_normalize(p, axis=1, name="image_prototypes"),
    )


def check_prototype_shapes(text_shape: tuple[int, ...], image_shape: tuple[int, ...], *,
                           same_dim: bool = True) -> tuple[int, int]:
    """Checks that text and image prototype shapes agree; returns ``(C, D)``.

    Args:
        text_shape: Shape of the text prototypes, expected ``(C, D)``.
        image_shape: Shape of the image prototypes, expected ``(C, D)``, or ``(C, D_aux)``
            when ``same_dim`` is False (prototypes of an auxiliary image encoder).
        same_dim: Whether both must have the same embedding size.

    Returns:
        The class count ``C`` and the text embedding size ``D``.

    Raises:
        ValueError: On non-2-D shapes, ``C == 0``, ``D == 0`` or a mismatch.
    """
    t, p = tuple(text_shape), tuple(image_shape)
    for name, shape in (("text_prototypes", t), ("image_prototypes", p)):
        if len(shape) != 2:
            raise ValueError(f"{name} must be 2-D (C x D), got shape {shape}")
        if shape[1] == 0:
            raise ValueError(f"{name} must have embedding size >= 1, got shape {shape}")
    if t[0] == 0:
        raise ValueError(f"text_prototypes must have at least 1 class, got shape {t}")
    if t[0] != p[0]:
        raise ValueError(
            f"class count mismatch: text_prototypes has {t[0]} classes, "
            f"image_prototypes has {p[0]}; expected the same C"
        )
    if same_dim and t[1] != p[1]:
        raise ValueError(
            f"embedding size mismatch: text_prototypes has D={t[1]}, "
            f"image_prototypes has D={p[1]}; expected the same D"
        )
    return int(t[0]), int(t[1])


def _check_aux(aux_embeddings: object, batch: int, aux_dim: int) -> np.ndarray:
    """Returns the auxiliary embeddings L2-normalized, after checking them against the batch and prototypes."""
    g = _check_matrix(aux_embeddings, "aux_embeddings")
    if g.shape[0] != batch:
        raise ValueError(f"aux_embeddings has {g.shape[0]} rows, expected {batch} (one per image embedding)")
    if g.shape[1] != aux_dim:
        raise ValueError(f"embedding size mismatch: aux_embeddings has D={g.shape[1]}, expected D={aux_dim} "
                         "(the image prototypes' embedding size)")
    return l2_normalize(g, axis=1, name="aux_embeddings")


def _take_rows(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Returns ``values[i, idx[i]]`` for every row ``i``."""
    return np.take_along_axis(values, idx[:, None], axis=1)[:, 0]


def trustvlm_confidence(msp: np.ndarray, s_ii: np.ndarray, lam: float) -> np.ndarray:
    """The TrustVLM confidence ``msp + lam * s_ii`` from its two terms."""
    return msp + lam * s_ii


def trustvlm(probs: np.ndarray, sims: np.ndarray, pred: np.ndarray, lam: float, temperature: float) -> NamedScore:
    """TrustVLM: ``max p + lam * cos(f, P[pred])``, rating the VLM's prediction ``pred``.

    Args:
        probs: ``B x C`` VLM class probabilities ``softmax(logits)``.
        sims: ``B x C`` cosines of each image to each class's image prototype.
        pred: ``B`` VLM predictions ``argmax(logits)``.
        lam: Weight ``lambda`` >= 0 of the image-prototype term.
        temperature: Unused (TrustVLM has no prototype softmax); kept so every score
            function has one signature.
    """
    return NamedScore(trustvlm_confidence(np.max(probs, axis=1), _take_rows(sims, pred), lam), pred)


def trustvlm_star(probs: np.ndarray, sims: np.ndarray, pred: np.ndarray, lam: float,
                  temperature: float) -> NamedScore:
    """TrustVLM*: ``q = p + lam * softmax(sims / T)``, ``pred_star = argmax q``, confidence
    ``max q + lam * cos(f, P[pred_star])`` (the official ``--use_trustvlm_v2`` path).

    Ties in ``argmax q`` go to the lowest class index. Arguments as :func:`trustvlm`; ``pred``
    is unused (TrustVLM* makes its own prediction) and ``temperature`` must be > 0.
    """
    q = probs + lam * softmax(sims / temperature, axis=1)
    pred_star = np.argmax(q, axis=1).astype(np.int64)
    return NamedScore(np.max(q, axis=1) + lam * _take_rows(sims, pred_star), pred_star)


#: The float64 reference of every score in ``trustvlm.contract.scores.SCORES``, by name.
SCORE_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, float, float], NamedScore]] = {
    "trustvlm": trustvlm,
    "trustvlm_star": trustvlm_star,
}

#: The float64 reference of every fitted score of ``SCORES`` (``fitted=True``), by name: called with its
#: :class:`~trustvlm.contract.fused.FusedModel`, the ``N x C`` logits and image-prototype cosines, it
#: returns ``(confidence, pred)``.
FITTED_SCORE_FUNCTIONS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "fused": fused_confidence,
    "fused_star": fused_confidence,
}


def compute_scores(
    image_embeddings: np.ndarray,
    text_prototypes: np.ndarray,
    image_prototypes: np.ndarray,
    logit_scale: float,
    lam: float = 1.0,
    temperature: float = DEFAULT_TEMPERATURE,
    aux_embeddings: np.ndarray | None = None,
) -> TrustScores:
    """Computes predictions and all confidence scores in float64.

    Embeddings and both prototype sets are L2-normalized here (a no-op up to
    rounding for inputs that already are). Ties in ``argmax`` go to the lowest
    class index, as in ONNX ``ArgMax``.

    Args:
        image_embeddings: ``B x D`` image embeddings (need not be normalized).
        text_prototypes: ``C x D`` text prototypes.
        image_prototypes: ``C x D`` image prototypes.
        logit_scale: The multiplicative scale ``s`` (about 100 for CLIP), i.e.
            ``exp`` of the stored ``logit_scale`` parameter; must be > 0.
        lam: Weight ``lambda`` of the image-prototype terms; must be >= 0.
        temperature: Temperature of the image-prototype softmax in TrustVLM*;
            must be > 0.
        aux_embeddings: ``B x D_aux`` embeddings of the same images from the
            auxiliary image encoder that built ``image_prototypes``
            (``C x D_aux``); the image-prototype cosines use them. None: the
            prototypes are in the VLM's space and use ``image_embeddings``.

    Returns:
        The ``TrustScores`` of the batch.

    Raises:
        ValueError: On shape mismatches (naming the sizes found and expected),
            NaN/inf inputs, zero-norm vectors or out-of-range scalars.
    """
    text, proto = check_prototypes(text_prototypes, image_prototypes, same_dim=aux_embeddings is None)
    f = _check_matrix(image_embeddings, "image_embeddings")
    if f.shape[1] != text.shape[1]:
        raise ValueError(
            f"embedding size mismatch: image_embeddings has D={f.shape[1]}, "
            f"expected D={text.shape[1]} (the prototypes' embedding size)"
        )
    g = None if aux_embeddings is None else _check_aux(aux_embeddings, f.shape[0], proto.shape[1])
    s = check_scalar(logit_scale, "logit_scale", positive=True)
    lam = check_scalar(lam, "lam")
    temp = check_scalar(temperature, "temperature", positive=True)
    f = l2_normalize(f, axis=1, name="image_embeddings")

    logits = s * (f @ text.T)
    sims = (f if g is None else g) @ proto.T  # cosines to the image prototypes, B x C
    check_finite(logits, "logits (logit_scale too large?)")

    p = softmax(logits, axis=1)
    logp = log_softmax(logits, axis=1)  # finite where p underflows to 0
    pred = np.argmax(logits, axis=1).astype(np.int64)
    s_ii = _take_rows(sims, pred)
    values = {
        "pred": pred,
        "msp": np.max(p, axis=1),
        "max_logit": np.max(logits, axis=1),
        "energy": logsumexp(logits, axis=1),
        "neg_entropy": np.sum(p * logp, axis=1),
        "doctor": np.sum(p * p, axis=1),
        "s_ii": s_ii,
        "proto_pred": np.argmax(sims, axis=1).astype(np.int64),
        "proto_sim": s_ii.copy(),
    }
    for name, spec in SCORES.items():
        if spec.fitted:
            continue
        confidence, rated = SCORE_FUNCTIONS[name](p, sims, pred, lam, temp)
        values[name] = confidence
        values.setdefault(spec.prediction, rated)
    return TrustScores(**values)
