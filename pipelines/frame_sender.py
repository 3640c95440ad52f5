"""The wire side of `trustvlm source`: encode a frame (JPEG, PNG or raw) and PUSH it to `trustvlm serve`.

:class:`FrameEncoder` turns an image into a payload; :class:`FrameSender` sends ``[header, payload]`` with
:func:`trustvlm.runtime.frames.send_frame` on a PUSH socket whose queue and send wait are bounded, and
recovers from a timed-out send by closing, backing off and reconnecting, up to a limit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np
import zmq

from trustvlm.runtime.frames import Encoding, FrameHeader, PixelFormat, send_frame

log = logging.getLogger("trustvlm.pipelines.source")


class SourceError(Exception):
    """A stream that cannot go on: the runtime takes no frames, or never answers."""


@dataclass(frozen=True)
class EncodedFrame:
    """A frame ready for the wire: its encoding, the payload and, for raw frames, shape and pixel format."""

    encoding: Encoding
    payload: bytes
    shape: tuple[int, ...] | None = None
    pixel_format: PixelFormat | None = None


class FrameEncoder:
    """BGR or grey uint8 images -> JPEG, PNG or raw payloads."""

    def __init__(self, encoding: Encoding | str = Encoding.JPEG, jpeg_quality: int = 90):
        self.encoding = Encoding(encoding)
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"JPEG quality should be in [1, 100], but got {jpeg_quality}")
        self.jpeg_quality = jpeg_quality

    def encode(self, image: np.ndarray) -> EncodedFrame:
        """Encode one frame.

        Raises:
            ValueError: Not a uint8 grey or 3-channel image, or OpenCV cannot encode it.
        """
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(f"expected a uint8 H x W or H x W x 3 image, but got {image.dtype} {image.shape}")
        if self.encoding is Encoding.RAW:
            pixel_format = PixelFormat.MONO8 if image.ndim == 2 else PixelFormat.BGR8
            return EncodedFrame(Encoding.RAW, np.ascontiguousarray(image).tobytes(), tuple(image.shape), pixel_format)
        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality] if self.encoding is Encoding.JPEG else []
        ok, buffer = cv2.imencode(".jpg" if self.encoding is Encoding.JPEG else ".png", image, params)
        if not ok:
            raise ValueError(f"OpenCV could not encode a {image.shape} image as {self.encoding.value}")
        return EncodedFrame(self.encoding, buffer.tobytes())


@dataclass(frozen=True)
class SenderConfig:
    """The PUSH socket to the service's ingest.

    Attributes:
        endpoint: The service's ingest address, e.g. ``tcp://127.0.0.1:5555``.
        send_hwm: Frames ZeroMQ queues before a send waits (SNDHWM).
        send_timeout_ms: How long one send may wait (SNDTIMEO).
        max_send_failures: Consecutive timed-out sends before the stream gives up.
        backoff_ms: Wait before the socket is recreated after a timed-out send (grows with each failure).
    """

    endpoint: str
    send_hwm: int = 16
    send_timeout_ms: int = 1000
    max_send_failures: int = 10
    backoff_ms: int = 200

    def __post_init__(self) -> None:
        if self.send_hwm < 1 or self.send_timeout_ms < 1 or self.max_send_failures < 1:
            raise ValueError(f"send_hwm, send_timeout_ms and max_send_failures should be >= 1, but got "
                             f"{self.send_hwm}, {self.send_timeout_ms} and {self.max_send_failures}")


class FrameSender:
    """A PUSH socket that recovers from timed-out sends by closing, backing off and reconnecting."""

    def __init__(self, config: SenderConfig, context: zmq.Context):
        self.config, self.context = config, context
        self.failures = 0
        self.socket = self._connect()

    def _connect(self) -> zmq.Socket:
        socket = self.context.socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, self.config.send_hwm)
        socket.setsockopt(zmq.SNDTIMEO, self.config.send_timeout_ms)
        # Queue frames only on a live connection: frames queued for a service that is not there would reach
        # it stale, and a recreated socket would take them and hide that nothing is listening.
        socket.setsockopt(zmq.IMMEDIATE, 1)
        try:
            socket.connect(self.config.endpoint)
        except zmq.ZMQError as error:
            socket.close()
            raise ValueError(f"cannot connect to {self.config.endpoint!r}: {error} "
                             "(expected an address like tcp://127.0.0.1:5555)") from error
        return socket

    def send(self, header: FrameHeader, frame: EncodedFrame) -> bool:
        """Send one frame; False when it timed out (the socket is then recreated).

        Raises:
            SourceError: ``max_send_failures`` timed-out sends in a row.
        """
        try:
            send_frame(self.socket, header, frame.payload)
        except zmq.Again:
            self.failures += 1
            if self.failures >= self.config.max_send_failures:
                raise SourceError(f"the runtime at {self.config.endpoint} took no frame for {self.failures} "
                                  f"sends in a row ({self.config.send_timeout_ms} ms each): is trustvlm serve "
                                  "running there?") from None
            log.warning("send to %s timed out after %d ms (%d in a row); reconnecting", self.config.endpoint,
                        self.config.send_timeout_ms, self.failures)
            self.socket.close()
            time.sleep(self.config.backoff_ms * self.failures / 1e3)
            self.socket = self._connect()
            return False
        self.failures = 0
        return True

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> "FrameSender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
