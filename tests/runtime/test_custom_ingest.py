"""TrustService over an ingest that is not ZeroMQ: anything that fits the Ingest protocol drives it."""

from __future__ import annotations

import queue
import time
from collections import Counter

import cv2
import msgpack
import pytest

from trustvlm.runtime.config import ReloadConfig, ServiceConfig
from trustvlm.runtime.ingest.frame_buffer import BufferConfig
from trustvlm.runtime.frames import Encoding, FrameHeader, pack_frame_header
from trustvlm.runtime.ingest.ingest import FrameLimits, Ingest, IngestResult
from trustvlm.runtime.messages import HealthStatus, Reason
from trustvlm.runtime.publisher import PublishConfig
from trustvlm.runtime.scoring.scorer import ScorerConfig
from trustvlm.runtime.service import build_service
from trustvlm.runtime.ingest.wire import ImagezmqNamer, parse_message

pytestmark = pytest.mark.timeout(90)


class QueueIngest:
    """An in-process ingest: messages put on a queue, checked by the same wire parser as ZeroMQ's."""

    def __init__(self, limits: FrameLimits):
        self.limits, self.namer = limits, ImagezmqNamer()
        self.messages: queue.Queue[list[bytes]] = queue.Queue()
        self.opened = self.closed = 0

    def open(self) -> str:
        self.opened += 1
        return "queue://in-process"

    def receive(self) -> IngestResult | None:
        try:
            parts = self.messages.get(timeout=0.05)
        except queue.Empty:
            return None
        return parse_message(parts, time.time_ns(), self.limits, self.namer)

    def close(self) -> None:
        self.closed += 1


def test_a_queue_ingest_drives_the_service_with_one_outcome_per_frame(demo_export, demo_bundle, fmnist_images,
                                                                      zmq_context, subscribe):
    # Given a service whose ingest is an in-process queue, not a socket
    config = ServiceConfig(artifacts=demo_export, bundle=demo_bundle, scorer=ScorerConfig(threads=1),
                           buffer=BufferConfig(staleness_ms=0), reload=ReloadConfig(watch=False),
                           publish=PublishConfig(address="tcp://127.0.0.1:*", heartbeat_ms=100))
    ingest = QueueIngest(config.limits)
    built_with = []

    def make_ingest(context, curve) -> Ingest:
        built_with.append((context, curve))
        return ingest

    service = build_service(config, make_ingest, zmq_context)
    assert built_with == [(zmq_context, None)], "the factory gets the service's context and no CurveZMQ server"
    endpoints = service.start()
    try:
        assert endpoints.ingest == "queue://in-process" and ingest.opened == 1
        subscriber = subscribe(endpoints.publish)
        # When 3 cameras send 30 frames, one frame has a header that names its camera but breaks the schema,
        # and one message is not a frame at all
        images, _ = fmnist_images
        sent = Counter()
        for i in range(30):
            camera = f"cam{i % 3}"
            header = FrameHeader(camera, sent[camera], time.time_ns(), Encoding.PNG)
            ingest.messages.put([pack_frame_header(header), cv2.imencode(".png", images[i])[1].tobytes()])
            sent[camera] += 1
        bad = FrameHeader("cam0", sent["cam0"], time.time_ns(), Encoding.PNG).to_dict() | {"encoding": "gif"}
        ingest.messages.put([msgpack.packb(bad), b"GIF89a"])
        sent["cam0"] += 1
        ingest.messages.put([b"not a frame"])
        decisions = subscriber.collect(31)
    finally:
        service.request_stop()
    assert service.wait(30), "the service did not stop"
    # Then every frame got exactly one decision, in its camera's order, and the non-frame was counted
    assert subscriber.wait_for(lambda s: any(h.status is HealthStatus.STOPPED for h in s.health), 20)
    per_camera = {camera: [d.seq for d in decisions if d.camera_id == camera] for camera in sent}
    assert per_camera == {camera: list(range(count)) for camera, count in sent.items()}
    assert len(subscriber.decisions) == 31, "no frame got a second decision"
    assert [d.reason for d in decisions if d.seq == 10 and d.camera_id == "cam0"] == [Reason.BAD_HEADER]
    assert service.health.counters()["rejected"] == 1
    assert ingest.closed == 1 and not service.failed
