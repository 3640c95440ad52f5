"""Wire messages of the streaming service, schema 1 (see schemas/frame_v1.json, schemas/decision_v1.json).

Use this module to talk to `trustvlm serve` from Python: a camera packs a :class:`FrameHeader`
with :func:`pack_frame_header` and sends ``[header, payload]`` with ``SNDMORE`` (or calls
:func:`send_frame`); a robot subscribes to ``trust/<camera_id>`` and reads each body with
:func:`decode_body`, which returns a :class:`DecisionMessage` (or a :class:`HealthMessage` on
``trust/_health``). Nothing received is ever unpickled: headers are msgpack maps (or, for imagezmq
senders, JSON), checked field by field.

Parsing is bounded: msgpack is unpacked with explicit limits (:data:`HEADER_UNPACK_LIMITS`,
:data:`BODY_UNPACK_LIMITS`: string, bytes, array and map lengths; ext types are refused), and JSON
nesting beyond Python's recursion limit is a :class:`MessageError`, not a crash.

Versioning: every message carries ``schema_version`` ("major.minor"). A receiver rejects another
major version (:class:`SchemaVersionError`); within its major version it accepts keys it does
not know only from a newer minor version, and rejects them otherwise (a typo is not a feature).

The frozen dataclasses here also cross thread boundaries inside the service:
:class:`ReceivedFrame` (a frame that passed the ingest checks) and :class:`Notice` (a frame that
already has its outcome: defer with a reason, published in the camera's order).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path

import msgpack

from trustvlm.contract.files import json_safe as _json_safe

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
FRAME_SCHEMA = json.loads((SCHEMA_DIR / "frame_v1.json").read_text())
DECISION_SCHEMA = json.loads((SCHEMA_DIR / "decision_v1.json").read_text())
#: Versions this code writes; read from the schema documents so code and data cannot drift apart.
FRAME_SCHEMA_VERSION: str = FRAME_SCHEMA["version"]
DECISION_SCHEMA_VERSION: str = DECISION_SCHEMA["version"]

TOPIC_PREFIX = "trust/"
HEALTH_TOPIC = b"trust/_health"
# Matched with fullmatch and re.ASCII: Python's `$` also matches before a final newline, and `\d` any Unicode digit.
CAMERA_ID_PATTERN = re.compile(FRAME_SCHEMA["properties"]["camera_id"]["pattern"], re.ASCII)
MAX_INT64 = 2**63 - 1
_VERSION_PATTERN = re.compile(r"(\d+)\.(\d+)", re.ASCII)


class Encoding(str, Enum):
    """How the payload of a frame is encoded."""

    JPEG = "jpeg"
    PNG = "png"
    RAW = "raw"


class PixelFormat(str, Enum):
    """Channel order of a raw payload (ROS sensor_msgs/Image encoding names)."""

    BGR8 = "bgr8"
    RGB8 = "rgb8"
    MONO8 = "mono8"


class Decision(str, Enum):
    """What the robot should do with the model's answer for one frame."""

    ACCEPT = "accept"
    DEFER = "defer"


class Reason(str, Enum):
    """Why a frame got its decision; MEETS_THRESHOLD is the only reason that goes with ACCEPT."""

    MEETS_THRESHOLD = "meets_threshold"
    BELOW_THRESHOLD = "below_threshold"
    NO_THRESHOLD = "no_threshold"
    STALE = "stale"
    DROPPED = "dropped"
    CAMERA_LIMIT = "camera_limit"
    TOO_LARGE = "too_large"
    BAD_HEADER = "bad_header"
    BAD_SHAPE = "bad_shape"
    UNDECODABLE = "undecodable"
    NON_FINITE = "non_finite"
    ENGINE_ERROR = "engine_error"


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


class MessageError(ValueError):
    """A message that does not follow its schema."""


class SchemaVersionError(MessageError):
    """A message of a schema major version this code does not read."""


@dataclass(frozen=True)
class UnpackLimits:
    """Most a msgpack message may hold, passed to ``msgpack.unpackb`` (its own defaults allow the whole buffer).

    Attributes:
        max_str_len: Longest string (bytes).
        max_bin_len: Longest bytes value.
        max_array_len: Most items in one array.
        max_map_len: Most keys in one map.
    """

    max_str_len: int
    max_bin_len: int
    max_array_len: int
    max_map_len: int


#: Frame headers: a handful of short fields (a newer minor version may add a few).
HEADER_UNPACK_LIMITS = UnpackLimits(max_str_len=1024, max_bin_len=1024, max_array_len=16, max_map_len=32)
#: Published bodies: decision and health messages (health counters are one map of about 50 keys).
BODY_UNPACK_LIMITS = UnpackLimits(max_str_len=1 << 16, max_bin_len=1 << 16, max_array_len=1024, max_map_len=1024)


def _refuse_ext(code: int, data: bytes):
    raise ValueError(f"msgpack ext type {code} is not accepted ({len(data)} bytes)")


def unpack_message(data: bytes, limits: UnpackLimits, what: str):
    """Decode msgpack, or JSON when `data` starts with ``{``, within `limits`; never unpickles.

    Raises:
        MessageError: Malformed data, a limit exceeded, an ext type, non-UTF-8 text, or JSON
            nested deeper than the interpreter's recursion limit.
    """
    try:
        if data[:1] == b"{":
            return json.loads(data)
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext,
                               max_str_len=limits.max_str_len, max_bin_len=limits.max_bin_len,
                               max_array_len=limits.max_array_len, max_map_len=limits.max_map_len, max_ext_len=0)
    except RecursionError:
        raise MessageError(f"{what}: nested too deeply") from None
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise MessageError(f"{what} is neither msgpack nor JSON within limits: {error}") from error


def topic_for(camera_id: str) -> bytes:
    """The PUB topic of a camera's decisions: ``trust/<camera_id>``."""
    return f"{TOPIC_PREFIX}{camera_id}".encode()


def check_schema_version(value, ours: str, unknown_keys: set, known_keys: set, what: str) -> None:
    """Accept `value` if it has our major version, and unknown keys only from a newer minor.

    Raises:
        SchemaVersionError: Another major version.
        MessageError: A malformed version, or unknown keys at our minor version or older.
    """
    match = _VERSION_PATTERN.fullmatch(value) if isinstance(value, str) and len(value) <= 16 else None
    if match is None:
        raise MessageError(f"{what}: schema_version should be a 'major.minor' string like {ours!r}, but got {value!r}")
    major, minor = int(match.group(1)), int(match.group(2))
    our_major, our_minor = (int(part) for part in ours.split("."))
    if major != our_major:
        raise SchemaVersionError(f"{what}: schema_version {value} is not supported; this service reads "
                                 f"{our_major}.x (newest {ours})")
    if unknown_keys and minor <= our_minor:
        raise MessageError(f"{what}: unknown keys {sorted(unknown_keys)} in schema {value}; "
                           f"expected only {sorted(known_keys)}")


def _get_int(data: dict, key: str, what: str, minimum: int = 0, maximum: int = MAX_INT64) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise MessageError(f"{what}: {key} should be an integer in [{minimum}, {maximum}], but got {value!r}")
    return value


def _get_enum(data: dict, key: str, enum: type[Enum], what: str):
    value = data.get(key)
    try:
        return enum(value)
    except ValueError:
        raise MessageError(f"{what}: {key} should be one of {[e.value for e in enum]}, but got {value!r}") from None


def check_camera_id(value, what: str = "frame header") -> str:
    """Return `value` if it is a valid camera id, else raise MessageError."""
    if not isinstance(value, str) or not CAMERA_ID_PATTERN.fullmatch(value):
        raise MessageError(f"{what}: camera_id should match {CAMERA_ID_PATTERN.pattern} "
                           f"(1-64 characters, no '/' or spaces), but got {value!r}")
    return value


@dataclass(frozen=True)
class FrameHeader:
    """Header of a frame (schemas/frame_v1.json).

    Attributes:
        camera_id: Stable camera name; decisions go to topic ``trust/<camera_id>``.
        seq: Frame counter of this camera.
        capture_ts_ns: Capture time, ns since the Unix epoch.
        encoding: Payload encoding.
        shape: Raw only: (height, width) or (height, width, channels).
        dtype: Raw only: "uint8".
        pixel_format: Raw only: channel order (default bgr8).
        schema_version: The header's schema version.
    """

    camera_id: str
    seq: int
    capture_ts_ns: int
    encoding: Encoding
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    pixel_format: PixelFormat | None = None
    schema_version: str = FRAME_SCHEMA_VERSION

    def to_dict(self) -> dict:
        """Wire map; optional raw-only keys are left out when unset."""
        data = {"schema_version": self.schema_version, "camera_id": self.camera_id, "seq": self.seq,
                "capture_ts_ns": self.capture_ts_ns, "encoding": self.encoding.value}
        if self.shape is not None:
            data["shape"] = list(self.shape)
        if self.dtype is not None:
            data["dtype"] = self.dtype
        if self.pixel_format is not None:
            data["pixel_format"] = self.pixel_format.value
        return data

    @classmethod
    def from_dict(cls, data) -> "FrameHeader":
        """Validate a received map (see the module docstring for the version rule)."""
        what = "frame header"
        if not isinstance(data, dict):
            raise MessageError(f"{what}: expected a map, but got {type(data).__name__}")
        known = set(FRAME_SCHEMA["properties"])
        check_schema_version(data.get("schema_version"), FRAME_SCHEMA_VERSION, set(data) - known, known, what)
        encoding = _get_enum(data, "encoding", Encoding, what)
        shape = dtype = pixel_format = None
        if encoding is Encoding.RAW:
            raw_shape = data.get("shape")
            if (not isinstance(raw_shape, (list, tuple)) or len(raw_shape) not in (2, 3)
                    or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in raw_shape)
                    or (len(raw_shape) == 3 and raw_shape[2] not in (1, 3))):
                raise MessageError(f"{what}: raw shape should be [height, width] or [height, width, 1|3] "
                                   f"with positive integers, but got {raw_shape!r}")
            shape = tuple(raw_shape)
            if data.get("dtype") != "uint8":
                raise MessageError(f"{what}: raw dtype should be one of ['uint8'], but got {data.get('dtype')!r}")
            dtype = "uint8"
            pixel_format = (_get_enum(data, "pixel_format", PixelFormat, what)
                            if "pixel_format" in data else None)
        return cls(camera_id=check_camera_id(data.get("camera_id"), what), seq=_get_int(data, "seq", what),
                   capture_ts_ns=_get_int(data, "capture_ts_ns", what), encoding=encoding, shape=shape,
                   dtype=dtype, pixel_format=pixel_format, schema_version=data["schema_version"])


def pack_frame_header(header: FrameHeader) -> bytes:
    """The msgpack header frame of a frame message."""
    return msgpack.packb(header.to_dict(), use_bin_type=True)


def send_frame(socket, header: FrameHeader, payload, flags: int = 0) -> None:
    """Send ``[header, payload]`` on a ZeroMQ socket (header with SNDMORE, payload without a copy)."""
    import zmq  # noqa: PLC0415 - keep this module importable without pyzmq for pure message work

    socket.send(pack_frame_header(header), flags | zmq.SNDMORE)
    socket.send(payload, flags, copy=False)


@dataclass(frozen=True)
class ReceivedFrame:
    """A frame that passed the ingest checks, waiting to be scored.

    Attributes:
        header: Its validated header.
        payload: The encoded image bytes.
        receipt_ts_ns: When the service received it (Unix epoch ns).
    """

    header: FrameHeader
    payload: bytes
    receipt_ts_ns: int


@dataclass(frozen=True)
class Notice:
    """A frame whose outcome is already known: defer, for `reason`.

    Attributes:
        camera_id, seq, capture_ts_ns: From the frame's header.
        receipt_ts_ns: When the service received the frame.
        reason: Why it is deferred.
        detail: Human-readable detail.
    """

    camera_id: str
    seq: int
    capture_ts_ns: int
    receipt_ts_ns: int
    reason: Reason
    detail: str = ""

    @classmethod
    def for_frame(cls, frame: ReceivedFrame, reason: Reason, detail: str = "") -> "Notice":
        header = frame.header
        return cls(header.camera_id, header.seq, header.capture_ts_ns, frame.receipt_ts_ns, reason, detail)


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


@dataclass(frozen=True)
class DecisionMessage:
    """One frame's outcome, published on ``trust/<camera_id>`` (schemas/decision_v1.json).

    ``kappa`` / ``msp`` / ``s_ii`` / ``label`` / ``class_id`` are None when the frame was not
    scored (or its scores were not finite). ``publish_ts_ns`` and the latencies are set by the
    publisher when it sends the message (:meth:`stamped`).
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

    def __post_init__(self) -> None:
        if (self.decision is Decision.ACCEPT) != (self.reason is Reason.MEETS_THRESHOLD):
            raise ValueError(f"decision {self.decision.value} cannot go with reason {self.reason.value}; "
                             f"only {Reason.MEETS_THRESHOLD.value} goes with {Decision.ACCEPT.value}")

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
        for key in ("threshold", "kappa", "msp", "s_ii", "latency_from_capture_ms", "latency_from_receipt_ms"):
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
        missing = sorted(known - set(data))
        if missing:
            raise MessageError(f"{what}: missing keys {missing}")
        try:
            top_k = tuple(TopKEntry(int(e["class_id"]), str(e["label"]), float(e["prob"])) for e in data["top_k"])
        except (TypeError, KeyError, ValueError) as error:
            raise MessageError(f"{what}: top_k should be a list of {{class_id, label, prob}}, "
                               f"but got {data['top_k']!r}") from error
        values = {name: data[name] for name in known - {"kind"}}
        values.update(
            decision=_get_enum(data, "decision", Decision, what), reason=_get_enum(data, "reason", Reason, what),
            top_k=top_k, threshold=_float_from_wire(data["threshold"], "threshold", what, nullable=False),
            **{key: _float_from_wire(data[key], key, what)
               for key in ("kappa", "msp", "s_ii", "latency_from_capture_ms", "latency_from_receipt_ms")})
        try:
            return cls(**values)
        except ValueError as error:
            raise MessageError(f"{what}: {error}") from error


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

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["kind"], data["status"] = "health", self.status.value
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
        missing = sorted(known - set(data))
        if missing:
            raise MessageError(f"{what}: missing keys {missing}")
        values = {name: data[name] for name in known - {"kind"}}
        values.update(status=_get_enum(data, "status", HealthStatus, what),
                      threshold=_float_from_wire(data["threshold"], "threshold", what, nullable=False),
                      uptime_s=float(data["uptime_s"]), counters=dict(data["counters"]))
        return cls(**values)


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
