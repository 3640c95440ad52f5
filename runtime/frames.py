"""Frames in: the schema-1 frame header (schemas/frame_v1.json) and the frame records of the service.

A camera packs a :class:`FrameHeader` with :func:`pack_frame_header` and sends ``[header,
payload]`` with ``SNDMORE`` (or calls :func:`send_frame`). Headers are msgpack maps, checked field
by field (:meth:`FrameHeader.from_dict`); imagezmq's JSON headers are mapped onto the same
dataclass by :mod:`trustvlm.runtime.ingest.wire`.

The frozen dataclasses here also cross thread boundaries inside the service:
:class:`ReceivedFrame` (a frame that passed the ingest checks) and :class:`Notice` (a frame that
already has its outcome: defer with a reason, published in the camera's order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

import msgpack

from trustvlm.runtime.messages import Reason
from trustvlm.runtime.schema import (FRAME_SCHEMA, FRAME_SCHEMA_VERSION, MessageError, check_schema_version, enum_field,
                                     int_field)

# Matched with fullmatch and re.ASCII: Python's `$` also matches before a final newline, and `\d` any Unicode digit.
CAMERA_ID_PATTERN = re.compile(FRAME_SCHEMA["properties"]["camera_id"]["pattern"], re.ASCII)


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
        camera_id: Stable camera name; decisions go to topic ``trust/<camera_id>/``.
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
        encoding = enum_field(data, "encoding", Encoding, what)
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
            pixel_format = (enum_field(data, "pixel_format", PixelFormat, what)
                            if "pixel_format" in data else None)
        return cls(camera_id=check_camera_id(data.get("camera_id"), what), seq=int_field(data, "seq", what),
                   capture_ts_ns=int_field(data, "capture_ts_ns", what), encoding=encoding, shape=shape,
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
        seq_last: For a run of superseded frames (``dropped``): the seq of the run's last frame;
            the notice then covers every frame of the camera the service received with a seq from
            `seq` to `seq_last`, `frames` of them (see :class:`~trustvlm.runtime.ingest.frame_buffer.BufferConfig`).
        frames: How many frames this outcome covers (1 unless it is a run).
    """

    camera_id: str
    seq: int
    capture_ts_ns: int
    receipt_ts_ns: int
    reason: Reason
    detail: str = ""
    seq_last: int | None = None
    frames: int = 1

    @classmethod
    def for_frame(cls, frame: ReceivedFrame, reason: Reason, detail: str = "") -> "Notice":
        header = frame.header
        return cls(header.camera_id, header.seq, header.capture_ts_ns, frame.receipt_ts_ns, reason, detail)
