"""Execution backends of the image encoder, chosen from one table (:data:`BACKENDS`).

Each :class:`BackendSpec` says how to open the image encoder from the bundle's export, where its
embeddings live, and what the trust head then needs; ``trustvlm serve --backend`` offers the
table's keys and the scorer opens whichever is configured without knowing which it is. Adding a
backend is one table entry and its module (an engine that fits :class:`ImageEngine`).

* ``onnxruntime`` (default): the manifest's ONNX file of the bundle's precision, in an ONNX
  Runtime session on the configured providers (TensorRT EP, CUDA EP, CPU EP).
* ``tensorrt-engine``: the engine that ``make export FORMAT=engine`` built and listed under the
  manifest's ``engines``, run by :class:`~trustvlm.runtime.scoring.tensorrt_engine.TensorRTEncoder`
  (needs tensorrt and an NVIDIA GPU; the trust head still runs in ONNX Runtime, on the CUDA EP).

An engine is used only when it provably comes from the encoder the bundle was calibrated with:
its manifest record names the precision and the sha256 of the ONNX file it was built from, both
must equal the bundle's, and it must have passed the export's parity gate against the torch
model (the same cosine gate as the ONNX file of its precision); the engine file's own sha256 is
checked when it is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from trustvlm.contract.bundle import engine_sha256
from trustvlm.contract.manifest import ArtifactError, encoder_path

ONNXRUNTIME, TENSORRT_ENGINE = "onnxruntime", "tensorrt-engine"
#: ONNX Runtime providers whose outputs live on a CUDA device.
ORT_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class ImageEngine(Protocol):
    """What the scorer needs of an image encoder, whichever backend runs it."""

    path: Path
    providers: list[str] | tuple[str, ...]

    def encode(self, batch: np.ndarray) -> np.ndarray: ...

    def encode_to_ortvalue(self, batch: np.ndarray, device_type: str = "cuda", device_id: int = 0): ...


@dataclass(frozen=True)
class EncoderRequest:
    """What a backend gets to open the image encoder of one bundle.

    Attributes:
        artifacts_dir: The export folder (manifest.json and the encoder files).
        manifest: Its manifest.
        precision: The precision the bundle was calibrated with.
        onnx_file: The ONNX image encoder of that precision, already checked against the
            manifest's sha256 (what the bundle was calibrated with, and what an engine must have
            been built from).
        providers: ONNX Runtime providers of the configuration (short or full names, in order).
        allow_fallback: Accept a session that did not get a requested GPU provider.
        threads: Intra-op threads per session (None: the runtime's choice).
        max_batch: The most frames per batch (the TensorRT provider's profile covers 1..max_batch).
        spin: Whether ONNX Runtime's idle intra-op threads spin-wait (see :class:`OnnxEncoder`).
    """

    artifacts_dir: Path
    manifest: dict
    precision: str
    onnx_file: Path
    providers: tuple[str, ...]
    allow_fallback: bool
    threads: int | None
    max_batch: int = 8
    spin: bool = True


@dataclass(frozen=True)
class BackendSpec:
    """One execution backend of the image encoder.

    Attributes:
        name: The key in :data:`BACKENDS` (``ScorerConfig.backend``, ``serve --backend``).
        summary: One line for ``serve --help``.
        open_encoder: Opens the image encoder; raises ArtifactError or EngineError in one line.
        engine_provider: The name its engines report as their first provider, when it is not an
            ONNX Runtime provider (None: the engine reports ONNX Runtime's own).
        embedding_device: Where its embeddings stay (``"cuda"``: on the GPU, handed to the trust
            head there through IOBinding), or None when that follows the providers.
        head_providers: ONNX Runtime providers the trust head must run on to take those
            embeddings (empty: any).
    """

    name: str
    summary: str
    open_encoder: Callable[[EncoderRequest], ImageEngine]
    engine_provider: str | None = None
    embedding_device: str | None = None
    head_providers: tuple[str, ...] = ()


def device_of(engine: ImageEngine) -> str | None:
    """``"cuda"`` when the engine's first provider leaves its outputs on a CUDA device, else None."""
    first = engine.providers[0] if engine.providers else None
    if first in ORT_CUDA_PROVIDERS:
        return "cuda"
    return next((spec.embedding_device for spec in BACKENDS.values() if spec.engine_provider == first), None)


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


def _open_onnxruntime(request: EncoderRequest) -> ImageEngine:
    from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder  # noqa: PLC0415 - keeps this module light
    from trustvlm.runtime.scoring.ort_providers import TensorRTProviderSettings  # noqa: PLC0415

    return OnnxEncoder(request.onnx_file, request.providers, request.allow_fallback, request.threads,
                       request.precision, TensorRTProviderSettings(max_batch=request.max_batch), spin=request.spin)


def _open_tensorrt_engine(request: EncoderRequest) -> ImageEngine:
    from trustvlm.runtime.scoring.tensorrt_engine import TensorRTEncoder  # noqa: PLC0415 - needs tensorrt

    path, sha256 = tensorrt_engine_path(request.artifacts_dir, request.manifest, request.precision)
    return TensorRTEncoder(path, expected_sha256=sha256)


#: Every execution backend, by name; the first is the default.
BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec(ONNXRUNTIME, "the exported .onnx image encoder in ONNX Runtime, on --providers", _open_onnxruntime),
    BackendSpec(TENSORRT_ENGINE, "the TensorRT engine of `make export FORMAT=engine` (needs tensorrt, a GPU and "
                                 "--providers cuda for the trust head)", _open_tensorrt_engine,
                engine_provider="TensorRTEngine", embedding_device="cuda", head_providers=("cuda",)),
)}


def backend_spec(name: str) -> BackendSpec:
    """The table entry of backend `name`.

    Raises:
        ValueError: A name that is not in :data:`BACKENDS`.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend should be one of {tuple(BACKENDS)}, but got {name!r}")
    return BACKENDS[name]


def open_image_engine(artifacts_dir: str | Path, manifest: dict, precision: str, backend: str,
                      providers: tuple[str, ...], allow_fallback: bool, threads: int | None,
                      max_batch: int = 8, spin: bool = True) -> ImageEngine:
    """Open the image encoder of `precision` with `backend` (see the module docstring).

    The ONNX file is checked against the manifest's sha256 for every backend: it is what the
    bundle was calibrated with, and what an engine must have been built from.

    Raises:
        ValueError: An unknown backend.
        ArtifactError: Missing, corrupt or mismatched encoder files.
        trustvlm.runtime.scoring.onnx_engine.EngineError: A session or engine that cannot be created.
    """
    spec = backend_spec(backend)
    onnx_file = encoder_path(Path(artifacts_dir), manifest, "image", precision)
    return spec.open_encoder(EncoderRequest(Path(artifacts_dir), manifest, precision, onnx_file, tuple(providers),
                                            allow_fallback, threads, max_batch, spin))
