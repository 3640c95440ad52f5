"""Tests for trustvlm.calibration.pools: CoOp split files (real Fashion-MNIST PNGs) in calibrate and its CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from tests.calibration.split_files import write_fmnist_split
from trustvlm.calibration.calibrate import calibrate
from trustvlm.calibration.cli import add_calibrate_parser
from trustvlm.calibration.pools import load_pool, load_split_file
from trustvlm.cli import CliError

pytestmark = pytest.mark.timeout(120)

PER_CLASS = {"train": 4, "val": 6, "test": 2}


@pytest.fixture
def split(tmp_path):
    """10 classes: 4 train, 6 val, 2 test PNGs each."""
    return write_fmnist_split(tmp_path / "fmnist", PER_CLASS)


def test_split_file_pools_train_then_val_and_never_reads_test(split):
    # Given
    split_file, image_root, rows = split
    # When
    pool = load_pool(split_file, image_root)
    # Then
    assert len(pool) == 10 * (4 + 6), "train + val only"
    assert pool.ids == tuple(r[0] for r in rows["train"] + rows["val"])
    assert pool.class_names[0] == "T-shirt/top" and len(pool.class_names) == 10
    assert pool.labels.tolist() == [r[1] for r in rows["train"] + rows["val"]]
    np.testing.assert_array_equal(pool.shot_candidates(), np.arange(40))
    np.testing.assert_array_equal(pool.held_out(np.array([[0]])), np.arange(40, 100))
    assert pool.images[0].shape == (28, 28, 3) and pool.images[0].dtype == np.uint8


def test_calibrate_takes_shots_from_train_and_threshold_from_val(tiny_artifacts, split, tmp_path):
    # Given
    split_file, image_root, rows = split
    train_files = {r[0] for r in rows["train"]}
    # When
    bundle = calibrate(tiny_artifacts, split_file, tmp_path / "bundle", k=3, lam=1.0, alpha=0.5, threads=1,
                       image_root=image_root)
    # Then
    shots = bundle.info.shots
    assert {f for row in shots["files"] for f in row} <= train_files, "every shot is a train image"
    assert [len(row) for row in shots["files"]] == [3] * 10
    assert shots["image_root"] == str(image_root)
    selection = bundle.info.selection
    assert (selection["shots"], selection["lambda_images"], selection["threshold_images"]) == (30, 0, 60), \
        "the threshold is selected on the 60 val images, not on the train images left over"
    assert bundle.info.threshold.n_calibration == 60


def test_calibrate_auto_lambda_halves_val(tiny_artifacts, split, tmp_path):
    split_file, image_root, _ = split
    bundle = calibrate(tiny_artifacts, split_file, tmp_path / "bundle", k=4, lam="auto", alpha=0.5, threads=1,
                       image_root=image_root)
    selection = bundle.info.selection
    assert (selection["shots"], selection["lambda_images"], selection["threshold_images"]) == (40, 30, 30)


def test_a_class_with_too_few_train_images_names_it(tiny_artifacts, split, tmp_path):
    split_file, image_root, _ = split
    with pytest.raises(ValueError, match=r"class 'T-shirt/top' has 4 image\(s\), fewer than k=5"):
        calibrate(tiny_artifacts, split_file, tmp_path / "bundle", k=5, image_root=image_root)


def test_split_file_needs_its_image_root_and_a_folder_refuses_one(split, tmp_path):
    split_file, image_root, _ = split
    with pytest.raises(ValueError, match="a CoOp split file needs the folder its image paths start from"):
        load_pool(split_file)
    with pytest.raises(ValueError, match="image_root .* goes with a CoOp split .json file"):
        load_pool(image_root, image_root)
    with pytest.raises(FileNotFoundError, match="image root .*nowhere does not exist"):
        load_pool(split_file, tmp_path / "nowhere")


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(val=[]), r"the 'val' split is missing or empty"),
    (lambda s: s["train"].__setitem__(0, ["a.png", "0", "x"]), r"train\[0\] should be \[relative path, integer label"),
    (lambda s: s["val"][0].__setitem__(2, "jumper"), r"label 0 is named both 'T-shirt/top' and 'jumper'"),
    (lambda s: s["train"][0].__setitem__(0, "T-shirt_top/missing.png"),
     r"image T-shirt_top/missing.png is not under"),
    (lambda s: [row.__setitem__(1, 11) for row in s["test"] if row[1] == 9],
     r"labels should be 0..C-1 with every class present; .*missing \[10\]"),
])
def test_malformed_split_files_are_one_clear_error(split, change, message):
    # Given
    split_file, image_root, rows = split
    broken = json.loads(json.dumps(rows))
    change(broken)
    split_file.write_text(json.dumps(broken))
    # When / Then
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_split_file(split_file, image_root)


def test_split_file_that_is_not_json_is_refused(split):
    split_file, image_root, _ = split
    split_file.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_split_file(split_file, image_root)


def test_cli_calibrates_a_split_file(tiny_artifacts, split, tmp_path, capsys):
    # Given
    split_file, image_root, _ = split
    parser = argparse.ArgumentParser(prog="trustvlm")
    add_calibrate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["calibrate", "--artifacts", str(tiny_artifacts), "--data", str(split_file),
                              "--image-root", str(image_root), "--k", "2", "--lam", "1", "--alpha", "0.5",
                              "--threads", "1", "--out", str(tmp_path / "bundle")])
    # When
    assert args.handler(args) == 0
    # Then
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "bundle" / "bundle.json").exists()
    missing_root = parser.parse_args(["calibrate", "--artifacts", str(tiny_artifacts), "--data", str(split_file),
                                      "--out", str(tmp_path / "b2")])
    with pytest.raises(CliError, match="needs the folder its image paths start from"):
        missing_root.handler(missing_root)
