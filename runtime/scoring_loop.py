"""The scoring thread's loop, as the stages it runs: take a batch, decode it beside the encoder, score, publish.

One batch goes through three stages::

    take (frame buffer) -> decode (the decode pool's workers) -> score and publish (this thread)

With a decode pool (:attr:`~trustvlm.runtime.decode.decode_pool.DecodePool.pipelined`) one batch is
decoding while the one before it is scored: the loop waits until the batch in flight is decoded,
takes the frames that came meanwhile as the next batch and hands them to the pool, then scores the
batch in flight and publishes its decisions. Where the encoder takes 4x the decode time or more
(:meth:`~trustvlm.runtime.decode.decode_pool.DecodePool.prefetch_pays` says no), the batch in flight is
scored first and the next one taken after it, as the freshest frames. Without a pool (``decode.workers``
0) each batch is taken, decoded on this thread, scored and published before the next.

Every item of a batch gets exactly one decision, published in arrival order: scored frames their
scorer's, notices (dropped, stale, replayed, bad frames) a deferral. The scored frames' decisions then pass
the service's decision taps in order (:class:`DecisionTap`: the guarantee monitor, which may defer a camera's
frames ``guarantee_lost`` and stamps its state; the recorder, which only looks). A scorer or a tap that raises
(a bug, not a bad frame) defers the batch's frames ``engine_error``; the loop goes on. It ends when the buffer is
closed and drained (the ingest's shutdown, also begun when the service's watchdog finds a part dead).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from trustvlm.runtime.decode.decode_pool import DecodePool, PendingBatch
from trustvlm.runtime.frames import Notice, ReceivedFrame
from trustvlm.runtime.ingest.frame_buffer import FrameBuffer
from trustvlm.runtime.messages import DecisionMessage, Reason
from trustvlm.runtime.metrics import Observer
from trustvlm.runtime.publisher import Publisher
from trustvlm.runtime.scoring.scorer import Scorer, ScorerSlot

__all__ = ["Batch", "DecisionTap", "ScoringLoop"]

log = logging.getLogger("trustvlm.runtime.service")


@dataclass(frozen=True)
class Batch:
    """One taken batch on its way: its items in arrival order, the frames among them, the scorer that decodes and
    scores it, and its frames being decoded by the pool (None: the scorer decodes its own frames)."""

    items: list[ReceivedFrame | Notice]
    frames: list[ReceivedFrame]
    scorer: Scorer
    decoding: PendingBatch | None

    def wait_decoded(self) -> None:
        """Until the pool has prepared every frame of the batch."""
        if self.decoding is not None:
            self.decoding.wait()


class DecisionTap(Protocol):
    """Sees each scored batch's decisions before they are published; returns them, possibly changed (one per frame,
    in order). Runs on the scoring thread: it must not block."""

    def __call__(self, frames: list[ReceivedFrame], decisions: list[DecisionMessage]) -> list[DecisionMessage]: ...


class ScoringLoop:
    """Runs the stages (see the module docstring) over the parts it is handed.

    Args:
        buffer: Where batches are taken from (``take`` returns None once closed and drained).
        slot: The current scorer (read once per batch: a reload swaps it between batches).
        decode: The decode pool.
        publisher: Where each decision goes, in arrival order.
        observer: Told of each scored batch.
        health: Its ``degraded`` field carries the last engine error (the heartbeat reports it).
        max_batch, batch_wait_s: The micro-batch: at most `max_batch` frames, waiting up to `batch_wait_s`
            for more when nothing is in flight.
        watchdog: Called after each batch: the service checks its other threads there (a dead one begins a
            shutdown, which closes the buffer; the loop ends once it is drained).
        taps: What each scored batch's decisions pass through before they are published, in order.
    """

    def __init__(self, buffer: FrameBuffer, slot: ScorerSlot, decode: DecodePool, publisher: Publisher,
                 observer: Observer, health, max_batch: int, batch_wait_s: float,
                 watchdog: Callable[[], None] = lambda: None, taps: Sequence[DecisionTap] = ()):
        self.buffer, self.slot, self.decode, self.publisher = buffer, slot, decode, publisher
        self.observer, self.health, self.watchdog = observer, health, watchdog
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self.taps = list(taps)

    def run(self) -> None:
        """Until the buffer is closed and drained; every taken item decided."""
        in_flight: Batch | None = None
        while True:
            if in_flight is not None and not self.decode.prefetch_pays():
                self.score_and_publish(in_flight)  # the encoder is the bottleneck: the next batch is taken after it
                in_flight = None
            if in_flight is not None:
                in_flight.wait_decoded()  # then the next batch is what came meanwhile
            taken = self.take(fresh=in_flight is None)
            following = self.submit(taken) if taken else None
            if in_flight is not None:
                self.score_and_publish(in_flight)
            if taken is None:
                return
            in_flight = following
            if in_flight is not None and not self.decode.pipelined:
                self.score_and_publish(in_flight)
                in_flight = None
            self.watchdog()

    def take(self, fresh: bool) -> list[ReceivedFrame | Notice] | None:
        """The next batch: with nothing in flight (`fresh`), wait for frames; else take what is there now."""
        if fresh:
            return self.buffer.take(self.max_batch, self.batch_wait_s, timeout_s=0.1)
        return self.buffer.take(self.max_batch, 0.0, timeout_s=0.0)

    def submit(self, items: list[ReceivedFrame | Notice]) -> Batch:
        """Start decoding the batch's frames with the current scorer's preprocessing (it scores them too).

        A scorer that decodes its own frames (``decodes_own_frames``: the cluster scorer's replicas do)
        gets them as received: they skip the pool.
        """
        scorer: Scorer = self.slot.current()
        frames = [item for item in items if isinstance(item, ReceivedFrame)]
        pooled = frames and not scorer.decodes_own_frames
        return Batch(items, frames, scorer, self.decode.submit(frames, scorer) if pooled else None)

    def score_and_publish(self, batch: Batch) -> None:
        """Score the batch's frames, then publish one decision per item in arrival order."""
        scorer, frames = batch.scorer, batch.frames
        decisions = self.score(batch) if frames else []
        scored = iter(decisions)
        for item in batch.items:
            self.publisher.submit(next(scored) if isinstance(item, ReceivedFrame) else scorer.defer(item))

    def score(self, batch: Batch) -> list:
        """One decision per frame of `batch`; a scorer's exception defers them all (``engine_error``)."""
        scorer, frames, decoding = batch.scorer, batch.frames, batch.decoding
        started = time.perf_counter()
        try:
            if decoding is None:  # a scorer that decodes its frames itself
                decisions = scorer.decide(frames)
            else:
                pixels = decoding.result()  # the workers' part: not timed as the batch's
                started = time.perf_counter()
                decisions = scorer.decide(frames, pixels)
        except Exception as error:  # a bug, not a bad frame: still answer every frame
            log.exception("scoring a batch failed")
            decisions = [scorer.defer(Notice.for_frame(frame, Reason.ENGINE_ERROR, f"internal error: {error}"))
                         for frame in frames]
        encode_s = time.perf_counter() - started
        decisions = self.tapped(scorer, frames, decisions)
        if decoding is not None:
            self.decode.record(decoding.decode_s, encode_s)
        errors = [d.detail for d in decisions if d.reason is Reason.ENGINE_ERROR]
        self.observer.on_batch(len(frames), encode_s, errors[0] if errors else None)
        if errors and not self.health.degraded:
            log.warning("engine error on a batch of %d frames (deferred): %s", len(frames), errors[0])
        self.health.degraded = errors[0] if errors else ""
        return decisions

    def tapped(self, scorer: Scorer, frames: list[ReceivedFrame], decisions: list) -> list:
        """`decisions` through the taps; a tap that raises or answers the wrong number defers the frames."""
        for tap in self.taps:
            try:
                changed = tap(frames, decisions)
                if len(changed) != len(frames):
                    raise RuntimeError(f"{type(tap).__name__} returned {len(changed)} decisions for {len(frames)}")
                decisions = changed
            except Exception as error:  # a bug: still answer every frame, and never with accept
                log.exception("a decision tap failed")
                decisions = [scorer.defer(Notice.for_frame(frame, Reason.ENGINE_ERROR, f"internal error: {error}"))
                             for frame in frames]
        return decisions
