"""A small real dataset that is not Fashion-MNIST: scikit-learn's handwritten digits as image folders.

scikit-learn ships the UCI optical-recognition digits (1,797 scans, 8 x 8 grey, ten classes)
inside the package, so they are at hand offline. This writes them as PNGs, upscaled to 28 x 28
(bicubic), into three disjoint folders with one sub-folder per class (``zero`` ... ``nine``) and
a CoOp split file over the same images:

    OUT/
        train/  zero/ 0007.png ...   to train a model on (`trustvlm train-demo --data OUT/train`)
        calib/  ...                  shots, lambda and threshold (`--data OUT/calib`)
        test/   ...                  held out for the report (`--test-data OUT/test`)
        split_digits.json            the same three parts as "train" / "val" / "test" rows
                                     (paths relative to OUT: `--data OUT/split_digits.json --image-root OUT`)

The split is stratified and seeded (per class: 50% train, 25% calib, 25% test). Run:

    python -m trustvlm.data.sklearn_digits OUT
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PARTS = (("train", 0.5), ("calib", 0.25), ("test", 0.25))
#: The split file's name for each folder (CoOp: shots from "train", held-out "val", report on "test").
SPLIT_OF_PART = {"train": "train", "calib": "val", "test": "test"}
SPLIT_FILE = "split_digits.json"
SIZE = 28


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as uint8 ``N x 8 x 8`` (0..255) and their int labels."""
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415 - optional (the [dev] extra)
    except ImportError as error:
        raise FileNotFoundError("the digits come with scikit-learn: pip install scikit-learn") from error
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def write_digits_folders(out: str | os.PathLike, seed: int = 0, size: int = SIZE) -> dict[str, int]:
    """Write train/, calib/, test/ and the split file under `out`; return the image count per part."""
    root = Path(out)
    images, labels = load_digits_uint8()
    rng = np.random.default_rng(seed)
    splits: dict[str, list] = {split: [] for split in SPLIT_OF_PART.values()}
    counts = {part: 0 for part, _ in PARTS}
    for label, name in enumerate(CLASS_NAMES):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.cumsum([0] + [round(share * len(members)) for _, share in PARTS[:-1]] + [len(members)])
        for (part, _), start, stop in zip(PARTS, bounds[:-1], bounds[1:]):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in members[start:stop]:
                image = cv2.resize(images[index], (size, size), interpolation=cv2.INTER_CUBIC)
                relpath = f"{part}/{name}/{int(index):04d}.png"
                if not cv2.imwrite(str(root / relpath), image):
                    raise OSError(f"could not write {root / relpath}")
                splits[SPLIT_OF_PART[part]].append([relpath, label, name])
                counts[part] += 1
    (root / SPLIT_FILE).write_text(json.dumps(splits, indent=0))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write scikit-learn's digits as train/calib/test image folders "
                                                 "and a CoOp split file.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    args = parser.parse_args(argv)
    counts = write_digits_folders(args.out, args.seed)
    print(f"wrote {sum(counts.values())} digits to {args.out}: "
          + ", ".join(f"{part} {n}" for part, n in counts.items()) + f"; split file {args.out / SPLIT_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
