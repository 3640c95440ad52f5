"""A camera's calibration set: the Fashion-MNIST calibration split through a degraded camera, on disk.

The images go through :func:`trustvlm.pipelines.captures.degrade`, the very function the source applies to
each streamed frame, and are saved as PNGs with a CoOp split file that ``trustvlm calibrate --data
<split.json> --image-root <images>`` reads: ``k`` seeded shots per class in "train" (the image
prototypes), the rest in "val" (lambda and the guaranteed-risk threshold).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from trustvlm.calibration.shifts import SHIFTS
from trustvlm.data.fashion_mnist import load_split
from trustvlm.pipelines.captures import degrade

#: Seeds of the calibration images' camera noise start here, apart from the stream's (seed = seq, from 0).
CALIBRATION_SEED_OFFSET = 1_000_000


@dataclass(frozen=True)
class CalibrationSet:
    """A camera's calibration images on disk, as a CoOp split file."""

    split_file: Path
    image_root: Path
    shots: int
    held_out: int


def write_camera_calibration_set(out: Path, shift: str, shots_per_class: int, seed: int = 0,
                                 held_out_limit: int | None = None) -> CalibrationSet:
    """The Fashion-MNIST calibration split through the degraded camera `shift`, as PNGs + a CoOp split file.

    "train" holds `shots_per_class` seeded shots per class (the image prototypes); "val" the rest (lambda
    and the threshold), or its first `held_out_limit` images. Image i of the split gets camera noise seed
    ``CALIBRATION_SEED_OFFSET + i``. `out` is replaced.

    Raises:
        ValueError: An unknown shift, or too few images per class.
        trustvlm.data.fashion_mnist.DatasetMissingError: Fashion-MNIST is not installed.
    """
    if shift not in SHIFTS:
        raise ValueError(f"unknown camera shift {shift!r}; expected one of {list(SHIFTS)}")
    calib = load_split("calib")
    rng = np.random.default_rng(seed)
    shots = set()
    for class_id in range(len(calib.class_names)):
        members = np.flatnonzero(calib.labels == class_id)
        if len(members) <= shots_per_class:
            raise ValueError(f"class {calib.class_names[class_id]!r} has {len(members)} calibration images; "
                             f"need more than {shots_per_class} shots")
        shots.update(int(i) for i in rng.choice(members, shots_per_class, replace=False))
    image_root = out / "images"
    if out.exists():
        shutil.rmtree(out)
    image_root.mkdir(parents=True)
    splits = {"train": [], "val": [], "test": []}
    for i, (image, label) in enumerate(zip(calib.images, calib.labels)):
        split = "train" if i in shots else "val"
        if split == "val" and held_out_limit is not None and len(splits["val"]) >= held_out_limit:
            continue
        relpath = f"{int(calib.indices[i])}.png"
        if not cv2.imwrite(str(image_root / relpath), degrade(image, shift, CALIBRATION_SEED_OFFSET + i)):
            raise OSError(f"cannot write {image_root / relpath}")
        splits[split].append([relpath, int(label), calib.class_names[int(label)]])
    split_file = out / f"split_fmnist_calib_{shift}.json"
    split_file.write_text(json.dumps(splits))
    return CalibrationSet(split_file, image_root, len(splits["train"]), len(splits["val"]))
