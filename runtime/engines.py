"""Which backend runs an exported image encoder: ONNX Runtime, or a serialized TensorRT engine.

Backends (``ScorerConfig.backend`` / ``trustvlm serve --backend``):

* ``onnxruntime`` (default): the manifest's ONNX file of the bundle's precision, in an ONNX
  Runtime session on the configured providers (TensorRT EP, CUDA EP, CPU EP).
* ``tensorrt-engine``: the engine that ``make export FORMAT=engine`` built and listed under the
  manifest's ``engines``, run by :class:`~trustvlm.runtime.tensorrt_engine.TensorRTEncoder`
  (needs tensorrt and an NVIDIA GPU; the trust head still runs in ONNX Runtime, on the CUDA EP).

An engine is used only when it provably comes from the encoder the bundle was calibrated with:
its manifest record names the precision and the sha256 of the ONNX file it was built from, both
must equal the bundle's, and it must have passed the export's parity gate against the torch
model (the same cosine gate as the ONNX file of its precision); the engine file's own sha256 is
checked when it is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from trustvlm.contract.bundle import engine_sha256
from trustvlm.contract.manifest import ArtifactError, encoder_path

ONNXRUNTIME, TENSORRT_ENGINE = "onnxruntime", "tensorrt-engine"
BACKENDS = (ONNXRUNTIME, TENSORRT_ENGINE)
#: Providers (or backend names) whose outputs live on a CUDA device.
CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "TensorRTEngine")


class ImageEngine(Protocol):
    """What the scorer needs of an image encoder, whichever backend runs it."""

    path: Path
    providers: list[str] | tuple[str, ...]

    def encode(self, batch: np.ndarray) -> np.ndarray: ...

    def encode_to_ortvalue(self, batch: np.ndarray, device_type: str = "cuda", device_id: int = 0): ...


def device_of(engine: ImageEngine) -> str | None:
    """``"cuda"`` when the engine's first provider leaves its outputs on a CUDA device, else None."""
    return "cuda" if engine.providers and engine.providers[0] in CUDA_PROVIDERS else None


def tensorrt_engine_path(artifacts_dir: str | Path, manifest: dict, precision: str) -> tuple[Path, str]:
    """(path, sha256) of the manifest's image encoder engine, checked against the ONNX file of `precision`.

    Raises:
        ArtifactError: No engine, or one of another precision or built from another ONNX file.
    """
    folder = Path(artifacts_dir)
    record = manifest.get("engines", {}).get("image_encoder")
    rebuild = f"`make export MODEL={manifest.get('model')} FORMAT=engine PRECISION={precision}` on this device"
    if precision == "int8":
        raise ArtifactError(f"{folder}: int8 bundles run their int8 ONNX image encoder with --backend onnxruntime "
                            "(TensorRT engines are built for fp32 or fp16 bundles)")
    if not record:
        raise ArtifactError(f"{folder} has no TensorRT engine: build one with {rebuild}, "
                            "or serve with --backend onnxruntime")
    if record.get("precision") != precision:
        raise ArtifactError(f"{folder}: the TensorRT engine is {record.get('precision')} but the bundle was "
                            f"calibrated with the {precision} encoder; build one with {rebuild}")
    if record.get("onnx_sha256") != engine_sha256(manifest, precision, towers=("image",))["image_encoder"]:
        raise ArtifactError(f"{folder}: the TensorRT engine was not built from the {precision} image encoder the "
                            f"manifest lists (sha256 differs or is not recorded); rebuild it with {rebuild}")
    parity = record.get("parity") or {}
    if not parity.get("image_min_cosine", 0.0) >= parity.get("min_cosine_required", 1.0):
        raise ArtifactError(f"{folder}: the TensorRT engine has no passed parity check against the {precision} "
                            f"image encoder (cosine {parity.get('image_min_cosine')} < required "
                            f"{parity.get('min_cosine_required')}); rebuild it with {rebuild}")
    path = folder / record["file"]
    if not path.exists():
        raise ArtifactError(f"{path} is listed in the manifest but missing; rebuild it with {rebuild}")
    return path, str(record["sha256"])


def open_image_engine(artifacts_dir: str | Path, manifest: dict, precision: str, backend: str,
                      providers: tuple[str, ...], allow_fallback: bool, threads: int | None) -> ImageEngine:
    """Open the image encoder of `precision` with `backend` (see the module docstring).

    The ONNX file is checked against the manifest's sha256 for both backends: it is what the
    bundle was calibrated with, and what an engine must have been built from.

    Raises:
        ArtifactError: Missing, corrupt or mismatched encoder files.
        trustvlm.runtime.onnx_engine.EngineError: A session or engine that cannot be created.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend should be one of {BACKENDS}, but got {backend!r}")
    onnx_file = encoder_path(Path(artifacts_dir), manifest, "image", precision)
    if backend == ONNXRUNTIME:
        from trustvlm.runtime.onnx_engine import OnnxEncoder  # noqa: PLC0415 - keeps this module light

        return OnnxEncoder(onnx_file, providers, allow_fallback, threads, precision)
    from trustvlm.runtime.tensorrt_engine import TensorRTEncoder  # noqa: PLC0415 - needs tensorrt

    path, sha256 = tensorrt_engine_path(artifacts_dir, manifest, precision)
    return TensorRTEncoder(path, expected_sha256=sha256)
