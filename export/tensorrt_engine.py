"""Build serialized TensorRT engines from the exported ONNX encoders (TensorRT 10 Python API).

Engines are cached under a name that spells out what makes them stale: TensorRT version, GPU
name and compute capability, precision, batch profile and the sha256 of the ONNX file. A stale
engine is never loaded because its name can never match. An export stages its files in a fresh
folder, so :func:`build_engine` also looks for the engine and the timing cache in the folders it
is given to reuse from (the published export's ``engines/``).

Networks are strongly typed: each tensor has the type the ONNX graph gives it, so an fp16 engine
is built from the fp16 ONNX graph, and no precision flag is set (``BuilderFlag.FP16`` is
deprecated since TensorRT 10.12 and absent from 11). Before parsing, the graph is checked against
the parser's documented limits (:mod:`trustvlm.export.tensorrt_compat`), so a graph TensorRT would
refuse fails with the list of reasons.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx

from trustvlm.contract.files import sha256_file, write_bytes_atomic
from trustvlm.export.errors import TensorRTUnavailableError
from trustvlm.export.tensorrt_compat import graph_precision, tensorrt_problems
from trustvlm.runtime.scoring.gpu_info import GpuUnavailableError, check_tensorrt_version, describe_cuda_device


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
    """Import tensorrt (10.x), or raise one clear line."""
    try:
        import tensorrt  # noqa: PLC0415 - optional dependency
    except (ImportError, OSError) as error:
        raise TensorRTUnavailableError(
            "TensorRT is not importable here: FORMAT=engine needs an NVIDIA GPU and `pip install "
            "'trustvlm-edge[trt]'` (or JetPack's python3-libnvinfer on Jetson); use FORMAT=onnx otherwise") from error
    too_old = check_tensorrt_version(str(getattr(tensorrt, "__version__", "unknown")))
    if too_old:
        raise TensorRTUnavailableError(too_old)
    return tensorrt


def describe_gpu() -> tuple[str, str]:
    """(GPU name, 'smXY') of CUDA device 0, from the CUDA driver (no torch needed)."""
    try:
        return describe_cuda_device()
    except GpuUnavailableError as error:
        raise TensorRTUnavailableError(f"{error}; TensorRT engines are built on the GPU that will run them") from error


def engine_cache_name(stem: str, trt_version: str, gpu_name: str, capability: str, precision: str,
                      profile: BatchProfile, onnx_sha256: str) -> str:
    """File name of a cached engine, e.g. image_encoder_trt-10.3.0_NVIDIA-H100_sm90_fp16_b1-8-32_1a2b3c4d5e6f.engine."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-")
    return (f"{stem}_trt-{trt_version}_{gpu}_{capability}_{precision}_"
            f"b{profile.min}-{profile.opt}-{profile.max}_{onnx_sha256[:12]}.engine")


def _parse(trt, builder, onnx_path: Path, precision: str):
    model = onnx.load(str(onnx_path), load_external_data=False)
    problems = tensorrt_problems(model)
    if problems:
        raise RuntimeError(f"TensorRT's ONNX parser would refuse {onnx_path.name}: {'; '.join(problems)}")
    if graph_precision(model) != precision:
        raise RuntimeError(f"{onnx_path.name} is an {graph_precision(model)} graph, but a {precision} engine was asked "
                           f"for: networks are strongly typed, so build each precision from its own ONNX file")
    del model
    # TensorRT 10: explicit batch is the only mode; strongly typed: the ONNX graph's types decide precision
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
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
                 workspace_bytes: int = 2 << 30, reuse_from: Iterable[Path] = ()) -> Path:
    """Build (or reuse) a serialized engine for `onnx_path` in `cache_dir`; return its path.

    `precision` names the engine; the types come from the ONNX graph (strongly typed network), so
    `onnx_path` must be the graph of that precision. An engine of the same name in `cache_dir` or
    in a `reuse_from` folder is reused (copied into `cache_dir`), and so is the timing cache.
    """
    trt = import_tensorrt()
    gpu_name, capability = describe_gpu()
    name = engine_cache_name(onnx_path.stem, trt.__version__, gpu_name, capability, precision, profile,
                             sha256_file(onnx_path))
    timing_name = f"timing_trt-{trt.__version__}_{capability}.cache"
    folders = [cache_dir, *reuse_from]
    engine_path = cache_dir / name
    cached = next((folder / name for folder in folders if (folder / name).is_file()), None)
    if cached is not None:
        if cached != engine_path:
            cache_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, engine_path)
        return engine_path
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse(trt, builder, onnx_path, precision)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; fp32 means fp32 (parity gate 0.9999)
    config.add_optimization_profile(_profile(builder, network, profile))
    timing = next((folder / timing_name for folder in folders if (folder / timing_name).is_file()), None)
    _set_timing_cache(config, timing.read_bytes() if timing else b"")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path.name} (see the log above)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(engine_path, bytes(serialized))
    write_bytes_atomic(cache_dir / timing_name, bytes(config.get_timing_cache().serialize()))
    return engine_path


def _set_timing_cache(config, data: bytes) -> None:
    """Give the builder the saved timing cache; start an empty one when TensorRT refuses it (another GPU/version)."""
    if data and config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
        return
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise RuntimeError("TensorRT refused an empty timing cache (see the log above)")


def prune_engines(engines_dir: Path, keep: Iterable[str]) -> list[Path]:
    """Remove the ``*.engine`` files in `engines_dir` whose names are not in `keep`; return them.

    Timing caches stay: they only speed up the next build on this GPU.
    """
    keep = set(keep)
    removed = [path for path in sorted(engines_dir.glob("*.engine")) if path.name not in keep]
    for path in removed:
        path.unlink()
    return removed

