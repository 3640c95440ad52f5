"""`ipc://` endpoints: cameras and subscribers on the same device reach the service through Unix sockets."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import pytest

from trustvlm.runtime.frames import Encoding, FrameHeader, send_frame
from trustvlm.runtime.messages import Reason

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def socket_dir():
    # Unix socket paths are limited to about 100 bytes: a short folder, not pytest's deep tmp_path
    with tempfile.TemporaryDirectory(prefix="tv", dir="/tmp") as folder:
        yield Path(folder)


def test_ingest_and_publish_over_ipc(serve, subscribe, push, demo_export, demo_bundle, fmnist_images, socket_dir):
    # Given the service bound to ipc:// endpoints for frames in and decisions out
    ingest, publish = f"ipc://{socket_dir}/frames", f"ipc://{socket_dir}/decisions"
    service = serve("--artifacts", str(demo_export), "--bundle", str(demo_bundle), "--ingest", ingest,
                    "--publish", publish, ports=False)
    assert (service.ingest, service.publish) == (ingest, publish), service.line
    assert (socket_dir / "frames").is_socket() and (socket_dir / "decisions").is_socket()
    # When a camera sends JPEG frames through the Unix socket, one at a time
    subscriber = subscribe(publish)
    sender = push(ingest)
    images, _ = fmnist_images
    for seq in range(5):
        send_frame(sender, FrameHeader("local", seq, time.time_ns(), Encoding.JPEG),
                   cv2.imencode(".jpg", images[seq])[1].tobytes())
        assert subscriber.wait_for(lambda s: len(s.decisions) > seq, 20), f"no decision for seq {seq}"
    # Then every frame is scored and its decision arrives over the other Unix socket
    assert [d.seq for d in subscriber.decisions] == list(range(5))
    assert all(d.reason in (Reason.MEETS_THRESHOLD, Reason.BELOW_THRESHOLD) for d in subscriber.decisions)
    assert service.stop() == 0
