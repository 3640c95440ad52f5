"""ONNX Runtime sessions for the exported encoders (no torch).

Providers are asked for by name. When a GPU provider was asked for and ONNX Runtime could not
give it, the session is refused unless `allow_fallback=True`: a robot must not run ten times
slower on the CPU without anyone having chosen that.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from trustvlm.runtime.scoring.ort_providers import TensorRTProviderSettings, with_provider_options

CPU_PROVIDER = "CPUExecutionProvider"
PROVIDER_ALIASES = {
    "cpu": CPU_PROVIDER,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class EngineError(RuntimeError):
    """An engine that cannot be created or that failed on a batch."""


def resolve_providers(names: list[str] | tuple[str, ...]) -> list[str]:
    """Map short names (cpu, cuda, tensorrt) or full provider names to ONNX Runtime names."""
    resolved = [PROVIDER_ALIASES.get(name.lower(), name) for name in names]
    available = ort.get_available_providers()
    unknown = [name for name in resolved if name not in PROVIDER_ALIASES.values() and name not in available]
    if unknown:
        raise EngineError(f"unknown execution providers {unknown}; this onnxruntime offers {available}")
    return resolved


def graph_optimization_level(providers: list[str], precision: str) -> "ort.GraphOptimizationLevel":
    """All optimizations, except fp16 graphs on the CPU provider.

    onnxruntime 1.32's CPU layout optimizations (ORT_ENABLE_ALL) crash the process on fp16
    transformer graphs; EXTENDED runs them correctly. fp16 belongs on GPUs anyway; on the CPU it
    serves the export parity gate.
    """
    if precision == "fp16" and providers[0] == CPU_PROVIDER:
        return ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.GraphOptimizationLevel.ORT_ENABLE_ALL


class OnnxEncoder:
    """One encoder graph in an ONNX Runtime session: batch in, embeddings out."""

    def __init__(self, path: str | os.PathLike, providers: tuple[str, ...] = ("cpu",),
                 allow_fallback: bool = False, threads: int | None = None, precision: str = "fp32",
                 tensorrt: TensorRTProviderSettings | None = None, spin: bool = True, arena: bool = True):
        """Open `path` on `providers`; the TensorRT provider gets `tensorrt`'s cache and batch profile
        (default: batch 1..8) and the CUDA provider after it (see :mod:`trustvlm.runtime.scoring.ort_providers`).

        `spin`: ONNX Runtime's intra-op threads spin-wait for the next run (its default); False lets them
        sleep, so that other threads of the process (the decode pool) get the cores between runs. `arena`: False
        allocates each run's tensors as needed instead of keeping ONNX Runtime's growing CPU arena (for graphs of
        a few small products: the trust heads and gates, where an arena per session is memory for nothing)."""
        self.path = Path(path)
        if not self.path.exists():
            raise EngineError(f"engine file {self.path} does not exist")
        requested = resolve_providers(providers)
        options = ort.SessionOptions()
        options.graph_optimization_level = graph_optimization_level(requested, precision)
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = arena
        try:
            with_options = with_provider_options(self.path, requested, tensorrt)
            requested = [item[0] if isinstance(item, tuple) else item for item in with_options]
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=with_options)
        except Exception as error:  # onnxruntime raises its own exception types
            raise EngineError(f"cannot load {self.path}: {error}") from error
        self.providers = self.session.get_providers()
        missing = [p for p in requested if p != CPU_PROVIDER and p not in self.providers]
        if missing and not allow_fallback:
            raise EngineError(f"{self.path.name}: asked for {missing} but onnxruntime gave {self.providers}; "
                              "install onnxruntime-gpu with a matching CUDA, or allow the CPU fallback explicitly")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def input_shape(self) -> list:
        return self.session.get_inputs()[0].shape

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; raise EngineError (never return garbage) when the session fails."""
        try:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as error:
            raise EngineError(f"{self.path.name} failed on a batch of shape {batch.shape}: {error}") from error

    def encode_to_ortvalue(self, batch: np.ndarray, device_type: str = "cuda", device_id: int = 0) -> "ort.OrtValue":
        """Run one batch and leave the output on `device_type` as an OrtValue (IOBinding).

        On a GPU provider the embedding stays in device memory, so the next session (the trust
        head) can take it with ``bind_ortvalue_input`` without a round trip through the host.
        """
        try:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
            binding.bind_output(self.output_name, device_type, device_id)
            self.session.run_with_iobinding(binding)
            return binding.get_outputs()[0]
        except Exception as error:
            raise EngineError(f"{self.path.name} failed on a batch of shape {batch.shape} "
                              f"(output bound to {device_type}:{device_id}): {error}") from error

    def encode_in_batches(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Run many inputs in fixed-size batches and stack the embeddings."""
        chunks = [self.encode(inputs[start:start + batch_size]) for start in range(0, len(inputs), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
