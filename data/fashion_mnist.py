"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package, with a fixed calibration split.

Splits:
    train  55,000 of the 60,000 training images: what the demo model is trained on.
    calib  the other 5,000 training images (500 per class, seed 0): never trained on; used to
           calibrate prototypes, lambda and accept thresholds.
    test   the official 10,000 test images: used only for reporting.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
CALIBRATION_PER_CLASS = 500
CALIBRATION_SEED = 0
SPLITS = ("train", "calib", "test")

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DatasetMissingError(FileNotFoundError):
    """The Fashion-MNIST files are not installed."""


@dataclass(frozen=True)
class LabelledImages:
    """Images (uint8, N x H x W or N x H x W x 3) with integer labels and class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    indices: np.ndarray  # index of each image in its source file, for traceability

    def __len__(self) -> int:
        return len(self.labels)


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """Return the folder holding the idx files, or raise with how to install them."""
    folder = Path(root) if root else DEFAULT_ROOT
    if not (folder / _FILES["train"][0]).exists():
        raise DatasetMissingError(
            f"Fashion-MNIST not found in {folder}: install it with "
            "`apt-get install dataset-fashion-mnist` or pass the folder holding the idx files"
        )
    return folder


def read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST container format) into a uint8 array."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte payload
        raise ValueError(f"{path}: not a uint8 IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({payload.size} bytes for shape {shape})")
    return payload.reshape(shape)


def calibration_indices(labels: np.ndarray, per_class: int = CALIBRATION_PER_CLASS,
                        seed: int = CALIBRATION_SEED) -> np.ndarray:
    """Indices of the held-out calibration images: `per_class` per class, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
              for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def load_split(split: str, root: str | os.PathLike | None = None) -> LabelledImages:
    """Load one split ('train', 'calib' or 'test') as uint8 28x28 grey images."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    folder = resolve_root(root)
    source = "test" if split == "test" else "train"
    images = read_idx(folder / _FILES[source][0])
    labels = read_idx(folder / _FILES[source][1]).astype(np.int64)
    indices = np.arange(len(labels))
    if source == "train":
        held_out = calibration_indices(labels)
        keep = np.isin(indices, held_out) if split == "calib" else ~np.isin(indices, held_out)
        indices = indices[keep]
    return LabelledImages(images[indices], labels[indices], CLASS_NAMES, indices)


def to_rgb(images: np.ndarray) -> np.ndarray:
    """Grey N x H x W uint8 -> N x H x W x 3 (a colour camera sees grey clothes)."""
    return np.repeat(images[..., None], 3, axis=-1) if images.ndim == 3 else images
