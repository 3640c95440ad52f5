"""Too few images: every way `calibrate` and `eval` refuse them, in one line, before any image is encoded.

Tiny folders (and split files) of PNG colour patches on disk, the synthetic export; the encoders' ``encode``
fails the test if anything reaches it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.calibration.test_calibrate import COLOURS, write_image_folder
from trustvlm.cli import main
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder

pytestmark = pytest.mark.timeout(120)


def write_split(root: Path, train: int, val: int, test: int) -> Path:
    """A CoOp split file over `root`/<colour>/*.png with `train` / `val` / `test` images per class."""
    rng = np.random.default_rng(0)
    splits = {"train": [], "val": [], "test": []}
    for label, (name, rgb) in enumerate(sorted(COLOURS.items())):
        (root / name).mkdir(parents=True)
        for part, count in (("train", train), ("val", val), ("test", test)):
            for i in range(count):
                image = np.clip(np.array(rgb) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(root / name / f"{part}{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                splits[part].append([f"{name}/{part}{i}.png", label, name.replace("_", " ")])
    (root / "split.json").write_text(json.dumps(splits))
    return root / "split.json"


def folder(per_class: int):
    return lambda tmp: ["--data", str(write_image_folder(tmp / "calib", per_class=per_class, seed=1))]


def split(train: int, val: int):
    return lambda tmp: ["--data", str(write_split(tmp / "split", train, val, 1)), "--image-root", str(tmp / "split")]


HELD_OUT = r"only {n} held-out image\(s\) after the shots: too few to choose lambda and a threshold \(at least 8: "
CAL_FIX = r"lower k or add images, or fix lambda \(--lam 1\) to select the threshold on all of them$"

#: (name, command, data, extra flags, the one line expected)
CASES = [
    ("calibrate: a class with fewer than k images", "calibrate", folder(2), ["--k", "3"],
     r"class 'blue box' has 2 image\(s\), fewer than k=3 shots; lower k or add images of that class$"),
    ("calibrate: lambda auto needs 8 held-out images", "calibrate", folder(4), ["--k", "2"],
     HELD_OUT.format(n=6) + r".*" + CAL_FIX),
    ("calibrate: a fused score needs the lambda half", "calibrate", folder(4), ["--k", "2", "--score", "fused"],
     HELD_OUT.format(n=6) + r".*" + CAL_FIX),
    ("calibrate: a fused score with a fixed lambda has no lambda half", "calibrate", folder(4),
     ["--k", "2", "--score", "fused_star", "--lam", "1"],
     r"score fused_star is fitted on half of the held-out images, .*use lambda 'auto' \(--lam auto\) or another "
     r"score$"),
    ("calibrate: a fixed lambda needs 1 held-out image", "calibrate", folder(2), ["--k", "2", "--lam", "1"],
     r"no held-out image after the shots to select a threshold on; lower k or add images$"),
    ("calibrate: a split file's val rows", "calibrate", split(2, 2), ["--k", "2"],
     HELD_OUT.format(n=6) + r".*add rows to the split file's 'val', or fix lambda \(--lam 1\)"),
    ("calibrate: the gate on", "calibrate", folder(5), ["--k", "2", "--ood-gate", "on"],
     r"--ood-gate on needs at least 397 held-out images after the shots \(half of them, 199, set its 1% "
     r"false-reject rate over 2 components\), but there are 9; add images, raise --ood-false-reject-rate, or use "
     r"--ood-gate off"),
    ("eval: a class with fewer than k images", "eval", folder(2), ["--k", "3"],
     r"class 'blue box' has 2 image\(s\), fewer than k=3 shots; lower k or add images of that class$"),
    ("eval: lambda and the thresholds need 8 held-out images", "eval", folder(3), ["--k", "2"],
     HELD_OUT.format(n=3) + r".*; lower k or add images$"),
    ("eval: a split file's train rows", "eval", split(1, 3), ["--k", "2"],
     r"class 'blue box' has 1 image\(s\), fewer than k=2 shots; lower k or add images of that class$"),
    ("eval: a split file's val rows", "eval", split(2, 2), ["--k", "2"],
     HELD_OUT.format(n=6) + r".*; add rows to the split file's 'val'$"),
]


@pytest.mark.parametrize("name, command, data, flags, expected", CASES, ids=[case[0] for case in CASES])
def test_too_few_images_are_refused_in_one_line_before_any_encoding(name, command, data, flags, expected,
                                                                    tiny_artifacts, tmp_path, monkeypatch, capsys):
    # Given encoders that fail the test if any image (or prompt) reaches them
    def no_encoding(self, *args, **kwargs):
        raise AssertionError(f"{self.path.name} encoded something before the refusal")

    monkeypatch.setattr(OnnxEncoder, "encode", no_encoding)
    argv = [command, "--artifacts", str(tiny_artifacts), *data(tmp_path), *flags, "--out", str(tmp_path / "out")]
    if command == "eval" and "--image-root" not in argv:
        argv += ["--test-data", str(write_image_folder(tmp_path / "test", per_class=1, seed=2)), "--shifts"]
    # When
    code = main(argv)
    # Then one line says what is missing and what to do, and nothing was written
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 1 and len(lines) == 1, captured.err
    prefix = f"trustvlm {command}: error: "
    assert lines[0].startswith(prefix)
    assert re.search(expected, lines[0][len(prefix):]), lines[0]
    assert not (tmp_path / "out").exists()
