"""Messages out: what `trustvlm serve` publishes (schemas/decision_v1.json).

A robot subscribes to ``trust/<camera_id>/`` (:func:`topic_for`; the closing ``/`` makes the subscription
exact, as no camera id contains one) and reads each body with
:func:`decode_body`, which returns a :class:`DecisionMessage` (or a :class:`HealthMessage` on
``trust/_health``). Bodies are msgpack or JSON (:class:`WireFormat`), unpacked within
:data:`~trustvlm.runtime.schema.BODY_UNPACK_LIMITS` and checked field by field; the version rule
is :func:`~trustvlm.runtime.schema.check_schema_version`. Frames going in are
:mod:`trustvlm.runtime.frames`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from enum import Enum

import msgpack

from trustvlm.contract.files import json_safe as _json_safe
from trustvlm.runtime.schema import (BODY_UNPACK_LIMITS, DECISION_SCHEMA_VERSION, MessageError, check_schema_version,
                                     enum_field, unpack_message)

TOPIC_PREFIX = "trust/"
HEALTH_TOPIC = b"trust/_health"


class Decision(str, Enum):
    """What the robot should do with the model's answer for one frame."""

    ACCEPT = "accept"
    DEFER = "defer"


class Reason(str, Enum):
    """Why a frame got its decision; MEETS_THRESHOLD is the only reason that goes with ACCEPT."""

    MEETS_THRESHOLD = "meets_threshold"
    BELOW_THRESHOLD = "below_threshold"
    NO_THRESHOLD = "no_threshold"
    OUT_OF_DISTRIBUTION = "out_of_distribution"
    STALE = "stale"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    DROPPED = "dropped"
    CAMERA_LIMIT = "camera_limit"
    TOO_LARGE = "too_large"
    BAD_HEADER = "bad_header"
    BAD_SHAPE = "bad_shape"
    UNDECODABLE = "undecodable"
    NON_FINITE = "non_finite"
    ENGINE_ERROR = "engine_error"
    NO_BUNDLE = "no_bundle"
    GUARANTEE_LOST = "guarantee_lost"


class HealthStatus(str, Enum):
    """State reported on trust/_health."""

    OK = "ok"
    DEGRADED = "degraded"
    STOPPING = "stopping"
    STOPPED = "stopped"


class WireFormat(str, Enum):
    """Body encoding of published messages."""

    MSGPACK = "msgpack"
    JSON = "json"


#: Ends every camera's topic (decision schema 1.4): ZeroMQ subscriptions match prefixes, and ``trust/cam1/`` is no
#: prefix of ``trust/cam10/``. Camera ids never contain it (schemas/frame_v1.json); ``trust/cam1`` still matches both.
TOPIC_END = "/"


def topic_for(camera_id: str) -> bytes:
    """The PUB topic of a camera's decisions, ``trust/<camera_id>/``: subscribe to it for that camera exactly."""
    return f"{TOPIC_PREFIX}{camera_id}{TOPIC_END}".encode()


def _float_to_wire(value: float | None):
    return None if value is None else float(value)


def _float_from_wire(value, key: str, what: str, nullable: bool = True) -> float | None:
    if value is None and nullable:
        return None
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MessageError(f"{what}: {key} should be a number{' or null' if nullable else ''}, but got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TopKEntry:
    """One of the k most likely classes."""

    class_id: int
    label: str
    prob: float


#: Keys added in decision schema 1.2 (runs of superseded frames), with what a 1.1 message means by leaving them out.
RUN_KEYS_BEFORE_1_2 = {"seq_last": None, "frames": 1}
#: Keys added in decision schema 1.5 (the gate's typicality, the camera's guarantee monitor and audit), with what an
#: older message means by leaving them out.
GUARANTEE_KEYS_BEFORE_1_5 = {"typicality": None, "monitor": "", "audit_state": "", "audit": False}
#: The values of :attr:`DecisionMessage.monitor` and :attr:`DecisionMessage.audit_state` ("" = not watched).
MONITOR_STATES = ("", "ok", "watch", "alarm")
AUDIT_STATES = ("", "unverified", "verified", "violated")


@dataclass(frozen=True)
class DecisionMessage:
    """One frame's outcome, published on ``trust/<camera_id>/`` (schemas/decision_v1.json).

    ``kappa`` / ``msp`` / ``s_ii`` / ``label`` / ``class_id`` are None when the frame was not
    scored (or its scores were not finite). Since schema 1.2 one ``dropped`` message may cover a
    run of superseded frames of its camera: ``seq`` to ``seq_last``, ``frames`` of them (a message
    of one frame has ``seq_last`` None and ``frames`` 1; 1.1 messages, without the two keys, read
    so). ``publish_ts_ns`` and the latencies are set by the publisher when it sends the message
    (:meth:`stamped`). Since 1.5: ``typicality`` (the gate's, None without a gate), the camera's guarantee
    ``monitor`` and ``audit_state`` when the frame was decided ("" when not watched), and ``audit`` (an accepted
    frame drawn for audit: its true label is wanted on the feedback socket).
    """

    camera_id: str
    seq: int
    capture_ts_ns: int
    receipt_ts_ns: int
    decision: Decision
    reason: Reason
    threshold: float
    score_name: str
    model_id: str
    bundle_id: str
    detail: str = ""
    label: str | None = None
    class_id: int | None = None
    kappa: float | None = None
    msp: float | None = None
    s_ii: float | None = None
    top_k: tuple[TopKEntry, ...] = ()
    publish_ts_ns: int = 0
    latency_from_capture_ms: float | None = None
    latency_from_receipt_ms: float | None = None
    schema_version: str = DECISION_SCHEMA_VERSION
    seq_last: int | None = None
    frames: int = 1
    typicality: float | None = None
    monitor: str = ""
    audit_state: str = ""
    audit: bool = False

    def __post_init__(self) -> None:
        if self.frames < 1 or (self.seq_last is not None and (self.seq_last < self.seq or self.reason is not
                                                              Reason.DROPPED)):
            raise ValueError(f"a message covers frames >= 1 and only a dropped run has seq_last >= seq, but got "
                             f"frames {self.frames}, seq {self.seq}, seq_last {self.seq_last}, {self.reason.value}")
        if (self.decision is Decision.ACCEPT) != (self.reason is Reason.MEETS_THRESHOLD):
            raise ValueError(f"decision {self.decision.value} cannot go with reason {self.reason.value}; "
                             f"only {Reason.MEETS_THRESHOLD.value} goes with {Decision.ACCEPT.value}")
        if self.monitor not in MONITOR_STATES or self.audit_state not in AUDIT_STATES:
            raise ValueError(f"monitor should be one of {MONITOR_STATES} and audit_state one of {AUDIT_STATES}, but "
                             f"got {self.monitor!r} and {self.audit_state!r}")
        if self.audit and self.decision is not Decision.ACCEPT:
            raise ValueError("only an accepted frame is drawn for audit")

    def changed(self, **changes) -> "DecisionMessage":
        """A copy with `changes` (field names), checked as the constructor checks; for the scoring thread's hot path,
        where :func:`dataclasses.replace` costs about ten times as much."""
        unknown = set(changes) - _DECISION_FIELDS
        if unknown:
            raise TypeError(f"DecisionMessage has no fields {sorted(unknown)}")
        new = object.__new__(DecisionMessage)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        new.__post_init__()
        return new

    def stamped(self, publish_ts_ns: int) -> "DecisionMessage":
        """A copy with the publish time and both latencies filled in."""
        return replace(self, publish_ts_ns=publish_ts_ns,
                       latency_from_capture_ms=(publish_ts_ns - self.capture_ts_ns) / 1e6,
                       latency_from_receipt_ms=(publish_ts_ns - self.receipt_ts_ns) / 1e6)

    def to_dict(self) -> dict:
        """Wire map (floats may be non-finite; :func:`encode_body` handles JSON)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["kind"] = "decision"
        data["decision"], data["reason"] = self.decision.value, self.reason.value
        data["top_k"] = [{"class_id": e.class_id, "label": e.label, "prob": float(e.prob)} for e in self.top_k]
        for key in ("threshold", "kappa", "msp", "s_ii", "latency_from_capture_ms", "latency_from_receipt_ms",
                    "typicality"):
            data[key] = _float_to_wire(data[key])
        return data

    @classmethod
    def from_dict(cls, data) -> "DecisionMessage":
        """Inverse of :meth:`to_dict`; MessageError on a schema violation."""
        what = "decision message"
        if not isinstance(data, dict) or data.get("kind") != "decision":
            raise MessageError(f"{what}: expected a map with kind 'decision', but got "
                               f"{data.get('kind') if isinstance(data, dict) else type(data).__name__!r}")
        known = {f.name for f in fields(cls)} | {"kind"}
        check_schema_version(data.get("schema_version"), DECISION_SCHEMA_VERSION, set(data) - known, known, what)
        data = {**RUN_KEYS_BEFORE_1_2, **GUARANTEE_KEYS_BEFORE_1_5, **data}
        missing = sorted(known - set(data))
        if missing:
            raise MessageError(f"{what}: missing keys {missing}")
        for key, value in (("frames", data["frames"]), ("seq_last", data["seq_last"])):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise MessageError(f"{what}: {key} should be an integer{' or null' if key == 'seq_last' else ''}, "
                                   f"but got {value!r}")
        for key in ("monitor", "audit_state"):
            if not isinstance(data[key], str):
                raise MessageError(f"{what}: {key} should be a string, but got {data[key]!r}")
        if not isinstance(data["audit"], bool):
            raise MessageError(f"{what}: audit should be true or false, but got {data['audit']!r}")
        try:
            top_k = tuple(TopKEntry(int(e["class_id"]), str(e["label"]), float(e["prob"])) for e in data["top_k"])
        except (TypeError, KeyError, ValueError) as error:
            raise MessageError(f"{what}: top_k should be a list of {{class_id, label, prob}}, "
                               f"but got {data['top_k']!r}") from error
        values = {name: data[name] for name in known - {"kind"}}
        values.update(
            decision=enum_field(data, "decision", Decision, what), reason=enum_field(data, "reason", Reason, what),
            top_k=top_k, threshold=_float_from_wire(data["threshold"], "threshold", what, nullable=False),
            **{key: _float_from_wire(data[key], key, what)
               for key in ("kappa", "msp", "s_ii", "latency_from_capture_ms", "latency_from_receipt_ms",
                           "typicality")})
        try:
            return cls(**values)
        except ValueError as error:
            raise MessageError(f"{what}: {error}") from error


_DECISION_FIELDS = frozenset(f.name for f in fields(DecisionMessage))


@dataclass(frozen=True)
class HealthMessage:
    """Heartbeat on ``trust/_health``: status and counters (schemas/decision_v1.json#/$defs/health)."""

    status: HealthStatus
    ts_ns: int
    uptime_s: float
    model_id: str
    bundle_id: str
    threshold: float
    cameras: int
    counters: dict = field(default_factory=dict)
    detail: str = ""
    schema_version: str = DECISION_SCHEMA_VERSION
    #: Since 1.3, with a camera map: each bundle in use (bundle_id, score_name, threshold, cameras).
    bundles: tuple = ()
    #: Since 1.5: per camera, its guarantee monitor and audit (camera_id, bundle_id, monitor, evidence, frames,
    #: audit_state, labels, risk_lower, risk_upper).
    monitors: tuple = ()

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["kind"], data["status"] = "health", self.status.value
        data["bundles"] = [{**b, "threshold": float(b["threshold"]), "cameras": list(b["cameras"])}
                           for b in self.bundles]
        data["monitors"] = [dict(m) for m in self.monitors]
        data["counters"] = {str(k): int(v) for k, v in self.counters.items()}
        data["threshold"], data["uptime_s"] = float(self.threshold), float(self.uptime_s)
        return data

    @classmethod
    def from_dict(cls, data) -> "HealthMessage":
        what = "health message"
        if not isinstance(data, dict) or data.get("kind") != "health":
            raise MessageError(f"{what}: expected a map with kind 'health'")
        known = {f.name for f in fields(cls)} | {"kind"}
        check_schema_version(data.get("schema_version"), DECISION_SCHEMA_VERSION, set(data) - known, known, what)
        missing = sorted(known - set(data) - {"bundles", "monitors"})
        if missing:
            raise MessageError(f"{what}: missing keys {missing}")
        values = {name: data[name] for name in known - {"kind", "bundles", "monitors"}}
        monitors = data.get("monitors", [])
        if not isinstance(monitors, list) or not all(isinstance(m, dict) for m in monitors):
            raise MessageError(f"{what}: monitors should be a list of maps")
        bundles = data.get("bundles", [])
        if not isinstance(bundles, list) or not all(isinstance(b, dict) for b in bundles):
            raise MessageError(f"{what}: bundles should be a list of maps")
        values.update(status=enum_field(data, "status", HealthStatus, what),
                      bundles=tuple({**b, "threshold": _float_from_wire(b.get("threshold"), "threshold", what,
                                                                        nullable=False)} for b in bundles),
                      threshold=_float_from_wire(data["threshold"], "threshold", what, nullable=False),
                      uptime_s=float(data["uptime_s"]), counters=dict(data["counters"]), monitors=tuple(monitors))
        return cls(**values)


def bundle_entry(scorer, cameras=()) -> dict:
    """One entry of :attr:`HealthMessage.bundles`: a scorer's bundle id, score and threshold, and the camera map
    entries it scores (none: every camera)."""
    return {"bundle_id": scorer.bundle_id, "score_name": scorer.score_name, "threshold": scorer.threshold,
            "cameras": list(cameras)}


def encode_body(message: DecisionMessage | HealthMessage, wire_format: WireFormat = WireFormat.MSGPACK) -> bytes:
    """Serialize a published message: msgpack, or JSON with non-finite floats as strings."""
    data = message.to_dict()
    if wire_format is WireFormat.JSON:
        return json.dumps(_json_safe(data), allow_nan=False, separators=(",", ":")).encode()
    return msgpack.packb(data, use_bin_type=True)


def decode_body(body: bytes) -> DecisionMessage | HealthMessage:
    """Parse a published body (msgpack or JSON, told apart by the first byte)."""
    data = unpack_message(body, BODY_UNPACK_LIMITS, "body")
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "decision":
        return DecisionMessage.from_dict(data)
    if kind == "health":
        return HealthMessage.from_dict(data)
    raise MessageError(f"body kind should be one of ['decision', 'health'], but got {kind!r}")
