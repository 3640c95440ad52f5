"""Real exports of the embedded demo model: files, manifest, parity, graph portability, accuracy."""


import onnx
import pytest

from trustvlm.contract.files import sha256_file
from trustvlm.contract.manifest import encoder_path, read_manifest
from trustvlm.pipelines.zero_shot_check import zero_shot_check

pytestmark = pytest.mark.slow


def test_writes_fp32_and_fp16_files_named_apart(demo_artifacts):
    names = sorted(p.name for p in demo_artifacts.iterdir())
    assert names == ["image_encoder.fp16.onnx", "image_encoder.onnx", "manifest.json",
                     "text_encoder.fp16.onnx", "text_encoder.onnx"]
    assert not list(demo_artifacts.parent.glob(".*partial*")), "no staging folder left behind"


def test_manifest_records_what_the_runtime_needs(demo_artifacts):
    manifest = read_manifest(demo_artifacts)
    assert manifest["model"] == "demo_fmnist"
    assert manifest["weights"]["id"].startswith("sha256:") and not manifest["weights"]["random_init"]
    assert manifest["preprocess"]["size"] == 32 and manifest["image_input"]["dtype"] == "uint8"
    assert manifest["embedding"]["dim"] == 128
    assert 5 < manifest["logit_scale"] < 100, "the learned logit scale, not a default"
    assert manifest["opset"] >= 17
    assert {"torch", "onnx", "onnxruntime", "numpy"} <= set(manifest["libraries"])
    for precision in ("fp32", "fp16"):
        for tower in ("image", "text"):
            record = manifest["precisions"][precision]["files"][f"{tower}_encoder"]
            assert sha256_file(demo_artifacts / record["file"]) == record["sha256"]


def test_parity_figures_pass_their_gates(demo_artifacts):
    precisions = read_manifest(demo_artifacts)["precisions"]
    fp32, fp16 = precisions["fp32"]["parity"], precisions["fp16"]["parity"]
    assert fp32["image_min_cosine"] >= 0.9999 and fp32["text_min_cosine"] >= 0.9999
    assert fp16["image_min_cosine"] >= 0.999 and fp16["text_min_cosine"] >= 0.999
    assert fp16["top1_agreement"] >= 0.995
    assert fp32["images"] == 200 and fp32["prompts"] == 80


def test_text_graph_pools_without_int64_argmax_or_float_token_ids(demo_artifacts):
    for name in ("text_encoder.onnx", "text_encoder.fp16.onnx"):
        graph = onnx.load(demo_artifacts / name).graph
        assert not [n for n in graph.node if n.op_type == "ArgMax"], f"{name} has an ArgMax"
        token_consumers = {n.op_type for n in graph.node if "tokens" in n.input}
        assert "Equal" in token_consumers, "end-of-text found by equality with its id"
        assert token_consumers <= {"Equal", "Gather", "Reshape", "Shape"}, f"{name}: {token_consumers}"


def test_image_encoder_takes_uint8_pixels_with_dynamic_batch(demo_artifacts):
    graph = onnx.load(demo_artifacts / "image_encoder.onnx").graph
    pixels = graph.input[0]
    assert pixels.name == "pixels" and pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = pixels.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [32, 32, 3]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_exported_demo_model_classifies_fashion_mnist(demo_artifacts, precision):
    result = zero_shot_check(demo_artifacts, precision)
    assert result.images == 10_000
    assert 0.85 <= result.accuracy < 0.99, f"zero-shot accuracy {result.accuracy:.4f}"


def test_corrupted_encoder_is_detected_by_its_hash(demo_artifacts, fresh_copy):
    copy = fresh_copy(demo_artifacts)
    data = bytearray((copy / "image_encoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "image_encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 does not match the manifest"):
        encoder_path(copy, read_manifest(copy), "image")
