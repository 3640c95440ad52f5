"""Labelled image pools that calibration draws its shots and held-out images from.

    fashion-mnist   the 5,000-image calibration split (never trained on, never the test split);
                    images are identified by their index in the training idx file.
    <folder>        an ImageFolder tree (one sub-folder per class); every image is read here,
                    so an unreadable file fails calibration at the start. Shots are identified
                    by relative path and file sha256.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustvlm.data.fashion_mnist import load_split, to_rgb
from trustvlm.data.image_folder import list_image_folder, read_rgb
from trustvlm.runtime.artifacts import sha256_file

FASHION_MNIST = "fashion-mnist"


@dataclass(frozen=True)
class LabelledPool:
    """Images with labels, and how to name each image in a bundle.

    Attributes:
        images: uint8 RGB images: an ``N x H x W x 3`` array, or a list when sizes differ.
        labels: ``N`` int64 labels in ``[0, C)``.
        class_names: The C class names, in label order.
        source: What the pool is (``fashion-mnist/calib`` or the folder path).
        ids: Per image, its index in the source file (Fashion-MNIST) or its path relative to
            the folder.
        root: The folder of an ImageFolder pool (None for Fashion-MNIST).
    """

    images: np.ndarray | list
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    ids: tuple
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> np.ndarray | list:
        """The images at `indices` (same container type as `images`)."""
        if isinstance(self.images, list):
            return [self.images[i] for i in indices]
        return self.images[indices]


def load_pool(data: str | os.PathLike) -> LabelledPool:
    """Load 'fashion-mnist' (its calibration split) or an ImageFolder tree.

    Raises:
        FileNotFoundError: If the dataset or folder is missing.
        ValueError: On a folder without class sub-folders or images.
        trustvlm.data.image_folder.UnreadableImageError: On an image OpenCV cannot decode.
    """
    if str(data) == FASHION_MNIST:
        calib = load_split("calib")
        return LabelledPool(to_rgb(calib.images), calib.labels, tuple(calib.class_names), "fashion-mnist/calib",
                            tuple(int(i) for i in calib.indices))
    root = Path(data)
    if root.suffix == ".json":
        raise ValueError(f"{root}: CoOp-style split files are not supported yet; pass '{FASHION_MNIST}' "
                         "or an image folder with one sub-folder per class")
    files, labels, names = list_image_folder(root)
    images = [read_rgb(path) for path in files]
    return LabelledPool(images, labels, names, str(root), tuple(str(p.relative_to(root)) for p in files), root)


def describe_shots(pool: LabelledPool, shot_indices: np.ndarray) -> dict:
    """How a bundle records its shots: source indices, or relative paths and file sha256s."""
    rows = np.asarray(shot_indices)
    if pool.root is None:
        return {"source": pool.source, "id": "index in train-images-idx3-ubyte",
                "indices": [[pool.ids[i] for i in row] for row in rows]}
    return {"source": pool.source, "id": "path relative to the folder",
            "files": [[pool.ids[i] for i in row] for row in rows],
            "sha256": [[sha256_file(pool.root / pool.ids[i]) for i in row] for row in rows]}
