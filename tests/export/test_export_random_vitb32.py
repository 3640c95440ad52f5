"""The real ViT-B/32 architecture with random weights: exports, passes parity, is stamped random-init."""

import pytest

from tests.conftest import require_fashion_mnist
from tests.export.in_process import run_in_process
from trustvlm.contract.manifest import read_manifest
from trustvlm.export.tensorrt_compat import check_for_tensorrt

pytestmark = pytest.mark.slow


def test_random_init_vitb32_exports_with_parity_and_stamp(tmp_path, capfd):
    require_fashion_mnist()
    result = run_in_process(capfd, "export", "--model", "clip_vitb32", "--weights", "random", "--output", tmp_path,
                            "--parity-images", "16")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[random-init weights" in result.stdout
    assert "parity fp32" in result.stderr + result.stdout
    manifest = read_manifest(tmp_path / "clip_vitb32")
    assert manifest["weights"] == {"id": "random-init", "random_init": True,
                                   "source": "random init (seed 0) of ViT-B-32"}
    assert manifest["embedding"]["dim"] == 512 and manifest["preprocess"]["size"] == 224
    parity = manifest["precisions"]["fp32"]["parity"]
    assert parity["image_min_cosine"] >= 0.9999 and parity["text_min_cosine"] >= 0.9999
    assert manifest["text_input"]["shape"] == ["batch", 77]
    for name in ("image_encoder.onnx", "text_encoder.onnx"):
        assert check_for_tensorrt(tmp_path / "clip_vitb32" / name) == [], f"TensorRT's parser would refuse {name}"
