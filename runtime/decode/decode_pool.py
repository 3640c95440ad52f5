"""The frame path in front of the encoder: decode and resize frames on a pool of workers, pipelined with scoring.

The scoring thread takes a batch from the latest-frame-wins buffer (so a superseded frame is never
decoded), hands its frames to :meth:`DecodePool.submit` and, while the workers decode them, runs the
encoder on the batch before (:class:`~trustvlm.runtime.service.TrustService` keeps one batch in
flight). Results come back in the batch's order, so a camera's outcomes keep their order; a frame
that cannot be decoded or resized comes back as a ``defer`` :class:`~trustvlm.runtime.frames.Notice`
with its reason, exactly as on the scoring thread.

Threads, not processes: libjpeg-turbo (simplejpeg), OpenCV and Pillow's resize release the GIL
while they work, so threads decode on every core (measured on 2 cores: 1.65x the frames/s of one
thread at 768x576, 1.95x at 1920x1080) without copying payloads and pixels between processes.
``workers=0`` decodes on the scoring thread at the time of scoring (the path without a pool).

Reduced-resolution decoding (``scale="auto"``): a JPEG is decoded at 1/2, 1/4 or 1/8 of its size
in the DCT domain when that is still at least the encoders' input size on its short side, which
costs a fraction of a full decode and of the resize after it; the gate may ask for headroom (a
short side of at least 2x the input size), which it measured to keep the model's answers. The
strict decoder is the same at every scale. It is used only for a model whose artifacts folder holds a passed decode gate
(:mod:`trustvlm.contract.decode_gate`); otherwise the pool decodes at full size and says why once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures  # PendingBatch.wait is its own
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Protocol

import cv2
import numpy as np

from trustvlm.contract.decode_gate import check_decode_gate
from trustvlm.runtime.frames import Notice, ReceivedFrame
from trustvlm.runtime.decode.gpu_decode import DECODER_BACKENDS, NvImageCodecBatch
from trustvlm.runtime.decode.image_codec import FrameDecodeError, decode_image
from trustvlm.runtime.messages import Reason
from trustvlm.runtime.decode.preprocess import PreprocessConfig, resize_and_crop

log = logging.getLogger("trustvlm.runtime.decode")

#: Prefetch the next batch only while encoding a batch takes less than this many times decoding one.
PREFETCH_MIN_RATIO = 4.0
#: What one frame becomes: the pixels of each image tower (by head input), or its defer notice.
Prepared = dict[str, np.ndarray] | Notice


class DecodeScale(str, Enum):
    """How large JPEG frames are decoded."""

    FULL = "full"
    AUTO = "auto"


def default_workers() -> int:
    """The cores this process may run on (the pool's default size)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class DecodeConfig:
    """How frames are decoded before scoring.

    Attributes:
        workers: Decode threads; None: one per core; 0: decode on the scoring thread, not pipelined.
        scale: ``auto``: JPEG at 1/2, 1/4 or 1/8 scale when still >= the model's input size (only for a
            model that passed its decode gate); ``full``: always full size.
        decoder: A key of :data:`~trustvlm.runtime.decode.gpu_decode.DECODER_BACKENDS`: ``cpu`` (libjpeg-turbo,
            strict) or ``nvimgcodec`` (JPEG batches on the GPU, validated strictly on the CPU first).
    """

    workers: int | None = None
    scale: DecodeScale = DecodeScale.AUTO
    decoder: str = "cpu"

    def __post_init__(self) -> None:
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 0):
            raise ValueError(f"decode workers should be >= 0 (0: decode on the scoring thread), but got "
                             f"{self.workers}")
        if self.decoder not in DECODER_BACKENDS:
            raise ValueError(f"decoder should be one of {sorted(DECODER_BACKENDS)}, but got {self.decoder!r}")

    @property
    def worker_count(self) -> int:
        return default_workers() if self.workers is None else self.workers


class Towers(Protocol):
    """What the pool needs of a scorer: each head input's preprocessing, and where its encoder comes from."""

    towers: dict

    def tower_preprocess(self) -> dict[str, PreprocessConfig]: ...


class FramePreparer:
    """Decodes one frame (full or reduced) and resizes it for each tower; never raises for a bad frame.

    Args:
        decode: The decoder (default :func:`~trustvlm.runtime.decode.image_codec.decode_image`), called with
            the frame and the smallest short side wanted (0: full size).
    """

    def __init__(self, decode: Callable[[ReceivedFrame, int], np.ndarray] | None = None):
        self._decode = decode or decode_image
        self._lock = threading.Lock()
        self._calls = 0

    @property
    def decoded(self) -> int:
        """Decode calls so far (a frame that was superseded before scoring is never one of them)."""
        with self._lock:
            return self._calls

    def __call__(self, frame: ReceivedFrame, towers: dict[str, PreprocessConfig], min_side: int = 0,
                 image: np.ndarray | FrameDecodeError | None = None) -> Prepared:
        """`frame` decoded with a short side of at least `min_side` (0: full size), resized for each of `towers`.

        `image`: the frame already decoded elsewhere (the GPU), or its decode error.
        """
        with self._lock:
            self._calls += 1
        try:
            if isinstance(image, FrameDecodeError):
                raise image
            image = self._decode(frame, min_side) if image is None else image
            return {name: resize_and_crop(image, config) for name, config in towers.items()}
        except FrameDecodeError as error:
            return Notice.for_frame(frame, error.reason, str(error))
        except (ValueError, cv2.error) as error:
            return Notice.for_frame(frame, Reason.BAD_SHAPE, f"preprocess: {error}")


class PendingBatch:
    """The frames of one batch being prepared; :meth:`result` waits for all of them, in order.

    ``decode_s`` is the wall time from submission until the last frame was ready (None until then).
    """

    def __init__(self, parts: list[Future] | Future | Callable[[], list[Prepared]]):
        self._parts = parts  # a future per frame, one future of the whole list, or the work to do inline
        self.started = time.perf_counter()
        self.decode_s: float | None = None
        self._futures = [parts] if isinstance(parts, Future) else parts if isinstance(parts, list) else []
        self._left = len(self._futures)
        self._lock = threading.Lock()
        for future in self._futures:
            future.add_done_callback(self._one_done)

    def _one_done(self, _future: Future) -> None:
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self.decode_s = time.perf_counter() - self.started

    def wait(self) -> None:
        """Until the workers have prepared every frame (at once for work done inline, at :meth:`result`)."""
        wait_for_futures(self._futures)  # the results (or errors) stay for result()

    def result(self) -> list[Prepared]:
        if callable(self._parts) and not isinstance(self._parts, Future):
            started = time.perf_counter()
            prepared = self._parts()
            self.decode_s = time.perf_counter() - started
            return prepared
        prepared = self._parts.result() if isinstance(self._parts, Future) else [p.result() for p in self._parts]
        with self._lock:  # a done-callback may run just after result() returns: the time is now at the latest
            if self.decode_s is None:
                self.decode_s = time.perf_counter() - self.started
        return prepared


#: Whether reduced decode may be used for a scorer's encoders: (headroom, why) from their gate records; 0: no.
ReducedPolicy = Callable[[Towers], tuple[int, str]]


def gate_policy(scorer: Towers) -> tuple[int, str]:
    """Reduced decode only when every image encoder of `scorer` passed its decode gate (the record beside it).

    Returns:
        The largest headroom the encoders' records ask for (0: refused), and why.
    """
    headroom, reasons = 1, []
    for tower in scorer.towers.values():
        folder, precision, _, sha256, preprocess = tower.source
        verdict = check_decode_gate(folder, precision, sha256, json.loads(preprocess))
        if not verdict.passed:
            return 0, verdict.reason
        headroom, reasons = max(headroom, verdict.headroom), reasons + [verdict.reason]
    return headroom, "; ".join(reasons)


class DecodePool:
    """Prepares frames on `config.worker_count` threads (inline at :meth:`PendingBatch.result` for 0).

    Args:
        config: Workers and scale.
        preparer: What decodes and resizes one frame.
        policy: Whether a scorer's encoders allow reduced decode (default: their gate records); asked
            once per set of encoders, and a refusal is logged once, with its reason.
    """

    def __init__(self, config: DecodeConfig | None = None, preparer: FramePreparer | None = None,
                 policy: ReducedPolicy = gate_policy):
        self.config = config or DecodeConfig()
        self.workers = self.config.worker_count
        self.preparer = preparer or FramePreparer()
        self._policy = policy
        self._min_sides: dict[tuple, int] = {}
        self._decode_s: float | None = None
        self._encode_s: float | None = None
        self._executor = (ThreadPoolExecutor(self.workers, thread_name_prefix="decode") if self.workers else None)
        self._gpu = NvImageCodecBatch() if self.config.decoder == "nvimgcodec" else None

    def min_side(self, scorer: Towers) -> int:
        """The short side frames for `scorer` are decoded to (0: full size)."""
        key = tuple(tower.source for tower in scorer.towers.values())
        if key not in self._min_sides:
            headroom, why = (self._policy(scorer) if self.config.scale is DecodeScale.AUTO
                             else (0, "decode scale full"))
            if self.config.scale is DecodeScale.AUTO:
                log.log(logging.INFO if headroom else logging.WARNING, "reduced-resolution decode %s: %s",
                        "on" if headroom else "refused, decoding at full size", why)
            self._min_sides[key] = headroom * max(c.size for c in scorer.tower_preprocess().values())
        return self._min_sides[key]

    @property
    def pipelined(self) -> bool:
        """True when decoding runs beside scoring (the service keeps a batch in flight)."""
        return self._executor is not None

    def record(self, decode_s: float | None, encode_s: float) -> None:
        """One batch's decode and encode wall times (moving averages: what :meth:`prefetch_pays` weighs)."""
        weight = 0.2
        if decode_s is not None:
            self._decode_s = decode_s if self._decode_s is None else (1 - weight) * self._decode_s + weight * decode_s
        self._encode_s = encode_s if self._encode_s is None else (1 - weight) * self._encode_s + weight * encode_s

    def prefetch_pays(self) -> bool:
        """Decode the next batch while the encoder runs this one? Only when decoding is a real share of the time.

        Taking the next batch early commits its frames: ones arriving meanwhile cannot supersede them,
        so prefetching adds up to one encoder batch of latency. Where the encoder takes 4x the decode
        time or more (ViT-B/32 on a CPU), overlapping saves under a fifth of it: then the batch is
        taken after the encoder finishes, as the freshest frames.
        """
        if self._decode_s is None or self._encode_s is None:
            return True
        return self._decode_s * PREFETCH_MIN_RATIO >= self._encode_s

    def submit(self, frames: list[ReceivedFrame], scorer: Towers) -> PendingBatch:
        """Start preparing `frames` for the encoders of `scorer`; the result keeps their order."""
        towers, min_side = scorer.tower_preprocess(), self.min_side(scorer)
        if self._gpu is not None:  # one GPU batch for the batch's JPEGs, beside the encoder when there are workers
            def on_gpu() -> list[Prepared]:
                images = self._gpu.decode(frames, min_side)
                return [self.preparer(frame, towers, min_side, image) for frame, image in zip(frames, images)]
            return PendingBatch(on_gpu if self._executor is None else self._executor.submit(on_gpu))
        if self._executor is None:
            return PendingBatch(lambda: [self.preparer(frame, towers, min_side) for frame in frames])
        return PendingBatch([self._executor.submit(self.preparer, frame, towers, min_side) for frame in frames])

    def close(self) -> None:
        """Finish what was submitted and stop the threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
