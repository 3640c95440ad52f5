"""`trustvlm serve` as a real process on loopback sockets: accounting, order, fail-safe, shutdown."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections import defaultdict

import cv2
import imagezmq
import msgpack
import pytest
import zmq

from trustvlm.runtime.frames import Encoding, FrameHeader, PixelFormat, pack_frame_header, send_frame
from trustvlm.runtime.messages import Decision, HealthStatus, Reason

from .conftest import ERROR_PIXEL, NAN_PIXEL, decide_until_scored, fault_image

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def serve_demo(serve, demo_export, demo_bundle):
    """serve_demo(*args) -> the service on the real demo export and bundle."""
    def start(*args: str, ports: bool = True):
        return serve("--artifacts", str(demo_export), "--bundle", str(demo_bundle), *args, ports=ports)
    return start


def assert_camera_order(decisions, sent: dict[str, list[int]]) -> None:
    """Each camera got exactly one decision per frame sent, in the order sent."""
    got = defaultdict(list)
    for decision in decisions:
        got[decision.camera_id].append(decision.seq)
    assert dict(got) == sent, f"per-camera sequences differ: got {dict(got)}, sent {sent}"


def test_n_frames_from_several_cameras_give_n_decisions_in_camera_order(serve_demo, subscribe, push,
                                                                       fmnist_images):
    # Given the service on the real demo model with metrics, and 3 cameras sending JPEG, PNG and raw frames
    images, _ = fmnist_images
    service = serve_demo("--metrics", "127.0.0.1:0")
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    sent = defaultdict(list)
    for i in range(60):
        camera, image = f"cam{i % 3}", images[i]
        seq = len(sent[camera])
        if camera == "cam0":
            send_frame(sender, FrameHeader(camera, seq, time.time_ns(), Encoding.JPEG),
                       cv2.imencode(".jpg", image)[1].tobytes())
        elif camera == "cam1":
            send_frame(sender, FrameHeader(camera, seq, time.time_ns(), Encoding.PNG),
                       cv2.imencode(".png", image)[1].tobytes())
        else:
            send_frame(sender, FrameHeader(camera, seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"),
                       image.tobytes())
        sent[camera].append(seq)
        if i % 10 == 9:
            time.sleep(0.02)  # a camera-like pace: some frames are scored, some superseded
    decisions = subscriber.collect(60)
    # Then exactly 60 decisions, one per frame, per camera in order; each scored or dropped
    assert len(decisions) == 60, f"got {len(decisions)} decisions for 60 frames"
    assert_camera_order(decisions, dict(sent))
    reasons = {d.reason for d in decisions}
    assert reasons <= {Reason.MEETS_THRESHOLD, Reason.BELOW_THRESHOLD, Reason.DROPPED}, reasons
    scored = [d for d in decisions if d.reason is not Reason.DROPPED]
    assert scored and all(d.kappa is not None and d.label for d in scored)
    assert all(d.latency_from_receipt_ms >= 0 for d in decisions)
    assert {(d.camera_id, d.seq) for d in decisions if d.reason is not Reason.DROPPED} >= {
        (f"cam{c}", 19) for c in range(3)}, "the newest frame of each camera is always scored"
    # And the metrics endpoint counts the same decisions
    text = urllib.request.urlopen(f"{service.metrics}/metrics", timeout=5).read().decode()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("trustvlm_decisions_total{"))
    assert counted == 60, f"/metrics counts {counted} decisions"
    health = json.loads(urllib.request.urlopen(f"{service.metrics}/healthz", timeout=5).read())
    assert health["status"] == "ok" and health["counters"]["received"] == 60
    # When it is stopped, it exits 0 after a final 'stopped' heartbeat whose counters add up
    assert service.stop() == 0, service.stderr()
    assert subscriber.wait_for(lambda s: s.health and s.health[-1].status is HealthStatus.STOPPED, 10)
    final = subscriber.health[-1].counters
    assert final["received"] == 60 and final["decisions_accept"] + final["decisions_defer"] == 60, final
    assert final["reason_dropped"] == sum(d.reason is Reason.DROPPED for d in decisions)


def test_imagezmq_req_rep_senders_get_ok_and_decisions(serve_demo, subscribe, vtest_frames):
    service = serve_demo("--ingest-socket", "rep")
    subscriber = subscribe(service.publish)
    # Given the real imagezmq ImageSender in its default REQ/REP mode, sending video frames
    sender = imagezmq.ImageSender(connect_to=service.ingest)
    sender.zmq_socket.setsockopt(zmq.LINGER, 0)
    sender.zmq_socket.setsockopt(zmq.RCVTIMEO, 10000)
    try:
        replies = [sender.send_image("lab-rpi|vtest", frame) for frame in vtest_frames[:3]]
        replies += [sender.send_jpg("lab-rpi", cv2.imencode(".jpg", frame)[1].tobytes()) for frame in vtest_frames[3:]]
    finally:
        sender.close()
    # Then every frame was acknowledged with b'OK' and decided, in order, as camera 'lab-rpi'
    assert replies == [b"OK"] * 6
    decisions = subscriber.collect(6)
    assert_camera_order(decisions, {"lab-rpi": list(range(6))})
    assert all(d.reason is not Reason.UNDECODABLE for d in decisions)
    assert service.stop() == 0


def test_imagezmq_pub_sub_senders_are_subscribed_to(serve_demo, subscribe, vtest_frames):
    # Given an imagezmq PUB sender (it binds) and the service subscribing to it
    sender = imagezmq.ImageSender(connect_to="tcp://127.0.0.1:*", REQ_REP=False)
    sender.zmq_socket.setsockopt(zmq.LINGER, 0)
    try:
        endpoint = sender.zmq_socket.getsockopt_string(zmq.LAST_ENDPOINT)
        service = serve_demo("--ingest", endpoint, "--ingest-socket", "sub", "--ingest-mode", "connect",
                             "--publish", "tcp://127.0.0.1:*", ports=False)
        subscriber = subscribe(service.publish)
        frame = cv2.resize(vtest_frames[0], (320, 240))
        # PUB drops until the subscription has reached it: send a warm-up frame until one is decided
        assert subscriber.wait_for(lambda s: (sender.send_image("warmup", frame), s.poll(0.2))[1] and s.decisions, 20)
        for i in range(5):
            sender.send_jpg("pubcam", cv2.imencode(".jpg", vtest_frames[i])[1].tobytes())
            time.sleep(0.05)
        assert subscriber.wait_for(lambda s: sum(d.camera_id == "pubcam" for d in s.decisions) == 5, 20)
        assert_camera_order([d for d in subscriber.decisions if d.camera_id == "pubcam"], {"pubcam": list(range(5))})
    finally:
        sender.close()
    assert service.stop() == 0


def test_malformed_and_oversized_frames_are_deferred_or_counted_and_the_service_lives(
        serve, subscribe, push, fault_export, make_fault_bundle, tmp_path, vtest_frames):
    bundle = make_fault_bundle(tmp_path / "bundle")
    service = serve("--artifacts", str(fault_export), "--bundle", str(bundle),
                    "--max-message-bytes", "200000", "--max-width", "640", "--max-height", "640")
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    jpeg = cv2.imencode(".jpg", cv2.resize(vtest_frames[0], (320, 240)))[1].tobytes()
    big_png = cv2.imencode(".png", vtest_frames[1])[1].tobytes()  # 768 x 576: over the 640 limit
    header = lambda seq, encoding=Encoding.JPEG, **kw: pack_frame_header(  # noqa: E731
        FrameHeader("cam", seq, time.time_ns(), encoding, **kw))
    # Given, in order: messages that name no camera (counted) and bad frames of camera 'cam' (deferred)
    sender.send_multipart([b"garbage", b"x"])                                   # not a map: counted
    sender.send_multipart([b"just one part"])                                   # counted
    sender.send_multipart([msgpack.packb({"schema_version": "9.0", "camera_id": "cam"}), b"x"])  # counted
    bad = [
        ([header(0), jpeg[: len(jpeg) // 2]], Reason.UNDECODABLE),              # truncated
        ([header(1), jpeg[:400] + bytes(3000) + b"\xff\xd9"], Reason.UNDECODABLE),  # corrupt entropy data
        ([header(2), b"\xff\xd8" + bytes(300000)], Reason.TOO_LARGE),           # over max-message-bytes
        ([header(3, Encoding.PNG), big_png], Reason.TOO_LARGE),                 # over max-width
        ([header(4, Encoding.RAW, shape=(32, 32, 3), dtype="uint8"), bytes(100)], Reason.BAD_SHAPE),
        ([header(5, Encoding.RAW, shape=(32, 32, 3), dtype="uint8", pixel_format=PixelFormat.MONO8),
          bytes(3072)], Reason.BAD_SHAPE),
        ([msgpack.packb({"schema_version": "1.0", "camera_id": "cam", "seq": 6, "capture_ts_ns": 1,
                         "encoding": "gif"}), b"GIF89a"], Reason.BAD_HEADER),
    ]
    for count, (message, _) in enumerate(bad, start=1):
        sender.send_multipart(message)
        # the next frame waits for this one's decision, so it cannot supersede it however slow the machine is
        assert subscriber.wait_for(lambda s: len(s.decisions) == count, 10), [d.seq for d in subscriber.decisions]
    # And then a good frame
    send_frame(sender, FrameHeader("cam", 7, time.time_ns(), Encoding.JPEG), jpeg)
    decisions = subscriber.collect(8)
    assert [d.reason for d in decisions] == [reason for _, reason in bad] + [Reason.MEETS_THRESHOLD], \
        [(d.seq, d.reason.value, d.detail) for d in decisions]
    assert service.process.poll() is None, "the service must keep running"
    assert subscriber.wait_for(lambda s: s.health[-1].counters.get("rejected") == 3, 20), subscriber.health[-1]
    assert service.stop() == 0


def test_nan_scores_and_engine_errors_defer_and_report_degraded_health(
        serve, subscribe, push, fault_export, make_fault_bundle, tmp_path):
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")))
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    expected = []
    for seq, (pixel, reason) in enumerate([(100, Reason.MEETS_THRESHOLD), (NAN_PIXEL, Reason.NON_FINITE),
                                           (ERROR_PIXEL, Reason.ENGINE_ERROR), (100, Reason.MEETS_THRESHOLD)]):
        image = fault_image(pixel)
        send_frame(sender, FrameHeader("cam", seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"), image.tobytes())
        expected.append(reason)
        assert subscriber.wait_for(lambda s: len(s.decisions) == seq + 1, 10), f"no decision for seq {seq}"
        if reason is Reason.ENGINE_ERROR:  # the failed batch shows in the heartbeat until a batch succeeds
            assert subscriber.wait_for(lambda s: s.health[-1].status is HealthStatus.DEGRADED, 20)
            assert "failed on a batch" in subscriber.health[-1].detail
    assert [d.reason for d in subscriber.decisions] == expected
    assert subscriber.wait_for(lambda s: s.health[-1].status is HealthStatus.OK, 20), "healthy again"
    assert service.stop() == 0


def test_stale_frames_are_deferred_and_json_bodies_are_published(serve, subscribe, push, fault_export,
                                                                make_fault_bundle, tmp_path):
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")),
                    "--staleness-ms", "500", "--publish-format", "json")
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    image = fault_image()

    def send(seq: int, age_s: float = 0.0) -> None:
        send_frame(sender, FrameHeader("cam", seq, time.time_ns() - int(age_s * 1e9), Encoding.RAW, image.shape,
                                       "uint8"), image.tobytes())

    # Given a frame captured 10 s ago: deferred stale
    send(0, age_s=10.0)
    assert subscriber.wait_for(lambda s: len(s.decisions) == 1, 10)
    stale = subscriber.decisions[0]
    assert stale.reason is Reason.STALE, stale
    assert "exceeds the staleness deadline of 500 ms" in stale.detail
    assert stale.latency_from_capture_ms > 9000
    # Then a fresh frame is scored (each frame's outcome checked against the age the service measured)
    decision, seen = decide_until_scored(subscriber, send, "cam", 1, 500)
    assert decision.reason is Reason.MEETS_THRESHOLD, seen
    # The bodies on the wire are JSON
    raw = zmq.Context.instance().socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.SUBSCRIBE, b"trust/_health")
    raw.connect(service.publish)
    try:
        assert raw.poll(5000), "no heartbeat"
        topic, body = raw.recv_multipart()
        assert topic == b"trust/_health" and json.loads(body)["kind"] == "health"
    finally:
        raw.close(0)
    assert service.stop(signal.SIGINT) == 0, "SIGINT is a graceful stop too"


def test_every_frame_received_before_sigterm_is_answered(serve, subscribe, push, fault_export, make_fault_bundle,
                                                         tmp_path):
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")))
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    image = fault_image()
    for seq in range(40):
        send_frame(sender, FrameHeader(f"c{seq % 4}", seq // 4, time.time_ns(), Encoding.RAW, image.shape, "uint8"),
                   image.tobytes())
    assert subscriber.wait_for(lambda s: s.health[-1].counters.get("received") == 40, 10), "not all received"
    service.process.send_signal(signal.SIGTERM)
    assert subscriber.wait_for(lambda s: s.health[-1].status is HealthStatus.STOPPED, 20)
    # The process exits by itself after its final heartbeat (a second SIGTERM during interpreter
    # shutdown would meet the default handler and kill it, which is not what is tested here)
    assert service.process.wait(20) == 0, service.stderr()
    assert len(subscriber.decisions) == 40
    assert_camera_order(subscriber.decisions, {f"c{c}": list(range(10)) for c in range(4)})
    assert all(d.decision is Decision.ACCEPT or d.reason is Reason.DROPPED for d in subscriber.decisions)
