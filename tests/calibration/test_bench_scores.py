"""Smoke test of the scoring benchmark on a tiny problem (no timing is asserted)."""

import pytest

from trustvlm.calibration.bench_scores import main, run_benchmark

pytestmark = pytest.mark.timeout(60)


def test_benchmark_prints_median_and_range_of_both_implementations(capsys):
    assert main(["--embeddings", "64", "--classes", "7", "--dim", "16", "--repeats", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "compute_scores (numpy float64)" in out and "trust head (ONNX Runtime CPU, float32)" in out
    assert out.count("median") == 2 and "3 runs" in out


def test_both_implementations_agree_on_the_benchmark_data():
    result = run_benchmark(n=200, classes=11, dim=8, repeats=1, threads=1)
    assert result.pred_agreement == 1.0 and result.kappa_max_abs_diff < 1e-5
    assert len(result.reference.seconds) == len(result.trust_head.seconds) == 1


def test_bad_sizes_are_one_error_line(capsys):
    assert main(["--repeats", "0"]) == 1
    assert capsys.readouterr().err.strip() == "bench_scores: error: repeats should be >= 1, but got 0"
