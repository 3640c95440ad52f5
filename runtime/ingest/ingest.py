"""The ingest seam: what the service takes frames from, and the results an ingest hands over.

:class:`~trustvlm.runtime.service.TrustService` reads frames from any object that fits the
:class:`Ingest` protocol; ``trustvlm serve`` passes the ZeroMQ one
(:class:`~trustvlm.runtime.ingest.transport.ZmqIngest`, built by
:func:`~trustvlm.runtime.ingest.transport.zmq_ingest_for`). A new transport is one class with
``open``/``receive``/``close`` that turns what it receives into :data:`IngestResult` values,
usually through :func:`trustvlm.runtime.ingest.wire.parse_message` (schema-1 and imagezmq headers, with
the size and image-format guards of :mod:`trustvlm.runtime.decode.image_codec`).

Every ingest result is one of: a :class:`~trustvlm.runtime.frames.ReceivedFrame` ready for
scoring, a :class:`~trustvlm.runtime.frames.Notice` (a frame that names its camera but is
deferred with a reason), or a :class:`Rejection` (counted, not published, since no camera can be
named). Limits are explicit (:class:`FrameLimits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from trustvlm.runtime.frames import Notice, ReceivedFrame
from trustvlm.runtime.messages import Reason

if TYPE_CHECKING:
    import zmq

    from trustvlm.runtime.ingest.security import CurveServer


@dataclass(frozen=True)
class FrameLimits:
    """Size limits checked on every frame.

    Attributes:
        max_message_bytes: Largest payload accepted; larger ones are deferred ``too_large``.
        max_header_bytes: Largest header accepted.
        max_width: Largest image width (pixels), from the JPEG/PNG header or the raw shape.
        max_height: Largest image height (pixels).
        hard_limit_factor: ZeroMQ drops any message part over ``factor * max_message_bytes``
            before it is buffered (ZMQ_MAXMSGSIZE); those are not seen, hence not counted.
    """

    max_message_bytes: int = 8 << 20
    max_header_bytes: int = 4096
    max_width: int = 4096
    max_height: int = 4096
    hard_limit_factor: int = 4

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_header_bytes", "max_width", "max_height", "hard_limit_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} should be a positive integer, but got {getattr(self, name)}")


@dataclass(frozen=True)
class Rejection:
    """A message that cannot be attributed to a camera frame: counted, not published."""

    reason: Reason
    detail: str
    receipt_ts_ns: int


IngestResult = ReceivedFrame | Notice | Rejection


class Ingest(Protocol):
    """Where the service's frames come from; every method is called from the service's threads.

    :meth:`open` is called once by :meth:`TrustService.start` before the ingest thread starts;
    :meth:`receive` is then called in a loop on the ingest thread; :meth:`close` once when that
    loop ends, or when the start fails after :meth:`open`.
    """

    def open(self) -> str:
        """Start taking frames; return where they come in (printed by ``trustvlm serve``)."""
        ...

    def receive(self) -> IngestResult | None:
        """One checked message, or None when nothing came within a short wait.

        Must return within about a tenth of a second when nothing arrives (the loop checks for a
        stop between calls) and must not raise for bad input: bad messages are Notices or
        Rejections. An exception here stops the service.
        """
        ...

    def close(self) -> None:
        """Release what :meth:`open` took; safe to call twice."""
        ...


class IngestFactory(Protocol):
    """Builds the service's ingest once the service's ZeroMQ context and CurveZMQ gate exist.

    ``context`` is the one the service's other sockets and its ZAP handler use (CurveZMQ checks
    only sockets of that context); ``curve`` is the ingest's CurveZMQ server, or None when the
    ingest is open. Transports that are not ZeroMQ ignore both.
    """

    def __call__(self, context: zmq.Context, curve: CurveServer | None) -> Ingest: ...
