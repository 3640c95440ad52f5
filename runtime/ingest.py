"""Frame ingest: one ZeroMQ socket in, checked frames out (header, size and dimension limits).

Which socket to use:

* ``pull`` + ``bind`` (default): cameras ``PUSH``-connect to the service. PUSH blocks (or queues up
  to its HWM) when the service is slow; nothing is silently lost between camera and service.
* ``sub`` + ``connect``: the service subscribes to cameras that ``PUB``-bind, as imagezmq's
  ``ImageSender(REQ_REP=False)`` does. PUB drops frames when nobody keeps up; fine for video.
* ``rep`` + ``bind``: imagezmq's default ``ImageSender()`` (``REQ``) waits for a reply after each
  frame; the service answers ``b'OK'`` on receipt (before scoring), so a camera is never held up
  by inference.

Two header dialects are read, both without unpickling anything: schema 1 (a msgpack map, see
schemas/frame_v1.json) and imagezmq's JSON map (``{"msg", "dtype", "shape"}`` from
``send_image``, ``{"msg"}`` from ``send_jpg``). For imagezmq the camera id is the text of ``msg`` up
to the first ``|`` (characters outside ``[A-Za-z0-9_.:-]`` become ``_``), ``seq`` counts that
camera's frames on arrival, and the capture time is the receipt time.

Limits are explicit (:class:`FrameLimits`): header and payload bytes, and image width/height,
read from the JPEG/PNG header (or the raw shape) before anything is decoded or multiplied. A frame
over a limit is deferred with a reason (when its header names the camera) or counted as a
rejection; a hard cap (``MAXMSGSIZE``, a multiple of the payload limit) makes ZeroMQ itself drop
absurd messages before they are buffered. Headers are unpacked with msgpack length limits
(:data:`~trustvlm.runtime.schema.HEADER_UNPACK_LIMITS`); nothing received is unpickled or
evaluated. :func:`parse_message` never raises: whatever arrives becomes a frame, a notice or a
counted rejection.

Authentication (optional): :class:`ZmqIngest` takes a
:class:`~trustvlm.runtime.security.CurveServer`; the socket is then a CurveZMQ server whose
clients are checked against an allow-list by the ZAP handler (see runtime/security.py).
"""

from __future__ import annotations

import logging
import math
import re
import struct
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np
import zmq

from trustvlm.runtime.frames import Encoding, FrameHeader, Notice, PixelFormat, ReceivedFrame, check_camera_id
from trustvlm.runtime.messages import Reason
from trustvlm.runtime.schema import HEADER_UNPACK_LIMITS, MAX_INT64, MessageError, SchemaVersionError, unpack_message
from trustvlm.runtime.security import CurveServer

log = logging.getLogger("trustvlm.runtime.ingest")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}
_IMAGEZMQ_KEYS = frozenset({"msg", "dtype", "shape"})
_APNG_CHUNKS = frozenset({b"acTL", b"fcTL", b"fdAT"})
#: A camera's PNG has a handful of chunks (IHDR, a few IDAT, IEND); progressive JPEGs have about 10 scans.
MAX_PNG_CHUNKS = 4096
MAX_JPEG_SCANS = 64
_IMAGEZMQ_MAX_MSG = 1024


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


@dataclass(frozen=True)
class Rejection:
    """A message that cannot be attributed to a camera frame: counted, not published."""

    reason: Reason
    detail: str
    receipt_ts_ns: int


IngestResult = ReceivedFrame | Notice | Rejection


class FrameDecodeError(ValueError):
    """A payload that cannot become an RGB image; `reason` says which defer reason applies."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason = reason


def probe_image_size(payload: bytes, encoding: Encoding) -> tuple[int, int]:
    """(width, height) from a JPEG or PNG header, without decoding the image.

    Raises:
        FrameDecodeError: UNDECODABLE when the header cannot be read.
    """
    if encoding is Encoding.PNG:
        if payload[:8] != PNG_SIGNATURE or payload[12:16] != b"IHDR" or len(payload) < 24:
            raise FrameDecodeError(Reason.UNDECODABLE, "not a PNG: missing signature or IHDR chunk")
        return struct.unpack(">II", payload[16:24])
    if payload[:2] != JPEG_SOI:
        raise FrameDecodeError(Reason.UNDECODABLE, f"not a JPEG: starts with {payload[:4].hex()}, expected ffd8")
    pos = 2
    while pos + 4 <= len(payload):
        if payload[pos] != 0xFF:
            raise FrameDecodeError(Reason.UNDECODABLE, f"JPEG: expected a marker at byte {pos}")
        marker = payload[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        length = struct.unpack(">H", payload[pos + 2:pos + 4])[0]
        if marker in _JPEG_SOF:
            if pos + 9 > len(payload):
                break
            height, width = struct.unpack(">HH", payload[pos + 5:pos + 9])
            return width, height
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            break
        pos += 2 + length
    raise FrameDecodeError(Reason.UNDECODABLE, "JPEG: no frame header (SOF) before the image data")


def check_png_chunks(payload: bytes, max_chunks: int = MAX_PNG_CHUNKS) -> None:
    """Walk a PNG's chunks before anything decodes it: lengths within the payload, CRCs right, no animation.

    OpenCV's PNG reader allocates what a chunk's length field says: one 3 kB PNG with a forged
    length made it allocate 3.4 GB (found by fuzzing, OpenCV 5.0.0). A length that runs past the
    payload, a CRC that does not match, APNG chunks or more than `max_chunks` chunks are refused.

    Raises:
        FrameDecodeError: UNDECODABLE, saying which chunk is wrong.
    """
    view, pos, count = memoryview(payload), len(PNG_SIGNATURE), 0
    while True:
        if pos + 12 > len(payload):
            raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: chunk at byte {pos} runs past the end ({len(payload)} "
                                                       "bytes) before IEND")
        length, kind = struct.unpack(">I4s", view[pos:pos + 8])
        end = pos + 12 + length
        if end > len(payload):
            raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: chunk {kind!r} at byte {pos} declares {length} bytes, "
                                                       f"but only {len(payload) - pos - 12} follow")
        if not kind.isalpha() or kind in _APNG_CHUNKS:
            raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: chunk type {kind!r} at byte {pos} is not accepted "
                                                       "(not 4 letters, or animated PNG)")
        if zlib.crc32(view[pos + 4:pos + 8 + length]) != struct.unpack(">I", view[pos + 8 + length:end])[0]:
            raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: chunk {kind!r} at byte {pos} fails its CRC")
        count += 1
        if kind == b"IEND":
            return
        if count >= max_chunks:
            raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: more than {max_chunks} chunks")
        pos = end


def check_jpeg_scans(payload: bytes, max_scans: int = MAX_JPEG_SCANS) -> None:
    """Refuse a JPEG with more than `max_scans` scans (each costs a pass over the image: a CPU bomb).

    Start-of-scan markers (ff da) cannot occur inside entropy-coded data (ff is stuffed as ff 00
    there), so counting them counts the scans.

    Raises:
        FrameDecodeError: UNDECODABLE.
    """
    scans = payload.count(b"\xff\xda")
    if scans > max_scans:
        raise FrameDecodeError(Reason.UNDECODABLE, f"JPEG with {scans} scans; at most {max_scans} are accepted")


class ImagezmqNamer:
    """Camera ids and per-camera sequence numbers for imagezmq senders (bounded LRU)."""

    def __init__(self, max_cameras: int = 1024):
        self.max_cameras = max_cameras
        self._seq: OrderedDict[str, int] = OrderedDict()

    @staticmethod
    def camera_id(msg) -> str:
        name = str(msg).split("|", 1)[0].strip()
        name = re.sub(r"[^A-Za-z0-9_.:-]", "_", name)[:64]
        if not name or not name[0].isalnum():
            name = ("cam" + name)[:64]
        return name

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
    camera_id = check_camera_id(namer.camera_id(data["msg"]), "imagezmq header")
    seq = namer.next_seq(camera_id)
    if "shape" in data or "dtype" in data:
        raw = {"schema_version": "1.0", "camera_id": camera_id, "seq": seq, "capture_ts_ns": receipt_ts_ns,
               "encoding": "raw", "shape": data.get("shape"), "dtype": data.get("dtype"), "pixel_format": "bgr8"}
        return FrameHeader.from_dict(raw)
    encoding = Encoding.PNG if payload[:8] == PNG_SIGNATURE else Encoding.JPEG
    return FrameHeader(camera_id, seq, receipt_ts_ns, encoding)


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
        if "schema_version" in data:
            header = FrameHeader.from_dict(data)
        else:
            header = _imagezmq_header(data, payload, receipt_ts_ns, namer)
    except SchemaVersionError as error:
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


def decode_image(frame: ReceivedFrame) -> np.ndarray:
    """Decode a checked frame to uint8 RGB (H x W x 3) with OpenCV.

    Raises:
        FrameDecodeError: UNDECODABLE (corrupt or truncated JPEG/PNG) or BAD_SHAPE (raw pixels
            that do not fit their pixel format).
    """
    header, payload = frame.header, frame.payload
    if header.encoding is Encoding.RAW:
        pixels = np.frombuffer(payload, dtype=np.uint8).reshape(header.shape)
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        pixel_format = header.pixel_format or (PixelFormat.MONO8 if channels == 1 else PixelFormat.BGR8)
        if (pixel_format is PixelFormat.MONO8) != (channels == 1):
            raise FrameDecodeError(Reason.BAD_SHAPE, f"pixel_format {pixel_format.value} does not fit shape "
                                                     f"{list(header.shape)}")
        if channels == 1:
            return cv2.cvtColor(pixels.reshape(pixels.shape[:2]), cv2.COLOR_GRAY2RGB)
        return pixels.copy() if pixel_format is PixelFormat.RGB8 else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    # libjpeg fills a truncated image with grey and only warns; demand the end-of-image marker.
    if header.encoding is Encoding.JPEG and JPEG_EOI not in payload[-64:]:
        raise FrameDecodeError(Reason.UNDECODABLE, "truncated JPEG: no end-of-image marker (ffd9) at the end")
    if header.encoding is Encoding.PNG and b"IEND" not in payload[-16:]:
        raise FrameDecodeError(Reason.UNDECODABLE, "truncated PNG: no IEND chunk at the end")
    if header.encoding is Encoding.PNG:
        check_png_chunks(payload)
    else:
        check_jpeg_scans(payload)
    bgr = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FrameDecodeError(Reason.UNDECODABLE, f"OpenCV cannot decode this {header.encoding.value} payload "
                                                   f"({len(payload)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ZmqIngest:
    """The ingest socket: receive, check, and (REP) acknowledge one message at a time.

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
