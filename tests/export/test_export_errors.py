"""Bad input: one clear line, a non-zero exit, and no half-written artifact.

Each mistake that shows without torch (a model name, a file, a folder, TensorRT) is refused before
`trustvlm export` imports it: these commands run in a new process and take about a second. Missing
pretrained weights need open_clip to find out, so that one runs in this process.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from trustvlm.export import parity
from trustvlm.export.pipeline import ExportError, ExportRequest, export_model
from tests.conftest import require_fashion_mnist
from tests.export.in_process import hub_offline, run_in_process


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


def test_missing_weights_offline_name_the_file_and_weights_option(tmp_path, monkeypatch, capfd):
    hub_offline(monkeypatch)
    result = run_in_process(capfd, "export", "--model", "clip_vitb32", "--output", tmp_path)
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


def test_refusals_come_before_torch_is_imported(tmp_path):
    # Given: one mistake of each kind that shows without a model
    (tmp_path / "corrupt.pt").write_bytes(b"\x00 not a checkpoint\n" * 256)  # not random: no header by chance
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    mistakes = [["--model", "clip_vitz"], ["--model", "demo_fmnist", "--weights", tmp_path / "nope.pt"],
                ["--model", "dinov2_vits14", "--weights", tmp_path / "corrupt.pt"],
                ["--model", "demo_fmnist", "--output", tmp_path / "a_file" / "artifacts"],
                ["--model", "demo_fmnist", "--name", "../up"],
                ["--model", "clip_vitb32", "--tokenizer", tmp_path / "empty"],
                ["--model", "siglip_vitb16", "--tokenizer", tmp_path / "nope"],
                ["--model", "siglip_vitb16", "--tokenizer", tmp_path / "empty"]]
    commands = [["export", *map(str, args)] + ([] if "--output" in args else ["--output", str(tmp_path / "out")])
                for args in mistakes]
    # When: each is run by `trustvlm export` in one fresh interpreter
    script = ("import sys\nfrom trustvlm.cli import main\n"
              f"codes = [main(argv) for argv in {commands!r}]\n"
              "print(codes, sorted(m for m in ('torch', 'open_clip', 'timm', 'onnx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    # Then: every one is refused in its line, and nothing heavy was imported to find out
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{[1] * len(mistakes)} []", result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("trustvlm export: error: ")]
    assert len(errors) == len(mistakes), result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # OpenAI's .pt files are TorchScript archives
def test_a_checkpoint_is_told_from_junk_by_its_first_bytes(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file  # noqa: PLC0415
    from trustvlm.export.preflight import looks_like_a_checkpoint  # noqa: PLC0415

    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "torchscript.pt")
    save_file(state, tmp_path / "model.safetensors")
    np.save(tmp_path / "weights.npy", np.zeros(3))
    np.savez(tmp_path / "weights.npz", w=np.zeros(3))
    for name in ("zip.pt", "legacy.pt", "torchscript.pt", "model.safetensors", "weights.npy", "weights.npz"):
        assert looks_like_a_checkpoint(tmp_path / name), name
    (tmp_path / "text.pt").write_text("{\"not\": \"a checkpoint\"}" * 40)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:20])
    for name in ("text.pt", "empty.pt", "truncated.safetensors"):
        assert not looks_like_a_checkpoint(tmp_path / name), name


def test_bad_precision_is_refused():
    with pytest.raises(ExportError, match="precision should be one of"):
        ExportRequest("demo_fmnist", precision="int4")
