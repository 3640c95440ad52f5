"""Image encoder throughput: PyTorch eager against ONNX Runtime (fp32, int8), per batch size.

Every backend gets the same uint8 pixels (``batch x S x S x 3``, normalization inside the model,
as exported) and the same thread count. Backends are interleaved within each repeat (torch,
ONNX fp32, ONNX int8, torch, ...), so load that comes and goes during the run hits them alike,
and ratios are taken per repeat (paired), then summarized.

A sample is the wall-clock time of enough consecutive calls to cover at least
:data:`MIN_IMAGES_PER_SAMPLE` images (16 calls at batch 1, 2 at batch 8, 1 at batch 32), after
one warm-up call per backend and batch size, and after :data:`PAUSE_BEFORE_SAMPLE_S` idle (why:
see there).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustvlm.benchmarks.stats import Figure, ratio, time_calls

MIN_IMAGES_PER_SAMPLE = 16
BATCH_SIZES = (1, 8, 32)
#: Idle time before each timed sample. ONNX Runtime's intra-op workers keep spinning for a moment
#: after a run; PyTorch's OpenMP threads started meanwhile share the cores with them and stall at
#: every barrier. Measured here at batch 1: PyTorch right after ONNX Runtime 0.55 images/s, after
#: a 0.3 s pause 6.5 images/s.
PAUSE_BEFORE_SAMPLE_S = 0.5


@dataclass(frozen=True)
class Backend:
    """A named way to encode one uint8 batch."""

    name: str
    encode: Callable[[np.ndarray], object]


@dataclass(frozen=True)
class ThroughputResult:
    """images/s per backend name and batch size, measured in step."""

    images_per_s: dict[str, dict[int, Figure]]

    def ratio(self, numerator: str, denominator: str, batch: int) -> Figure:
        """Paired ratio of two backends at one batch size."""
        return ratio(self.images_per_s[numerator][batch], self.images_per_s[denominator][batch])

    def to_dict(self) -> dict:
        return {name: {str(b): fig.to_dict() for b, fig in per_batch.items()}
                for name, per_batch in self.images_per_s.items()}


def torch_backend(model, mean, std, threads: int) -> Backend:
    """PyTorch eager (inference mode) on the export wrapper: the same graph the ONNX file holds."""
    import torch  # noqa: PLC0415

    from trustvlm.export.torch_wrappers import ImageEncoderForExport  # noqa: PLC0415

    torch.set_num_threads(threads)
    wrapper = ImageEncoderForExport(model, mean, std).eval()

    def encode(pixels: np.ndarray):
        with torch.inference_mode():
            return wrapper(torch.from_numpy(pixels))

    return Backend("pytorch eager", encode)


def onnx_backend(name: str, path: Path, threads: int, precision: str = "fp32") -> Backend:
    """ONNX Runtime CPU provider, all graph optimizations, `threads` intra-op threads."""
    from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder  # noqa: PLC0415

    engine = OnnxEncoder(path, threads=threads, precision=precision)
    return Backend(name, engine.encode)


def random_pixels(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """A uint8 NHWC batch (content does not change the cost of a dense encoder)."""
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def measure_throughput(backends: list[Backend], size: int, batch_sizes=BATCH_SIZES, repeats: int = 5,
                       min_images: int = MIN_IMAGES_PER_SAMPLE, log=None,
                       pause_s: float = PAUSE_BEFORE_SAMPLE_S) -> ThroughputResult:
    """images/s of every backend at every batch size (see the module docstring).

    Raises:
        ValueError: No backend, or `repeats` below 1.
    """
    if not backends:
        raise ValueError("measure_throughput needs at least one backend")
    if repeats < 1:
        raise ValueError(f"repeats should be >= 1, but got {repeats}")
    result: dict[str, dict[int, list[float]]] = {b.name: {batch: [] for batch in batch_sizes} for b in backends}
    for batch in batch_sizes:
        pixels = random_pixels(batch, size)
        calls = max(1, math.ceil(min_images / batch))
        for backend in backends:
            backend.encode(pixels)  # warm-up: allocations, kernel selection
        for _ in range(repeats):
            for backend in backends:
                time.sleep(pause_s)
                seconds = time_calls(lambda: backend.encode(pixels), 1, calls, warmup=0).samples[0]
                result[backend.name][batch].append(batch * calls / seconds)
        if log:
            log("  batch " + str(batch) + ": " + ", ".join(
                f"{b.name} {Figure(tuple(result[b.name][batch])).format()}" for b in backends) + " images/s")
    return ThroughputResult({name: {batch: Figure(tuple(values), "images/s") for batch, values in per.items()}
                             for name, per in result.items()})
