"""`make gpu-check`: one clear line without a GPU; the steps stop at the first failure or skip."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trustvlm.benchmarks import gpu_check

pytestmark = pytest.mark.timeout(120)


def test_without_a_gpu_it_fails_in_one_line_and_runs_nothing(tmp_path):
    # Given this machine (no NVIDIA driver, no GPU)
    result = subprocess.run([sys.executable, "-m", "trustvlm.benchmarks.gpu_check", "--root", str(tmp_path / "c")],
                            capture_output=True, text=True, timeout=120)
    # Then it exits 1 with one line that names the missing GPU, and ran nothing
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("gpu-check: no GPU here (no NVIDIA driver here"), result.stderr
    assert not (tmp_path / "c").exists()


def test_a_gpu_without_the_gpu_packages_is_named_in_one_line(monkeypatch):
    import trustvlm.runtime.scoring.gpu_info as info

    monkeypatch.setattr(info, "describe_cuda_device", lambda: ("NVIDIA H200", "sm90"))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    line = gpu_check.preflight()
    assert line.startswith("gpu-check: NVIDIA H200 (sm90) found, but: ") and "\n" not in line
    assert "no CUDAExecutionProvider" in line and "tensorrt is not importable" in line
    assert "nvImageCodec is not installed" in line


def test_the_plan_covers_tests_both_engine_exports_the_three_scorers_soak_bench_and_frame_path(tmp_path, capsys):
    assert gpu_check.main(["--root", str(tmp_path), "--plan"]) == 0
    out = capsys.readouterr().out
    for expected in ("test_gpu_scorer.py", "--model demo_fmnist --precision fp16 --format engine",
                     "--model clip_vitb32 --weights random --precision fp16 --format engine", "--compare",
                     "--serve-arg=--backend=tensorrt-engine", "--serve-arg=--providers=cuda",
                     "trustvlm.benchmarks.gpu ", "test_gpu_decode.py::", "trustvlm.benchmarks.frame_path",
                     "--paths old new gpu"):
        assert expected in out, expected
    assert sum(step.timeout_s for step in gpu_check.plan(tmp_path)) <= 4500


def test_steps_stop_at_the_first_failure(tmp_path, capsys):
    ok = gpu_check.Step("fine", (sys.executable, "-c", "print('ok')"), 60)
    failing = gpu_check.Step("broken", (sys.executable, "-c", "import sys; print('bad'); sys.exit(3)"), 60)
    never = gpu_check.Step("never", (sys.executable, "-c", "print('ran')"), 60)
    assert gpu_check.run([ok, failing, never], tmp_path / "logs") == 1
    out = capsys.readouterr().out
    assert "gpu-check: FAILED at [2] broken (exit 3" in out and "[3/3]" not in out
    assert (tmp_path / "logs" / "02.log").read_text() == "bad\n"


def test_a_skipped_gpu_test_is_a_failure_not_a_green_run(tmp_path, capsys):
    (tmp_path / "test_gpu_thing.py").write_text("import pytest\n\ndef test_x():\n    pytest.skip('needs a GPU')\n")
    step = gpu_check.Step("GPU tests", (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                        str(tmp_path / "test_gpu_thing.py")), 120)
    assert gpu_check.run([step], tmp_path / "logs") == 1
    assert "skipped tests (a GPU machine must run them)" in capsys.readouterr().out
