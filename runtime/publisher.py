"""Decision output: a ZeroMQ PUB socket owned by one thread, fed through a bounded queue.

Topics: ``trust/<camera_id>/`` carries one :class:`~trustvlm.runtime.messages.DecisionMessage` per
frame; ``trust/_health`` carries a :class:`~trustvlm.runtime.messages.HealthMessage` every
``heartbeat_ms`` and a last one (status ``stopped``, final counters) on shutdown. Each message is
two parts, ``[topic, body]``; the body is msgpack, or JSON when ``wire_format`` is ``json``
(schemas/decision_v1.json). Decisions leave in the order they were submitted, so a camera's
order is kept. ``publish_ts_ns`` and the latencies are stamped just before sending.

PUB never blocks: a subscriber that does not keep up loses messages at its high-water mark
(``send_hwm``), as ZeroMQ intends. Inside the service the queue is bounded (``queue_size``); a
decision that finds it full is counted (``publish_overflow``) instead of growing memory. A
message that cannot be serialized or sent is logged and counted (``publish_errors``); the thread
goes on. With a :class:`~trustvlm.runtime.ingest.security.CurveServer` the socket is a CurveZMQ server
and only subscribers whose keys are allowed receive anything (see runtime/ingest/security.py).

ROS 2 mapping (``vision_msgs/msg/Classification``; a bridge node subscribes here and republishes)::

    header.stamp            <- capture_ts_ns (sec = ns // 10**9, nanosec = ns % 10**9)
    header.frame_id         <- camera_id
    results[i].id           <- str(top_k[i].class_id)   (vision_msgs >= 4: ObjectHypothesis.class_id,
                                                         the class name: top_k[i].label)
    results[i].score        <- top_k[i].prob
    trust (no field in vision_msgs): decision, reason, kappa, threshold; publish them on a companion
        topic (e.g. std_msgs/String JSON, or diagnostic_msgs/KeyValue pairs) keyed by the same
        header.stamp and frame_id, or drop ``results`` entirely when decision is ``defer`` so that
        downstream nodes only see trusted labels.
    trust/_health           -> diagnostic_msgs/DiagnosticArray (level OK / WARN for degraded /
                               ERROR for stopped; counters as KeyValue pairs), and one DiagnosticStatus per
                               entry of ``monitors`` (name ``trustvlm/guarantee/<camera_id>``, hardware_id the
                               bundle_id; level OK for monitor ok and audit unverified/verified, WARN for
                               monitor watch, ERROR for monitor alarm or audit violated, message "monitor <state>,
                               audit <state>"; evidence, frames, labels, risk_lower and risk_upper as KeyValue pairs).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import zmq

from trustvlm.runtime.messages import (HEALTH_TOPIC, DecisionMessage, HealthMessage, HealthStatus, WireFormat,
                                       encode_body, topic_for)
from trustvlm.runtime.metrics import Observer
from trustvlm.runtime.ingest.security import CurveServer
from trustvlm.runtime.ingest.transport import ConnectMode

log = logging.getLogger("trustvlm.runtime.publisher")

HealthSource = Callable[[HealthStatus], HealthMessage]
_STOP = object()


@dataclass(frozen=True)
class PublishConfig:
    """Where and how decisions go out.

    Attributes:
        address: ZeroMQ endpoint of the PUB socket (``tcp://127.0.0.1:*`` binds a free port).
        mode: bind (subscribers connect) or connect (to an XSUB proxy).
        wire_format: msgpack or json bodies.
        heartbeat_ms: Period of ``trust/_health`` messages.
        send_hwm: SNDHWM per subscriber.
        send_timeout_ms: SNDTIMEO.
        queue_size: Decisions waiting for the publisher thread.
        drain_ms: LINGER set just before closing on shutdown, so the final messages leave;
            the socket runs with LINGER 0 otherwise.
    """

    address: str = "tcp://*:5556"
    mode: ConnectMode = ConnectMode.BIND
    wire_format: WireFormat = WireFormat.MSGPACK
    heartbeat_ms: int = 1000
    send_hwm: int = 10000
    send_timeout_ms: int = 100
    queue_size: int = 10000
    drain_ms: int = 500

    def __post_init__(self) -> None:
        for name in ("heartbeat_ms", "queue_size", "send_hwm", "send_timeout_ms"):
            if isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise ValueError(f"publish {name} should be a positive integer, but got {getattr(self, name)}")
        if self.drain_ms < 0:
            raise ValueError(f"publish drain_ms should be >= 0, but got {self.drain_ms}")


class Publisher:
    """Owns the PUB socket and its thread. ``open`` -> ``start`` -> ``submit``... -> ``stop``."""

    def __init__(self, config: PublishConfig, health: HealthSource, observer: Observer | None = None,
                 context: zmq.Context | None = None, curve: CurveServer | None = None):
        if curve is not None and config.mode is not ConnectMode.BIND:
            raise ValueError(f"CurveZMQ on the publisher needs mode bind (the service is the server), but got "
                             f"{config.mode.value}")
        self.config, self.curve = config, curve
        self._health = health
        self._observer = observer or Observer()
        self._context = context or zmq.Context.instance()
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self._socket: zmq.Socket | None = None
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self.endpoint: str | None = None

    def open(self) -> str:
        """Create the PUB socket; return its endpoint (with the bound port)."""
        sock = self._context.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.config.send_hwm)
        sock.setsockopt(zmq.SNDTIMEO, self.config.send_timeout_ms)
        if self.curve is not None:
            self.curve.apply(sock)
        try:
            if self.config.mode is ConnectMode.BIND:
                sock.bind(self.config.address)
                self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(self.config.address)
                self.endpoint = self.config.address
        except zmq.ZMQError as error:
            sock.close(0)
            raise OSError(f"cannot {self.config.mode.value} the publish socket to {self.config.address}: "
                          f"{error}") from error
        self._socket = sock
        return self.endpoint

    def start(self) -> None:
        self._thread.start()

    def submit(self, message: DecisionMessage) -> bool:
        """Queue a decision; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(message)
            return True
        except queue.Full:
            self._observer.on_publish_overflow(message)
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send what is queued, then a final ``stopped`` heartbeat, and close."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _send(self, topic: bytes, message: DecisionMessage | HealthMessage) -> bool:
        try:
            body = encode_body(message, self.config.wire_format)
        except (ValueError, TypeError, OverflowError) as error:  # a bug upstream; never the end of the stream
            log.error("cannot serialize a message for %s: %s", topic.decode(errors="replace"), error)
            if isinstance(message, DecisionMessage):  # publish_errors counts frames; a lost heartbeat shows by absence
                for _ in range(message.frames):
                    self._observer.on_publish_error(str(error))
            return False
        try:
            self._socket.send_multipart([topic, body])
            return True
        except zmq.ZMQError as error:
            log.warning("publish failed on %s: %s", topic.decode(errors="replace"), error)
            if isinstance(message, DecisionMessage):
                for _ in range(message.frames):
                    self._observer.on_publish_error(str(error))
            return False

    def _send_decision(self, message: DecisionMessage) -> None:
        message = message.stamped(time.time_ns())
        if self._send(topic_for(message.camera_id), message):
            self._observer.on_published(message)

    def _run(self) -> None:
        period = self.config.heartbeat_ms / 1e3
        next_beat = time.monotonic()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, next_beat - time.monotonic()))
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                if item is not None:
                    self._send_decision(item)
                if time.monotonic() >= next_beat:
                    self._send(HEALTH_TOPIC, self._health(HealthStatus.OK))
                    next_beat = time.monotonic() + period
        except Exception:  # keep the final heartbeat and close below; the service notices the dead thread
            log.exception("publisher thread failed")
        finally:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    self._send_decision(item)
            self._send(HEALTH_TOPIC, self._health(HealthStatus.STOPPED))
            self._socket.setsockopt(zmq.LINGER, self.config.drain_ms)
            self._socket.close()
            self._socket = None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
