"""Real test data on disk: Fashion-MNIST calibration images saved as PNGs, listed by a CoOp split file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import require_fashion_mnist
from trustvlm.data.fashion_mnist import load_split

SPLITS = ("train", "val", "test")


def write_fmnist_split(root: Path, per_class: dict[str, int], classes: int = 10) -> tuple[Path, Path, dict]:
    """Save the first images of each class of the calibration split as PNGs under ``root/images``.

    Args:
        root: Folder to write into.
        per_class: Images per class in each split, e.g. ``{"train": 4, "val": 4, "test": 2}``.
        classes: How many of the ten classes to use (labels 0..classes-1).

    Returns:
        ``(split file, image root, the split dict written)``; rows are ``[relpath, label, name]``.
    """
    require_fashion_mnist()
    calib = load_split("calib")
    image_root = root / "images"
    splits = {name: [] for name in SPLITS}
    for label in range(classes):
        name = calib.class_names[label]
        folder = name.replace("/", "_").replace(" ", "_")
        members = np.flatnonzero(calib.labels == label)
        start = 0
        for split in SPLITS:
            for index in members[start:start + per_class.get(split, 0)]:
                relpath = f"{folder}/{int(calib.indices[index])}.png"
                (image_root / folder).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(image_root / relpath), calib.images[index])
                splits[split].append([relpath, label, name])
            start += per_class.get(split, 0)
    split_file = root / "split_zhou_fmnist.json"
    split_file.write_text(json.dumps(splits))
    return split_file, image_root, splits
