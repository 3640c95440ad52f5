"""The source loop against sockets of the test's own: headers, payloads, truth rows, the decision window."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from trustvlm.pipelines.captures import DatasetCapture, degrade
from trustvlm.pipelines.frame_sender import FrameEncoder, FrameSender, SenderConfig
from trustvlm.pipelines.source import CameraDrift, DecisionWindowPacer, FpsPacer, TruthWriter, stream_frames
from trustvlm.runtime.frames import Encoding, FrameHeader
from trustvlm.runtime.messages import (HEALTH_TOPIC, Decision, DecisionMessage, HealthMessage, HealthStatus, Reason,
                                       encode_body, topic_for)

from .conftest import require_fashion_mnist, trustvlm

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pull(zmq_context):
    socket = zmq_context.socket(zmq.PULL)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, 5000)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    yield socket, f"tcp://127.0.0.1:{port}"
    socket.close()


def receive(socket) -> tuple[FrameHeader, bytes]:
    header, payload = socket.recv_multipart()
    return FrameHeader.from_dict(msgpack.unpackb(header, raw=False)), payload


@pytest.mark.parametrize("encoding", ["raw", "png", "jpeg"])
def test_encoder_payloads_decode_to_the_frame(encoding):
    # Given a grey and a colour frame
    grey = np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))
    colour = np.dstack([grey, 255 - grey, np.full_like(grey, 128)])
    for image in (grey, colour):
        # When encoded
        frame = FrameEncoder(encoding, jpeg_quality=95).encode(image)
        # Then the payload decodes to the same pixels (JPEG: within a small error), raw with shape and format
        if encoding == "raw":
            assert frame.shape == image.shape
            assert frame.pixel_format.value == ("mono8" if image.ndim == 2 else "bgr8")
            decoded = np.frombuffer(frame.payload, np.uint8).reshape(image.shape)
        else:
            decoded = cv2.imdecode(np.frombuffer(frame.payload, np.uint8), cv2.IMREAD_UNCHANGED)
        tolerance = 0 if encoding != "jpeg" else 12
        assert np.abs(decoded.astype(int) - image).max() <= tolerance, encoding


def test_encoder_rejects_bad_images_and_quality():
    with pytest.raises(ValueError, match=r"expected a uint8 H x W or H x W x 3 image, but got float32 \(4, 4\)"):
        FrameEncoder("raw").encode(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"JPEG quality should be in \[1, 100\], but got 0"):
        FrameEncoder("jpeg", jpeg_quality=0)


def test_labelled_replay_sends_seq_numbered_frames_through_the_camera_and_writes_their_truth(
        tmp_path, zmq_context, pull):
    require_fashion_mnist()
    # Given a PULL socket of our own and the Fashion-MNIST test split as a low-light camera
    socket, endpoint = pull
    capture = DatasetCapture(split="test", start=10)
    with FrameSender(SenderConfig(endpoint), zmq_context) as sender, TruthWriter(tmp_path / "truth.jsonl") as truth:
        # When 5 raw frames are streamed
        before = time.time_ns()
        stats = stream_frames(capture, "cam", FrameEncoder("raw"), sender, truth=truth, shift="low_light", limit=5)
    # Then 5 frames arrive with seq 0..4, capture times in order, pixels = the degraded test images
    received = [receive(socket) for _ in range(5)]
    assert [h.seq for h, _ in received] == list(range(5))
    stamps = [h.capture_ts_ns for h, _ in received]
    assert before <= stamps[0] and stamps == sorted(stamps)
    for seq, (header, payload) in enumerate(received):
        assert (header.camera_id, header.encoding, header.shape) == ("cam", Encoding.RAW, (28, 28))
        expected = degrade(capture.images[10 + seq], "low_light", seed=seq)
        np.testing.assert_array_equal(np.frombuffer(payload, np.uint8).reshape(28, 28), expected)
    # And one truth row per frame sent, with the dataset's label
    rows = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert [(r["camera_id"], r["seq"], r["label"]) for r in rows] == [
        ("cam", s, capture.class_names[capture.labels[10 + s]]) for s in range(5)]
    assert (stats.frames_sent, stats.labelled, stats.send_timeouts, stats.ended_by) == (5, 5, 0, "limit")


def test_a_drifting_camera_sends_its_frames_from_frame_n_on_through_the_changed_shift(tmp_path, zmq_context, pull):
    require_fashion_mnist()
    socket, endpoint = pull
    capture = DatasetCapture(split="test")
    # When the low-light camera gets darker (gain 0.25) after 3 of 6 frames
    drift = CameraDrift.parse("low_light:gain=0.25", 3)
    with FrameSender(SenderConfig(endpoint), zmq_context) as sender, TruthWriter(tmp_path / "truth.jsonl") as truth:
        stats = stream_frames(capture, "cam", FrameEncoder("raw"), sender, truth=truth, shift="low_light", limit=6,
                              drift=drift)
    # Then frames 0-2 are the low-light camera's, frames 3-5 the darker camera's (same seeds), visibly darker
    for seq, (header, payload) in enumerate(receive(socket) for _ in range(6)):
        pixels = np.frombuffer(payload, np.uint8).reshape(28, 28)
        usual = degrade(capture.images[seq], "low_light", seed=seq)
        np.testing.assert_array_equal(pixels, usual if seq < 3 else degrade(capture.images[seq], drift.shift, seq))
        if seq >= 3:
            assert pixels.mean() < 0.7 * usual.mean(), seq
    # And each truth row names the camera its frame went through; the stats count the drifted frames
    rows = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert [r["shift"] for r in rows] == ["low_light"] * 3 + ["low_light:gain=0.25"] * 3
    assert (stats.frames_sent, stats.drifted) == (6, 3) and "3 through the drifted camera" in stats.summary()


@pytest.mark.parametrize("args, message", [
    (["--drift", "low_light:gian=0.2"], "--drift: shift 'low_light' has no parameter 'gian'; its parameters: "
                                        "gain=0.5, gamma=2, read_noise=0.03 (in 'low_light:gian=0.2')"),
    (["--shift", "fog"], "--shift: unknown shift 'fog'; expected one of ['blur', 'noise', 'low_light', 'jpeg']"),
    (["--drift-after", "10"], "--drift-after 10 needs a value >= 0 and --drift NAME[:KEY=VALUE,...]"),
])
def test_source_refuses_an_unknown_shift_or_parameter_in_one_line(args, message):
    result = trustvlm("source", "--dataset", "fashion-mnist", *args)
    assert result.returncode == 1 and result.stderr.strip() == f"trustvlm source: error: {message}", result.stderr


def test_a_set_stop_event_ends_the_stream_before_the_next_frame(zmq_context, pull):
    require_fashion_mnist()
    socket, endpoint = pull
    stop = threading.Event()
    stop.set()
    with FrameSender(SenderConfig(endpoint), zmq_context) as sender:
        stats = stream_frames(DatasetCapture(), "cam", FrameEncoder("png"), sender, FpsPacer(1000), stop=stop)
    assert (stats.frames_sent, stats.ended_by) == (0, "stop")


def decision_for(camera: str, seq: int) -> bytes:
    now = time.time_ns()
    return encode_body(DecisionMessage(camera, seq, now, now, Decision.DEFER, Reason.BELOW_THRESHOLD, 0.5,
                                       "trustvlm", "m", "b"))


@contextlib.contextmanager
def service_stand_in(zmq_context):
    """A PUB socket standing in for the service, sending heartbeats until the test is over (however long the
    subscription takes to reach it): yields (socket, endpoint)."""
    pub = zmq_context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    beating = threading.Event()

    def beat():
        while not beating.wait(0.02):
            pub.send_multipart([HEALTH_TOPIC, encode_body(HealthMessage(HealthStatus.OK, 0, 0.0, "m", "b", 0.5, 0))])

    heartbeats = threading.Thread(target=beat)
    heartbeats.start()
    try:
        yield pub, endpoint
    finally:
        beating.set()
        heartbeats.join()
        pub.close()


def test_decision_window_keeps_at_most_n_frames_unanswered(zmq_context):
    # Given a service stand-in, and a window of 2 frames for camera 'cam'
    # (the answer timeout is long while decisions are expected, so a busy machine cannot turn one into a timeout)
    with service_stand_in(zmq_context) as (pub, endpoint):
        pacer = DecisionWindowPacer(endpoint, "cam", 2, zmq_context, answer_timeout_ms=60_000)
        stop = threading.Event()
        try:
            pacer.wait_ready(5, stop)
            # When 2 frames are sent: the window is full
            pacer.wait_turn(stop)
            pacer.on_sent(0)
            pacer.wait_turn(stop)
            pacer.on_sent(1)
            assert set(pacer.in_flight) == {0, 1}
            # And a decision of 'cam10' (same topic prefix) and of 'cam' seq 0 arrive
            pub.send_multipart([topic_for("cam10"), decision_for("cam10", 1)])
            pub.send_multipart([topic_for("cam"), decision_for("cam", 0)])
            pacer.wait_turn(stop)
            # Then only seq 0 is answered; the turn comes without a timeout
            assert set(pacer.in_flight) == {1} and pacer.timeouts == 0
            # When no decision comes for the next frames, the window gives up on them after the answer timeout
            pacer.answer_timeout_s = 0.3
            pacer.on_sent(2)
            pacer.wait_turn(stop)
            assert pacer.in_flight == {} and pacer.timeouts == 2
        finally:
            pacer.close()


def test_a_run_of_dropped_frames_answers_each_of_its_frames_in_the_window(zmq_context):
    # Given a window of 4 frames of 'cam', all sent and unanswered
    with service_stand_in(zmq_context) as (pub, endpoint):
        pacer = DecisionWindowPacer(endpoint, "cam", 4, zmq_context, answer_timeout_ms=60_000)
        try:
            pacer.wait_ready(5, threading.Event())
            for seq in range(4):
                pacer.on_sent(seq)
            # When one schema-1.2 message answers seq 0..2 as a run of dropped frames
            now = time.time_ns()
            run = DecisionMessage("cam", 0, now, now, Decision.DEFER, Reason.DROPPED, 0.5, "trustvlm", "m", "b",
                                  seq_last=2, frames=3)
            pub.send_multipart([topic_for("cam"), encode_body(run)])
            deadline = time.monotonic() + 10
            while set(pacer.in_flight) != {3} and time.monotonic() < deadline:
                pacer._receive(0.1)
            # Then only seq 3 is still waiting for its decision
            assert set(pacer.in_flight) == {3}
        finally:
            pacer.close()
