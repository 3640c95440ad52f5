"""Tests for trustvlm.calibration.evaluate, eval_report and `trustvlm eval` (synthetic encoders, real images)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest

from trustvlm.calibration.cli import add_eval_parser
from trustvlm.calibration.eval_report import RESULTS_JSON, RESULTS_MD, write_report
from trustvlm.calibration.eval_fused import FUSED_METHODS
from trustvlm.calibration.evaluate import (METHODS, STAR_PREDICTIONS, DatasetEmbeddings, EvalConfig, evaluate_dataset,
                                           risk_control_row, run_evaluation)
from trustvlm.contract.scores import SCORES
from trustvlm.calibration.metrics import evaluate_selective
from trustvlm.cli import CliError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def report(tiny_artifacts):
    """One small evaluation: clean + blur, 400 test images, ablations on."""
    return run_evaluation(tiny_artifacts, EvalConfig(k=16, shifts=("blur",), test_limit=400, threads=1))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trustvlm")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _strict_json(text: str) -> dict:
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_every_dataset_and_method_is_reported(report):
    assert [d.name for d in report.datasets] == ["clean", "blur"]
    for result in report.datasets:
        assert list(result.metrics) == [key for key, _ in METHODS + FUSED_METHODS]
        assert result.info["auto_choice"]["score"] in SCORES
        for key in ("msp", "trustvlm_auto", "fused", "fused_star", "auto"):
            row = result.risk_control[key]
            assert 0 <= row["threshold"]["coverage"] <= row["certifiable_limit"] <= 1, key
            assert 0 <= row["oracle_coverage"] <= 1, key
        assert result.info["n_test"] == 400 and result.info["n_calib_shots"] == 160
        assert result.info["n_calib_lambda"] + result.info["n_calib_threshold"] == 5000 - 160


def test_metrics_recompute_from_the_per_sample_scores(report):
    for result in report.datasets:
        samples, labels = result.per_sample, result.per_sample["labels"]
        for key, _ in METHODS + FUSED_METHODS:
            pred = samples[STAR_PREDICTIONS.get(key, "pred")]
            assert result.metrics[key] == evaluate_selective(samples[key], pred == labels), (result.name, key)


def test_accuracy_is_the_zero_shot_one_except_for_trustvlm_star(report):
    for result in report.datasets:
        zero_shot = result.info["zero_shot_accuracy"]
        for key, _ in METHODS:
            expected = (np.mean(result.per_sample["pred_star"] == result.per_sample["labels"])
                        if key == "trustvlm_star" else zero_shot)
            assert result.metrics[key]["accuracy"] == pytest.approx(expected, abs=1e-15), key


def test_trustvlm_is_msp_plus_the_prototype_similarity(report):
    samples = report.datasets[0].per_sample
    np.testing.assert_allclose(samples["trustvlm"], samples["msp"] + samples["proto_sim"], rtol=0, atol=1e-15)


def test_the_test_split_never_influences_prototypes_lambda_or_thresholds():
    # Given one calibration split and two unrelated test splits
    rng = np.random.default_rng(0)
    text = rng.normal(size=(3, 6))
    calib_labels = np.repeat(np.arange(3), 40)
    calib = text[calib_labels] + rng.normal(0, 0.8, (120, 6))
    data_a = DatasetEmbeddings("a", calib, calib_labels, rng.normal(size=(50, 6)), rng.integers(0, 3, 50))
    data_b = replace(data_a, test=rng.normal(size=(70, 6)), test_labels=rng.integers(0, 3, 70))
    config = EvalConfig(k=4, alpha=0.3, delta=0.2)
    # When
    a, b = evaluate_dataset(data_a, text, 10.0, config), evaluate_dataset(data_b, text, 10.0, config)
    # Then
    assert a.lambda_auto == b.lambda_auto and a.lambda_table == b.lambda_table
    assert a.info["auto_choice"] == b.info["auto_choice"] and a.info["auto_table"] == b.info["auto_table"]
    for key in a.risk_control:
        assert a.risk_control[key]["threshold"] == b.risk_control[key]["threshold"]


def test_risk_control_row_applies_the_calibration_threshold_to_test():
    # 400 calibration scores: the top half is always right, the bottom half always wrong
    conf = np.linspace(0, 1, 400)
    correct = conf >= 0.5
    row = risk_control_row(conf, correct, np.array([0.2, 0.7, 0.9, 0.95]), np.array([False, True, False, True]),
                           alpha=0.1, delta=0.1)
    threshold = row["threshold"]["threshold"]
    # SGR may accept a few wrong calibration samples below 0.5 while its bound stays under alpha
    assert 0.2 < threshold < 0.7 and row["threshold"]["risk_upper_bound"] < 0.1
    assert row["test_accepted"] == 3 and row["test_coverage"] == 0.75
    assert row["test_risk"] == pytest.approx(1 / 3)
    # the oracle keeps only the top test score (the next one is wrong); one test certifies more than SGR
    assert row["oracle_coverage"] == 0.25
    assert row["threshold"]["coverage"] <= row["certifiable_limit"] < 0.6


def test_ablations_cover_k_seeds_and_lambda(report):
    shots, lambdas = report.ablations["shots"], report.ablations["lambda"]
    assert [row["k"] for row in shots] == [1, 2, 4, 8, 16]
    assert all(len(row["proto_acc"]["values"]) == 5 and row["proto_acc"]["std"] >= 0 for row in shots)
    # k=16, seed 0, lambda 1 is exactly the main table's TrustVLM (lambda=1)
    at_one = next(row for row in lambdas if row["lambda"] == 1.0)
    assert at_one["trustvlm_aurc"] == report.datasets[0].metrics["trustvlm"]["aurc_x1000"]
    assert shots[-1]["trustvlm_aurc"]["values"][0] == at_one["trustvlm_aurc"]


def test_write_report_writes_tables_json_npz_and_plots(report, tmp_path):
    out = write_report(report, tmp_path / "eval")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([RESULTS_MD, RESULTS_JSON, "clean_scores.npz", "blur_scores.npz",
                            "clean_risk_coverage.png", "blur_risk_coverage.png"])
    markdown = (out / RESULTS_MD).read_text()
    for _, label in METHODS:
        assert f"| {label} |" in markdown, label
    assert "clean AURC↓" in markdown and "blur FPR95↓" in markdown and "### Lambda grid" in markdown
    data = _strict_json((out / RESULTS_JSON).read_text())
    assert data["datasets"]["blur"]["metrics"]["msp"]["n"] == 400
    with np.load(out / "clean_scores.npz", allow_pickle=False) as npz:
        assert {"labels", "pred", "pred_star", "proto_pred", "trustvlm_auto"} <= set(npz.files)
        np.testing.assert_array_equal(npz["msp"], report.datasets[0].per_sample["msp"])
    assert (out / "clean_risk_coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_writes_the_default_folder(tiny_artifacts, tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    for path in tiny_artifacts.iterdir():
        (export / path.name).write_bytes(path.read_bytes())
    args = parse(["eval", "--artifacts", str(export), "--shifts", "--no-ablations", "--test-limit", "200",
                  "--threads", "1"])
    assert args.handler(args) == 0
    assert (export / "eval" / RESULTS_MD).exists()
    out = capsys.readouterr().out
    assert "| MSP |" in out and "wrote" in out
    assert "\nclean, 'auto' score: what the threshold images can certify (delta 10%, " in out
    saved = json.loads((export / "eval" / "results.json").read_text())["datasets"]["clean"]
    assert [point["alpha"] for point in saved["guarantee_frontier"]] == [0.01, 0.02, 0.05, 0.1, 0.2]


def test_cli_eval_bad_input_is_one_error_line(tiny_artifacts, tmp_path):
    args = parse(["eval", "--artifacts", str(tiny_artifacts), "--test-limit", "0", "--out", str(tmp_path / "e")])
    with pytest.raises(CliError, match=r"^test_limit should be >= 1, but got 0$"):
        args.handler(args)
    args = parse(["eval", "--artifacts", str(tiny_artifacts), "--k", "600", "--out", str(tmp_path / "e")])
    with pytest.raises(CliError, match=r"class 'T-shirt/top' has 500 image\(s\), fewer than k=600"):
        args.handler(args)
    assert not (tmp_path / "e").exists()


def test_unknown_shift_is_rejected():
    with pytest.raises(ValueError, match=r"unknown shifts \['fog'\]"):
        EvalConfig(shifts=("fog",))
