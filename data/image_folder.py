"""Labelled image folders: one sub-folder per class (the ImageFolder layout).

    my_data/
        forklift/   0001.jpg 0002.png ...
        pallet/     ...

Class names are the sub-folder names (underscores read as spaces), in sorted order. Sub-folders whose name
starts with ``_`` are not classes and are skipped (a recording's ``_unscored``, :mod:`trustvlm.runtime.record`).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from trustvlm.data.fashion_mnist import LabelledImages

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class UnreadableImageError(ValueError):
    """An image file that OpenCV cannot decode."""


def list_image_folder(root: str | os.PathLike) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Return (files, labels, class_names) of an ImageFolder tree without reading pixels."""
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("_"))
    if len(class_dirs) < 2:
        raise ValueError(f"{folder}: expected one sub-folder per class (at least 2), found {len(class_dirs)}")
    files, labels = [], []
    for class_id, class_dir in enumerate(class_dirs):
        class_files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not class_files:
            raise ValueError(f"{class_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        files += class_files
        labels += [class_id] * len(class_files)
    names = tuple(d.name.replace("_", " ") for d in class_dirs)
    return files, np.asarray(labels, dtype=np.int64), names


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read one image file as uint8 H x W x 3 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UnreadableImageError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_image_folder(root: str | os.PathLike, size: int | None = None) -> LabelledImages:
    """Read a whole ImageFolder tree into memory, optionally resized to size x size (for training)."""
    files, labels, names = list_image_folder(root)
    images = []
    for path in files:
        rgb = read_rgb(path)
        if size is not None:
            rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        images.append(rgb)
    stacked = np.stack(images) if size is not None else np.asarray(images, dtype=object)
    return LabelledImages(stacked, labels, names, np.arange(len(labels)))
