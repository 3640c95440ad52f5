"""Tests for trustvlm.calibration.calibrate and its CLI, including the risk guarantee on real data."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from trustvlm.calibration.calibrate import calibrate, check_labels, split_held_out
from trustvlm.calibration.cli import add_calibrate_parser, add_eval_parser
from trustvlm.calibration.guarantee_frontier import guarantee_lines
from trustvlm.calibration.image_prototypes import EmbeddingError, prototypes_from_embeddings, sample_shots
from trustvlm.calibration.scores import compute_scores
from trustvlm.calibration.threshold_selection import select_threshold
from trustvlm.cli import CliError
from trustvlm.contract.bundle import load_bundle
from trustvlm.contract.files import sha256_file
from trustvlm.data.fashion_mnist import load_split
from trustvlm.data.image_folder import UnreadableImageError

pytestmark = pytest.mark.timeout(120)

COLOURS = {"red_box": (200, 30, 30), "green_box": (30, 200, 30), "blue_box": (30, 30, 200)}


def write_image_folder(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """Three classes of noisy colour patches (varied sizes), as PNG files."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(24, 48, size=2)
            image = np.clip(np.array(rgb) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "data")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trustvlm")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_calibrate_parser(subparsers)
    add_eval_parser(subparsers)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- image folder (synthetic encoders)


def test_calibrate_an_image_folder_writes_a_loadable_bundle(tiny_artifacts, image_folder, tmp_path):
    # When
    bundle = calibrate(tiny_artifacts, image_folder, tmp_path / "bundle", k=2, seed=0, lam="auto", alpha=0.5,
                       delta=0.1, threads=1)
    # Then
    loaded = load_bundle(tmp_path / "bundle", tiny_artifacts)
    info = loaded.info
    assert info.class_names == ("blue box", "green box", "red box")
    assert info.prompts[0] == ("a photo of a blue box.",)
    assert (info.k, info.seed, info.lam_method) == (2, 0, "auto")
    assert info.score_choice["chosen"]["score"] == info.score, "the default score is chosen on calibration data"
    assert set(info.fused) == {"fused", "fused_star"}
    assert info.selection["shots"] == 6 and info.selection["lambda_images"] == 12
    assert info.selection["threshold_images"] == 12 == info.threshold.n_calibration
    # shots are recorded by file and sha256, and they are the seeded draw
    first = info.shots["files"][0][0]
    assert info.shots["sha256"][0][0] == sha256_file(image_folder / first)
    assert all(f.startswith("blue_box/") for f in info.shots["files"][0])
    np.testing.assert_array_equal(loaded.image_prototypes, bundle.image_prototypes)


def test_a_fixed_lambda_uses_the_whole_rest_for_the_threshold(tiny_artifacts, image_folder, tmp_path):
    bundle = calibrate(tiny_artifacts, image_folder, tmp_path / "b", k=2, lam=1.0, alpha=0.5, threads=1)
    assert (bundle.info.lam, bundle.info.lam_method) == (1.0, "paper")
    assert bundle.info.selection["lambda_images"] == 0 and bundle.info.threshold.n_calibration == 24


def test_trustvlm_star_auto_also_chooses_the_temperature(tiny_artifacts, image_folder, tmp_path):
    bundle = calibrate(tiny_artifacts, image_folder, tmp_path / "b", k=2, score="trustvlm_star", threads=1)
    table = bundle.info.selection["lambda_table"]
    assert {"lambda", "temperature", "aurc_x1000", "accuracy"} <= set(table[0])
    assert bundle.info.temperature in {row["temperature"] for row in table}


def test_an_infeasible_alpha_defers_everything(tiny_artifacts, image_folder, tmp_path):
    bundle = calibrate(tiny_artifacts, image_folder, tmp_path / "b", k=2, lam=1.0, alpha=1e-4, threads=1)
    assert bundle.info.threshold.threshold == math.inf and not bundle.info.threshold.feasible
    assert bundle.info.threshold.coverage == 0.0
    # what the data certifies instead, and what would certify alpha: the lines `trustvlm calibrate` prints
    info = bundle.info
    assert [point["alpha"] for point in info.guarantee_frontier] == [1e-4, 0.01, 0.02, 0.05, 0.1, 0.2]
    assert info.selection["sample_size_estimate"]["images_total_now"] == 30
    lines = guarantee_lines(info.guarantee_frontier, info.threshold.delta, info.threshold.n_calibration,
                            info.selection["sample_size_estimate"])
    assert lines[0].startswith("what this data can certify (delta 10%, 24 threshold images): alpha 0.01% -> nothing")
    assert len(lines) == 2 and lines[1].startswith(("about ", "more than ", "no amount of images like these"))


def test_fewer_than_k_shots_is_an_error(tiny_artifacts, image_folder, tmp_path):
    with pytest.raises(ValueError, match=r"class 'blue box' has 10 image\(s\), fewer than k=11"):
        calibrate(tiny_artifacts, image_folder, tmp_path / "b", k=11)
    assert not (tmp_path / "b").exists(), "nothing may be written on error"


def test_an_unreadable_image_is_an_error(tiny_artifacts, image_folder, tmp_path):
    (image_folder / "red_box" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UnreadableImageError, match="cannot decode image .*broken.png"):
        calibrate(tiny_artifacts, image_folder, tmp_path / "b", k=2)


def test_nan_embeddings_are_an_error(make_artifacts, image_folder, tmp_path):
    with pytest.raises(EmbeddingError, match=r"NaN/inf embeddings for 30 of 30 images \(first: blue_box/000.png\)"):
        calibrate(make_artifacts(nan=True), image_folder, tmp_path / "b", k=2)


def test_embedding_size_mismatch_is_an_error(make_artifacts, image_folder, tmp_path):
    with pytest.raises(ValueError, match="embedding size mismatch: the text encoder returns D=6, .* says D=8"):
        calibrate(make_artifacts(image_dim=8, text_dim=6), image_folder, tmp_path / "b", k=2)


def test_class_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"class count mismatch: labels span \[0, 3\] but there are 3 class names"):
        check_labels(np.array([0, 3]), ("a", "b", "c"))


def test_bad_lambda_and_score_are_errors(tiny_artifacts, image_folder, tmp_path):
    with pytest.raises(ValueError, match="lambda should be 'auto' or a number"):
        calibrate(tiny_artifacts, image_folder, tmp_path / "b", lam="big")
    with pytest.raises(ValueError, match="lambda should be 'auto' or a finite number >= 0"):
        calibrate(tiny_artifacts, image_folder, tmp_path / "b", k=2, lam=-1)
    with pytest.raises(ValueError, match="score should be 'auto' or 'trustvlm' or 'trustvlm_star'"):
        calibrate(tiny_artifacts, image_folder, tmp_path / "b", score="msp")
    with pytest.raises(ValueError, match=r"alpha should be in \(0, 1\), but got 1.5"):
        calibrate(tiny_artifacts, image_folder, tmp_path / "b", alpha=1.5)


def test_held_out_halves_are_disjoint_and_seeded():
    rest = np.arange(3, 103)
    a, b = split_held_out(rest, 0)
    assert len(a) == len(b) == 50 and not set(a) & set(b) and set(a) | set(b) == set(rest)
    np.testing.assert_array_equal(split_held_out(rest, 0)[0], a)
    assert not np.array_equal(split_held_out(rest, 1)[0], a)


# --------------------------------------------------------------------------- CLI


def test_cli_defaults_and_lambda_parsing():
    args = parse(["calibrate"])
    assert (args.lam, args.k, args.seed, args.alpha, args.delta, args.templates, args.score) == \
        ("auto", 16, 0, 0.05, 0.1, "paper", "auto")
    assert parse(["calibrate", "--lam", "0.5"]).lam == 0.5
    with pytest.raises(SystemExit):
        parse(["calibrate", "--lam", "lots"])
    assert parse(["eval", "--no-ablations", "--shifts"]).ablations is False
    assert parse(["eval", "--shifts"]).shifts == []


def test_cli_help_shows_every_flag_with_help(capsys):
    with pytest.raises(SystemExit):
        parse(["calibrate", "--help"])
    text = capsys.readouterr().out
    for flag in ("--artifacts", "--data", "--out", "--k", "--seed", "--lam", "--alpha", "--delta", "--templates",
                 "--score", "--precision", "--threads"):
        assert flag in text, flag
    assert "(default: auto)" in text


def test_cli_bad_input_is_one_clear_error_line(tiny_artifacts, image_folder, tmp_path):
    args = parse(["calibrate", "--artifacts", str(tiny_artifacts), "--data", str(image_folder), "--k", "11",
                  "--out", str(tmp_path / "b")])
    with pytest.raises(CliError, match=r"^class 'blue box' has 10 image\(s\), fewer than k=11[^\n]*$"):
        args.handler(args)
    args = parse(["calibrate", "--artifacts", str(tmp_path / "nowhere"), "--data", str(image_folder)])
    with pytest.raises(CliError, match="no manifest.json in .*make export"):
        args.handler(args)
    args = parse(["calibrate", "--artifacts", str(tiny_artifacts), "--data", str(tmp_path / "missing")])
    with pytest.raises(CliError, match="image folder .*missing does not exist"):
        args.handler(args)


def test_cli_reports_nan_embeddings_and_unreadable_images(make_artifacts, image_folder, tmp_path):
    args = parse(["calibrate", "--artifacts", str(make_artifacts(nan=True)), "--data", str(image_folder),
                  "--k", "2", "--out", str(tmp_path / "b")])
    with pytest.raises(CliError, match=r"^the image encoder image_encoder.onnx returned NaN/inf embeddings"):
        args.handler(args)
    (image_folder / "green_box" / "empty.jpg").write_bytes(b"")
    with pytest.raises(CliError, match=r"^cannot decode image .*empty.jpg$"):
        args.handler(args)
    assert not (tmp_path / "b").exists()


def test_cli_calibrate_writes_the_default_bundle_folder(tiny_artifacts, image_folder, tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    for path in tiny_artifacts.iterdir():
        (export / path.name).write_bytes(path.read_bytes())
    args = parse(["calibrate", "--artifacts", str(export), "--data", str(image_folder), "--k", "2", "--alpha", "0.5"])
    assert args.handler(args) == 0
    assert (export / "bundle" / "bundle.json").exists()
    out = capsys.readouterr().out
    assert "3 classes, k=2" in out
    assert "\nwhat this data can certify (delta 10%, 12 threshold images): alpha 1% -> " in out, "the frontier line"


def test_cli_calibrates_each_camera_folder_and_writes_the_camera_map(tiny_artifacts, tmp_path, capsys):
    from trustvlm.contract.camera_map import read_camera_map  # noqa: PLC0415

    data = tmp_path / "cameras"
    write_image_folder(data / "front", seed=1)
    write_image_folder(data / "gripper", seed=2)
    write_image_folder(data / "tiny", per_class=1, seed=3)  # too few images: refused, left out of the map
    args = parse(["calibrate", "--artifacts", str(tiny_artifacts), "--data", str(data), "--per-camera", "--k", "2",
                  "--alpha", "0.5", "--out", str(tmp_path / "out")])
    with pytest.raises(CliError, match=r"1 of 3 cameras could not be calibrated \(tiny\)"):
        args.handler(args)
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out if line.startswith("camera ")] == ["camera front", "camera gripper",
                                                                                  "camera tiny"]
    assert "threshold" not in out[0] and ("guaranteed coverage" in out[0] or "no feasible threshold" in out[0])
    camera_map = read_camera_map(tmp_path / "out" / "cameras.toml")
    assert camera_map.folders() == {"front": tmp_path / "out" / "front", "gripper": tmp_path / "out" / "gripper"}
    for camera in ("front", "gripper"):
        assert load_bundle(tmp_path / "out" / camera, tiny_artifacts).info.k == 2
    with pytest.raises(CliError, match="a folder of camera folders"):
        args = parse(["calibrate", "--artifacts", str(tiny_artifacts), "--data", "fashion-mnist", "--per-camera"])
        args.handler(args)


# --------------------------------------------------------------------------- real demo model


@pytest.mark.slow
def test_calibrate_fashion_mnist_uses_only_the_calibration_split(demo_artifacts, tmp_path):
    bundle = calibrate(demo_artifacts, "fashion-mnist", tmp_path / "bundle", k=16, alpha=0.1, delta=0.1)
    calib_ids = set(load_split("calib").indices.tolist())
    shots = [i for row in bundle.info.shots["indices"] for i in row]
    assert len(shots) == 160 and set(shots) <= calib_ids
    assert bundle.info.selection["lambda_images"] + bundle.info.selection["threshold_images"] == 5000 - 160
    load_bundle(tmp_path / "bundle", demo_artifacts)


@pytest.mark.slow
def test_risk_guarantee_holds_over_random_splits_of_real_data(demo_embeddings):
    # Given real demo-model TrustVLM scores (lambda 1, 16 calibration shots per class) of every
    # calibration and test image that is not a shot
    emb = demo_embeddings
    shots = sample_shots(emb.calib_labels, 10, 16, 0)
    image = prototypes_from_embeddings(emb.calib, shots)
    keep = np.ones(len(emb.calib_labels), dtype=bool)
    keep[shots.reshape(-1)] = False
    embeddings = np.concatenate([emb.calib[keep], emb.test])
    labels = np.concatenate([emb.calib_labels[keep], emb.test_labels])
    scores = compute_scores(embeddings, emb.text, image, emb.logit_scale, lam=1.0)
    conf, correct = scores.trustvlm, scores.pred == labels
    alpha, delta, n_splits, n_cal = round(max(0.02, 0.5 * (1 - correct.mean())), 3), 0.1, 200, 2000
    # When the threshold is selected on n_cal random images and applied to the others, 200 times
    rng = np.random.default_rng(0)
    violations = naive_violations = feasible = 0
    for _ in range(n_splits):
        order = rng.permutation(len(labels))
        cal, test = order[:n_cal], order[n_cal:]
        choice = select_threshold(conf[cal], correct[cal], alpha, delta)
        if choice.feasible:
            feasible += 1
            accepted = conf[test] >= choice.threshold
            violations += bool(accepted.any() and np.mean(~correct[test][accepted]) > alpha)
        naive_violations += _naive_violates(conf[cal], correct[cal], conf[test], correct[test], alpha)
    # Then at most delta of the splits (plus 3-sigma binomial slack) exceed alpha on test
    bound = delta + 3 * math.sqrt(delta * (1 - delta) / n_splits)
    assert feasible >= 0.9 * n_splits, f"alpha={alpha} is feasible in only {feasible}/{n_splits} splits"
    assert violations / n_splits <= bound, f"{violations}/{n_splits} splits exceed alpha={alpha} (bound {bound:.3f})"
    # and the check has teeth: thresholds chosen without the confidence bound do break it
    assert naive_violations / n_splits > bound, f"naive thresholds violate in only {naive_violations}/{n_splits}"


def _naive_violates(cal_conf, cal_correct, test_conf, test_correct, alpha) -> bool:
    """Largest calibration coverage whose *empirical* risk is <= alpha, judged on test."""
    order = np.argsort(-cal_conf, kind="mergesort")
    risk = np.cumsum(~cal_correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(risk <= alpha)
    if not len(ok):
        return False
    accepted = test_conf >= cal_conf[order][ok[-1]]
    return bool(np.mean(~test_correct[accepted]) > alpha)


@pytest.mark.slow
def test_an_infeasible_alpha_accepts_nothing_on_real_data(demo_embeddings):
    emb = demo_embeddings
    image = prototypes_from_embeddings(emb.calib, sample_shots(emb.calib_labels, 10, 16, 0))
    cal = compute_scores(emb.calib, emb.text, image, emb.logit_scale)
    test = compute_scores(emb.test, emb.text, image, emb.logit_scale)
    # 0 errors among all 5,000 calibration images still bound the risk above ln(13/0.1)/5000 > 1e-4
    choice = select_threshold(cal.trustvlm, cal.pred == emb.calib_labels, alpha=1e-4, delta=0.1)
    assert choice.threshold == math.inf and not choice.feasible
    assert int(np.count_nonzero(test.trustvlm >= choice.threshold)) == 0
