"""Build serialized TensorRT engines from the exported ONNX encoders (TensorRT 10 Python API).

Engines are cached under a name that spells out what makes them stale: TensorRT version, GPU
name and compute capability, precision, batch profile and the sha256 of the ONNX file. A stale
engine is never loaded because its name can never match.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from trustvlm.contract.files import sha256_file


class TensorRTUnavailableError(RuntimeError):
    """TensorRT or a CUDA GPU is not available on this machine."""


@dataclass(frozen=True)
class BatchProfile:
    """Optimization profile of the dynamic batch axis."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs 1 <= min <= opt <= max, but got {self.min}/{self.opt}/{self.max}")


def import_tensorrt():
    """Import tensorrt, or raise one clear line."""
    try:
        import tensorrt  # noqa: PLC0415 - optional dependency
    except ImportError as error:
        raise TensorRTUnavailableError(
            "TensorRT is not importable here: FORMAT=engine needs an NVIDIA GPU and `pip install "
            "'trustvlm-edge[trt]'` (or JetPack's python3-libnvinfer on Jetson); use FORMAT=onnx otherwise") from error
    return tensorrt


def describe_gpu() -> tuple[str, str]:
    """(GPU name, 'smXY') of device 0, through torch (export machines have it)."""
    import torch  # noqa: PLC0415 - export-side only

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("no CUDA GPU is visible (torch.cuda.is_available() is False); "
                                       "TensorRT engines are built on the GPU that will run them")
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"sm{major}{minor}"


def engine_cache_name(stem: str, trt_version: str, gpu_name: str, capability: str, precision: str,
                      profile: BatchProfile, onnx_sha256: str) -> str:
    """File name of a cached engine, e.g. image_encoder_trt-10.3.0_NVIDIA-H100_sm90_fp16_b1-8-32_1a2b3c4d5e6f.engine."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-")
    return (f"{stem}_trt-{trt_version}_{gpu}_{capability}_{precision}_"
            f"b{profile.min}-{profile.opt}-{profile.max}_{onnx_sha256[:12]}.engine")


def _parse(trt, builder, onnx_path: Path):
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, trt.Logger(trt.Logger.WARNING))
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    return network


def _profile(builder, network, profile: BatchProfile):
    opt_profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        tail = tuple(tensor.shape)[1:]
        opt_profile.set_shape(tensor.name, (profile.min, *tail), (profile.opt, *tail), (profile.max, *tail))
    return opt_profile


def build_engine(onnx_path: Path, cache_dir: Path, precision: str = "fp16", profile: BatchProfile = BatchProfile(),
                 workspace_bytes: int = 2 << 30) -> Path:
    """Build (or reuse) a serialized engine for `onnx_path`; return its path."""
    trt = import_tensorrt()
    gpu_name, capability = describe_gpu()
    name = engine_cache_name(onnx_path.stem, trt.__version__, gpu_name, capability, precision, profile,
                             sha256_file(onnx_path))
    engine_path = cache_dir / name
    if engine_path.exists():
        return engine_path
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse(trt, builder, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; fp32 means fp32 (parity gate 0.9999)
    config.add_optimization_profile(_profile(builder, network, profile))
    timing_path = cache_dir / f"timing_trt-{trt.__version__}_{capability}.cache"
    timing_cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path.name} (see the log above)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(engine_path, bytes(serialized))
    _write_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
    return engine_path


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".partial")
    temporary.write_bytes(data)
    os.replace(temporary, path)
