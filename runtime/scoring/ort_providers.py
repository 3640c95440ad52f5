"""Provider options of ONNX Runtime sessions: the TensorRT provider's engine cache and batch profile.

Without options, ONNX Runtime's TensorRT provider builds its engine at every session start and
rebuilds it whenever a batch size outside the shapes it has seen arrives: the self-check runs at
batch 1, so the first multi-camera batch would rebuild mid-stream (minutes on a Jetson). With
these options the engine covers batch 1 .. ``max_batch`` from the start (one optimization
profile: min 1, opt ``opt_batch``, max ``max_batch``) and is cached on disk, so a restart or a
bundle reload loads it instead of building it.

The cache folder is keyed by the ONNX file's sha256, the ONNX Runtime version and the GPU, because
ONNX Runtime's own engine names do not change when the weights of a same-shaped model do. The
CUDA provider follows the TensorRT provider, for the nodes TensorRT does not take.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from trustvlm.contract.files import sha256_file
from trustvlm.runtime.scoring.gpu_info import GpuUnavailableError, describe_cuda_device

TENSORRT_PROVIDER, CUDA_PROVIDER = "TensorrtExecutionProvider", "CUDAExecutionProvider"
CACHE_FOLDER = "ort_trt_cache"


@dataclass(frozen=True)
class TensorRTProviderSettings:
    """What the TensorRT provider of one session needs.

    Attributes:
        max_batch: The largest batch the session will see (the profile's max).
        opt_batch: The batch TensorRT tunes for (None: ``max_batch``, the full multi-camera batch).
        cache_root: Folder of the engine caches (None: ``ort_trt_cache`` beside the ONNX file).
        fp16: Let TensorRT run fp32 layers in fp16 (``trt_fp16_enable``); the fp16 ONNX graph does not need it.
    """

    max_batch: int = 8
    opt_batch: int | None = None
    cache_root: Path | None = None
    fp16: bool = False

    def __post_init__(self) -> None:
        opt = self.max_batch if self.opt_batch is None else self.opt_batch
        if not 1 <= opt <= self.max_batch:
            raise ValueError(f"the TensorRT provider's profile needs 1 <= opt_batch <= max_batch, but got "
                             f"{opt} and {self.max_batch}")


def gpu_key() -> str:
    """'name-smXY' of CUDA device 0, or 'gpu' when the driver cannot say (the key only separates caches)."""
    try:
        name, capability = describe_cuda_device()
    except GpuUnavailableError:
        return "gpu"
    return "".join(c if c.isalnum() else "-" for c in name).strip("-") + f"-{capability}"


def cache_folder(path: Path, settings: TensorRTProviderSettings) -> Path:
    """The engine cache folder of the ONNX file `path` (see the module docstring)."""
    root = settings.cache_root if settings.cache_root is not None else path.parent / CACHE_FOLDER
    return root / f"{path.stem}-{sha256_file(path)[:12]}-ort{ort.__version__}-{gpu_key()}"


def profile_shapes(inputs: list[tuple[str, list]], batch: int) -> str:
    """ONNX Runtime's profile shape string, e.g. 'pixels:8x224x224x3', for every input at `batch`.

    Raises:
        ValueError: An input with a dynamic dimension other than the first (no profile can cover it).
    """
    parts = []
    for name, shape in inputs:
        tail = list(shape[1:])
        if not all(isinstance(d, int) and d > 0 for d in tail):
            raise ValueError(f"input '{name}' has shape {shape}: only the batch axis may be dynamic for the "
                             "TensorRT provider's profile")
        parts.append(f"{name}:{'x'.join(str(d) for d in (batch, *tail))}")
    return ",".join(parts)


def tensorrt_options(path: Path, inputs: list[tuple[str, list]], settings: TensorRTProviderSettings) -> dict:
    """Options of the TensorRT provider for the ONNX file `path` with these (name, shape) inputs."""
    cache = cache_folder(path, settings)
    cache.mkdir(parents=True, exist_ok=True)
    opt = settings.max_batch if settings.opt_batch is None else settings.opt_batch
    return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": settings.fp16,
            "trt_profile_min_shapes": profile_shapes(inputs, 1),
            "trt_profile_opt_shapes": profile_shapes(inputs, opt),
            "trt_profile_max_shapes": profile_shapes(inputs, settings.max_batch)}


def session_inputs(path: Path) -> list[tuple[str, list]]:
    """(name, shape) of the inputs of the ONNX file `path`, read through a throwaway CPU session."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return [(item.name, list(item.shape)) for item in session.get_inputs()]


def with_provider_options(path: Path, providers: list[str], settings: TensorRTProviderSettings | None) -> list:
    """`providers` as InferenceSession takes them: the TensorRT provider with its options and CUDA after it.

    Providers other than TensorRT keep their defaults (plain names).
    """
    if TENSORRT_PROVIDER not in providers:
        return list(providers)
    settings = settings or TensorRTProviderSettings()
    ordered = list(providers)
    if CUDA_PROVIDER not in ordered:
        ordered.insert(ordered.index(TENSORRT_PROVIDER) + 1, CUDA_PROVIDER)
    options = tensorrt_options(path, session_inputs(path), settings)
    return [(name, options) if name == TENSORRT_PROVIDER else name for name in ordered]
