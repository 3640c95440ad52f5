"""Latest-frame-wins buffer between ingest and scoring, per camera, with a staleness deadline.

Drop policy (:attr:`DropPolicy.LATEST_WINS`): each camera holds at most one frame waiting to be
scored. A newer frame from the same camera supersedes it, and the superseded frame becomes a
``dropped`` notice (with ``dropped_runs``, a frame superseded right after another one, with no
other outcome of that camera between them, joins that notice: one ``dropped`` message then covers
the run ``seq``..``seq_last``, decision schema 1.2); a frame older than the staleness deadline
when scoring picks it up becomes a ``stale`` notice. Notices wait in the camera's queue in arrival
order, so a camera's outcomes are published in the order its frames arrived: the scoring loop is
sequential and publishes, for each batch, every taken item in arrival order.

Every item that enters gets exactly one outcome, or is counted: a camera's queue holds at most
``max_notices_per_camera`` notices (further ones are counted as ``notices_suppressed``), and at
most ``max_cameras`` cameras are tracked (a new camera evicts the least recently seen idle one,
else its frame is deferred ``camera_limit``). ``dropped``, ``camera_limit`` and ``stale`` in
:class:`BufferStats` count events (a frame superseded, refused a slot, found stale), whatever became
of the outcome; ``notices_suppressed`` counts outcomes lost to the bound (reported to
``on_suppressed`` with the reason the outcome would have had). Memory is bounded by ``max_cameras`` payloads plus
small notices.

Receive livelock: under a flood, receiving frames only to supersede them can take the time
scoring needs (every message is parsed and answered). With ``max_superseded_per_take``, once that
many frames of one camera were superseded since scoring last took that camera's frame (the camera
sends that many times faster than it is scored) while the service receives frames only to
supersede them at ``flood_superseded_per_s`` or more (all cameras together, over the last quarter
to half second), :meth:`FrameBuffer.put` waits (up to ``superseded_wait_ms``) for the take: the
ingest then takes no more from ZeroMQ, whose bounded queues push back on the senders (a PUSH camera
blocks, or sees its frame refused), so the frames that are received are scored, not only superseded,
and each still gets its outcome. Waiting costs
latency (the frames then scored waited in ZeroMQ's queues), so it is kept for floods: counted per
camera, the bound does not hold back many cameras that are each only a little faster than scoring,
and the rate does not hold back cameras in front of a slow encoder (ViT-B/32 on a CPU scores a few
frames/s: every camera is many frames ahead, but receiving costs little beside the encoder). Both keep
latest-frame-wins latency.

Staleness compares the frame's ``capture_ts_ns`` with this host's clock (CLOCK_REALTIME), so it
assumes synchronized clocks (PTP or chrony) when cameras run on other hosts. A capture time more
than ``staleness_ms`` in the *future* is deferred ``stale`` too: a clock that far off (or a forged
timestamp) makes the frame's age unknowable, and an unknown age is a reason to defer.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from enum import Enum
from itertools import count
from typing import Callable

from trustvlm.runtime.frames import Notice, ReceivedFrame
from trustvlm.runtime.messages import Reason

BufferItem = ReceivedFrame | Notice


class DropPolicy(str, Enum):
    """What happens to a waiting frame when a newer one from the same camera arrives."""

    LATEST_WINS = "latest_wins"


@dataclass(frozen=True)
class BufferConfig:
    """Limits of the frame buffer.

    Attributes:
        max_cameras: Cameras tracked at once.
        staleness_ms: Frames older than this (since capture) when scoring picks them up, or
            captured more than this in the future, are deferred ``stale``; 0 disables both.
        max_notices_per_camera: Notices (already decided frames) waiting per camera.
        drop_policy: Only ``latest_wins``.
        dropped_runs: Answer consecutive superseded frames of a camera with one ``dropped`` message
            for the run (``seq``..``seq_last``, ``frames``) instead of one message each: under a
            flood, answering every superseded frame costs the time scoring needs. Subscribers must
            read decision schema 1.2 (``frames``) to count outcomes.
        max_superseded_per_take: Frames of one camera superseded since its last frame was taken, after
            which put() waits for the next take (see the module docstring); 0: never wait. The price
            is latency under a flood (the frames wait in ZeroMQ's queues; ``--receive-hwm`` bounds
            how many); measured: benchmarks/frame_path.py, BENCHMARKS.md section 8.
        flood_superseded_per_s: Superseded frames/s (all cameras) from which the ingest waits as above;
            below it, never. Receiving and answering one costs about 0.1 ms of CPU on this project's
            2-core test machine: 1,000/s is a tenth of a core.
        superseded_wait_ms: The longest one such wait.
    """

    max_cameras: int = 64
    staleness_ms: float = 1000.0
    max_notices_per_camera: int = 256
    drop_policy: DropPolicy = DropPolicy.LATEST_WINS
    dropped_runs: bool = False
    max_superseded_per_take: int = 2
    superseded_wait_ms: float = 20.0
    flood_superseded_per_s: float = 1000.0

    def __post_init__(self) -> None:
        if self.max_superseded_per_take < 0 or not self.superseded_wait_ms >= 0 or not self.flood_superseded_per_s >= 0:
            raise ValueError(f"max_superseded_per_take, superseded_wait_ms and flood_superseded_per_s should be >= 0, "
                             f"but got {self.max_superseded_per_take}, {self.superseded_wait_ms} and "
                             f"{self.flood_superseded_per_s}")
        if self.max_cameras < 1 or self.max_notices_per_camera < 1:
            raise ValueError(f"max_cameras and max_notices_per_camera should be >= 1, but got "
                             f"{self.max_cameras} and {self.max_notices_per_camera}")
        if not self.staleness_ms >= 0:
            raise ValueError(f"staleness_ms should be >= 0 (0: no deadline), but got {self.staleness_ms}")


@dataclass(frozen=True)
class BufferStats:
    """Counters of the buffer (monotonic, except the two gauges at the end)."""

    frames_in: int
    notices_in: int
    dropped: int
    stale: int
    camera_limit: int
    notices_suppressed: int
    pending_frames: int
    cameras: int
    ingest_waits: int = 0


class _Camera:
    __slots__ = ("items", "frames", "notices", "last_seen", "waiting", "superseded")

    def __init__(self) -> None:
        self.items: deque[list] = deque()  # [arrival, item] entries, in arrival order
        self.frames = 0
        self.notices = 0
        self.last_seen = 0.0
        self.waiting: list | None = None  # the entry of the frame waiting to be scored: superseded in O(1)
        self.superseded = 0  # frames superseded since the camera's last take


class _RateMeter:
    """Events per second over the last quarter to half second (two quarter-second buckets)."""

    WIDTH_S = 0.25

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock, self._bucket, self._current, self._previous = clock, 0, 0, 0

    def _roll(self) -> float:
        now = self._clock()
        bucket = int(now / self.WIDTH_S)
        if bucket != self._bucket:
            self._previous = self._current if bucket == self._bucket + 1 else 0
            self._bucket, self._current = bucket, 0
        return now

    def add(self) -> None:
        self._roll()
        self._current += 1

    def per_second(self) -> float:
        now = self._roll()
        return (self._previous + self._current) / (self.WIDTH_S + now % self.WIDTH_S)


class FrameBuffer:
    """Thread-safe: the ingest thread puts, the scoring thread takes."""

    def __init__(self, config: BufferConfig, clock_ns: Callable[[], int] = time.time_ns,
                 on_suppressed: Callable[[Reason], None] | None = None):
        self.config = config
        self._clock_ns = clock_ns
        self._on_suppressed = on_suppressed or (lambda reason: None)
        self._cameras: OrderedDict[str, _Camera] = OrderedDict()
        self._orphans: deque[list] = deque()  # notices of cameras that got no slot
        self._arrival = count()
        self._cond = threading.Condition()
        self._closed = False
        self._pending_frames = 0
        self._counts = dict(frames_in=0, notices_in=0, dropped=0, stale=0, camera_limit=0, notices_suppressed=0)
        self._waits = 0
        self._rate = _RateMeter()

    def put(self, item: BufferItem) -> None:
        """Add a frame (latest wins) or a notice to its camera's queue."""
        camera_id = item.header.camera_id if isinstance(item, ReceivedFrame) else item.camera_id
        with self._cond:
            self._counts["frames_in" if isinstance(item, ReceivedFrame) else "notices_in"] += 1
            camera = self._slot(camera_id)
            if camera is None:
                self._counts["camera_limit"] += 1
                if isinstance(item, ReceivedFrame):
                    item = Notice.for_frame(item, Reason.CAMERA_LIMIT, f"{self.config.max_cameras} cameras are "
                                                                       "tracked already (max_cameras)")
                self._add_orphan(item)
                self._cond.notify_all()
                return
            camera.last_seen = time.monotonic()
            if isinstance(item, ReceivedFrame):
                self._supersede(camera, item)
                camera.waiting = [next(self._arrival), item]
                camera.items.append(camera.waiting)
                camera.frames += 1
                self._pending_frames += 1
            elif camera.notices < self.config.max_notices_per_camera:
                camera.items.append([next(self._arrival), item])
                camera.notices += 1
            else:
                self._suppress(item.reason)
            self._cond.notify_all()
            bound = self.config.max_superseded_per_take
            if (bound and camera.superseded >= bound and not self._closed
                    and self._rate.per_second() >= self.config.flood_superseded_per_s):
                self._waits += 1  # scoring is behind: leave the next frames in ZeroMQ's bounded queues for now
                self._cond.wait_for(lambda: camera.superseded < bound or self._closed,
                                    self.config.superseded_wait_ms / 1e3)

    def _slot(self, camera_id: str) -> _Camera | None:
        camera = self._cameras.get(camera_id)
        if camera is not None:
            self._cameras.move_to_end(camera_id)
            return camera
        if len(self._cameras) >= self.config.max_cameras:
            idle = next((name for name, cam in self._cameras.items() if not cam.items), None)
            if idle is None:
                return None
            del self._cameras[idle]
        camera = self._cameras[camera_id] = _Camera()
        return camera

    def _add_orphan(self, notice: Notice) -> None:
        if len(self._orphans) < self.config.max_notices_per_camera:
            self._orphans.append([next(self._arrival), notice])
        else:
            self._suppress(notice.reason)

    def _suppress(self, reason: Reason) -> None:
        self._counts["notices_suppressed"] += 1
        self._on_suppressed(reason)

    def _supersede(self, camera: _Camera, newer: ReceivedFrame) -> None:
        entry, camera.waiting = camera.waiting, None
        if entry is None:
            return  # latest frame wins: a camera never has more than one frame waiting
        item: ReceivedFrame = entry[1]
        camera.frames -= 1
        self._pending_frames -= 1
        self._counts["dropped"] += 1
        camera.superseded += 1
        self._rate.add()
        before = camera.items[-2][1] if len(camera.items) > 1 and camera.items[-1] is entry else None
        if (self.config.dropped_runs and isinstance(before, Notice) and before.reason is Reason.DROPPED
                and item.header.seq > (before.seq_last if before.seq_last is not None else before.seq)):
            camera.items.pop()  # the frame joins the run of dropped frames just before it
            camera.items[-1][1] = replace(before, seq_last=item.header.seq, frames=before.frames + 1,
                                          detail=f"{before.frames + 1} frames superseded before scoring "
                                                 "(latest frame wins)")
        elif camera.notices < self.config.max_notices_per_camera:
            entry[1] = Notice.for_frame(item, Reason.DROPPED, f"superseded by seq {newer.header.seq} before "
                                                              "scoring (latest frame wins)")
            camera.notices += 1
        else:  # the notice bound holds for dropped frames too: counted, not queued
            camera.items.remove(entry)
            self._suppress(Reason.DROPPED)

    def take(self, max_frames: int, max_wait_s: float = 0.0, timeout_s: float = 0.1) -> list[BufferItem] | None:
        """Take up to `max_frames` frames (at most one per camera) and the notices queued with them.

        Waits up to `timeout_s` for anything, then up to `max_wait_s` more for frames of other
        cameras to fill the batch. Cameras are served oldest item first; items come back in
        arrival order, stale frames already turned into ``stale`` notices.

        Returns:
            The items (empty after a timeout), or None once the buffer is closed and empty.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._has_items(), timeout_s)
            if not self._has_items():
                return None if self._closed else []
            deadline = time.monotonic() + max_wait_s
            while not self._closed and self._pending_frames < max_frames:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken = list(self._orphans)
            self._orphans.clear()
            frames, released = 0, False
            for camera in sorted(self._cameras.values(), key=lambda cam: cam.items[0][0] if cam.items else 1 << 62):
                if not camera.items or frames + camera.frames > max_frames:
                    continue
                frames += camera.frames
                self._pending_frames -= camera.frames
                taken.extend(camera.items)
                camera.items.clear()
                camera.frames = camera.notices = 0
                camera.waiting = None
                released, camera.superseded = released or camera.superseded > 0, 0
            if released:
                self._cond.notify_all()  # an ingest waiting in put() may go on
            taken.sort(key=lambda pair: pair[0])
            return [self._check_stale(item) for _, item in taken]

    def _has_items(self) -> bool:
        return bool(self._orphans) or any(cam.items for cam in self._cameras.values())

    def _check_stale(self, item: BufferItem) -> BufferItem:
        if not isinstance(item, ReceivedFrame) or not self.config.staleness_ms:
            return item
        age_ms = (self._clock_ns() - item.header.capture_ts_ns) / 1e6
        if -self.config.staleness_ms <= age_ms <= self.config.staleness_ms:
            return item
        self._counts["stale"] += 1
        if age_ms < 0:
            return Notice.for_frame(item, Reason.STALE, f"capture time is {-age_ms:.0f} ms in the future, beyond the "
                                                        f"staleness tolerance of {self.config.staleness_ms:g} ms "
                                                        "(clocks out of sync?)")
        return Notice.for_frame(item, Reason.STALE, f"{age_ms:.0f} ms since capture exceeds the staleness "
                                                    f"deadline of {self.config.staleness_ms:g} ms")

    def close(self) -> None:
        """No more puts are expected: take() drains what is left, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> BufferStats:
        with self._cond:
            return BufferStats(**self._counts, pending_frames=self._pending_frames, cameras=len(self._cameras),
                               ingest_waits=self._waits)
