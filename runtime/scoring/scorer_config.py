"""How the scorer's sessions run (:class:`ScorerConfig`): providers, backend, threads, batching."""

from __future__ import annotations

from dataclasses import dataclass, replace

from trustvlm.runtime.scoring.engines import ONNXRUNTIME, backend_spec

__all__ = ["SCORING_THREAD_WAIT_MS", "ScorerConfig"]

#: How long a batch waits for frames of other cameras when the scoring thread decodes (``max_wait_ms`` None).
SCORING_THREAD_WAIT_MS = 2.0

@dataclass(frozen=True)
class ScorerConfig:
    """How the sessions run.

    Attributes:
        providers: ONNX Runtime providers, short (cpu, cuda, tensorrt) or full names, in order
            (the trust head's, and the encoders' with the onnxruntime backend).
        backend: A key of :data:`~trustvlm.runtime.scoring.engines.BACKENDS`: ``onnxruntime`` (the exported
            ONNX encoders) or ``tensorrt-engine`` (the engines of ``make export FORMAT=engine``;
            needs tensorrt, a GPU and ``providers`` cuda).
        allow_fallback: Accept a session that did not get a requested GPU provider.
        threads: Intra-op threads of the image encoders' sessions (None: ONNX Runtime's choice); the trust
            head and the gate are a few small matrix products and run on one.
        spin: Whether ONNX Runtime's idle intra-op threads spin-wait for the next run (its default). The
            service turns it off when the decode pool is on: spinning threads take the cores the decode
            threads need between batches.
        io_binding: Use IOBinding on GPU providers (ignored on the CPU).
        max_batch: Most frames per batch (at most one per camera).
        max_wait_ms: How long a batch waits for frames of other cameras once one is there. None: 0 beside
            the decode pool (frames that arrive while a batch decodes join the next one; waiting would
            leave the decode threads idle), :data:`SCORING_THREAD_WAIT_MS` when the scoring thread decodes.
        stack_heads: With a camera map, run every bundle's trust head and gate as one graph
            (:mod:`~trustvlm.runtime.scoring.stacked_heads`; needs the onnx package, else one call per
            bundle); False: one call per bundle in the batch.
    """

    providers: tuple[str, ...] = ("cpu",)
    allow_fallback: bool = False
    threads: int | None = None
    spin: bool = True
    io_binding: bool = True
    max_batch: int = 8
    max_wait_ms: float | None = None
    backend: str = ONNXRUNTIME
    stack_heads: bool = True

    def __post_init__(self) -> None:
        backend_spec(self.backend)  # an unknown name is refused here, before any file is read
        if self.max_batch < 1:
            raise ValueError(f"max_batch should be >= 1, but got {self.max_batch}")
        if self.max_wait_ms is not None and not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms should be >= 0, but got {self.max_wait_ms}")

    @property
    def batch_wait_s(self) -> float:
        """How long a batch waits for other cameras, in seconds (None: as on the scoring thread)."""
        return (SCORING_THREAD_WAIT_MS if self.max_wait_ms is None else self.max_wait_ms) / 1e3

    def beside_decode_pool(self, pipelined: bool) -> ScorerConfig:
        """This config as the service runs it: with the decode pool on (`pipelined`), idle ONNX Runtime threads
        sleep instead of spinning (they would take the cores the decode threads need between batches) and
        a batch does not wait for more cameras unless ``max_wait_ms`` says so."""
        wait = self.max_wait_ms if self.max_wait_ms is not None else (0.0 if pipelined else SCORING_THREAD_WAIT_MS)
        return replace(self, spin=self.spin and not pipelined, max_wait_ms=wait)
