"""Bad input: one clear line, a non-zero exit, and no half-written artifact."""

import os
import subprocess
import sys

import pytest

from trustvlm.export import parity
from trustvlm.export.pipeline import ExportError, ExportRequest, export_model
from tests.conftest import require_fashion_mnist


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "trustvlm", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def assert_one_clear_line(result, *fragments):
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_unknown_model_lists_known_models(tmp_path):
    result = run_cli("export", "--model", "clip_vitz", "--output", str(tmp_path))
    assert_one_clear_line(result, "unknown model 'clip_vitz'", "clip_vitb32", "demo_fmnist")


def test_missing_weights_offline_name_the_file_and_weights_option(tmp_path):
    result = run_cli("export", "--model", "clip_vitb32", "--output", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert_one_clear_line(result, "clip_vitb32", "ViT-B-32-openai.pt", "WEIGHTS=")
    assert not (tmp_path / "clip_vitb32").exists()


def test_missing_checkpoint_file(tmp_path):
    result = run_cli("export", "--model", "demo_fmnist", "--weights", str(tmp_path / "nope.pt"),
                     "--output", str(tmp_path))
    assert_one_clear_line(result, "does not exist")


def test_corrupt_checkpoint(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(4096))
    result = run_cli("export", "--model", "clip_vitb32", "--weights", str(corrupt), "--output", str(tmp_path))
    assert_one_clear_line(result, "cannot load", "corrupt.pt")
    assert not (tmp_path / "clip_vitb32").exists()


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_cli("export", "--model", "demo_fmnist", "--output", str(blocker / "artifacts"))
    assert_one_clear_line(result, "cannot write to")


def test_tensorrt_engine_without_tensorrt_is_one_line(tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    require_fashion_mnist()
    result = run_cli("export", "--model", "demo_fmnist", "--format", "engine", "--output", str(tmp_path))
    assert_one_clear_line(result, "TensorRT is not importable")
    assert not (tmp_path / "demo_fmnist").exists(), "nothing written when the engine cannot be built"


@pytest.mark.slow
def test_a_parity_gate_miss_fails_and_writes_nothing(tmp_path, monkeypatch):
    require_fashion_mnist()
    monkeypatch.setattr(parity, "FP32_MIN_COSINE", 1.01)  # unreachable: every cosine is <= 1
    with pytest.raises(ExportError, match="parity gate failed \\(fp32\\): image min cosine"):
        export_model(ExportRequest("demo_fmnist", output_root=tmp_path, parity_images=16))
    assert list(tmp_path.iterdir()) == [], "no artifact and no staging folder left behind"


def test_bad_precision_is_refused():
    with pytest.raises(ExportError, match="precision should be one of"):
        ExportRequest("demo_fmnist", precision="int4")
