"""Labelled image folders built from public data, to try `trustvlm train-demo --data FOLDER` on.

    python -m trustvlm.benchmarks.train_folders OUT [--per-class 400]

writes three ImageFolder trees (one sub-folder per class, PNG files):

- ``OUT/fmnist``: ``per-class`` Fashion-MNIST images per class from the calibration split (the 5,000
  images the shipped demo model never trained on), 28x28 grayscale.
- ``OUT/digits``: scikit-learn's handwritten digits (1,797 images of 8x8, 16 grey levels, upscaled to
  28x28), classes ``zero`` ... ``nine``. Needs scikit-learn (the ``dev`` extra).
- ``OUT/fmnist-random-labels``: the images of ``OUT/fmnist`` under a seeded random permutation of
  their labels: nothing to learn, so the trainer must refuse the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from trustvlm.data.fashion_mnist import load_split

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def folder_name(class_name: str) -> str:
    """A class name as a sub-folder name (the folder reader turns underscores back into spaces)."""
    return class_name.replace("/", " or ").replace(" ", "_")


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, class_names) -> Path:
    """Write uint8 grayscale or RGB `images` as ``root/<class name>/<index>.png``; return `root`."""
    for name in class_names:
        (root / folder_name(name)).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        name = folder_name(class_names[int(label)])
        pixels = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(root / name / f"{index:05d}.png"), pixels):
            raise OSError(f"cannot write {root / name / f'{index:05d}.png'}")
    return root


def fashion_mnist_sample(per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """`per_class` calibration-split images of every class (seeded pick): images, labels, class names."""
    calib = load_split("calib")
    rng = np.random.default_rng(seed)
    picks = np.sort(np.concatenate([rng.choice(np.flatnonzero(calib.labels == c), per_class, replace=False)
                                    for c in range(len(calib.class_names))]))
    return calib.images[picks], calib.labels[picks], tuple(calib.class_names)


def digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """scikit-learn's 8x8 digits as 28x28 uint8 images, labels and the class names zero ... nine."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - dev extra

    data = load_digits()
    images = np.stack([cv2.resize((image * (255 / 16)).astype(np.uint8), (28, 28), interpolation=cv2.INTER_LINEAR)
                       for image in data.images])
    return images, data.target.astype(np.int64), DIGIT_NAMES


def random_labels(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A seeded random permutation of `labels` (same class counts, no link to the images)."""
    return np.random.default_rng(seed).permutation(labels)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trustvlm.benchmarks.train_folders", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="folder to write the three image folders into")
    parser.add_argument("--per-class", type=int, default=400, help="Fashion-MNIST images per class (<= 500)")
    args = parser.parse_args(argv)
    images, labels, names = fashion_mnist_sample(args.per_class)
    for name, folder in (("fmnist", (images, labels, names)), ("digits", digits()),
                         ("fmnist-random-labels", (images, random_labels(labels), names))):
        root = write_image_folder(args.output / name, *folder)
        print(f"wrote {root}: {len(folder[0])} images, {len(folder[2])} classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
