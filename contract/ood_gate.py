"""The out-of-distribution gate of a bundle: its graph's names and what bundle.json records of it.

A frame the model has never seen the like of (a street scene shown to a clothing classifier,
sensor noise, a covered lens) gets a confident label as easily as a familiar one. The gate
defers such frames with reason ``out_of_distribution`` *before* the trust threshold: a small
ONNX graph, ``ood_gate.onnx`` in the bundle, takes the frame as the image encoder gets it
(uint8 ``[batch, S, S, 3]``) and the encoder's embedding (float32 ``[batch, D]``) and returns a
typicality per frame (higher = more like the calibration frames); a frame passes iff its
typicality ``>= threshold``. Calibration sets the scales and the threshold on held-out
in-distribution images so that at most a fraction ``false_reject_rate`` of such frames is deferred
(:mod:`trustvlm.calibration.ood_gate` fits it, states the guarantee and builds the graph).

The typicality is ``-max_k(d_k / scale_k)`` over the gate's :data:`COMPONENTS`, where ``d_k`` is
the smallest squared Mahalanobis distance of the frame's features to a class mean (class means and
one shared covariance, fitted on labelled calibration images). ``scale_k`` is component ``k``'s own
split-conformal cut at ``false_reject_rate / m`` on the held-out images (``m`` components) and the
threshold is -1: a frame is deferred iff some distance exceeds its cut. Bundles calibrated before
that rule record ``scale_k`` = the median of ``d_k`` on the fit images and one threshold set on the
maximum; the format is the same, and they run as they were calibrated:

=============  ==============================================================================
component      features
=============  ==============================================================================
``embedding``  the L2-normalized image embedding (``D`` values)
``frame``      11 statistics of the pixels in [0, 1]: mean and standard deviation of each
               channel, mean ``|R - G|`` and ``|G - B|`` (colour), mean absolute horizontal and
               vertical difference of the grey image (sharpness), mean grey of the 2-pixel border;
               the standard deviations and sharpness as ``log(max(value, 1/255))``
=============  ==============================================================================

A bundle without a gate (``ood_gate`` null: written before the gate existed, or calibrated with
``--ood-gate off``) runs without one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from trustvlm.contract.files import check_record_keys, json_safe

__all__ = ["OOD_GATE_FILE", "GATE_PIXELS_INPUT", "GATE_EMBEDDING_INPUT", "GATE_OUTPUT", "COMPONENTS",
           "FRAME_FEATURES", "OodGateInfo"]

OOD_GATE_FILE = "ood_gate.onnx"
#: The gate's inputs: the image encoder's uint8 pixels and its embedding of them.
GATE_PIXELS_INPUT = "pixels"
GATE_EMBEDDING_INPUT = "embedding"
#: Its output, float32 ``[batch]``.
GATE_OUTPUT = "typicality"
#: The feature groups a gate may combine, in graph order.
COMPONENTS: tuple[str, ...] = ("embedding", "frame")
#: The ``frame`` component's features, in order.
FRAME_FEATURES: tuple[str, ...] = ("mean_r", "mean_g", "mean_b", "log_std_r", "log_std_g", "log_std_b",
                                   "abs_r_minus_g", "abs_g_minus_b", "log_sharpness_x", "log_sharpness_y",
                                   "border_mean")


@dataclass(frozen=True)
class OodGateInfo:
    """What bundle.json records of a bundle's out-of-distribution gate.

    Attributes:
        components: The feature groups combined (names in :data:`COMPONENTS`).
        threshold: A frame passes iff its typicality ``>= threshold`` (-1 with per-component cuts).
        false_reject_rate: The share of in-distribution frames the gate may defer at most (split equally
            between the components).
        fit_images: Labelled images the class means and covariances were fitted on.
        threshold_images: Other held-out images the threshold was set on.
        calibration_rejected: How many of those the gate defers (at most
            ``false_reject_rate * (threshold_images + 1)``).
        scales: Per component, the divisor of its distance: its conformal cut (older bundles: the median
            of its distance on the fit images).
    """

    components: tuple[str, ...]
    threshold: float
    false_reject_rate: float
    fit_images: int
    threshold_images: int
    calibration_rejected: int
    scales: tuple[float, ...]

    def __post_init__(self) -> None:
        unknown = [name for name in self.components if name not in COMPONENTS]
        if not self.components or unknown:
            raise ValueError(f"ood_gate components should be a non-empty subset of {COMPONENTS}, "
                             f"but got {self.components!r}")
        if not 0.0 < self.false_reject_rate < 1.0:
            raise ValueError(f"ood_gate false_reject_rate should be in (0, 1), but got {self.false_reject_rate!r}")
        if len(self.scales) != len(self.components):
            raise ValueError(f"ood_gate has {len(self.components)} components but {len(self.scales)} scales")

    def to_dict(self) -> dict:
        """JSON-safe dict; :meth:`from_dict` restores an equal object."""
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, data: dict) -> "OodGateInfo":
        """Inverse of :meth:`to_dict`; ValueError on missing or unknown keys."""
        check_record_keys(cls, data, "ood_gate")
        return cls(components=tuple(data["components"]), threshold=float(data["threshold"]),
                   false_reject_rate=float(data["false_reject_rate"]), fit_images=int(data["fit_images"]),
                   threshold_images=int(data["threshold_images"]),
                   calibration_rejected=int(data["calibration_rejected"]),
                   scales=tuple(float(s) for s in data["scales"]))

    def describe(self) -> str:
        """One line: what the gate checks and how strict it is."""
        return (f"out-of-distribution gate on {' + '.join(self.components)} (defers "
                f"{self.calibration_rejected}/{self.threshold_images} held-out calibration images, "
                f"target {100 * self.false_reject_rate:g}%)")
