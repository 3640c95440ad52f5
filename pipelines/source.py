"""`trustvlm source`: publish a camera's frames to `trustvlm serve` (wire schema 1), paced and counted.

The loop (:func:`stream_frames`) is handed its collaborators: a capture (:mod:`trustvlm.pipelines.captures`),
an optional degraded camera, a :class:`~trustvlm.pipelines.frame_sender.FrameEncoder`, a
:class:`~trustvlm.pipelines.frame_sender.FrameSender` (PUSH socket), a pacer and an optional :class:`TruthWriter`. Each frame gets the next ``seq`` of its camera and a capture timestamp (Unix
epoch ns, taken when the frame is read, after the pacer let it go), and is sent as ``[header, payload]`` by
:func:`trustvlm.runtime.frames.send_frame`. With a :class:`~trustvlm.runtime.record.recorder.Recorder` (``--record``)
the frames sent are also recorded, thinned, for review (:mod:`trustvlm.runtime.record`).

Pacing, when to use which:

* :class:`FpsPacer` (``--fps``): real time, like a camera. Frames the service cannot keep up with are
  superseded (latest frame wins) and come back as ``defer``/``dropped`` decisions.
* :class:`FreeRunPacer` (``--fps 0``): as fast as the PUSH socket takes them. The socket's send HWM bounds
  what ZeroMQ queues and the send timeout bounds each wait, but the service's ingest drains its socket at
  once and keeps only the newest frame per camera, so most frames are superseded.
* :class:`DecisionWindowPacer` (``--max-in-flight N --decisions <publish endpoint>``): as fast as the service
  answers. The source subscribes to its own camera's decisions and keeps at most N frames unanswered; with
  N = 1 no frame is ever superseded. This is how a labelled replay scores every frame.

A camera that changes mid-stream (:class:`CameraDrift`, ``--drift low_light:gain=0.25 --drift-after N``) sends
frames ``seq >= N`` through the drifted shift instead of the camera's own: a known change at a known frame, to
watch the service's guarantee monitor react.

A labelled replay writes its ground truth as JSONL, one ``{"camera_id", "seq", "label", "class_id",
"origin", "shift"}`` per frame *sent* (``shift``: the camera shift the frame went through, e.g.
``low_light:gain=0.25``, or null), flushed per line, so a controller can join decisions to labels on
``(camera_id, seq)`` while the stream runs. The file is rewritten at each start, and seq starts at 0.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import zmq

from trustvlm.calibration.shifts import ShiftSpec, parse_shift
from trustvlm.pipelines.captures import Capture, CapturedFrame, degrade
from trustvlm.pipelines.frame_sender import FrameEncoder, FrameSender, SourceError
from trustvlm.runtime.frames import FrameHeader, ReceivedFrame, check_camera_id
from trustvlm.runtime.messages import HEALTH_TOPIC, DecisionMessage, HealthMessage, decode_body, topic_for
from trustvlm.runtime.record import Recorder
from trustvlm.runtime.schema import MessageError

log = logging.getLogger("trustvlm.pipelines.source")


class Pacer(Protocol):
    """Decides when the next frame may be sent."""

    def wait_turn(self, stop: threading.Event) -> None:
        """Block until the next frame may be sent (or `stop` is set)."""

    def on_sent(self, seq: int) -> None:
        """Note that frame `seq` was sent."""

    def close(self) -> None:
        """Release what the pacer holds."""


class FreeRunPacer:
    """No pacing: as fast as the PUSH socket takes frames."""

    def wait_turn(self, stop: threading.Event) -> None:
        pass

    def on_sent(self, seq: int) -> None:
        pass

    def close(self) -> None:
        pass


class FpsPacer:
    """Real time: one frame every 1/fps seconds; a late frame is sent at once, without catching up."""

    def __init__(self, fps: float):
        if not fps > 0:
            raise ValueError(f"fps should be > 0, but got {fps}")
        self.period_s = 1.0 / fps
        self._next = None

    def wait_turn(self, stop: threading.Event) -> None:
        now = time.monotonic()
        if self._next is not None and self._next > now:
            stop.wait(self._next - now)
        self._next = max(now, self._next or now) + self.period_s

    def on_sent(self, seq: int) -> None:
        pass

    def close(self) -> None:
        pass


class DecisionWindowPacer:
    """At most `max_in_flight` frames of this camera without a decision (see the module docstring).

    Subscribes to ``trust/<camera_id>/`` and the heartbeat. A frame whose decision has not come within
    `answer_timeout_ms` is given up on (counted in :attr:`timeouts`) so a lost decision cannot stall the camera.
    """

    def __init__(self, endpoint: str, camera_id: str, max_in_flight: int, context: zmq.Context,
                 answer_timeout_ms: int = 5000):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight should be >= 1, but got {max_in_flight}")
        self.endpoint, self.camera_id, self.max_in_flight = endpoint, camera_id, max_in_flight
        self.answer_timeout_s = answer_timeout_ms / 1e3
        self.in_flight: dict[int, float] = {}
        self.timeouts = 0
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 100000)
        for topic in (topic_for(camera_id), HEALTH_TOPIC):
            self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError as error:
            self.socket.close()
            raise ValueError(f"cannot connect to decisions endpoint {endpoint!r}: {error}") from error

    def wait_ready(self, timeout_s: float, stop: threading.Event) -> None:
        """Wait for one heartbeat, so the subscription is live before the first frame leaves.

        Raises:
            SourceError: No heartbeat within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SourceError(f"no heartbeat from {self.endpoint} within {timeout_s:g} s: is trustvlm serve "
                                  "publishing there?")
            if self._receive(min(remaining, 0.1)) == "health":
                return

    def _receive(self, timeout_s: float) -> str | None:
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        _, body = self.socket.recv_multipart()
        try:
            message = decode_body(body)
        except MessageError as error:
            log.warning("ignoring a message that does not follow the schema: %s", error)
            return None
        if isinstance(message, HealthMessage):
            return "health"
        if isinstance(message, DecisionMessage) and message.camera_id == self.camera_id:  # topics match by prefix
            last = message.seq if message.seq_last is None else message.seq_last  # schema 1.2: a run of frames
            for seq in [seq for seq in self.in_flight if message.seq <= seq <= last]:
                del self.in_flight[seq]
            return "decision"
        return None

    def wait_turn(self, stop: threading.Event) -> None:
        while len(self.in_flight) >= self.max_in_flight and not stop.is_set():
            oldest = min(self.in_flight.values())
            remaining = oldest + self.answer_timeout_s - time.monotonic()
            if remaining <= 0:
                self.timeouts += len(self.in_flight)
                log.warning("no decision for %d frame(s) of %s within %.1f s; sending on", len(self.in_flight),
                            self.camera_id, self.answer_timeout_s)
                self.in_flight.clear()
                return
            self._receive(min(remaining, 0.1))
        while self.socket.poll(0):  # read what is already there without waiting
            self._receive(0)

    def on_sent(self, seq: int) -> None:
        self.in_flight[seq] = time.monotonic()

    def close(self) -> None:
        self.socket.close()


class TruthWriter:
    """Ground truth of a labelled replay, one JSON object per line, flushed per line."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, camera_id: str, seq: int, frame: CapturedFrame, shift: ShiftSpec | None = None) -> None:
        record = {"camera_id": camera_id, "seq": seq, "label": frame.label, "class_id": frame.class_id,
                  "origin": frame.origin, "shift": None if shift is None else str(shift)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "TruthWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class CameraDrift:
    """The camera changes after `after` frames: frames ``seq >= after`` go through `shift` instead.

    Attributes:
        shift: The changed camera, e.g. ``parse_shift("low_light:gain=0.25")`` (a darker low-light camera).
        after: Frames sent before the change (0: from the first frame).
    """

    shift: ShiftSpec
    after: int

    def __post_init__(self) -> None:
        if self.after < 0:
            raise ValueError(f"the drift should start after >= 0 frames, but got {self.after}")

    @classmethod
    def parse(cls, text: str, after: int) -> "CameraDrift":
        """From ``name:key=value,...`` (see :func:`~trustvlm.calibration.shifts.parse_shift`).

        Raises:
            ValueError: A shift or parameter that does not exist, or `after` below 0 (one line).
        """
        return cls(parse_shift(text), after)


@dataclass(frozen=True)
class SourceStats:
    """What one stream did.

    Attributes:
        camera_id: The camera's name on the wire.
        frames_read: Frames taken from the capture.
        frames_sent: Frames the PUSH socket took (each has a truth row when the replay is labelled).
        send_timeouts: Frames not sent because the send timed out.
        labelled: Frames sent with a ground-truth label.
        answer_timeouts: Frames the decision window gave up waiting for.
        seconds: Wall time of the stream.
        ended_by: ``end`` (the capture ran out), ``limit`` or ``stop`` (signal).
        drifted: Frames sent through the drifted camera (:class:`CameraDrift`).
    """

    camera_id: str
    frames_read: int
    frames_sent: int
    send_timeouts: int
    labelled: int
    answer_timeouts: int
    seconds: float
    ended_by: str
    drifted: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        rate = self.frames_sent / self.seconds if self.seconds > 0 else float("nan")
        return (f"source {self.camera_id}: sent {self.frames_sent} of {self.frames_read} frames in "
                f"{self.seconds:.1f} s ({rate:.1f}/s), {self.labelled} labelled, {self.send_timeouts} send timeouts, "
                f"{self.answer_timeouts} unanswered in the window"
                f"{f', {self.drifted} through the drifted camera' if self.drifted else ''}; ended by {self.ended_by}")


def stream_frames(capture: Capture, camera_id: str, encoder: FrameEncoder, sender: FrameSender,
                  pacer: Pacer | None = None, truth: TruthWriter | None = None,
                  shift: str | ShiftSpec | None = None, limit: int | None = None,
                  stop: threading.Event | None = None, recorder: Recorder | None = None,
                  drift: CameraDrift | None = None) -> SourceStats:
    """Send the capture's frames until it ends, `limit` frames were sent, or `stop` is set.

    Args:
        capture: Where the frames come from.
        camera_id: The camera's name on the wire (decisions come back on ``trust/<camera_id>/``).
        encoder: JPEG, PNG or raw.
        sender: The PUSH socket to the service.
        pacer: When frames may leave (default: free run).
        truth: Where labelled frames' ground truth goes (None: nowhere).
        shift: A degraded camera of calibration.shifts (a name, ``name:key=value,...`` or a ShiftSpec), applied to
            every frame (seed: the frame's seq).
        limit: Frames to send at most (None: until the capture ends or `stop`).
        stop: Set from a signal handler to end the stream after the current frame.
        recorder: Offered each frame sent, as sent, unscored (``--record``: it writes the thinned ones into the
            review layout of :mod:`trustvlm.runtime.record`, label ``_unscored``, on its own thread).
        drift: The camera changes mid-stream: frames ``seq >= drift.after`` go through ``drift.shift`` instead
            of `shift` (same seed).

    Raises:
        SourceError: The runtime took no frame for ``max_send_failures`` sends in a row.
        trustvlm.pipelines.captures.CaptureError: A live capture that was lost.
    """
    check_camera_id(camera_id, "camera id")
    camera = parse_shift(shift) if isinstance(shift, str) else shift
    pacer = pacer or FreeRunPacer()
    stop = stop or threading.Event()
    read = sent = timeouts = labelled = drifted = 0
    ended_by = "end"
    started = time.monotonic()
    frames = capture.frames()
    try:
        while True:
            if stop.is_set():
                ended_by = "stop"
                break
            if limit is not None and sent >= limit:
                ended_by = "limit"
                break
            pacer.wait_turn(stop)
            if stop.is_set():
                ended_by = "stop"
                break
            frame = next(frames, None)
            if frame is None:
                break
            capture_ts_ns = time.time_ns()
            read += 1
            through = drift.shift if drift is not None and sent >= drift.after else camera
            image = frame.image if through is None else degrade(frame.image, through, seed=sent)
            encoded = encoder.encode(image)
            header = FrameHeader(camera_id, sent, capture_ts_ns, encoded.encoding, encoded.shape,
                                 "uint8" if encoded.shape else None, encoded.pixel_format)
            if not sender.send(header, encoded):
                timeouts += 1
                continue
            pacer.on_sent(sent)
            if recorder is not None:
                recorder.offer(ReceivedFrame(header, encoded.payload, capture_ts_ns))
            if truth is not None and frame.label is not None:
                truth.write(camera_id, sent, frame, through)
                labelled += 1
            drifted += drift is not None and sent >= drift.after
            sent += 1
    finally:
        frames.close()
    return SourceStats(camera_id, read, sent, timeouts, labelled, getattr(pacer, "timeouts", 0),
                       time.monotonic() - started, ended_by, drifted)
