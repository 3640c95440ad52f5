"""`trustvlm eval` on a user's data: an image folder with a held-out test folder, a CoOp split file.

Real Fashion-MNIST PNGs on disk, the real demo model's encoders; small sets, so the numbers only
have to be far from chance, not match the full report.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import cv2
import numpy as np
import pytest

from tests.calibration.split_files import write_fmnist_split
from trustvlm.calibration.cli import add_eval_parser
from trustvlm.calibration.eval_data import NoTestSetError, load_eval_data
from trustvlm.calibration.eval_report import RESULTS_JSON, RESULTS_MD
from trustvlm.calibration.evaluate import EvalConfig, run_evaluation
from trustvlm.cli import CliError
from trustvlm.data.fashion_mnist import load_split

pytestmark = pytest.mark.timeout(300)


def write_folder(root, per_class: int, start: int) -> list[tuple[str, int]]:
    """Fashion-MNIST calibration images start..start+per_class of each class as root/<class>/<index>.png."""
    calib = load_split("calib")
    written = []
    for label, name in enumerate(calib.class_names):
        folder = root / name.replace("/", "_").replace(" ", "_")
        folder.mkdir(parents=True)
        for index in np.flatnonzero(calib.labels == label)[start:start + per_class]:
            cv2.imwrite(str(folder / f"{int(calib.indices[index])}.png"), calib.images[index])
            written.append((f"{folder.name}/{int(calib.indices[index])}.png", label))
    return written


@pytest.fixture(scope="module")
def folders(tmp_path_factory, demo_artifacts):
    root = tmp_path_factory.mktemp("camera")
    write_folder(root / "calib", per_class=12, start=0)
    write_folder(root / "test", per_class=5, start=12)
    return root / "calib", root / "test"


def run_eval_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", *argv])
    return args.handler(args)


def test_eval_on_a_folder_reports_on_the_held_out_test_folder(demo_artifacts, folders, tmp_path, capsys):
    # Given a calibration folder (12 per class) and a disjoint test folder (5 per class)
    calib, test = folders
    # When
    code = run_eval_cli(["--artifacts", str(demo_artifacts), "--data", str(calib), "--test-data", str(test),
                         "--k", "4", "--shifts", "noise", "--threads", "1", "--out", str(tmp_path / "eval")])
    # Then the table is printed and the report says where the data came from
    assert code == 0
    printed = capsys.readouterr().out
    assert "| TrustVLM (lambda=1, paper) |" in printed and "noise AUROC" in printed
    results = json.loads((tmp_path / "eval" / RESULTS_JSON).read_text())
    identity = results["data"]
    assert identity["counts"] == {"calibration": 120, "shot_candidates": 120,
                                  "held_out": "the calibration images that are not shots", "test": 50}
    lines = "".join(f"{part}\t{path}\t{label}\n" for part, rows in
                    (("calibration", sorted_rows(calib)), ("test", sorted_rows(test))) for path, label in rows)
    assert identity["file_list_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    clean = results["datasets"]["clean"]
    assert clean["n_test"] == 50 and clean["n_calib_shots"] == 40
    assert clean["n_calib_lambda"] + clean["n_calib_threshold"] == 80
    assert clean["zero_shot_accuracy"] > 0.5, "the demo model reads Fashion-MNIST PNGs far above chance (0.1)"
    assert [row["k"] for row in results["ablations"]["shots"]] == [1, 2, 4, 8], "k=16 needs 16 images per class"
    assert "file list sha256" in (tmp_path / "eval" / RESULTS_MD).read_text()
    assert (tmp_path / "eval" / "noise_scores.npz").exists()


def sorted_rows(folder) -> list[tuple[str, int]]:
    classes = sorted(d.name for d in folder.iterdir())
    return [(f"{name}/{path.name}", label) for label, name in enumerate(classes)
            for path in sorted((folder / name).iterdir())]


def test_eval_on_a_split_file_takes_shots_from_train_and_reports_on_test(demo_artifacts, tmp_path):
    # Given 10 classes x (4 train, 6 val, 3 test) PNGs
    split_file, image_root, rows = write_fmnist_split(tmp_path / "split", {"train": 4, "val": 6, "test": 3})
    # When
    report = run_evaluation(demo_artifacts, EvalConfig(k=4, shifts=(), ablations=False, threads=1, lam=0.1,
                                                       temperature=0.1, data=str(split_file),
                                                       image_root=str(image_root)))
    # Then every train row is a shot, val chooses lambda and threshold, test is reported on
    clean = report.datasets[0]
    assert clean.info["n_calib_shots"] == 40
    assert clean.info["n_calib_lambda"] + clean.info["n_calib_threshold"] == 60
    assert clean.info["n_test"] == 30
    np.testing.assert_array_equal(clean.per_sample["labels"], [row[1] for row in rows["test"]])
    assert report.meta["data"]["counts"]["held_out"] == 60
    assert clean.info["paper_lambda"] == 0.1 and clean.info["paper_temperature"] == 0.1
    labels = dict(report_methods(clean))
    assert labels["trustvlm"] == "TrustVLM (lambda=0.1, paper)" and labels["trustvlm_star"].endswith("T=0.1)")


def report_methods(result):
    from trustvlm.calibration.evaluate import methods_of  # noqa: PLC0415

    return methods_of(result)


def test_without_a_separate_test_set_there_is_no_report(demo_artifacts, folders, tmp_path):
    calib, _ = folders
    # A folder alone: one line, no report
    with pytest.raises(CliError, match="cannot make the report: .* --test-data FOLDER"):
        run_eval_cli(["--artifacts", str(demo_artifacts), "--data", str(calib), "--out", str(tmp_path / "eval")])
    assert not (tmp_path / "eval").exists()
    # The calibration folder given again as the test set
    with pytest.raises(ValueError, match="is the calibration folder itself"):
        load_eval_data(str(calib), test_data=str(calib))
    # A split file without "test" rows
    split_file, image_root, _ = write_fmnist_split(tmp_path / "split", {"train": 2, "val": 2})
    with pytest.raises(NoTestSetError, match="'test' rows are missing"):
        load_eval_data(str(split_file), str(image_root))


def test_test_folder_with_other_classes_is_refused(folders, tmp_path):
    calib, _ = folders
    write_folder(tmp_path / "other", per_class=1, start=0)
    (tmp_path / "other" / "bag").rename(tmp_path / "other" / "handbag")
    with pytest.raises(ValueError, match="test set's classes .* differ"):
        load_eval_data(str(calib), test_data=str(tmp_path / "other"))


def test_images_of_different_sizes_are_shifted_one_by_one_and_keep_their_size():
    from trustvlm.calibration.evaluate import shifted  # noqa: PLC0415

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)]
    noisy = shifted("noise", images, seed=3)
    assert [image.shape for image in noisy] == [(20, 30, 3), (28, 28, 3)]
    assert not np.array_equal(noisy[0], images[0]), "the shift changed the pixels"
    np.testing.assert_array_equal(shifted("noise", images, seed=3)[1], noisy[1])
    assert shifted("clean", images, seed=3) is images
