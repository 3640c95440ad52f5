"""int8 exports: the recipe's pieces, the gates, and a real int8 export of the demo model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.conftest import INT8_TRUST_GATE_TEST_IMAGES, require_fashion_mnist
from trustvlm.contract.files import sha256_file
from trustvlm.contract.manifest import encoder_path, read_manifest
from trustvlm.export import quantize
from trustvlm.export.pipeline import ExportError, ExportRequest, export_model
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder



def test_calibration_indices_are_k_per_class_and_avoid_the_excluded():
    # Given 4 classes of 12 images each, and the first 10 images of class 0 excluded
    labels = np.repeat(np.arange(4), 12)
    exclude = np.arange(0, 10)
    # When 2 per class are drawn
    chosen = quantize.calibration_indices(labels, exclude, shots_per_class=2, seed=0)
    # Then 8 sorted indices, 2 of each class, none excluded (class 0 can only give 10 and 11)
    assert list(chosen) == sorted(chosen) and len(chosen) == 8
    assert np.bincount(labels[chosen]).tolist() == [2, 2, 2, 2]
    assert set(chosen[labels[chosen] == 0]) == {10, 11}
    assert not set(chosen) & set(exclude)


def test_calibration_indices_name_a_class_that_is_too_small():
    labels = np.repeat(np.arange(2), 3)
    with pytest.raises(ValueError, match="class '0' has 1 image"):
        quantize.calibration_indices(labels, np.array([0, 1]), shots_per_class=2)


def test_trust_gate_fails_beyond_half_a_point_and_passes_within():
    within = quantize.TrustGateReport(True, fp32_auroc=0.8815, int8_auroc=0.8775, test_images=10)
    beyond = quantize.TrustGateReport(True, fp32_auroc=0.8815, int8_auroc=0.8755, test_images=10)
    assert within.failures() == []
    assert len(beyond.failures()) == 1 and "0.60 points below" in beyond.failures()[0]
    assert quantize.TrustGateReport(True, fp32_auroc=0.88, int8_auroc=math.nan).failures(), "NaN must fail"
    assert quantize.TrustGateReport(False, "random-init").failures() == [], "a gate that does not apply passes"


def test_trust_and_agreement_gates_apply_to_trained_demo_weights_only():
    assert quantize.trust_gate_applies("demo_fmnist", "sha256:abc") == (True, "")
    applies, reason = quantize.trust_gate_applies("demo_fmnist", "random-init")
    assert not applies and "random-init" in reason
    applies, reason = quantize.trust_gate_applies("clip_vitb32", "open_clip:ViT-B-32/openai")
    assert not applies and "clip_vitb32" in reason
    assert quantize.agreement_gate_applies("sha256:abc") == (True, "")
    assert not quantize.agreement_gate_applies("random-init")[0]


def test_export_request_accepts_int8_for_onnx_only():
    assert ExportRequest("demo_fmnist", precision="int8").precision == "int8"
    with pytest.raises(ExportError, match="precision int8 is for ONNX Runtime's CPU provider"):
        ExportRequest("demo_fmnist", precision="int8", format="engine")
    with pytest.raises(ExportError, match=r"precision should be one of \('fp32', 'fp16', 'int8'\), but got 'int4'"):
        ExportRequest("demo_fmnist", precision="int4")


def test_cli_export_takes_precision_int8():
    from trustvlm.cli import build_parser

    args = build_parser().parse_args(["export", "--model", "demo_fmnist", "--precision", "int8"])
    assert args.precision == "int8"


def test_quantize_image_encoder_refuses_non_uint8_pixels(tmp_path):
    with pytest.raises(ValueError, match="non-empty uint8 N x S x S x 3 batch, but got float32"):
        quantize.quantize_image_encoder(tmp_path / "in.onnx", tmp_path / "out.onnx",
                                        np.zeros((2, 8, 8, 3), np.float32))


@pytest.fixture
def int8_demo(int8_demo_artifacts):
    return int8_demo_artifacts


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_int8_export_writes_the_int8_image_encoder_beside_fp32(int8_demo):
    names = sorted(p.name for p in int8_demo.iterdir())
    assert names == ["image_encoder.int8.onnx", "image_encoder.onnx", "manifest.json", "text_encoder.onnx"]
    manifest = read_manifest(int8_demo)
    int8, fp32 = manifest["precisions"]["int8"], manifest["precisions"]["fp32"]
    assert int8["files"]["text_encoder"] == fp32["files"]["text_encoder"], "the text encoder stays fp32"
    assert encoder_path(int8_demo, manifest, "text", "int8").name == "text_encoder.onnx"
    record = int8["files"]["image_encoder"]
    assert sha256_file(int8_demo / record["file"]) == record["sha256"]
    assert int8["quantization"]["reduce_range"] is True and int8["quantization"]["calibration_images"] == 160


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_int8_export_records_passed_gates_including_the_trust_gate(int8_demo):
    int8 = read_manifest(int8_demo)["precisions"]["int8"]
    parity, trust = int8["parity"], int8["trust_gate"]
    assert parity["min_cosine_required"] == 0.99 and parity["image_min_cosine"] >= 0.99
    assert parity["min_agreement_required"] == 0.99 and parity["top1_agreement"] >= 0.99
    assert int8["agreement_gate"] == "applied"
    assert trust["applicable"] and trust["test_images"] == INT8_TRUST_GATE_TEST_IMAGES
    assert trust["fp32_auroc"] - trust["int8_auroc"] <= 0.005, f"trust gate figures {trust}"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_int8_image_encoder_runs_on_uint8_pixels(int8_demo):
    engine = OnnxEncoder(int8_demo / "image_encoder.int8.onnx", precision="int8")
    embedding = engine.encode(np.full((3, 32, 32, 3), 128, np.uint8))
    assert embedding.shape == (3, 128) and np.all(np.isfinite(embedding))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_int8_export_failing_a_gate_writes_nothing(tmp_path, monkeypatch):
    require_fashion_mnist()
    monkeypatch.setattr(quantize, "INT8_MIN_COSINE", 1.01)  # no encoder can pass
    with pytest.raises(ExportError, match=r"parity gate failed \(int8\): image min cosine .* < 1.01"):
        export_model(ExportRequest("demo_fmnist", precision="int8", output_root=tmp_path))
    assert list(tmp_path.iterdir()) == [], "a failed gate must leave no artifact and no staging folder"
