"""TensorRT engines: cache keys, the graph check against TensorRT's parser limits, the build's calls on a
fake TensorRT 11 API, and the real build where tensorrt and a CUDA GPU exist (torch is not needed there)."""

import importlib.util
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the export side (onnx, torch) is not installed: a device-only install")
from onnx import TensorProto, helper  # noqa: E402

from tests.export import fake_trt_builder  # noqa: E402
from trustvlm.export import tensorrt_engine  # noqa: E402
from trustvlm.export.tensorrt_compat import check_for_tensorrt, tensorrt_problems  # noqa: E402
from trustvlm.export.tensorrt_engine import (BatchProfile, TensorRTUnavailableError, build_engine, engine_cache_name,
                                             prune_engines)  # noqa: E402
from trustvlm.runtime.scoring.gpu_info import GpuUnavailableError, check_tensorrt_version, describe_cuda_device  # noqa: E402


def test_cache_name_changes_with_everything_that_makes_an_engine_stale():
    base = dict(stem="image_encoder", trt_version="10.3.0", gpu_name="NVIDIA H100 80GB HBM3", capability="sm90",
                precision="fp16", profile=BatchProfile(1, 8, 32), onnx_sha256="ab" * 32)
    name = engine_cache_name(**base)
    assert name == "image_encoder_trt-10.3.0_NVIDIA-H100-80GB-HBM3_sm90_fp16_b1-8-32_abababababab.engine"
    for key, other in (("trt_version", "10.4.0"), ("gpu_name", "Orin"), ("capability", "sm87"),
                       ("precision", "fp32"), ("profile", BatchProfile(1, 4, 16)), ("onnx_sha256", "cd" * 32)):
        assert engine_cache_name(**{**base, key: other}) != name, key


def test_batch_profile_is_checked():
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        BatchProfile(4, 2, 8)


# --- the graph check: what TensorRT's ONNX parser documents as unsupported -------------------------------------

def image_graph(nodes, opset: int = 17) -> onnx.ModelProto:
    """uint8 pixels (batch x 4 x 4 x 3) -> float embedding, through `nodes`."""
    pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 4, 4, 3])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [pixels], [out]),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def test_a_uint8_intermediate_tensor_is_reported_as_the_parser_would_refuse_it():
    # the export before the fix: pixels -> Transpose (uint8 out) -> Cast
    model = image_graph([helper.make_node("Transpose", ["pixels"], ["t"], perm=[0, 3, 1, 2]),
                         helper.make_node("Cast", ["t"], ["embedding"], to=TensorProto.FLOAT)])
    problems = tensorrt_problems(model)
    assert "UINT8 input 'pixels' feeds Transpose: TensorRT takes UINT8 only into a Cast" in problems
    assert any("intermediate tensor 't' (output of Transpose" in p and "is UINT8" in p for p in problems), problems


def test_cast_first_passes():
    model = image_graph([helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
                         helper.make_node("Transpose", ["f"], ["embedding"], perm=[0, 3, 1, 2])])
    assert tensorrt_problems(model) == []


def test_unsupported_ops_types_and_opsets_are_reported():
    model = image_graph([helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.DOUBLE),
                         helper.make_node("Cast", ["f"], ["g"], to=TensorProto.FLOAT),
                         helper.make_node("Det", ["g"], ["embedding"])], opset=21)
    problems = tensorrt_problems(model)
    assert "opset 21 is outside TensorRT's 9..20" in problems
    assert "operator Det is not supported by TensorRT's ONNX parser" in problems
    assert any("intermediate tensor 'f'" in p and "DOUBLE" in p for p in problems), problems


def test_every_graph_of_the_demo_export_passes_the_tensorrt_check(demo_artifacts):
    for name in ("image_encoder.onnx", "image_encoder.fp16.onnx", "text_encoder.onnx", "text_encoder.fp16.onnx"):
        assert check_for_tensorrt(demo_artifacts / name) == [], name
    graph = onnx.load(str(demo_artifacts / "image_encoder.onnx")).graph
    assert [n.op_type for n in graph.node if "pixels" in n.input] == ["Cast"], "uint8 pixels go into a Cast only"


# --- the build, on a fake TensorRT 11 API (no GPU here) ----------------------------------------------------------

@pytest.fixture()
def fake_builder(monkeypatch, tmp_path):
    record = fake_trt_builder.Record()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt_builder.make_module(record))
    monkeypatch.setattr(tensorrt_engine, "describe_gpu", lambda: ("Fake GPU", "sm87"))
    onnx.save(image_graph([helper.make_node("Cast", ["pixels"], ["embedding"], to=TensorProto.FLOAT)]),
              tmp_path / "image_encoder.onnx")
    onnx_path = tmp_path / "image_encoder.fp16.onnx"
    onnx.save(image_graph([helper.make_node("Cast", ["pixels"], ["half"], to=TensorProto.FLOAT16),
                           helper.make_node("Cast", ["half"], ["embedding"], to=TensorProto.FLOAT)]), onnx_path)
    return record, onnx_path


def test_the_build_is_strongly_typed_and_sets_no_precision_flag(fake_builder, tmp_path):
    record, onnx_path = fake_builder
    engine = build_engine(onnx_path, tmp_path / "engines", precision="fp16")
    assert engine.read_bytes() == onnx_path.read_bytes() and record.builds == 1
    strongly_typed = 1 << int(fake_trt_builder.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert record.network_flags == [strongly_typed] and record.set_flags == []
    build_engine(tmp_path / "image_encoder.onnx", tmp_path / "fp32", precision="fp32")
    assert record.cleared_flags == [fake_trt_builder.BuilderFlag.TF32], "fp32 means fp32, not TF32"


def test_an_engine_of_another_precision_than_its_graph_is_refused(fake_builder, tmp_path):
    record, _ = fake_builder
    with pytest.raises(RuntimeError, match="image_encoder.onnx is an fp32 graph, but a fp16 engine was asked for"):
        build_engine(tmp_path / "image_encoder.onnx", tmp_path / "engines", precision="fp16")
    assert record.builds == 0


def test_engine_and_timing_cache_are_reused_from_the_published_export(fake_builder, tmp_path):
    record, onnx_path = fake_builder
    published = tmp_path / "published"
    first = build_engine(onnx_path, published, precision="fp16")
    assert record.timing_caches == [b"timing"] and (published / "timing_trt-11.4.0.106_sm87.cache").exists()
    # a fresh staging folder: the engine comes from the published folder, nothing is built
    again = build_engine(onnx_path, tmp_path / "stage", precision="fp16", reuse_from=(published,))
    assert record.builds == 1 and again.name == first.name and again.read_bytes() == first.read_bytes()
    # another profile needs a build; the timing cache of the published folder is given to it
    build_engine(onnx_path, tmp_path / "stage2", precision="fp16", profile=BatchProfile(1, 4, 16),
                 reuse_from=(published,))
    assert record.builds == 2 and record.timing_caches[-1] == b"timing"


def test_a_timing_cache_tensorrt_refuses_is_replaced_by_an_empty_one(fake_builder, tmp_path):
    record, onnx_path = fake_builder
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "timing_trt-11.4.0.106_sm87.cache").write_bytes(b"from another GPU")
    record.refuse_timing_cache = True
    build_engine(onnx_path, tmp_path / "engines", precision="fp16")
    assert record.timing_caches == [b"from another GPU", b"timing"]


def test_a_graph_tensorrt_would_refuse_fails_before_the_build(fake_builder, tmp_path):
    record, onnx_path = fake_builder
    onnx.save(image_graph([helper.make_node("Transpose", ["pixels"], ["t"], perm=[0, 3, 1, 2]),
                           helper.make_node("Cast", ["t"], ["embedding"], to=TensorProto.FLOAT)]), onnx_path)
    with pytest.raises(RuntimeError, match="TensorRT's ONNX parser would refuse image_encoder.fp16.onnx: UINT8 input"):
        build_engine(onnx_path, tmp_path / "engines")
    assert record.builds == 0


def test_tensorrt_before_10_is_refused_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt_builder.make_module(fake_trt_builder.Record(), "8.6.1"))
    with pytest.raises(TensorRTUnavailableError, match=r"^TensorRT 8.6.1 is too old: this project needs TensorRT 10"):
        tensorrt_engine.import_tensorrt()
    assert check_tensorrt_version("10.3.0") is None and check_tensorrt_version("11.0.0.114") is None


def test_old_engines_are_pruned_and_timing_caches_kept(tmp_path):
    for name in ("a.engine", "b.engine", "timing_trt-10.3.0_sm87.cache"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in prune_engines(tmp_path, {"b.engine"})] == ["a.engine"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.engine", "timing_trt-10.3.0_sm87.cache"]


def test_the_gpu_is_named_without_torch_or_refused_in_one_line():
    def no_driver():
        raise GpuUnavailableError("no NVIDIA driver here (cannot load libcuda.so.1 or libcuda.so)")

    with pytest.raises(GpuUnavailableError, match="no NVIDIA driver here"):
        describe_cuda_device(no_driver)

    class Driver:  # the four CUDA driver calls, as ctypes would make them
        def cuInit(self, flags):
            return 0

        def cuDeviceGet(self, device, ordinal):
            device._obj.value = 0
            return 0

        def cuDeviceGetName(self, buffer, size, device):
            buffer.value = b"Orin"
            return 0

        def cuDeviceGetAttribute(self, value, attribute, device):
            value._obj.value = {75: 8, 76: 7}[attribute]
            return 0

    assert describe_cuda_device(Driver) == ("Orin", "sm87")


# --- the real build, where TensorRT and a GPU exist ----------------------------------------------------------------

def _gpu_with_tensorrt() -> str | None:
    """Why the real build cannot run here (None: it can). Never imports torch."""
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed"
    try:
        tensorrt_engine.import_tensorrt()
        describe_cuda_device()
    except (TensorRTUnavailableError, GpuUnavailableError) as error:
        return str(error)
    if importlib.util.find_spec("torch") is None:
        return "the demo export needs torch (export machines have it)"
    return None


@pytest.mark.tensorrt
@pytest.mark.skipif(_gpu_with_tensorrt() is not None, reason=f"needs tensorrt and a GPU: {_gpu_with_tensorrt()}")
def test_engine_builds_and_matches_onnx_runtime(demo_artifacts, tmp_path):
    from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder
    from trustvlm.runtime.scoring.tensorrt_engine import TensorRTEncoder

    onnx_path = demo_artifacts / "image_encoder.fp16.onnx"
    engine_path = build_engine(onnx_path, tmp_path, precision="fp16")
    assert build_engine(onnx_path, tmp_path, precision="fp16") == engine_path, "second call reuses the cache"
    pixels = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    got = TensorRTEncoder(engine_path).encode(pixels)
    reference = OnnxEncoder(onnx_path, precision="fp16").encode(pixels)
    cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.999, cosine
