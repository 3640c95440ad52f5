"""TensorRT engines: cache keys here; the real build where tensorrt and a CUDA GPU exist."""

import importlib.util

import numpy as np
import pytest

from trustvlm.export.tensorrt_engine import BatchProfile, engine_cache_name


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


def _gpu_with_tensorrt() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


@pytest.mark.tensorrt
@pytest.mark.skipif(_gpu_with_tensorrt() is not None, reason=f"needs tensorrt and a GPU: {_gpu_with_tensorrt()}")
def test_engine_builds_and_matches_onnx_runtime(demo_artifacts, tmp_path):
    import tensorrt as trt
    import torch

    from trustvlm.export.tensorrt_engine import build_engine
    from trustvlm.runtime.onnx_engine import OnnxEncoder

    onnx_path = demo_artifacts / "image_encoder.onnx"
    engine_path = build_engine(onnx_path, tmp_path, precision="fp16")
    assert build_engine(onnx_path, tmp_path, precision="fp16") == engine_path, "second call reuses the cache"
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    pixels = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    inputs = torch.from_numpy(pixels).cuda()
    outputs = torch.empty((8, 128), dtype=torch.float32, device="cuda")
    context.set_input_shape("pixels", tuple(inputs.shape))
    context.set_tensor_address("pixels", inputs.data_ptr())
    context.set_tensor_address("embedding", outputs.data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    reference = OnnxEncoder(onnx_path).encode(pixels)
    got = outputs.cpu().numpy()
    cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.999, cosine
