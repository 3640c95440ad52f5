"""The TensorRT-engine backend.

Here: a fake ``tensorrt`` module (tests/runtime/fake_tensorrt.py) whose "engines" are real ONNX
graphs run by ONNX Runtime through the raw buffer addresses the backend hands over, with the
backend's buffers as CPU OrtValues. On a machine with tensorrt and onnxruntime-gpu: a real engine
built from the demo image encoder, compared with ONNX Runtime on Fashion-MNIST.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trustvlm.contract.files import sha256_file
from trustvlm.contract.manifest import read_manifest
from trustvlm.runtime.scoring.onnx_engine import EngineError
from trustvlm.runtime.scoring.tensorrt_engine import TensorRTEncoder

from . import fake_tensorrt

pytestmark = pytest.mark.timeout(60)
SIZE, DIM = 4, 5


def save_model(path, nodes, inputs, outputs, constants) -> None:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def write_tiny_encoder(path, input_type=TensorProto.UINT8, output_type=TensorProto.FLOAT,
                       second_input: bool = False):
    """pixels [batch, 4, 4, 3] -> float embedding [batch, 5]: a fixed random projection of the pixels."""
    constants = {"weight": np.random.default_rng(0).normal(size=(SIZE * SIZE * 3, DIM)).astype(np.float32),
                 "flat": np.array([0, -1], np.int64)}
    pixels = [helper.make_tensor_value_info("pixels", input_type, ["batch", SIZE, SIZE, 3])]
    nodes = [helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT)]
    if second_input:
        pixels.append(helper.make_tensor_value_info("mask", TensorProto.UINT8, ["batch", SIZE, SIZE, 3]))
        nodes += [helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
                  helper.make_node("Add", ["x", "m"], ["x2"])]
    nodes += [helper.make_node("Reshape", ["x2" if second_input else "x", "flat"], ["flat_x"]),
              helper.make_node("MatMul", ["flat_x", "weight"], ["linear"]),
              helper.make_node("Cast", ["linear"], ["embedding"], to=output_type)]
    save_model(path, nodes, pixels, [helper.make_tensor_value_info("embedding", output_type, ["batch", DIM])],
               constants)
    return path


def write_head(path, dim: int):
    """A stand-in trust head: L2-normalize the embedding, then cosine against 3 prototypes."""
    prototypes = np.random.default_rng(1).normal(size=(dim, 3)).astype(np.float32)
    nodes = [helper.make_node("LpNormalization", ["embedding"], ["unit"], axis=1, p=2),
             helper.make_node("MatMul", ["unit", "prototypes"], ["scores"])]
    save_model(path, nodes, [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
               [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])], {"prototypes": prototypes})
    return path


def reference(onnx_path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def pixels(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture()
def fake_trt(monkeypatch) -> fake_tensorrt.FakeOptions:
    """Install the fake tensorrt; the returned options steer it and record the batches it ran."""
    options = fake_tensorrt.FakeOptions()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make_module(options))
    return options


@pytest.fixture()
def tiny_engine(tmp_path):
    return write_tiny_encoder(tmp_path / "tiny.engine")


@pytest.fixture(scope="module")
def fmnist_pixels(demo_artifacts) -> np.ndarray:
    """20 Fashion-MNIST test images preprocessed as the demo model's manifest says (uint8 20 x 32 x 32 x 3)."""
    from trustvlm.data.fashion_mnist import load_split, to_rgb  # noqa: PLC0415
    from trustvlm.runtime.decode.preprocess import PreprocessConfig, preprocess_batch  # noqa: PLC0415

    config = PreprocessConfig.from_dict(read_manifest(demo_artifacts)["preprocess"])
    return preprocess_batch(to_rgb(load_split("test").images[:20]), config)


@pytest.fixture()
def demo_engine(demo_artifacts, tmp_path):
    """The demo model's real exported image encoder, as a fake engine file."""
    path = tmp_path / "image_encoder.engine"
    path.write_bytes((demo_artifacts / "image_encoder.onnx").read_bytes())
    return path


# --- results -------------------------------------------------------------------------------------


@pytest.mark.timeout(300)  # the first test to ask for demo_artifacts exports the demo model
@pytest.mark.parametrize("n", [1, 3, 8])
def test_embeddings_equal_onnx_runtime_on_the_real_encoder(fake_trt, demo_engine, fmnist_pixels, n):
    # Given the real demo image encoder behind the fake engine, on CPU buffers
    encoder = TensorRTEncoder(demo_engine, device_type="cpu")
    # When a batch of n Fashion-MNIST images is encoded
    got = encoder.encode(fmnist_pixels[:n])
    # Then the embeddings are exactly those of ONNX Runtime on the same graph and batch
    expected = reference(demo_engine, fmnist_pixels[:n])
    assert got.dtype == np.float32 and got.shape == expected.shape == (n, 128), (got.dtype, got.shape)
    np.testing.assert_array_equal(got, expected, err_msg=f"batch of {n}")
    assert (encoder.input_name, encoder.output_name) == ("pixels", "embedding")
    assert encoder.input_shape == ["batch", 32, 32, 3] and encoder.max_batch == 8
    assert encoder.providers == ("TensorRTEngine",) and encoder.device_type == "cpu" and encoder.device_id == 0


@pytest.mark.timeout(300)
def test_a_batch_above_max_batch_is_split_into_chunks(fake_trt, demo_engine, fmnist_pixels):
    encoder = TensorRTEncoder(demo_engine, device_type="cpu")
    fake_trt.runs.clear()
    got = encoder.encode(fmnist_pixels)  # 20 images, max_batch 8
    assert [shape[0] for shape in fake_trt.runs] == [8, 8, 4], fake_trt.runs
    expected = np.concatenate([reference(demo_engine, fmnist_pixels[s:s + 8]) for s in (0, 8, 16)])
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got, reference(demo_engine, fmnist_pixels), rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(300)
def test_the_device_embedding_feeds_the_head_through_iobinding(fake_trt, demo_engine, fmnist_pixels, tmp_path):
    # Given the encoder and a stand-in trust head, both on the same device (the CPU here)
    encoder = TensorRTEncoder(demo_engine, device_type="cpu")
    head = ort.InferenceSession(str(write_head(tmp_path / "head.onnx", 128)), providers=["CPUExecutionProvider"])
    batch = fmnist_pixels[:5]
    # When the OrtValue from encode_to_ortvalue is bound as the head's input
    value = encoder.encode_to_ortvalue(batch)
    assert value.device_name().lower() == "cpu" and value.shape() == [5, 128], (value.device_name(), value.shape())
    binding = head.io_binding()
    binding.bind_ortvalue_input("embedding", value)
    binding.bind_output("scores")
    head.run_with_iobinding(binding)
    through_device = binding.copy_outputs_to_cpu()[0]
    # Then the head gives what it gives for the numpy embeddings of the same batch
    through_host = head.run(None, {"embedding": encoder.encode(batch)})[0]
    np.testing.assert_array_equal(through_device, through_host)
    assert through_device.shape == (5, 3)


def test_io_tensor_order_is_followed_for_the_bindings(monkeypatch, tiny_engine):
    options = fake_tensorrt.FakeOptions(outputs_first=True)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make_module(options))
    encoder = TensorRTEncoder(tiny_engine, device_type="cpu")
    np.testing.assert_array_equal(encoder.encode(pixels(3)), reference(tiny_engine, pixels(3)))


def test_an_embedding_handed_out_is_never_overwritten_by_a_later_run(fake_trt, tiny_engine):
    """A reload's self-check may run beside the scoring thread: each run writes its own output."""
    encoder = TensorRTEncoder(tiny_engine, device_type="cpu")
    first = encoder.encode(pixels(3, seed=1))
    on_device = encoder.encode_to_ortvalue(pixels(3, seed=2))
    later = encoder.encode_to_ortvalue(pixels(3, seed=3))
    assert later.data_ptr() != on_device.data_ptr(), "each run must write a new output"
    np.testing.assert_array_equal(on_device.numpy(), reference(tiny_engine, pixels(3, seed=2)),
                                  err_msg="a later run overwrote an embedding on the device")
    np.testing.assert_array_equal(first, reference(tiny_engine, pixels(3, seed=1)),
                                  err_msg="a later run overwrote an embedding already returned")
    assert encoder.encode(pixels(0)).shape == (0, DIM)


def test_an_fp16_output_is_refused_because_the_trust_head_takes_float32(fake_trt, tmp_path):
    path = write_tiny_encoder(tmp_path / "half.engine", output_type=TensorProto.FLOAT16)
    with pytest.raises(EngineError, match=r"half.engine gives .* for 'embedding', but the trust head takes float32 "
                                          r"embeddings: rebuild it with `make export FORMAT=engine`"):
        TensorRTEncoder(path, device_type="cpu")


def test_a_matching_sha256_is_accepted(fake_trt, tiny_engine):
    encoder = TensorRTEncoder(tiny_engine, expected_sha256=sha256_file(tiny_engine).upper(), device_type="cpu")
    assert encoder.encode(pixels(1)).shape == (1, DIM)


# --- errors --------------------------------------------------------------------------------------


def test_a_missing_engine_file_is_refused(fake_trt, tmp_path):
    with pytest.raises(EngineError, match=r"engine file .*none\.engine does not exist; build it with `make export"):
        TensorRTEncoder(tmp_path / "none.engine", device_type="cpu")


def test_a_sha256_mismatch_is_refused(fake_trt, tiny_engine):
    actual = sha256_file(tiny_engine)
    with pytest.raises(EngineError, match=f"tiny.engine has sha256 {actual}, but {'0' * 64} was expected"):
        TensorRTEncoder(tiny_engine, expected_sha256="0" * 64, device_type="cpu")


def test_no_tensorrt_says_what_to_install_or_use_instead(monkeypatch, tiny_engine):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(EngineError, match=r"needs the tensorrt package and an NVIDIA GPU .*python3-libnvinfer.*"
                                          r"use the ONNX Runtime providers") as raised:
        TensorRTEncoder(tiny_engine, device_type="cpu")
    assert "\n" not in str(raised.value)


def test_an_engine_that_does_not_deserialize_says_to_rebuild(fake_trt, tmp_path):
    stale = tmp_path / "stale.engine"
    stale.write_bytes(b"\x00not an engine for this TensorRT")
    with pytest.raises(EngineError, match=r"could not deserialize stale\.engine .*TensorRT version and GPU they were "
                                          r"built with: rebuild it with `make export FORMAT=engine`"):
        TensorRTEncoder(stale, device_type="cpu")


def test_execute_v2_returning_false_is_an_engine_error(fake_trt, tiny_engine):
    encoder = TensorRTEncoder(tiny_engine, device_type="cpu")
    fake_trt.execute_result = False
    with pytest.raises(EngineError, match=r"tiny\.engine failed on a batch of shape \(2, 4, 4, 3\): TensorRT "
                                          r"execute_v2 returned False"):
        encoder.encode(pixels(2))
    with pytest.raises(EngineError, match=r"batch of shape \(2, 4, 4, 3\)"):
        encoder.encode_to_ortvalue(pixels(2))


def test_an_exception_during_a_run_is_an_engine_error(fake_trt, tiny_engine):
    encoder = TensorRTEncoder(tiny_engine, device_type="cpu")
    fake_trt.execute_error = "an illegal memory access was encountered"
    with pytest.raises(EngineError, match=r"tiny\.engine failed on a batch of shape \(3, 4, 4, 3\): an illegal"):
        encoder.encode(pixels(3))


def test_an_engine_that_takes_float_pixels_is_refused(fake_trt, tmp_path):
    path = write_tiny_encoder(tmp_path / "float.engine", input_type=TensorProto.FLOAT)
    with pytest.raises(EngineError, match=r"float\.engine takes DataType\.FLOAT for 'pixels', but the image encoder "
                                          r"takes uint8 pixels"):
        TensorRTEncoder(path, device_type="cpu")


def test_an_engine_with_two_inputs_is_refused(fake_trt, tmp_path):
    path = write_tiny_encoder(tmp_path / "two.engine", second_input=True)
    with pytest.raises(EngineError, match=r"has inputs \['pixels', 'mask'\] and outputs \['embedding'\]; an image "
                                          r"encoder engine has exactly one of each"):
        TensorRTEncoder(path, device_type="cpu")


@pytest.mark.parametrize("batch, got", [(np.zeros((2, SIZE, SIZE, 3), np.float32), r"float32 \(2, 4, 4, 3\)"),
                                        (np.zeros((2, 5, 5, 3), np.uint8), r"uint8 \(2, 5, 5, 3\)"),
                                        (np.zeros((SIZE, SIZE, 3), np.uint8), r"uint8 \(4, 4, 3\)")])
def test_a_batch_of_the_wrong_dtype_or_shape_is_refused(fake_trt, tiny_engine, batch, got):
    encoder = TensorRTEncoder(tiny_engine, device_type="cpu")
    fake_trt.runs.clear()
    for encode in (encoder.encode, encoder.encode_to_ortvalue):
        with pytest.raises(EngineError, match=f"takes uint8 pixels of shape N x 4 x 4 x 3, but got {got}"):
            encode(batch)
    assert fake_trt.runs == [], "nothing reached the engine"


def test_encode_to_ortvalue_refuses_more_than_max_batch(fake_trt, tiny_engine):
    encoder = TensorRTEncoder(tiny_engine, device_type="cpu")
    with pytest.raises(EngineError, match=r"takes 1\.\.8 images per device batch, but got 9; use encode\(\)"):
        encoder.encode_to_ortvalue(pixels(9))
    assert encoder.encode(pixels(9)).shape == (9, DIM), "encode splits what encode_to_ortvalue refuses"


def test_encode_to_ortvalue_takes_only_its_own_device(fake_trt, tiny_engine):
    encoder = TensorRTEncoder(tiny_engine, device_type="cpu")
    assert encoder.encode_to_ortvalue(pixels(2), "cpu", 0).shape() == [2, DIM], "the scorer passes the device"
    with pytest.raises(EngineError, match=r"keeps its embeddings on cpu:0, but cuda:0 was asked for"):
        encoder.encode_to_ortvalue(pixels(2), "cuda")


def test_cuda_buffers_on_a_cpu_only_onnxruntime_ask_for_onnxruntime_gpu(fake_trt, tiny_engine):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(EngineError, match=r"onnxruntime cannot allocate cuda:0 memory for tiny\.engine: the "
                                          r"TensorRT-engine backend needs onnxruntime-gpu"):
        TensorRTEncoder(tiny_engine, device_type="cuda")


def test_a_cuda_device_other_than_0_is_refused(fake_trt, tiny_engine):
    with pytest.raises(EngineError, match=r"device_id 1: .*select the GPU with CUDA_VISIBLE_DEVICES"):
        TensorRTEncoder(tiny_engine, device_id=1, device_type="cuda")


def test_the_module_imports_neither_torch_nor_onnx_nor_tensorrt():
    code = ("import sys, trustvlm.runtime.scoring.tensorrt_engine; "
            "print(sorted(m for m in ('torch', 'onnx', 'tensorrt') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


# --- the real thing ------------------------------------------------------------------------------


def _why_no_real_tensorrt() -> str | None:
    try:
        import tensorrt  # noqa: F401, PLC0415
    except ImportError:
        return "tensorrt is not importable"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDA provider (needs onnxruntime-gpu and a GPU)"
    return None


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.timeout(300)
@pytest.mark.skipif(_why_no_real_tensorrt() is not None, reason=f"real TensorRT: {_why_no_real_tensorrt()}")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_real_engine_matches_onnx_runtime_on_fashion_mnist(demo_artifacts, fmnist_pixels, tmp_path, precision):
    from trustvlm.export.tensorrt_engine import build_engine  # noqa: PLC0415
    from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder  # noqa: PLC0415

    onnx_path = demo_artifacts / ("image_encoder.onnx" if precision == "fp32" else "image_encoder.fp16.onnx")
    engine_path = build_engine(onnx_path, tmp_path, precision=precision)  # strongly typed: the graph's precision
    encoder = TensorRTEncoder(engine_path, expected_sha256=sha256_file(engine_path))
    batch = fmnist_pixels[:16]
    expected = OnnxEncoder(onnx_path).encode(batch)

    def cosine(got: np.ndarray) -> np.ndarray:
        want = expected[:len(got)]
        return (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)

    got = encoder.encode(batch)
    assert got.dtype == np.float32 and got.shape == expected.shape, (got.dtype, got.shape)
    assert cosine(got).min() >= 0.999, f"{precision}: cosines {cosine(got)}"
    value = encoder.encode_to_ortvalue(batch[:8])
    assert value.device_name().lower() == "cuda", value.device_name()
    assert cosine(value.numpy().astype(np.float32)).min() >= 0.999


# --- input buffers -------------------------------------------------------------------------------


@pytest.mark.parametrize("max_batch", [8, 6])
def test_input_buffers_come_in_a_few_sizes_and_padding_never_changes_results(fake_trt, tiny_engine, max_batch):
    # Given an engine whose profile takes 1..max_batch rows
    fake_trt.max_batch = max_batch
    encoder = TensorRTEncoder(tiny_engine, device_type="cpu")
    # When every batch size runs, larger ones first (so smaller batches land in padded buffers' first rows)
    for n in range(max_batch, 0, -1):
        batch = pixels(n, seed=n)
        np.testing.assert_array_equal(encoder.encode(batch), reference(tiny_engine, batch), err_msg=f"batch {n}")
    # Then the buffers are power-of-two sizes (capped at max_batch), at most twice one of max_batch rows
    assert sorted(encoder._inputs) == sorted({min(max_batch, 1 << (n - 1).bit_length()) for n in range(1, max_batch + 1)})
    assert sum(encoder._inputs) < (2 if max_batch & (max_batch - 1) == 0 else 3) * max_batch
    assert [encoder.bucket(n) for n in (1, 3, 5)] == [1, 4, min(8, max_batch)]


def test_tensorrt_before_10_is_refused_in_one_line(monkeypatch, tiny_engine):
    old = fake_tensorrt.make_module(fake_tensorrt.FakeOptions())
    old.__version__ = "8.6.1"
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    with pytest.raises(EngineError, match=r"^TensorRT 8.6.1 is too old: this project needs TensorRT 10.x"):
        TensorRTEncoder(tiny_engine, device_type="cpu")
