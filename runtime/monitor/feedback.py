"""Labels and operator resets in: the service's feedback socket (schemas/feedback_v1.json).

``serve --feedback ADDRESS`` binds a ZeroMQ REP socket. Each request is one msgpack (or JSON) map, answered with
one map:

* ``{"schema_version": "1.0", "kind": "labels", "items": [{"camera_id": "cam1", "seq": 42, "label": "Shirt"}, ...]}``
  (at most :data:`MAX_ITEMS` items): the true labels of audited frames (decisions with ``audit: true``). Answered
  ``{"kind": "outcomes", "outcomes": {"matched": n, "unmatched": n, ...}}``: only labels of frames the service
  drew for audit count (others would bias the audit), see :class:`~trustvlm.runtime.monitor.watch.GuaranteeWatch`.
* ``{"schema_version": "1.0", "kind": "reset", "camera_id": "cam1", "operator": "alice"}``: clear the camera's
  monitor and audit (logged with the operator's name). Answered ``{"kind": "reset", "done": true|false}``.

A request that does not follow the schema is answered ``{"kind": "error", "error": "<one line>"}`` and counted;
nothing received is ever unpickled, and unpacking is bounded. A reset re-enables accepts on a camera whose
guarantee was found lost, so the socket is for trusted clients only: without CurveZMQ it must be on loopback
(``tcp://127.0.0.1``, ``tcp://localhost``, ``tcp://[::1]``) or ``ipc://``; with CurveZMQ it takes the publish
allow-list (the controllers allowed to read decisions). ``trustvlm audit`` is its client.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass

import zmq

from trustvlm.runtime.frames import check_camera_id
from trustvlm.runtime.schema import (BODY_UNPACK_LIMITS, SCHEMA_DIR, MessageError, check_schema_version,
                                     unpack_message)

__all__ = ["FEEDBACK_SCHEMA_VERSION", "MAX_ITEMS", "LabelItem", "parse_request", "check_feedback_address",
           "FeedbackServer", "encode_request"]

log = logging.getLogger("trustvlm.runtime.monitor")

#: The version this code reads and writes, from the schema document (code and data cannot drift apart).
FEEDBACK_SCHEMA_VERSION: str = json.loads((SCHEMA_DIR / "feedback_v1.json").read_text())["version"]
#: Most labels in one request.
MAX_ITEMS = 1000
LOOPBACK_PREFIXES = ("tcp://127.", "tcp://localhost:", "tcp://[::1]:", "ipc://", "inproc://")


@dataclass(frozen=True)
class LabelItem:
    """The true label of one frame."""

    camera_id: str
    seq: int
    label: str


def check_feedback_address(address: str, curve: bool) -> None:
    """Refuse (ValueError, one line) a feedback address off this machine without CurveZMQ."""
    if not curve and not address.startswith(LOOPBACK_PREFIXES):
        raise ValueError(f"the feedback socket resets cameras whose guarantee was lost, so without CurveZMQ it must be "
                         f"on loopback (tcp://127.0.0.1:PORT) or ipc://, but got {address!r}")


def _item(entry, index: int) -> LabelItem:
    where = f"feedback item {index}"
    if not isinstance(entry, dict) or set(entry) != {"camera_id", "seq", "label"}:
        raise MessageError(f"{where}: expected a map with keys camera_id, seq, label, but got "
                           f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
    seq, label = entry["seq"], entry["label"]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise MessageError(f"{where}: seq should be an integer >= 0, but got {seq!r}")
    if not isinstance(label, str) or not label:
        raise MessageError(f"{where}: label should be a class name, but got {label!r}")
    return LabelItem(check_camera_id(entry["camera_id"], where), seq, label)


def parse_request(body: bytes) -> tuple[str, object]:
    """``("labels", [LabelItem, ...])`` or ``("reset", (camera_id, operator))``; MessageError otherwise."""
    data = unpack_message(body, BODY_UNPACK_LIMITS, "feedback request")
    if not isinstance(data, dict):
        raise MessageError(f"feedback request: expected a map, but got {type(data).__name__}")
    kind = data.get("kind")
    keys = {"labels": {"schema_version", "kind", "items"}, "reset": {"schema_version", "kind", "camera_id", "operator"}}
    if not isinstance(kind, str) or kind not in keys:
        raise MessageError(f"feedback request: kind should be 'labels' or 'reset', but got {kind!r}")
    check_schema_version(data.get("schema_version"), FEEDBACK_SCHEMA_VERSION, set(data) - keys[kind], keys[kind],
                         "feedback request")
    missing = sorted(keys[kind] - set(data))
    if missing:
        raise MessageError(f"feedback request: missing keys {missing}")
    if kind == "reset":
        operator = data["operator"]
        if not isinstance(operator, str) or not 0 < len(operator) <= 64:
            raise MessageError(f"feedback request: operator should be a name of 1-64 characters, but got {operator!r}")
        return "reset", (check_camera_id(data["camera_id"], "feedback request"), operator)
    items = data["items"]
    if not isinstance(items, list) or not 0 < len(items) <= MAX_ITEMS:
        raise MessageError(f"feedback request: items should be a list of 1 to {MAX_ITEMS} labels")
    return "labels", [_item(entry, index) for index, entry in enumerate(items)]


def encode_request(kind: str, **fields) -> bytes:
    """A request body (msgpack) for :class:`FeedbackServer`: ``kind`` "labels" with ``items`` or "reset"."""
    import msgpack  # noqa: PLC0415

    return msgpack.packb({"schema_version": FEEDBACK_SCHEMA_VERSION, "kind": kind, **fields}, use_bin_type=True)


class FeedbackServer:
    """The REP socket and its thread; requests go to a :class:`~trustvlm.runtime.monitor.watch.GuaranteeWatch`.

    Args:
        address: Where to bind (``tcp://127.0.0.1:*`` binds a free port).
        watch: Takes ``feedback_many([(camera_id, seq, label), ...])`` and ``reset(camera_id, who)``.
        context: The service's ZeroMQ context.
        curve: The CurveZMQ server settings (None: plain, loopback only).
    """

    def __init__(self, address: str, watch, context: zmq.Context, curve=None):
        check_feedback_address(address, curve is not None)
        self.address, self.watch, self.context, self.curve = address, watch, context, curve
        self.rejected = 0
        self._stop = threading.Event()
        self._socket: zmq.Socket | None = None
        self._thread = threading.Thread(target=self._run, name="feedback", daemon=True)

    def open(self) -> str:
        """Bind; returns the endpoint bound."""
        socket = self.context.socket(zmq.REP)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        if self.curve is not None:
            self.curve.apply(socket)
        try:
            socket.bind(self.address)
        except zmq.ZMQError:
            socket.close()
            raise
        self._socket = socket
        return socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        elif self._socket is not None:
            self._socket.close()

    def _run(self) -> None:
        import msgpack  # noqa: PLC0415

        socket = self._socket
        try:
            while not self._stop.is_set():
                if not socket.poll(100):
                    continue
                body = socket.recv()
                socket.send(msgpack.packb(self.handle(body), use_bin_type=True))
        finally:
            socket.close()

    def handle(self, body: bytes) -> dict:
        """The answer to one request (never raises: a failure of the watch is answered, and the socket stays up)."""
        try:
            kind, payload = parse_request(body)
        except MessageError as error:
            self.rejected += 1
            log.debug("feedback request refused: %s", error)
            return {"kind": "error", "error": str(error)[:500]}
        try:
            return self._answer(kind, payload)
        except Exception as error:  # a bug: answered, so that the REP socket can take the next request
            log.exception("a feedback request failed")
            return {"kind": "error", "error": f"internal error: {error}"[:500]}

    def _answer(self, kind: str, payload) -> dict:
        if kind == "reset":
            camera, operator = payload
            return {"kind": "reset", "done": self.watch.reset(camera, f"operator {operator!r} (feedback socket)")}
        outcomes = Counter(self.watch.feedback_many([(item.camera_id, item.seq, item.label) for item in payload]))
        return {"kind": "outcomes", "outcomes": dict(outcomes)}
