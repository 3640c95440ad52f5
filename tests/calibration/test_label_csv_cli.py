"""`trustvlm calibrate --data labels.csv` and `trustvlm eval` on label CSV files, with the real demo model."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import require_fashion_mnist
from trustvlm.calibration.eval_report import RESULTS_JSON
from trustvlm.cli import main
from trustvlm.contract.bundle import load_bundle
from trustvlm.data.fashion_mnist import load_split
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder

pytestmark = pytest.mark.timeout(300)


def write_labelled_images(root: Path, classes: tuple[int, ...], per_class: int, start: int) -> list[list[str]]:
    """Fashion-MNIST calibration images as root/images/<index>.png; rows (path, label) as an annotation tool lists them."""
    require_fashion_mnist()
    calib = load_split("calib")
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for label in classes:
        for index in np.flatnonzero(calib.labels == label)[start:start + per_class]:
            name = f"images/{int(calib.indices[index])}.png"
            cv2.imwrite(str(root / name), calib.images[index])
            rows.append([name, calib.class_names[label]])
    return rows


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as file:
        csv.writer(file).writerows([["image", "choice"], *rows])
    return path


def test_cli_calibrates_and_evaluates_a_label_csv(demo_artifacts, tmp_path, capsys):
    # Given Label Studio style exports: 3 classes, 6 calibration and 2 test images each, paths relative to the CSVs
    classes = (0, 1, 7)
    labels = write_csv(tmp_path / "calib.csv", write_labelled_images(tmp_path, classes, 6, 0))
    test = write_csv(tmp_path / "test.csv", write_labelled_images(tmp_path, classes, 2, 6))
    # When
    code = main(["calibrate", "--artifacts", str(demo_artifacts), "--data", str(labels), "--k", "2",
                 "--alpha", "0.3", "--threads", "1", "--out", str(tmp_path / "bundle")])
    # Then the bundle is written and records the CSV it came from
    assert code == 0, capsys.readouterr().err
    info = load_bundle(tmp_path / "bundle", demo_artifacts).info
    assert info.class_names == ("T-shirt/top", "sneaker", "trouser")  # the labels, sorted
    assert info.selection["data"] == str(labels) and info.selection["shots"] == 6
    assert info.selection["data_sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    assert info.shots["files"][0][0].startswith("images/")
    # and eval reports on the test CSV, its identity covering both files
    code = main(["eval", "--artifacts", str(demo_artifacts), "--data", str(labels), "--test-data", str(test),
                 "--k", "2", "--shifts", "--no-ablations", "--threads", "1", "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    identity = json.loads((tmp_path / "eval" / RESULTS_JSON).read_text())["data"]
    assert identity["counts"]["test"] == 6 and identity["counts"]["calibration"] == 18
    assert identity["data_sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    assert identity["test_data_sha256"] == hashlib.sha256(test.read_bytes()).hexdigest()


def test_a_bad_label_csv_is_refused_in_one_line_before_any_encoding(demo_artifacts, tmp_path, monkeypatch, capsys):
    def no_encoding(self, *args, **kwargs):
        raise AssertionError("encoded before the refusal")

    monkeypatch.setattr(OnnxEncoder, "encode", no_encoding)
    rows = write_labelled_images(tmp_path, (0, 1), 2, 0)
    labels = write_csv(tmp_path / "labels.csv", [*rows, ["images/missing.png", rows[0][1]]])
    capsys.readouterr()
    code = main(["calibrate", "--artifacts", str(demo_artifacts), "--data", str(labels), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1
    assert err[0] == (f"trustvlm calibrate: error: {labels} row 6: the image 'images/missing.png' does not exist "
                      f"({tmp_path / 'images' / 'missing.png'})")
