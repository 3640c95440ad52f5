"""DINOv2 (registry kind "image-encoder") through the export stage: image encoder only, parity, weights errors."""

import os
import subprocess
import sys

import pytest

from tests.conftest import require_fashion_mnist
from tests.export.in_process import hub_offline, run_in_process
from trustvlm.contract.manifest import read_manifest


def run_cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "trustvlm", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_error_line(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def test_missing_dinov2_weights_offline_name_the_file_and_weights_option(tmp_path, monkeypatch, capfd):
    hub_offline(monkeypatch)  # timm needs the hub to find out: in this process, with torch and timm imported once
    result = run_in_process(capfd, "export", "--model", "dinov2_vitb14", "--output", tmp_path)
    line = one_error_line(result)
    for fragment in ("dinov2_vitb14", "timm vit_base_patch14_dinov2.lvd142m", "model.safetensors", "WEIGHTS="):
        assert fragment in line, line
    assert not (tmp_path / "dinov2_vitb14").exists()


def test_corrupt_dinov2_checkpoint_is_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(os.urandom(4096))
    line = one_error_line(run_cli("export", "--model", "dinov2_vits14", "--weights", str(corrupt),
                                  "--output", str(tmp_path)))
    assert "cannot load" in line and "corrupt.pth" in line and "vit_small_patch14_dinov2" in line, line
    assert not (tmp_path / "dinov2_vits14").exists()


@pytest.mark.slow
def test_random_init_dinov2_vitb14_exports_the_image_encoder_alone(tmp_path, capfd):
    # Given / When: the real ViT-B/14 architecture, random weights, a small parity set to stay fast
    require_fashion_mnist()
    result = run_in_process(capfd, "export", "--model", "dinov2_vitb14", "--weights", "random", "--output", tmp_path,
                            "--parity-images", "2")
    # Then
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[random-init weights" in result.stdout
    assert "export text encoder" not in result.stdout + result.stderr
    folder = tmp_path / "dinov2_vitb14"
    assert sorted(p.name for p in folder.iterdir()) == ["image_encoder.onnx", "manifest.json"]
    manifest = read_manifest(folder)
    assert manifest["kind"] == "image-encoder" and manifest["architecture"] == "vit_base_patch14_dinov2"
    assert manifest["weights"]["id"] == "random-init" and manifest["weights"]["random_init"]
    assert manifest["embedding"]["dim"] == 768 and manifest["preprocess"]["size"] == 224
    assert manifest["preprocess"]["mean"] == [0.485, 0.456, 0.406] and manifest["preprocess"]["interpolation"] == "bicubic"
    parity = manifest["precisions"]["fp32"]["parity"]
    assert parity["image_min_cosine"] >= 0.9999 and parity["images"] == 2
    assert parity["prompts"] == 0 and parity["top1_agreement"] is None


@pytest.mark.slow
def test_dinov2_from_a_local_checkpoint_file(tmp_path):
    """A timm-format state dict at DINOv2's native 518 px: position embeddings resampled to 224."""
    require_fashion_mnist()
    import timm  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415

    from trustvlm.export.pipeline import ExportRequest, export_model  # noqa: PLC0415
    from trustvlm.contract.files import sha256_file  # noqa: PLC0415

    torch.manual_seed(1)
    checkpoint = tmp_path / "model.safetensors"
    save_file(timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518).state_dict(), checkpoint)
    result = export_model(ExportRequest("dinov2_vits14", weights=str(checkpoint), output_root=tmp_path / "out",
                                        parity_images=2))
    assert result.manifest["weights"] == {"id": f"sha256:{sha256_file(checkpoint)}", "source": str(checkpoint),
                                          "random_init": False}
    assert result.parity["fp32"].image_min_cosine >= 0.9999
