import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trustvlm.runtime.scoring.onnx_engine import EngineError, OnnxEncoder, resolve_providers


@pytest.fixture()
def doubling_model(tmp_path):
    """A real ONNX graph: embedding = 2 * x (float32, dynamic batch)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["embedding"])], "g", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "double.onnx"
    onnx.save(model, path)
    return path


def test_encodes_in_batches(doubling_model):
    engine = OnnxEncoder(doubling_model)
    inputs = np.arange(40, dtype=np.float32).reshape(10, 4)
    assert np.array_equal(engine.encode_in_batches(inputs, batch_size=3), 2 * inputs)


def test_a_gpu_provider_that_is_missing_is_refused_unless_fallback_is_allowed(doubling_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(EngineError, match="asked for \\['CUDAExecutionProvider'\\]"):
        OnnxEncoder(doubling_model, providers=("cuda", "cpu"))
    engine = OnnxEncoder(doubling_model, providers=("cuda", "cpu"), allow_fallback=True)
    assert engine.providers == ["CPUExecutionProvider"]


def test_a_failing_batch_raises_engine_error_not_garbage(doubling_model):
    engine = OnnxEncoder(doubling_model)
    with pytest.raises(EngineError, match="failed on a batch of shape \\(2, 5\\)"):
        engine.encode(np.zeros((2, 5), np.float32))


def test_missing_or_corrupt_files_and_unknown_providers(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        OnnxEncoder(tmp_path / "none.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(EngineError, match="cannot load"):
        OnnxEncoder(corrupt)
    with pytest.raises(EngineError, match="unknown execution providers"):
        resolve_providers(["QuantumExecutionProvider"])


def test_encode_to_ortvalue_leaves_the_output_in_an_ortvalue(doubling_model):
    engine = OnnxEncoder(doubling_model)
    inputs = np.arange(8, dtype=np.float32).reshape(2, 4)
    value = engine.encode_to_ortvalue(inputs, "cpu")
    assert value.device_name().lower() == "cpu" and value.shape() == [2, 4]
    assert np.array_equal(value.numpy(), 2 * inputs)
    with pytest.raises(EngineError, match=r"double.onnx failed on a batch of shape \(2, 3\)"):
        engine.encode_to_ortvalue(np.zeros((2, 3), np.float32), "cpu")


@pytest.fixture()
def recorded_providers(monkeypatch):
    """Record what InferenceSession is given; run every session on the CPU (no GPU here)."""
    import onnxruntime as ort

    real, seen = ort.InferenceSession, []

    def recording(path, sess_options=None, providers=None):
        seen.append(providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return seen


def test_the_tensorrt_provider_gets_its_engine_cache_and_batch_profile(doubling_model, recorded_providers, tmp_path):
    from trustvlm.contract.files import sha256_file
    from trustvlm.runtime.scoring.ort_providers import TensorRTProviderSettings

    settings = TensorRTProviderSettings(max_batch=16, opt_batch=4, cache_root=tmp_path / "cache")
    OnnxEncoder(doubling_model, providers=("tensorrt", "cpu"), allow_fallback=True, tensorrt=settings)
    providers = recorded_providers[-1]
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "CUDA follows TensorRT"
    options = providers[0][1]
    assert options["trt_engine_cache_enable"] is True and options["trt_timing_cache_enable"] is True
    cache = options["trt_engine_cache_path"]
    assert options["trt_timing_cache_path"] == cache
    assert cache.startswith(str(tmp_path / "cache" / f"double-{sha256_file(doubling_model)[:12]}-ort"))
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"],
            options["trt_profile_max_shapes"]) == ("x:1x4", "x:4x4", "x:16x4")


def test_without_settings_the_tensorrt_provider_still_gets_a_cache_beside_the_model(doubling_model, recorded_providers):
    OnnxEncoder(doubling_model, providers=("tensorrt",), allow_fallback=True)
    options = recorded_providers[-1][0][1]
    assert options["trt_engine_cache_path"].startswith(str(doubling_model.parent / "ort_trt_cache" / "double-"))
    assert options["trt_profile_max_shapes"] == "x:8x4" and options["trt_profile_opt_shapes"] == "x:8x4"


def test_other_providers_keep_plain_names(doubling_model, recorded_providers):
    OnnxEncoder(doubling_model, providers=("cuda", "cpu"), allow_fallback=True)
    assert recorded_providers[-1] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_a_graph_no_profile_can_cover_is_refused_for_tensorrt(tmp_path, recorded_providers):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "width"])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "dynamic.onnx")
    with pytest.raises(EngineError, match=r"input 'x' has shape \['batch', 'width'\]: only the batch axis"):
        OnnxEncoder(tmp_path / "dynamic.onnx", providers=("tensorrt",), allow_fallback=True)
