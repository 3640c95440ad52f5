"""The client side of the end-to-end benchmark: cameras on one PUSH socket, a subscriber on ``trust/``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


def make_frames(size: int, count: int = 64) -> list[bytes]:
    """Raw bgr8 frames at `size` x `size`: Fashion-MNIST test images upscaled (random pixels without the dataset)."""
    import cv2  # noqa: PLC0415

    try:
        from trustvlm.data.fashion_mnist import load_split  # noqa: PLC0415

        images = load_split("test").images[:count]
        return [cv2.cvtColor(cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR)
                .tobytes() for image in images]
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8).tobytes() for _ in range(count)]

@dataclass
class Link:
    """The cameras' PUSH socket and the subscriber's SUB socket, with what the subscriber saw."""

    push: object
    sub: object
    frames: list[bytes]
    size: int
    seq: dict[str, int] = field(default_factory=dict)
    health: list = field(default_factory=list)

    def send(self, camera: str, block: bool = True) -> bool:
        """Send the camera's next frame (capture time = now); False when ZeroMQ refused it (non-blocking)."""
        import zmq  # noqa: PLC0415

        from trustvlm.runtime.frames import Encoding, FrameHeader, PixelFormat, send_frame  # noqa: PLC0415

        seq = self.seq.get(camera, 0)
        header = FrameHeader(camera, seq, time.time_ns(), Encoding.RAW, (self.size, self.size, 3), "uint8",
                             PixelFormat.BGR8)
        try:
            send_frame(self.push, header, self.frames[seq % len(self.frames)], 0 if block else zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.seq[camera] = seq + 1
        return True

    def receive(self, timeout_s: float):
        """The next decision (with its receive time, ns), None on timeout; heartbeats are kept aside."""
        from trustvlm.runtime.messages import DecisionMessage, decode_body  # noqa: PLC0415

        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining < 0 or not self.sub.poll(max(0, int(remaining * 1000))):
                return None
            _, body = self.sub.recv_multipart()
            received_ns = time.time_ns()
            message = decode_body(body)
            if isinstance(message, DecisionMessage):
                return message, received_ns
            self.health.append(message)
