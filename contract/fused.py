"""The fused scores' fitted parameters, as a bundle records them (and the trust head computes them).

A fused score is a small regularised logistic model over a handful of per-image signals of the trust head,
fitted on held-out calibration images to predict whether the prediction it rates is right. Its value is
the model's log-odds of being right (higher = more confident)::

    fused = intercept + sum_i coef[i] * (x[i] - mean[i]) / scale[i]

The features of each fused score, in this order (``p = softmax(logits)``, ``sims[c] = cos(f, P[c])``,
``proto_pred = argmax sims``; for ``fused_star``, ``q = p + lam * softmax(sims / temperature)`` and
``pred_star = argmax q`` with the model's own ``lam`` and ``temperature``):

==============  ======================================================================================
fused           ``msp``, ``s_ii = sims[pred]``, ``max_logit``, ``neg_entropy = sum p log p``,
                ``agree_proto = [pred == proto_pred]``
fused_star      ``q_max = max q``, ``s_star = sims[pred_star]``, ``p_star = p[pred_star]``,
                ``max_logit``, ``neg_entropy``, ``agree_vlm = [pred_star == pred]``,
                ``agree_proto = [pred_star == proto_pred]``
==============  ======================================================================================

The float64 reference and the fit are in ``trustvlm.calibration.fused_score``; the ONNX graph in
``trustvlm.calibration.trust_head``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from trustvlm.contract.files import check_record_keys

__all__ = ["FUSED_FEATURES", "FusedModel"]

#: The features of each fused score, in the order of its coefficients.
FUSED_FEATURES: dict[str, tuple[str, ...]] = {
    "fused": ("msp", "s_ii", "max_logit", "neg_entropy", "agree_proto"),
    "fused_star": ("q_max", "s_star", "p_star", "max_logit", "neg_entropy", "agree_vlm", "agree_proto"),
}


@dataclass(frozen=True)
class FusedModel:
    """A fitted fused score (see the module docstring).

    Attributes:
        score: Which fused score, a key of :data:`FUSED_FEATURES`.
        features: Its feature names (those of :data:`FUSED_FEATURES`).
        mean: Per feature, the mean it is centred by (on the fitting images).
        scale: Per feature, the spread it is divided by (its standard deviation there, 1 where that is 0).
        coef: Per feature, the weight of the standardized feature.
        intercept: The log-odds at the mean features.
        lam: Weight lambda of TrustVLM*'s prototype term in its features (``fused_star``; 0 otherwise).
        temperature: Temperature of TrustVLM*'s prototype softmax in its features.
        l2: Weight of the L2 penalty ``l2 / 2 * |coef|^2`` the model was fitted with.
        n_fit: How many images it was fitted on.
    """

    score: str
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    lam: float
    temperature: float
    l2: float
    n_fit: int

    def __post_init__(self) -> None:
        expected = FUSED_FEATURES.get(self.score)
        if expected is None:
            raise ValueError(f"fused score should be one of {tuple(FUSED_FEATURES)}, but got {self.score!r}")
        if tuple(self.features) != expected:
            raise ValueError(f"{self.score}: features should be {expected}, but got {tuple(self.features)}")
        for name in ("mean", "scale", "coef"):
            values = getattr(self, name)
            if len(values) != len(expected) or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{self.score}: {name} should be {len(expected)} finite numbers, but got {values!r}")
        if not all(v > 0 for v in self.scale):
            raise ValueError(f"{self.score}: scale should be > 0, but got {self.scale!r}")
        scalars = (self.intercept, self.lam, self.temperature, self.l2)
        if not all(math.isfinite(v) for v in scalars) or self.temperature <= 0 or self.lam < 0 or self.l2 < 0:
            raise ValueError(f"{self.score}: intercept, lam >= 0, temperature > 0 and l2 >= 0 should be finite, "
                             f"but got {scalars!r}")

    def to_dict(self) -> dict:
        """JSON-safe dict; :meth:`from_dict` restores an equal object."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("features", "mean", "scale", "coef"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "FusedModel":
        """Inverse of :meth:`to_dict`; ValueError on missing or unknown keys or bad values."""
        check_record_keys(cls, data, "fused model")
        return cls(score=str(data["score"]), features=tuple(map(str, data["features"])),
                   mean=tuple(map(float, data["mean"])), scale=tuple(map(float, data["scale"])),
                   coef=tuple(map(float, data["coef"])), intercept=float(data["intercept"]),
                   lam=float(data["lam"]), temperature=float(data["temperature"]), l2=float(data["l2"]),
                   n_fit=int(data["n_fit"]))
