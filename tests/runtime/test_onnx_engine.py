import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trustvlm.runtime.onnx_engine import EngineError, OnnxEncoder, resolve_providers


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
