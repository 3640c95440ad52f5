"""Build-time costs: text prototypes for many classes, and a calibration of k shots x C classes.

* Text prototypes: :func:`trustvlm.calibration.text_prototypes.build_text_prototypes` for C
  synthetic class names ("object 0001", ...) with the paper's single template, session creation
  and tokenization included (what ``trustvlm calibrate`` pays once per bundle).
* Calibration: :func:`trustvlm.calibration.calibrate.calibrate` end to end on an image folder of
  C classes with k shots + a few held-out images each (PNG files written once into a scratch
  folder from Fashion-MNIST calibration-split images, so class c reuses the images of label
  c mod 10: accuracy is meaningless, the work is the real one). Everything is in the time:
  reading the images, encoding them, text prototypes, lambda, threshold, writing the bundle.
  The demo model knows ten clothing words and cannot read the synthetic class names, so the
  calibration runs with ``allow_unknown_words`` (``trustvlm calibrate --allow-unknown-words``):
  the names tokenize and encode as any others would, at the same cost; only their prototypes
  mean nothing, which this figure does not need.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from trustvlm.benchmarks.stats import Figure

TEMPLATE = "a photo of a {}."
HELD_OUT_PER_CLASS = 8


def class_names(count: int) -> list[str]:
    """`count` distinct synthetic class names."""
    return [f"object {index:04d}" for index in range(count)]


def measure_text_prototypes(artifacts: Path, classes: int, repeats: int = 3) -> Figure:
    """Seconds to build text prototypes for `classes` classes, `repeats` times (fresh session each time)."""
    from trustvlm.calibration.text_prototypes import build_text_prototypes  # noqa: PLC0415

    names, samples = class_names(classes), []
    for _ in range(repeats):
        started = time.perf_counter()
        build_text_prototypes(artifacts, names, [TEMPLATE])
        samples.append(time.perf_counter() - started)
    return Figure(tuple(samples), "s")


def write_class_folder(root: Path, classes: int, per_class: int) -> Path:
    """An image folder of `classes` sub-folders with `per_class` Fashion-MNIST PNGs each."""
    import cv2  # noqa: PLC0415

    from trustvlm.data.fashion_mnist import load_split  # noqa: PLC0415

    calib = load_split("calib")
    by_label = {label: [i for i in range(len(calib.labels)) if calib.labels[i] == label] for label in range(10)}
    for index, name in enumerate(class_names(classes)):
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        pool = by_label[index % 10]
        offset = (index // 10) * per_class
        for shot in range(per_class):
            cv2.imwrite(str(folder / f"{shot:03d}.png"), calib.images[pool[(offset + shot) % len(pool)]])
    return root


def measure_calibration(artifacts: Path, classes: int, shots: int, repeats: int = 3,
                        scratch: Path | None = None) -> tuple[Figure, int]:
    """Seconds of `calibrate` on `classes` x (`shots` + held-out) images, `repeats` times; and the image count."""
    from trustvlm.calibration.calibrate import calibrate  # noqa: PLC0415

    per_class = shots + HELD_OUT_PER_CLASS
    root = Path(tempfile.mkdtemp(prefix="bench-calibration-", dir=scratch))
    try:
        folder = write_class_folder(root / "images", classes, per_class)
        samples = []
        for repeat in range(repeats):
            started = time.perf_counter()
            calibrate(artifacts, folder, root / f"bundle{repeat}", k=shots, lam="auto", allow_unknown_words=True)
            samples.append(time.perf_counter() - started)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return Figure(tuple(samples), "s"), classes * per_class
