"""ZeroMQ ingest transport: one socket in, each message handed to :func:`~trustvlm.runtime.ingest.wire.parse_message`.

Which socket to use:

* ``pull`` + ``bind`` (default): cameras ``PUSH``-connect to the service. PUSH blocks (or queues up
  to its HWM) when the service is slow; nothing is silently lost between camera and service.
* ``sub`` + ``connect``: the service subscribes to cameras that ``PUB``-bind, as imagezmq's
  ``ImageSender(REQ_REP=False)`` does. PUB drops frames when nobody keeps up; fine for video.
* ``rep`` + ``bind``: imagezmq's default ``ImageSender()`` (``REQ``) waits for a reply after each
  frame; the service answers ``b'OK'`` on receipt (before scoring), so a camera is never held up
  by inference.

A hard cap (``MAXMSGSIZE``, a multiple of the payload limit) makes ZeroMQ itself drop absurd
messages before they are buffered; every other check is :mod:`trustvlm.runtime.ingest.wire`'s.

Authentication (optional): :class:`ZmqIngest` takes a
:class:`~trustvlm.runtime.ingest.security.CurveServer`; the socket is then a CurveZMQ server whose
clients are checked against an allow-list by the ZAP handler (see runtime/ingest/security.py).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import zmq

from trustvlm.runtime.ingest.ingest import FrameLimits, IngestFactory, IngestResult
from trustvlm.runtime.ingest.security import CurveServer
from trustvlm.runtime.ingest.wire import ImagezmqNamer, parse_message

log = logging.getLogger("trustvlm.runtime.ingest.ingest")


class SocketType(str, Enum):
    """ZeroMQ socket of the ingest (see the module docstring for when to use which)."""

    PULL = "pull"
    SUB = "sub"
    REP = "rep"


class ConnectMode(str, Enum):
    """Whether a socket binds its address or connects to it."""

    BIND = "bind"
    CONNECT = "connect"


@dataclass(frozen=True)
class IngestConfig:
    """Where and how frames come in.

    Attributes:
        address: ZeroMQ endpoint, e.g. ``tcp://*:5555`` (``tcp://127.0.0.1:*`` binds a free port).
        socket_type: pull, sub or rep.
        mode: bind or connect.
        receive_timeout_ms: RCVTIMEO; the ingest loop checks for shutdown at this period.
        reply_timeout_ms: SNDTIMEO of the REP reply.
        receive_hwm: RCVHWM, messages queued in ZeroMQ per connected sender before it blocks or
            drops; with the hard payload cap this bounds ZeroMQ's receive memory per sender.
    """

    address: str = "tcp://*:5555"
    socket_type: SocketType = SocketType.PULL
    mode: ConnectMode = ConnectMode.BIND
    receive_timeout_ms: int = 100
    reply_timeout_ms: int = 1000
    receive_hwm: int = 64

    def __post_init__(self) -> None:
        for name in ("receive_timeout_ms", "reply_timeout_ms", "receive_hwm"):
            if isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise ValueError(f"ingest {name} should be a positive integer, but got {getattr(self, name)}")


class ZmqIngest:
    """The ZeroMQ :class:`~trustvlm.runtime.ingest.ingest.Ingest`: receive, check, and (REP) acknowledge one message at a time.

    Not thread-safe: one thread opens, receives and closes it. On a ZeroMQ error other than a
    timeout the socket is closed and recreated after a back-off (imagezmq's recipe).
    """

    def __init__(self, config: IngestConfig, limits: FrameLimits, context: zmq.Context | None = None,
                 max_cameras: int = 1024, curve: CurveServer | None = None):
        if curve is not None and config.mode is not ConnectMode.BIND:
            raise ValueError(f"CurveZMQ on the ingest needs mode bind (the service is the server), but got "
                             f"{config.mode.value}")
        self.config, self.limits, self.curve = config, limits, curve
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._namer = ImagezmqNamer(max_cameras)
        self._address = config.address
        self._backoff_s = 0.1
        self.endpoint: str | None = None

    def open(self) -> str:
        """Create the socket; return the endpoint (the bound one, with the port, for bind)."""
        kind = {SocketType.PULL: zmq.PULL, SocketType.SUB: zmq.SUB, SocketType.REP: zmq.REP}[self.config.socket_type]
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, self.config.receive_timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, self.config.reply_timeout_ms)
        sock.setsockopt(zmq.RCVHWM, self.config.receive_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.hard_limit_factor * self.limits.max_message_bytes)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        if self.curve is not None:
            self.curve.apply(sock)
        try:
            if self.config.mode is ConnectMode.BIND:
                sock.bind(self._address)
                self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
                self._address = self.endpoint  # a re-created socket binds the same port again
            else:
                sock.connect(self._address)
                self.endpoint = self._address
        except zmq.ZMQError as error:
            sock.close(0)
            raise OSError(f"cannot {self.config.mode.value} the ingest {self.config.socket_type.value} socket to "
                          f"{self._address}: {error}") from error
        self._socket = sock
        return self.endpoint

    def receive(self) -> IngestResult | None:
        """One message, checked; None after a timeout or a recovered socket error."""
        if self._socket is None:
            self.open()
        try:
            parts = self._socket.recv_multipart()
        except zmq.Again:
            return None
        except zmq.ZMQError as error:
            self._recover(error)
            return None
        receipt_ts_ns = time.time_ns()
        if self.config.socket_type is SocketType.REP:
            try:
                self._socket.send(b"OK")
            except zmq.ZMQError as error:
                self._recover(error)
        self._backoff_s = 0.1
        return parse_message(parts, receipt_ts_ns, self.limits, self._namer)

    def _recover(self, error: zmq.ZMQError) -> None:
        log.warning("ingest socket error (%s); re-creating it in %.1f s", error, self._backoff_s)
        self.close()
        time.sleep(self._backoff_s)
        self._backoff_s = min(2 * self._backoff_s, 5.0)
        try:
            self.open()
        except OSError as open_error:
            log.warning("%s", open_error)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None

    def __enter__(self) -> "ZmqIngest":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class IngestSettings(Protocol):
    """What the ingest reads of a service's configuration (:class:`~trustvlm.runtime.config.ServiceConfig` has it)."""

    ingest: IngestConfig
    limits: FrameLimits
    buffer: Any  # its max_cameras


def zmq_ingest_for(config: IngestSettings) -> IngestFactory:
    """The factory of `trustvlm serve`'s ZeroMQ ingest, for :func:`~trustvlm.runtime.service.build_service`.

    The imagezmq namer tracks up to four times the buffer's ``max_cameras`` camera names.
    """
    return functools.partial(_zmq_ingest, config.ingest, config.limits, 4 * config.buffer.max_cameras)


def _zmq_ingest(ingest: IngestConfig, limits: FrameLimits, max_cameras: int, context: zmq.Context,
                curve: CurveServer | None) -> ZmqIngest:
    return ZmqIngest(ingest, limits, context, max_cameras=max_cameras, curve=curve)
