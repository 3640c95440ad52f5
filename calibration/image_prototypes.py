"""Image prototypes: one normalized embedding per class from k labelled shots.

TrustVLM's image prototype of class c is the normalized mean of the embeddings of k labelled
images of c, encoded by the VLM's own image encoder (the exported ONNX graph, through the same
engine layer the runtime uses) or an auxiliary one. Two recipes
(``trustvlm.contract.bundle.PROTOTYPE_RECIPES``): ``unit-mean`` normalizes each shot first,
``raw-mean`` averages the raw embeddings and normalizes once, as the official code does for its
DINOv2 prototypes (:func:`default_recipe`: ``raw-mean`` for an auxiliary encoder, ``unit-mean``
for the VLM's own). Shots are drawn per class with a seeded
``rng.choice(..., replace=False)``, classes in label order, as the official few-shot sampling.

Use :func:`sample_shots` + :func:`prototypes_from_embeddings` when the embeddings are already
at hand (evaluation encodes every image once), :func:`build_image_prototypes` to go from images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from trustvlm.calibration.numerics import l2_normalize
from trustvlm.contract.bundle import PROTOTYPE_RECIPES, RAW_MEAN, UNIT_MEAN
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder
from trustvlm.runtime.decode.preprocess import PreprocessConfig, preprocess_batch

DEFAULT_SHOTS = 16
DEFAULT_SEED = 0


class EmbeddingError(ValueError):
    """The image encoder returned NaN or infinite embeddings."""


@dataclass(frozen=True)
class ImagePrototypes:
    """Prototypes and the shots they were built from.

    Attributes:
        prototypes: ``C x D`` float64, rows L2-normalized.
        shot_indices: ``C x k`` int64 positions of the shots in the pool they were drawn from
            (row c holds class c's shots, in drawing order).
        k: Shots per class.
        seed: Seed of the shot sampling.
    """

    prototypes: np.ndarray
    shot_indices: np.ndarray
    k: int
    seed: int


def sample_shots(labels: np.ndarray, num_classes: int, k: int = DEFAULT_SHOTS, seed: int = DEFAULT_SEED,
                 class_names: tuple[str, ...] | list[str] | None = None) -> np.ndarray:
    """Draw k shots per class without replacement, one seeded generator over classes 0..C-1.

    Args:
        labels: ``N`` integer labels in ``[0, num_classes)``.
        num_classes: Number of classes C.
        k: Shots per class, >= 1.
        seed: Seed of ``numpy.random.default_rng``.
        class_names: Names used in error messages (default: the class ids).

    Returns:
        ``C x k`` int64 indices into ``labels``.

    Raises:
        ValueError: If k < 1, or a class has fewer than k images (naming the class and count).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (shots per class) should be an integer >= 1, but got {k!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            name = class_names[c] if class_names is not None else str(c)
            raise ValueError(f"class {name!r} has {len(members)} image(s), fewer than k={k} shots; "
                             "lower k or add images of that class")
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.stack(chosen).astype(np.int64)


def remaining_indices(num_images: int, shot_indices: np.ndarray) -> np.ndarray:
    """Sorted indices of the images that are not shots (the held-out calibration images)."""
    keep = np.ones(num_images, dtype=bool)
    keep[np.asarray(shot_indices).reshape(-1)] = False
    return np.flatnonzero(keep)


def default_recipe(auxiliary: bool) -> str:
    """The official recipe (``raw-mean``) for an auxiliary encoder's prototypes, ``unit-mean`` for the VLM's."""
    return RAW_MEAN if auxiliary else UNIT_MEAN


def check_recipe(recipe: str) -> str:
    """`recipe` if it is one of PROTOTYPE_RECIPES, else ValueError."""
    if recipe not in PROTOTYPE_RECIPES:
        raise ValueError(f"prototype recipe should be one of {PROTOTYPE_RECIPES}, but got {recipe!r}")
    return recipe


def prototypes_from_embeddings(embeddings: np.ndarray, shot_indices: np.ndarray, recipe: str = UNIT_MEAN) -> np.ndarray:
    """Average the shot embeddings per class (normalized first with ``unit-mean``), normalize the means.

    Args:
        embeddings: ``N x D`` raw image embeddings (any float dtype).
        shot_indices: ``C x k`` rows of ``embeddings``, one row of shots per class.
        recipe: ``unit-mean`` (each shot normalized before averaging) or ``raw-mean``
            (raw embeddings averaged, the official code's recipe).

    Returns:
        ``C x D`` float64 prototypes with unit rows.

    Raises:
        ValueError: On NaN/inf or zero-norm embeddings, or a zero-norm class mean.
    """
    shots = np.asarray(shot_indices, dtype=np.int64)
    picked = np.asarray(embeddings, dtype=np.float64)[shots.reshape(-1)]
    if check_recipe(recipe) == UNIT_MEAN:
        picked = l2_normalize(picked, axis=1, name="shot embeddings")
    elif not np.all(np.isfinite(picked)):
        raise ValueError("shot embeddings hold NaN or inf")
    means = picked.reshape(shots.shape[0], shots.shape[1], -1).mean(axis=1)
    return l2_normalize(means, axis=1, name="class means of the shot embeddings")


def encode_images(engine: OnnxEncoder, images, config: PreprocessConfig, batch_size: int = 256,
                  ids: list[str] | None = None) -> np.ndarray:
    """Preprocess RGB images as the manifest says and encode them; float64 ``N x D``.

    Args:
        engine: The exported image encoder.
        images: uint8 RGB images (an ``N x H x W x 3`` array or a list of differently sized ones).
        config: The manifest's preprocessing.
        batch_size: Images per engine call (preprocessing is done batch by batch too).
        ids: Names of the images for error messages (default: their positions).

    Returns:
        Raw (unnormalized) embeddings as float64.

    Raises:
        EmbeddingError: If any embedding holds NaN or inf.
    """
    chunks = []
    with tqdm(total=len(images), desc=f"encode {engine.path.name}", unit="img", leave=False, disable=None) as bar:
        for start in range(0, len(images), batch_size):
            pixels = preprocess_batch(images[start:start + batch_size], config)
            chunks.append(engine.encode(pixels))
            bar.update(len(pixels))
    if not chunks:
        raise ValueError("no images to encode")
    embeddings = np.concatenate(chunks).astype(np.float64)
    bad = np.flatnonzero(~np.all(np.isfinite(embeddings), axis=1))
    if len(bad):
        first = ids[bad[0]] if ids is not None else f"#{bad[0]}"
        raise EmbeddingError(f"the image encoder {engine.path.name} returned NaN/inf embeddings for "
                             f"{len(bad)} of {len(embeddings)} images (first: {first}); "
                             "check the export (`make export`) and the input images")
    return embeddings


def build_image_prototypes(engine: OnnxEncoder, images, labels: np.ndarray, num_classes: int,
                           config: PreprocessConfig, k: int = DEFAULT_SHOTS, seed: int = DEFAULT_SEED,
                           class_names: tuple[str, ...] | None = None) -> ImagePrototypes:
    """Sample k shots per class from `images`, encode only the shots, build the prototypes.

    Args:
        engine: The VLM's exported image encoder.
        images: The pool of uint8 RGB images to draw shots from.
        labels: ``N`` integer labels of the pool.
        num_classes: Number of classes C.
        config: The manifest's preprocessing.
        k: Shots per class.
        seed: Seed of the shot sampling.
        class_names: Names used in error messages.

    Returns:
        The :class:`ImagePrototypes` (``shot_indices`` index the pool).

    Raises:
        ValueError: If a class has fewer than k images.
        EmbeddingError: If the encoder returns NaN/inf.
    """
    shots = sample_shots(labels, num_classes, k, seed, class_names)
    flat = shots.reshape(-1)
    picked = [images[i] for i in flat] if isinstance(images, list) else np.asarray(images)[flat]
    embeddings = encode_images(engine, picked, config, ids=[f"pool image {i}" for i in flat])
    local = np.arange(len(flat)).reshape(shots.shape)
    return ImagePrototypes(prototypes_from_embeddings(embeddings, local), shots, int(k), int(seed))
