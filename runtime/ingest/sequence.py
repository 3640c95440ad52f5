"""Per-camera replay and order policy: a repeated or older ``seq`` is deferred, a camera restart is accepted.

Schema 1 says ``seq`` is the camera's frame counter, increasing. For each camera the service keeps the
``seq`` and ``capture_ts_ns`` of the newest frame it let through, and checks every frame that passed
the ingest checks against them, before the frame buffer:

* ``seq`` greater than the last one: in order, let through (gaps are fine: frames get lost).
* ``seq`` 0 with a capture time later than the last frame's, or any ``seq`` not above the last one
  with a capture time more than :data:`RESTART_GAP_NS` (1 s) later than the last frame's: the camera
  restarted (a restarted camera process counts from 0 again, and its first frames may be lost while
  it reconnects: without the second rule such a camera would be deferred until its ``seq`` passed
  the old one); let through, counted (``sequence_restarts``) and logged (at most one line per
  camera per :attr:`SequenceGuard.log_interval_s`). Frames reordered on the way or replayed carry
  older capture times and never look like a restart.
* ``seq`` equal to the last one: deferred ``duplicate`` (a replay or a resend).
* any other ``seq`` below the last one: deferred ``out_of_order`` (a replay of an older frame, or
  frames reordered on the way; a late frame is no use to a robot).

Deferred frames do not change the camera's state. Memory is bounded: at most ``max_cameras`` cameras
are remembered (least recently seen forgotten first); a forgotten camera starts afresh, so a replay
of one of its frames after that is not recognised. The imagezmq dialect numbers frames on arrival,
so its frames are always in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from trustvlm.runtime.frames import Notice, ReceivedFrame
from trustvlm.runtime.messages import Reason

log = logging.getLogger("trustvlm.runtime.ingest.sequence")

#: A frame whose ``seq`` is not above the camera's last one, captured this much later than the last
#: frame let through, is a restart whatever its ``seq``. Within it, only ``seq`` 0 is.
RESTART_GAP_NS = 1_000_000_000


class SequenceGuard:
    """Checks each camera's frames against its newest ``(seq, capture_ts_ns)``; thread-safe."""

    log_interval_s = 60.0

    def __init__(self, max_cameras: int = 4096):
        if max_cameras < 1:
            raise ValueError(f"max_cameras should be >= 1, but got {max_cameras}")
        self.max_cameras = max_cameras
        self._last: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._logged: dict[str, float] = {}
        self._lock = threading.Lock()
        self._counts = dict(sequence_duplicate=0, sequence_out_of_order=0, sequence_restarts=0)

    def check(self, frame: ReceivedFrame) -> ReceivedFrame | Notice:
        """`frame` if it is in order (or a restart), else a ``duplicate`` / ``out_of_order`` notice."""
        header = frame.header
        with self._lock:
            last = self._last.get(header.camera_id)
            if last is not None:
                last_seq, last_capture = last
                newer_ns = header.capture_ts_ns - last_capture
                restart = newer_ns > RESTART_GAP_NS or (header.seq == 0 and newer_ns > 0)
                if header.seq <= last_seq and not restart:
                    duplicate = header.seq == last_seq
                    self._counts["sequence_duplicate" if duplicate else "sequence_out_of_order"] += 1
                    if duplicate:
                        return Notice.for_frame(frame, Reason.DUPLICATE, f"seq {header.seq} was already received "
                                                                         "from this camera")
                    return Notice.for_frame(frame, Reason.OUT_OF_ORDER, f"seq {header.seq} is older than seq "
                                                                        f"{last_seq}, already received")
                if restart:
                    self._restart(header.camera_id, header.seq, last_seq)
            self._last[header.camera_id] = (header.seq, header.capture_ts_ns)
            self._last.move_to_end(header.camera_id)
            if len(self._last) > self.max_cameras:
                forgotten, _ = self._last.popitem(last=False)
                self._logged.pop(forgotten, None)
        return frame

    def _restart(self, camera_id: str, seq: int, last_seq: int) -> None:
        self._counts["sequence_restarts"] += 1
        now = time.monotonic()
        if now - self._logged.get(camera_id, -self.log_interval_s) >= self.log_interval_s:
            self._logged[camera_id] = now
            log.info("camera %s restarted: seq %d with a newer capture time after seq %d", camera_id, seq, last_seq)

    def stats(self) -> dict[str, int]:
        """Frames deferred as duplicate / out of order, and restarts seen (monotonic counters)."""
        with self._lock:
            return dict(self._counts)
