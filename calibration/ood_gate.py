"""Fitting the out-of-distribution gate (the format is :mod:`trustvlm.contract.ood_gate`).

The gate scores how typical a frame is of the calibration images, from the image embedding and
from cheap statistics of the frame itself, and defers frames below a threshold set at a chosen
false-reject rate on held-out in-distribution images. This module holds the float64 reference
(:func:`frame_features`, :meth:`OodGate.typicality`), the fit (:func:`fit_ood_gate`) and the
threshold rule; :mod:`trustvlm.calibration.ood_gate_graph` builds the ONNX graph the runtime runs.

Fit (per component): features ``x`` of labelled images; class means ``mu_c`` and one shared
covariance ``S`` of ``x - mu_label`` (linear discriminant style, as in class-conditional
Mahalanobis OOD detection, Lee et al. 2018) plus a ridge; a frame's distance is
``min_c (x - mu_c)^T S^-1 (x - mu_c)``. The ridge of the ``frame`` component is one grey level
squared per feature (a statistic that never moved in calibration may move by a grey level without
the frame being atypical); the ``embedding``
component's is 1e-6 of the mean variance (numerical only). The frame's spreads (standard
deviations, sharpness) enter as logarithms (:func:`log_spread`): measured on the demo camera, this
is what tells a uniform dark frame from a dark photograph of a small object.

Threshold (split conformal per component, Bonferroni): with ``m`` components and ``n`` held-out
images not used in the fit, each component ``k`` gets its own conformal cut at the rate ``rate / m``:
``s_k`` is the ``j``-th largest of its raw distances ``d_k`` on those images,
``j = floor(rate / m * (n + 1))``. The distances are divided by their cuts, and a frame is deferred
iff ``max_k d_k / s_k > 1`` (typicality ``-max_k d_k / s_k`` below the threshold ``-1``). Equivalently,
with each component's split-conformal p-value ``p_k = (1 + #{i : d_k,i >= d_k}) / (n + 1)`` (the
frame's rank among the held-out distances ``d_k,i``), the frame is deferred iff ``min_k p_k <= rate / m``.

Guarantee: for a fresh frame exchangeable with the ``n`` held-out images (same camera, same classes,
drawn the same way; the fit images play no part), component ``k`` alone defers it with probability
at most ``j / (n + 1)`` (its distance must rank among the ``j`` largest of ``n + 1``), so by the
union bound ``P(defer) <= sum_k floor(rate / m * (n + 1)) / (n + 1) <= rate``. The union bound is
met only when no frame is deferred by two components; the more they defer the same frames, the
further the real rate lies below ``rate`` (never below ``(j - 1) / (n + 1)``, what one component
alone defers, without ties). The probability is over the held-out images and the frame together: for
one draw of the held-out images the rate may be above ``rate``. No component loosens another:
whatever a component would defer alone at ``rate / m``, the gate defers. With one component this is
the single-component conformal rule: defer iff the typicality is below the ``j``-th smallest
held-out typicality, ``j = floor(rate * (n + 1))``. With ``n + 1 < m / rate`` no such cut exists and
the gate cannot be set.

(Before, every distance was divided by its median on the fit images and one threshold was set on the
maximum at ``rate``: the component with the heavier tail then set the threshold for all; on the demo
camera the frame statistics put it at 7.4 to 9.1 medians, where the embedding distance's own 0.5% cut
is at 4.4 to 5.0 (RELIABILITY.md). Bundles written that way record those scales and threshold and
still run exactly so.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from trustvlm.calibration.numerics import l2_normalize
from trustvlm.contract.ood_gate import COMPONENTS, OodGateInfo
from trustvlm.runtime.decode.preprocess import PreprocessConfig, preprocess_batch

__all__ = ["DEFAULT_FALSE_REJECT_RATE", "DEFAULT_COMPONENTS", "GREY_LEVEL", "BORDER_PX", "GaussianComponent",
           "OodGate", "log_spread", "border_mask", "frame_features", "image_frame_features", "fit_component",
           "conformal_threshold", "component_cut", "min_threshold_images", "fit_ood_gate", "GATE_MODES",
           "check_gate_args", "gate_threshold_count", "gate_rows", "fit_calibration_gate"]

DEFAULT_FALSE_REJECT_RATE = 0.01
DEFAULT_COMPONENTS: tuple[str, ...] = ("embedding", "frame")
#: One grey level on the [0, 1] pixel scale: the ridge of the frame statistics' covariance.
GREY_LEVEL = 1.0 / 255.0
#: Width of the border whose mean grey is a frame feature.
BORDER_PX = 2
_EMBEDDING_RIDGE = 1e-6


def log_spread(values: np.ndarray) -> np.ndarray:
    """``log(max(values, GREY_LEVEL))``: spreads (standard deviations, sharpness) on a log scale, floored at one grey
    level, so a frame without any spread (uniform, a covered lens) is as atypical as one with far too much."""
    return np.log(np.maximum(values, GREY_LEVEL))


def frame_features(pixels: np.ndarray) -> np.ndarray:
    """The ``frame`` component's statistics (``FRAME_FEATURES``) of uint8 ``N x S x S x 3`` frames, float64."""
    x = np.asarray(pixels, dtype=np.float64) / 255.0
    if x.ndim != 4 or x.shape[3] != 3 or min(x.shape[1:3]) <= 2 * BORDER_PX:
        raise ValueError(f"expected uint8 N x S x S x 3 frames with S > {2 * BORDER_PX}, got {np.shape(pixels)}")
    mean = x.mean(axis=(1, 2))
    std = np.sqrt(((x - mean[:, None, None, :]) ** 2).mean(axis=(1, 2)))
    colour = np.stack([np.abs(x[..., 0] - x[..., 1]).mean(axis=(1, 2)),
                       np.abs(x[..., 1] - x[..., 2]).mean(axis=(1, 2))], axis=1)
    grey = x.mean(axis=3)
    sharp = np.stack([np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2)),
                      np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2))], axis=1)
    mask = border_mask(grey.shape[1], grey.shape[2])
    border = (grey * mask).sum(axis=(1, 2)) / mask.sum()
    return np.concatenate([mean, log_spread(std), colour, log_spread(sharp), border[:, None]], axis=1)


def border_mask(height: int, width: int) -> np.ndarray:
    """1.0 on the ``BORDER_PX``-wide border of an image, 0.0 inside."""
    mask = np.ones((height, width))
    mask[BORDER_PX:height - BORDER_PX, BORDER_PX:width - BORDER_PX] = 0.0
    return mask


def image_frame_features(images, config: PreprocessConfig, batch_size: int = 512) -> np.ndarray:
    """:func:`frame_features` of RGB images after the encoder's resize and crop (in batches, with progress)."""
    chunks = []
    with tqdm(total=len(images), desc="frame statistics", unit="img", leave=False, disable=None) as bar:
        for start in range(0, len(images), batch_size):
            chunks.append(frame_features(preprocess_batch(images[start:start + batch_size], config)))
            bar.update(len(chunks[-1]))
    return np.concatenate(chunks)


@dataclass(frozen=True)
class GaussianComponent:
    """Class means and a shared covariance of one feature group, as a whitening.

    ``distance(x) = min_c || (x - center) @ whitening - means[c] ||^2 / scale``: the squared
    Mahalanobis distance to the nearest class mean in units of ``scale`` (:func:`fit_component` sets
    its median on the fit images; :func:`fit_ood_gate` replaces it by the component's conformal cut).
    """

    name: str
    center: np.ndarray
    whitening: np.ndarray
    means: np.ndarray
    scale: float

    def raw_distance(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, dtype=np.float64) - self.center) @ self.whitening
        return ((z[:, None, :] - self.means[None]) ** 2).sum(axis=2).min(axis=1)

    def distance(self, features: np.ndarray) -> np.ndarray:
        return self.raw_distance(features) / self.scale


def fit_component(name: str, features: np.ndarray, labels: np.ndarray, ridge: float | None = None) -> GaussianComponent:
    """Class means and a shared (within-class) covariance of `features`, plus `ridge` on the diagonal.

    Args:
        name: The component's name (in ``COMPONENTS``).
        features: ``N x F`` features of labelled in-distribution images.
        labels: ``N`` class labels (every class present needs one image; a class of one adds nothing
            to the covariance).
        ridge: Added to the covariance's diagonal (None: 1e-6 of its mean variance).

    Raises:
        ValueError: Too few images, or features that are not finite.
    """
    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or len(x) < 2 or len(labels) != len(x) or not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: need N >= 2 finite feature rows with one label each, got {x.shape} "
                         f"and {labels.shape} labels")
    classes = np.unique(labels)
    center = x.mean(axis=0)
    class_means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    within = x - class_means[np.searchsorted(classes, labels)]
    cov = within.T @ within / len(x)
    cov += np.eye(len(cov)) * (_EMBEDDING_RIDGE * np.trace(cov) / len(cov) if ridge is None else ridge)
    # cov^-1 = L L^T with L the Cholesky factor of the precision: ||(x - c) L||^2 is the Mahalanobis distance.
    whitening = np.linalg.cholesky(np.linalg.inv(cov))
    component = GaussianComponent(name, center, whitening, (class_means - center) @ whitening, 1.0)
    scale = float(np.median(component.raw_distance(x)))
    return GaussianComponent(name, center, whitening, component.means, scale if scale > 0 else 1.0)


def conformal_threshold(typicality: np.ndarray, rate: float) -> tuple[float, int]:
    """(threshold, images it defers) at false-reject `rate` (module docstring); -inf, 0 when it cannot be set."""
    values = np.sort(np.asarray(typicality, dtype=np.float64))
    k = int(np.floor(rate * (len(values) + 1)))
    if k < 1:
        return float("-inf"), 0
    threshold = float(values[k - 1])
    return threshold, int(np.sum(values < threshold))


def component_cut(raw_distances: np.ndarray, rate: float, components: int) -> float:
    """One component's conformal cut: the ``floor(rate / m * (n + 1))``-th largest of its `raw_distances` on the
    ``n`` held-out images (module docstring), floored at float32's smallest normal number so the graph can divide
    by it; ValueError when the held-out images are too few for ``rate / components``."""
    threshold, _ = conformal_threshold(-np.asarray(raw_distances, dtype=np.float64), rate / components)
    if threshold == float("-inf"):
        raise ValueError(f"{len(raw_distances)} held-out images cannot set a {100 * rate / components:g}% cut")
    return max(-threshold, float(np.finfo(np.float32).tiny))


def min_threshold_images(rate: float, components: int = 1) -> int:
    """The fewest held-out images ``n`` that can set `rate` split between `components`: ``floor(rate / m * (n + 1))
    >= 1``, as :func:`conformal_threshold` computes it (about ``m / rate - 1``)."""
    n = max(int(np.ceil(components / rate)) - 1, 1)
    while int(np.floor(rate / components * (n + 1))) < 1:
        n += 1
    while n > 1 and int(np.floor(rate / components * n)) >= 1:
        n -= 1
    return n


@dataclass(frozen=True)
class OodGate:
    """A fitted gate: its components (in ``COMPONENTS`` order) and what the bundle records of it."""

    components: tuple[GaussianComponent, ...]
    info: OodGateInfo

    def raw_distances(self, embeddings: np.ndarray | None, frames: np.ndarray | None) -> np.ndarray:
        """``N x K`` squared Mahalanobis distances per component (not divided by the scales), from raw embeddings
        and frame statistics."""
        inputs = {"embedding": embeddings, "frame": frames}
        columns = []
        for component in self.components:
            x = inputs[component.name]
            if component.name == "embedding":
                x = l2_normalize(np.asarray(x, dtype=np.float64), axis=1, name="image embeddings")
            columns.append(component.raw_distance(x))
        return np.stack(columns, axis=1)

    def distances(self, embeddings: np.ndarray | None, frames: np.ndarray | None) -> np.ndarray:
        """``N x K`` normalized distances per component (each divided by its scale)."""
        return self.raw_distances(embeddings, frames) / np.array([c.scale for c in self.components])

    def typicality(self, embeddings: np.ndarray | None, frames: np.ndarray | None) -> np.ndarray:
        """Float64 reference of the graph's ``typicality``: ``-max_k`` of the normalized distances."""
        return -self.distances(embeddings, frames).max(axis=1)


def fit_ood_gate(embeddings: np.ndarray, frames: np.ndarray, labels: np.ndarray, fit_rows: np.ndarray,
                 threshold_rows: np.ndarray, rate: float = DEFAULT_FALSE_REJECT_RATE,
                 components: tuple[str, ...] = DEFAULT_COMPONENTS) -> OodGate:
    """Fit the gate on `fit_rows` and set its per-component cuts on the disjoint `threshold_rows` (module docstring).

    Args:
        embeddings: ``N x D`` raw image embeddings of the labelled in-distribution images.
        frames: ``N x 11`` :func:`frame_features` of the same images.
        labels: ``N`` labels.
        fit_rows: Rows the means and covariances are fitted on.
        threshold_rows: Other rows the cuts are set on.
        rate: Target false-reject rate, in (0, 1), split equally between the components.
        components: Which feature groups to combine (a subset of ``COMPONENTS``).

    Returns:
        The gate: each component's ``scale`` is its cut, the threshold -1 (defer iff some distance exceeds its cut).

    Raises:
        ValueError: A bad rate or component, overlapping rows, or too few threshold images to
            reach ``rate / m`` (fewer than ``m / rate - 1``).
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"the out-of-distribution false-reject rate should be in (0, 1), but got {rate!r}")
    if not components or any(name not in COMPONENTS for name in components):
        raise ValueError(f"out-of-distribution gate components should be a subset of {COMPONENTS}, "
                         f"but got {components!r}")
    if np.intersect1d(fit_rows, threshold_rows).size:
        raise ValueError("the gate's fit and threshold images must be disjoint")
    ordered = tuple(name for name in COMPONENTS if name in components)
    needed = min_threshold_images(rate, len(ordered))
    if len(threshold_rows) < needed:
        raise ValueError(f"{len(threshold_rows)} held-out images cannot set a {100 * rate:g}% false-reject rate over "
                         f"{len(ordered)} gate component(s) (need at least {needed}): add images, raise the rate, or "
                         "switch the out-of-distribution gate off")
    fitted = []
    for name in ordered:
        if name == "embedding":
            x = l2_normalize(np.asarray(embeddings, dtype=np.float64), axis=1, name="image embeddings")
            fitted.append(fit_component(name, x[fit_rows], labels[fit_rows]))
        else:
            fitted.append(fit_component(name, frames[fit_rows], labels[fit_rows], ridge=GREY_LEVEL ** 2))
    medians = OodGate(tuple(fitted), OodGateInfo(ordered, 0.0, rate, len(fit_rows), len(threshold_rows), 0,
                                                 tuple(c.scale for c in fitted)))
    held_out = medians.raw_distances(embeddings[threshold_rows], frames[threshold_rows])
    cut = tuple(replace(c, scale=component_cut(held_out[:, i], rate, len(fitted))) for i, c in enumerate(fitted))
    draft = OodGate(cut, replace(medians.info, threshold=-1.0, scales=tuple(c.scale for c in cut)))
    rejected = int(np.sum(draft.typicality(embeddings[threshold_rows], frames[threshold_rows]) < -1.0))
    return replace(draft, info=replace(draft.info, calibration_rejected=rejected))


#: ``--ood-gate`` modes: ``auto`` fits a gate when the held-out images can set the rate, ``on`` insists, ``off`` not.
GATE_MODES = ("auto", "on", "off")


def check_gate_args(mode: str, rate: float) -> None:
    """Raise ValueError for a mode not in :data:`GATE_MODES` or a rate outside (0, 1) (checked before any work)."""
    if mode not in GATE_MODES:
        raise ValueError(f"the out-of-distribution gate mode should be one of {GATE_MODES}, but got {mode!r}")
    if mode != "off" and not 0.0 < rate < 1.0:
        raise ValueError(f"the out-of-distribution false-reject rate should be in (0, 1), but got {rate!r}")


def fit_calibration_gate(mode: str, rate: float, embeddings: np.ndarray, images, config: PreprocessConfig,
                         labels: np.ndarray, shots: np.ndarray, rest: np.ndarray,
                         seed: int, components: tuple[str, ...] = DEFAULT_COMPONENTS) -> tuple[OodGate | None, str]:
    """The gate of a calibration run, fitted on the shots + one seeded half of `rest`, set on the other half.

    Args:
        mode: A name in :data:`GATE_MODES`.
        rate: Target false-reject rate.
        embeddings: ``N x D`` raw embeddings of the pool's images.
        images: The pool's RGB images.
        config: The image encoder's preprocessing (the gate sees frames as the encoder does).
        labels: ``N`` labels.
        shots: Rows of the shots; rest: the held-out rows.
        seed: Seed of the halves (a split of its own, apart from the lambda / threshold halves).
        components: Which feature groups to combine.

    Returns:
        (the gate or None, a note for the user: empty, or why there is no gate).

    Raises:
        ValueError: An unknown mode or bad rate; with ``on``, too few held-out images.
    """
    check_gate_args(mode, rate)
    if mode == "off":
        return None, "out-of-distribution gate off"
    fit_rows, threshold_rows = gate_rows(shots, rest, seed)
    needed = min_threshold_images(rate, len(set(components)))
    if len(threshold_rows) < needed and mode == "auto":
        return None, (f"no out-of-distribution gate: {len(threshold_rows)} held-out images cannot set a "
                      f"{100 * rate:g}% false-reject rate over {len(set(components))} gate component(s) (need "
                      f"{needed}; add images or raise --ood-false-reject-rate)")
    frames = image_frame_features(images, config)
    return fit_ood_gate(embeddings, frames, labels, fit_rows, threshold_rows, rate, components), ""


def gate_threshold_count(held_out: int) -> int:
    """How many of `held_out` images :func:`gate_rows` gives the gate's threshold (the larger half)."""
    return held_out - held_out // 2


def gate_rows(shots: np.ndarray, rest: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, threshold rows) of :func:`fit_calibration_gate`: the shots + one seeded half of `rest`, the other
    half (sorted, :func:`gate_threshold_count` rows)."""
    order = np.random.default_rng([seed, 2]).permutation(np.asarray(rest))
    split = len(order) - gate_threshold_count(len(order))
    fit_part, threshold_part = order[:split], order[split:]  # fit on the shots too
    return np.sort(np.concatenate([np.asarray(shots).reshape(-1), fit_part])), np.sort(threshold_part)
