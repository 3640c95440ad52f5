"""``--score auto``: the choice on the lambda half, what the bundle records of it, and older bundles."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from trustvlm.calibration.calibrate import calibrate, split_held_out
from trustvlm.calibration.coverage_limits import certifiable_limit, oracle_coverage
from trustvlm.calibration.fused_score import fit_fused_model
from trustvlm.calibration.score_choice import choose_score
from trustvlm.calibration.threshold_selection import GRID_NOTES, select_threshold, threshold_grid
from trustvlm.contract.bundle import BundleInfo, load_bundle, read_bundle_info
from trustvlm.contract.manifest import read_manifest
from trustvlm.contract.scores import SCORES
from tests.calibration.test_bundle import make_info
from tests.calibration.test_calibrate import COLOURS, write_image_folder
from tests.calibration.test_fused_score import _data

pytestmark = pytest.mark.timeout(120)


def test_auto_prefers_the_score_that_can_guarantee_more_coverage():
    # Given prototypes that correct many VLM errors (TrustVLM*'s prediction is far more accurate)
    _, _, _, _, labels, logits, _ = _data(5, n=1200)
    sims = np.eye(logits.shape[1])[labels] * 0.5 + 0.05 * np.random.default_rng(5).normal(size=logits.shape)
    # When auto chooses
    choice = choose_score(logits, sims, labels, 0.05, 0.1, (0.0, 1.0, 4.0), (0.01, 0.1))
    # Then the winner is a TrustVLM* prediction, with the largest coverage of the table
    assert SCORES[choice.score].prediction == "pred_star", choice.label
    winner = next(row for row in choice.table if row["chosen"])
    assert winner["coverage"] == max(row["coverage"] for row in choice.table) > 0
    msp = next(row for row in choice.table if row["label"] == "msp")
    assert winner["coverage"] > msp["coverage"]
    assert {row["score"] for row in choice.table} == set(SCORES)


def _threshold_half_files(folder, info) -> list:
    """Files of the threshold half, as calibrate splits an image folder (sorted paths, shots set apart)."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    shots = {name for row in info.shots["files"] for name in row}
    rest = np.array([i for i, name in enumerate(files) if name not in shots])
    return [files[i] for i in split_held_out(rest, info.seed)[1]]


def test_auto_never_looks_at_the_threshold_half(tiny_artifacts, tmp_path):
    # Given a bundle calibrated with --score auto
    folder = write_image_folder(tmp_path / "data", per_class=16)
    # (SGR thresholds: any calibration score can be one, so the threshold shows the threshold half moved)
    first = calibrate(tiny_artifacts, folder, tmp_path / "a", k=2, alpha=0.3, threads=1, threshold_method="sgr").info
    # When every threshold-half image becomes a patch of another class's colour (same files, same labels)
    for name in _threshold_half_files(folder, first):
        other = COLOURS["red_box" if name.startswith("green") else "green_box"]
        cv2.imwrite(str(folder / name), np.full((32, 32, 3), other[::-1], np.uint8))
    second = calibrate(tiny_artifacts, folder, tmp_path / "b", k=2, alpha=0.3, threads=1, threshold_method="sgr").info
    # Then the threshold moved, but the choice and the fused models did not
    assert second.threshold != first.threshold, "the construction must change what the threshold half says"
    assert second.score_choice == first.score_choice
    assert second.fused == first.fused


def test_the_choice_is_recorded_and_loads_back(tiny_artifacts, tmp_path):
    folder = write_image_folder(tmp_path / "data")
    calibrate(tiny_artifacts, folder, tmp_path / "b", k=2, alpha=0.5, threads=1)
    info = load_bundle(tmp_path / "b", tiny_artifacts).info
    chosen = [row for row in info.score_choice["table"] if row["chosen"]]
    assert len(chosen) == 1 and chosen[0]["score"] == info.score == info.score_choice["chosen"]["score"]
    assert (info.lam, info.temperature) == (chosen[0]["lambda"], chosen[0]["temperature"])
    assert 0.0 <= info.selection["certifiable_limit"] <= 1.0
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["schema_version"] == "1.3"


def test_a_bundle_without_the_new_fields_still_loads(tiny_artifacts, tmp_path):
    # Given the bundle.json of schema 1.1, which has neither fused models nor a score choice
    data = make_info(read_manifest(tiny_artifacts)).to_dict()
    for key in ("fused", "score_choice"):
        data.pop(key)
    data["schema_version"] = "1.1"
    (tmp_path / "bundle.json").write_text(json.dumps(data))
    # Then it reads, with none of them
    info = read_bundle_info(tmp_path)
    assert (info.fused, info.score_choice, info.score) == ({}, {}, "trustvlm")


def test_a_fitted_score_needs_its_model_and_the_heads_lambda(tiny_artifacts):
    _, _, _, _, labels, logits, sims = _data(6, n=80)
    star = fit_fused_model("fused_star", logits, sims, labels, lam=0.5, temperature=0.1)
    info = make_info(read_manifest(tiny_artifacts))
    with pytest.raises(ValueError, match="no fitted model for it"):
        replace(info, score="fused")
    with pytest.raises(ValueError, match="rates TrustVLM\\*'s prediction at lambda=0.5"):
        replace(info, score="fused_star", fused={"fused_star": star})
    ok = replace(info, score="fused_star", fused={"fused_star": star}, lam=0.5, temperature=0.1)
    assert BundleInfo.from_dict(json.loads(json.dumps(ok.to_dict()))) == ok


def test_coverage_limits_by_hand():
    # 10 images, scores 10..1; errors at scores 3 and 1
    confidence = np.arange(10, 0, -1.0)
    correct = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0], bool)
    # observed risk: top 7 0, top 8 1/8, top 9 1/9, all 2/10
    assert oracle_coverage(confidence, correct, 0.115).coverage == 0.9
    assert oracle_coverage(confidence, correct, 0.1).coverage == 0.7
    # Clopper-Pearson on 7 of 7 right: bound 1 - delta ** (1 / 7) = 0.28 at delta 0.1
    assert certifiable_limit(confidence, correct, 0.3, 0.1).coverage == 0.7
    assert certifiable_limit(confidence, correct, 0.2, 0.1).coverage == 0.0
    # the limit is never below what the (corrected) procedure guarantees
    rng = np.random.default_rng(0)
    conf = rng.random(2000)
    right = rng.random(2000) < 0.5 + 0.5 * conf
    limit = certifiable_limit(conf, right, 0.1, 0.1).coverage
    assert select_threshold(conf, right, 0.1, 0.1).coverage <= limit <= oracle_coverage(conf, right, 0.1).coverage


def test_a_fitted_score_with_a_fixed_lambda_is_refused_before_any_work(tiny_artifacts, tmp_path):
    with pytest.raises(ValueError, match="score fused is fitted on half of the held-out images.*--lam auto"):
        calibrate(tiny_artifacts, tmp_path / "no_such_folder", tmp_path / "b", lam=1.0, score="fused")


def test_the_threshold_is_tested_on_a_grid_of_lambda_half_scores(tiny_artifacts, tmp_path):
    # Given a folder calibrated with the default (LTT) threshold and lambda auto
    folder = write_image_folder(tmp_path / "data", per_class=16)
    info = calibrate(tiny_artifacts, folder, tmp_path / "a", k=2, alpha=0.3, threads=1).info
    # Then the bundle says the grid came from the lambda half, so the guarantee is exact
    assert info.selection["threshold_grid"] == GRID_NOTES[True]
    # and a fixed lambda (no lambda half) falls back to the threshold half's own scores
    fixed = calibrate(tiny_artifacts, folder, tmp_path / "b", k=2, alpha=0.3, threads=1, lam=0.5).info
    assert fixed.selection["threshold_grid"] == GRID_NOTES[False]


def test_threshold_grid_keeps_finite_independent_scores_for_ltt_only():
    assert threshold_grid(np.array([0.2, np.nan, 0.9, np.inf]), "ltt").tolist() == [0.2, 0.9]
    assert threshold_grid(np.array([0.2, 0.9]), "sgr") is None
    assert threshold_grid(np.array([np.nan]), "ltt") is None
    assert threshold_grid(None, "ltt") is None
    # a feasible LTT threshold on a grid is one of the grid's points
    rng = np.random.default_rng(1)
    conf, grid = rng.random(3000), rng.random(3000)
    right = rng.random(3000) < 0.6 + 0.4 * conf
    choice = select_threshold(conf, right, 0.1, 0.1, grid=threshold_grid(grid))
    assert choice.feasible and choice.threshold in set(grid.tolist())


def test_a_small_error_free_calibration_set_is_feasible_on_an_independent_grid():
    # 145 threshold-half images, all right, and a grid of 145 scores of other images: a start placed at the
    # edge of the fewest samples that can reject would fail about half the time; it must pass
    rng = np.random.default_rng(3)
    passed = sum(select_threshold(rng.random(145), np.ones(145, bool), 0.05, 0.1, grid=rng.random(145)).feasible
                 for _ in range(50))
    assert passed >= 45
