"""Received bytes -> frame header + payload: schema-1 and imagezmq headers, checked against the limits.

Two header dialects are read, both without unpickling anything: schema 1 (a msgpack map, see
schemas/frame_v1.json; the same map as JSON is refused) and imagezmq's JSON map (``{"msg", "dtype", "shape"}`` from
``send_image``, ``{"msg"}`` from ``send_jpg``). For imagezmq the camera id is the text of ``msg`` up
to the first ``|``, as sent, and must be a valid camera id (else a counted rejection: names are
never rewritten, so two senders cannot become one camera); ``seq`` counts that camera's frames on
arrival, and the capture time is the receipt time.

Limits are explicit (:class:`~trustvlm.runtime.ingest.ingest.FrameLimits`): header and payload bytes,
and image width/height, read from the JPEG/PNG header (or the raw shape) before anything is
decoded or multiplied (:mod:`trustvlm.runtime.decode.image_codec`). A frame over a limit is deferred
with a reason (when its header names the camera) or counted as a rejection. Headers are unpacked
with msgpack length limits (:data:`~trustvlm.runtime.schema.HEADER_UNPACK_LIMITS`); nothing
received is unpickled or evaluated. :func:`parse_message` never raises: whatever arrives becomes
a frame, a notice or a counted rejection.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

from trustvlm.runtime.frames import CAMERA_ID_PATTERN, Encoding, FrameHeader, Notice, ReceivedFrame, check_camera_id
from trustvlm.runtime.decode.image_codec import PNG_SIGNATURE, FrameDecodeError, probe_image_size
from trustvlm.runtime.ingest.ingest import FrameLimits, IngestResult, Rejection
from trustvlm.runtime.messages import Reason
from trustvlm.runtime.schema import HEADER_UNPACK_LIMITS, MAX_INT64, MessageError, SchemaVersionError, unpack_message

# Kept under the name the ingest has always logged as, so log filters and dashboards keep working.
log = logging.getLogger("trustvlm.runtime.ingest.ingest")

_IMAGEZMQ_KEYS = frozenset({"msg", "dtype", "shape"})
_IMAGEZMQ_MAX_MSG = 1024


class ImagezmqNamer:
    """Camera ids and per-camera sequence numbers for imagezmq senders (bounded LRU).

    The camera id is the text of ``msg`` up to the first ``|``, exactly as sent: it must be a valid
    camera id (schemas/frame_v1.json), or the message is refused (a counted ``bad_header``
    rejection, one warning per refused name). Names are never rewritten, so two senders are never
    merged into one camera.
    """

    #: Refused names that get their own warning; later ones are only counted.
    MAX_LOGGED_NAMES = 256

    def __init__(self, max_cameras: int = 1024):
        self.max_cameras = max_cameras
        self._seq: OrderedDict[str, int] = OrderedDict()
        self._logged: set[str] = set()

    def camera_id(self, msg: str) -> str:
        """The camera id of an imagezmq ``msg``; MessageError when it is not a valid camera id."""
        name = msg.split("|", 1)[0]
        try:
            return check_camera_id(name, "imagezmq header (msg up to the first '|')")
        except MessageError:
            if name not in self._logged and len(self._logged) < self.MAX_LOGGED_NAMES:
                self._logged.add(name)
                log.warning("imagezmq sender name %r is not a valid camera id (%s); its frames are refused and "
                            "counted as rejected_bad_header", name[:80], CAMERA_ID_PATTERN.pattern)
            raise

    def next_seq(self, camera_id: str) -> int:
        seq = self._seq.pop(camera_id, -1) + 1
        self._seq[camera_id] = seq
        if len(self._seq) > self.max_cameras:
            self._seq.popitem(last=False)
        return seq


def _imagezmq_header(data: dict, payload: bytes, receipt_ts_ns: int, namer: ImagezmqNamer) -> FrameHeader:
    if "msg" not in data or set(data) - _IMAGEZMQ_KEYS:
        raise MessageError(f"imagezmq header: expected keys {sorted(_IMAGEZMQ_KEYS)} (shape and dtype only for "
                           f"send_image), but got {sorted(data)[:8]}")
    if not isinstance(data["msg"], str) or len(data["msg"]) > _IMAGEZMQ_MAX_MSG:
        raise MessageError(f"imagezmq header: msg should be text of at most {_IMAGEZMQ_MAX_MSG} characters, but got "
                           f"{type(data['msg']).__name__} {str(data['msg'])[:40]!r}")
    try:
        camera_id = namer.camera_id(data["msg"])
    except MessageError as error:
        raise _Unnamed(str(error)) from None
    seq = namer.next_seq(camera_id)
    if "shape" in data or "dtype" in data:
        raw = {"schema_version": "1.0", "camera_id": camera_id, "seq": seq, "capture_ts_ns": receipt_ts_ns,
               "encoding": "raw", "shape": data.get("shape"), "dtype": data.get("dtype"), "pixel_format": "bgr8"}
        return FrameHeader.from_dict(raw)
    encoding = Encoding.PNG if payload[:8] == PNG_SIGNATURE else Encoding.JPEG
    return FrameHeader(camera_id, seq, receipt_ts_ns, encoding)


class _Unnamed(MessageError):
    """An imagezmq header whose name is not a camera id: nothing to salvage, a counted rejection."""


def _valid_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT64


def _salvage_notice(data: dict, receipt_ts_ns: int, detail: str) -> Notice | Rejection:
    """A bad header that still names a valid camera and seq is deferred in that camera's stream.

    Only values that pass the schema's own checks are kept (camera id pattern, seq in int64); an
    invalid capture time is replaced by the receipt time, so every published field is one the
    schema allows.
    """
    try:
        camera_id = check_camera_id(data.get("camera_id"))
    except MessageError:
        return Rejection(Reason.BAD_HEADER, detail, receipt_ts_ns)
    seq, capture = data.get("seq"), data.get("capture_ts_ns")
    if not _valid_int(seq):
        return Rejection(Reason.BAD_HEADER, detail, receipt_ts_ns)
    return Notice(camera_id, seq, capture if _valid_int(capture) else receipt_ts_ns, receipt_ts_ns,
                  Reason.BAD_HEADER, detail[:1000])


def parse_message(parts: list[bytes], receipt_ts_ns: int, limits: FrameLimits,
                  namer: ImagezmqNamer | None = None) -> IngestResult:
    """Check one received multipart message; never raises.

    Args:
        parts: The message parts; a frame is exactly ``[header, payload]``.
        receipt_ts_ns: Receipt time (Unix epoch ns).
        limits: Size limits.
        namer: Camera ids and sequence numbers for imagezmq headers.

    Returns:
        A ReceivedFrame ready for scoring; a Notice (defer with a reason) for a frame whose
        header names its camera but that breaks a rule; or a Rejection (only counted) when no
        camera can be named.
    """
    try:
        return _parse_message(parts, receipt_ts_ns, limits, namer or ImagezmqNamer())
    except Exception as error:  # a bug, not bad input: count the message and keep the stream alive
        log.exception("checking a message failed")
        return Rejection(Reason.BAD_HEADER, f"internal error while checking the message: {error!r}"[:500],
                         receipt_ts_ns)


def _parse_message(parts: list[bytes], receipt_ts_ns: int, limits: FrameLimits,
                   namer: ImagezmqNamer) -> IngestResult:
    if len(parts) != 2:
        return Rejection(Reason.BAD_HEADER, f"expected 2 message parts [header, payload], got {len(parts)}",
                         receipt_ts_ns)
    raw_header, payload = parts
    if len(raw_header) > limits.max_header_bytes:
        return Rejection(Reason.TOO_LARGE, f"header of {len(raw_header)} bytes exceeds max_header_bytes "
                                           f"{limits.max_header_bytes}", receipt_ts_ns)
    try:
        data = unpack_message(bytes(raw_header), HEADER_UNPACK_LIMITS, "header")
    except MessageError as error:
        return Rejection(Reason.BAD_HEADER, f"header is neither a msgpack nor an imagezmq JSON map: {error}",
                         receipt_ts_ns)
    if not isinstance(data, dict):
        return Rejection(Reason.BAD_HEADER, f"header should be a map, but got {type(data).__name__}", receipt_ts_ns)
    try:
        if "schema_version" in data and raw_header[:1] == b"{":
            raise MessageError("frame header: schema 1 headers are msgpack maps (schemas/frame_v1.json); a JSON "
                               "header is read only as imagezmq's {msg, shape, dtype}")
        if "schema_version" in data:
            header = FrameHeader.from_dict(data)
        else:
            header = _imagezmq_header(data, payload, receipt_ts_ns, namer)
    except (SchemaVersionError, _Unnamed) as error:
        return Rejection(Reason.BAD_HEADER, str(error), receipt_ts_ns)
    except MessageError as error:
        return _salvage_notice(data, receipt_ts_ns, str(error))
    if len(payload) > limits.max_message_bytes:  # checked before the payload is copied
        return Notice(header.camera_id, header.seq, header.capture_ts_ns, receipt_ts_ns, Reason.TOO_LARGE,
                      f"payload of {len(payload)} bytes exceeds max_message_bytes {limits.max_message_bytes}")
    frame = ReceivedFrame(header, bytes(payload), receipt_ts_ns)
    if header.encoding is Encoding.RAW:
        height, width = header.shape[:2]
        if not (width <= limits.max_width and height <= limits.max_height):  # before multiplying them
            return Notice.for_frame(frame, Reason.TOO_LARGE, f"raw image of {width}x{height} pixels is outside "
                                                             f"1x1..{limits.max_width}x{limits.max_height}")
        expected = math.prod(header.shape)
        if len(payload) != expected:
            return Notice.for_frame(frame, Reason.BAD_SHAPE, f"raw payload has {len(payload)} bytes, expected "
                                                             f"{expected} for shape {list(header.shape)} uint8")
    else:
        try:
            width, height = probe_image_size(payload, header.encoding)
        except FrameDecodeError as error:
            return Notice.for_frame(frame, error.reason, str(error))
    if not (1 <= width <= limits.max_width and 1 <= height <= limits.max_height):
        return Notice.for_frame(frame, Reason.TOO_LARGE, f"image of {width}x{height} pixels is outside 1x1.."
                                                         f"{limits.max_width}x{limits.max_height}")
    return frame

