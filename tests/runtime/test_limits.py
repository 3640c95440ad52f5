"""Limits that bound memory: configurable, enforced, and holding under a flood at many times capacity."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from trustvlm.runtime.cli import main
from trustvlm.runtime.ingest.frame_buffer import BufferConfig, FrameBuffer
from trustvlm.runtime.frames import Encoding, FrameHeader, Notice, ReceivedFrame, send_frame
from trustvlm.runtime.messages import Decision, DecisionMessage, HealthMessage, Reason, decode_body
from trustvlm.runtime.metrics import ServiceStats
from trustvlm.runtime.publisher import Publisher, PublishConfig
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer

from .conftest import outcome_total

pytestmark = pytest.mark.timeout(120)


def rss_mb(pid: int) -> float:
    """Resident set size of a process (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def test_every_memory_limit_is_a_flag(capsys):
    # Given every limit on the command line
    assert main(["serve", "--artifacts", "a", "--bundle", "b", "--max-message-bytes", "1000", "--max-header-bytes",
                 "512", "--max-width", "64", "--max-height", "48", "--max-cameras", "3", "--max-notices-per-camera",
                 "5", "--receive-hwm", "7", "--publish-queue-size", "11", "--send-hwm", "13", "--dump-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    # Then each lands in its place in the config
    assert config["limits"] == {"max_message_bytes": 1000, "max_header_bytes": 512, "max_width": 64,
                                "max_height": 48, "hard_limit_factor": 4}
    assert (config["buffer"]["max_cameras"], config["buffer"]["max_notices_per_camera"]) == (3, 5)
    assert config["ingest"]["receive_hwm"] == 7
    assert (config["publish"]["queue_size"], config["publish"]["send_hwm"]) == (11, 13)
    assert main(["serve", "--artifacts", "a", "--bundle", "b", "--receive-hwm", "0", "--dump-config"]) == 1
    assert "ingest receive_hwm should be a positive integer, but got 0" in capsys.readouterr().err


def test_the_buffer_holds_a_bounded_number_of_items_whatever_arrives():
    # Given a small buffer and 20,000 items from 500 cameras, frames and notices, none taken meanwhile
    config = BufferConfig(max_cameras=16, max_notices_per_camera=8)
    buffer = FrameBuffer(config)
    for i in range(20_000):
        camera = f"c{i % 500}"
        if i % 3:
            buffer.put(ReceivedFrame(FrameHeader(camera, i, time.time_ns(), Encoding.JPEG), b"x" * 100, 0))
        else:
            buffer.put(Notice(camera, i, time.time_ns(), 0, Reason.BAD_HEADER))
    # Then at most one frame per tracked camera and the notice bounds are held (the rest is counted)
    stats = buffer.stats()
    assert stats.cameras <= 16 and stats.pending_frames <= 16
    held = buffer.take(max_frames=1000)
    assert len(held) <= 16 * (1 + 8) + 8, len(held)
    assert stats.camera_limit + stats.notices_suppressed > 0
    assert stats.frames_in + stats.notices_in == 20_000


def test_the_publish_queue_is_bounded_and_overflow_is_counted():
    stats = ServiceStats()
    publisher = Publisher(PublishConfig(address="tcp://127.0.0.1:*", queue_size=5),
                          lambda status: HealthMessage(status, 0, 0.0, "m", "b", 1.0, 0), stats)
    message = object()  # never sent: the publisher thread is not started
    assert [publisher.submit(message) for _ in range(8)] == [True] * 5 + [False] * 3
    assert stats.snapshot()["publish_overflow"] == 3


def test_invented_camera_ids_do_not_grow_the_metrics_without_end():
    from trustvlm.runtime.metrics import OTHER_CAMERAS, PrometheusObserver  # noqa: PLC0415 - optional dependency

    observer = PrometheusObserver(max_camera_labels=3)
    for i in range(100):
        observer.on_received(f"cam{i}")
    text = observer.exposition().decode()
    series = [line for line in text.splitlines() if line.startswith("trustvlm_frames_received_total{")]
    assert len(series) == 4, series
    assert f'trustvlm_frames_received_total{{camera="{OTHER_CAMERAS}"}} 97.0' in text


def test_a_cameras_bundle_series_follows_its_latest_scored_frame_and_other_cameras_have_none():
    from trustvlm.runtime.metrics import PrometheusObserver  # noqa: PLC0415 - optional dependency

    observer = PrometheusObserver(max_camera_labels=1)
    observer.on_received("cam")
    observer.on_received("extra")  # over the label cap: counted as _other

    def scored(camera: str, bundle_id: str) -> DecisionMessage:
        return DecisionMessage(camera, 1, 0, 0, Decision.ACCEPT, Reason.MEETS_THRESHOLD, 0.5, "trustvlm", "m@x",
                               bundle_id, label="a", class_id=0, kappa=0.9).stamped(2_000_000_000)

    for message in (scored("cam", "m:aaa"), scored("cam", "m:bbb"), scored("extra", "m:ccc")):
        observer.on_published(message)
    text = observer.exposition().decode()
    series = [line for line in text.splitlines() if line.startswith("trustvlm_camera_bundle_info{")]
    assert series == ['trustvlm_camera_bundle_info{bundle_id="m:bbb",camera="cam"} 1.0'], series
    assert 'trustvlm_camera_last_decision_timestamp_seconds{camera="cam"} 2.0' in text


def settled_counters(counters, sent: int, heartbeats: int = 300) -> dict:
    """Counters of the first heartbeat (of the next `heartbeats`) that shows `sent` messages received and decided."""
    latest = counters(after_ns=time.time_ns())
    for _ in range(heartbeats):
        if latest.get("received", 0) >= sent and outcome_total(latest) == latest["received"]:
            break
        latest = counters(after_ns=time.time_ns())
    return latest


@pytest.mark.slow
def test_memory_stays_bounded_under_a_flood_at_ten_times_capacity(serve, demo_export, demo_bundle, push,
                                                                  zmq_context, vtest_frames, fmnist_images):
    duration_s, offered_per_s, cameras = 20.0, 10000, 12  # over 10x what 2 CPU cores score of this video
    service = serve("--artifacts", str(demo_export), "--bundle", str(demo_bundle), "--max-cameras", "8")
    health = zmq_context.socket(zmq.SUB)
    health.setsockopt(zmq.LINGER, 0)
    health.setsockopt(zmq.SUBSCRIBE, b"trust/_health")  # decisions are filtered out at the publisher
    health.connect(service.publish)
    assert health.poll(20000), "no heartbeat"

    def counters(after_ns: int = 0) -> dict:
        """The counters of the newest heartbeat, waiting for one sent after `after_ns` (epoch ns)."""
        message = None
        while health.poll(0):
            message = decode_body(health.recv_multipart()[1])
        while message is None or message.ts_ns <= after_ns:
            assert health.poll(5000), "no heartbeat"
            message = decode_body(health.recv_multipart()[1])
        return message.counters

    # Given 768 x 576 JPEG frames (real video) from 12 cameras, offered at 10,000 frames/s, never waiting
    payloads = [cv2.imencode(".jpg", frame)[1].tobytes() for frame in vtest_frames]
    sender = push(service.ingest)
    sender.setsockopt(zmq.SNDHWM, 100)
    sent = refused = attempted = 0
    stop = threading.Event()

    def flood():
        nonlocal sent, refused, attempted
        seq, started = 0, time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - started) * offered_per_s)
            while seq < due:
                header = FrameHeader(f"flood{seq % cameras}", seq, time.time_ns(), Encoding.JPEG)
                try:
                    send_frame(sender, header, payloads[seq % len(payloads)], zmq.NOBLOCK)
                    sent += 1
                except zmq.Again:
                    refused += 1  # the sender's queue is full: the service is not keeping up
                seq += 1
            attempted = seq
            time.sleep(0.005)

    baseline = rss_mb(service.process.pid)
    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    samples, started = [], time.monotonic()
    while time.monotonic() - started < duration_s:
        time.sleep(0.5)
        samples.append(rss_mb(service.process.pid))
    stop.set()
    thread.join(5)
    at_end = counters()
    # Then RSS levels off: the second half of the flood grows by no more than a few MiB over the first
    quarter = len(samples) // 4
    second_quarter, last_quarter = np.mean(samples[quarter:2 * quarter]), np.mean(samples[-quarter:])
    scored_per_s = at_end.get("frames_scored", 0) / duration_s
    attempted_per_s = attempted / duration_s
    figures = (f"flood {duration_s:.0f} s: offered {attempted_per_s:.0f}/s ({sent} sent, {refused} refused at the "
               f"sender), received {at_end.get('received', 0) / duration_s:.0f}/s, scored {scored_per_s:.0f}/s "
               f"({attempted_per_s / max(scored_per_s, 1):.0f}x capacity); "
               f"RSS before {baseline:.0f} MiB, max {max(samples):.0f}, second quarter {second_quarter:.0f}, "
               f"last quarter {last_quarter:.0f}; counters {at_end}")
    print("\n" + figures)
    assert attempted_per_s >= 10 * scored_per_s, figures
    assert max(samples) - baseline < 200, figures
    assert last_quarter - second_quarter < 30, figures
    # And once the flood is over, everything received has an outcome and a good frame is scored correctly
    assert service.process.poll() is None
    images, _ = fmnist_images
    sent_in_flood = sent
    # Every message sent reaches the service (PUSH/PULL drops nothing; the sender refused what its queue could not
    # take): read the heartbeats' counters until all of them were received and each has its outcome. Waiting
    # only decides when to give up, never what the counts must be.
    drained = settled_counters(counters, sent)
    assert outcome_total(drained) == drained["received"] == sent, drained
    sub = zmq_context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"trust/check")
    sub.connect(service.publish)
    # PUB/SUB keeps nothing for a subscriber whose subscription has not reached the publisher yet: send the frame
    # again (a new seq each time) while no decision has come; a copy superseded by the next one is decided
    # 'dropped', so read on to the scored one. Every copy is counted as sent.
    decision, polls = None, 0
    while decision is None or decision.reason is Reason.DROPPED:
        if decision is None:
            frame = FrameHeader("check", sent - sent_in_flood, time.time_ns(), Encoding.RAW, images[0].shape, "uint8")
            send_frame(sender, frame, np.ascontiguousarray(images[0]).tobytes())
            sent += 1
        polls += 1
        assert polls <= 100, f"no scored decision for the {sent - sent_in_flood} frames sent after the flood"
        if sub.poll(1000):
            decision = decode_body(sub.recv_multipart()[1])
    reference = load_scorer(demo_export, demo_bundle, ScorerConfig(threads=1))
    header = FrameHeader("check", decision.seq, decision.capture_ts_ns, Encoding.RAW, images[0].shape, "uint8")
    (expected,) = reference.decide([ReceivedFrame(header, np.ascontiguousarray(images[0]).tobytes(), 0)])
    assert (decision.decision, decision.label) == (expected.decision, expected.label)
    np.testing.assert_allclose(decision.kappa, expected.kappa, atol=1e-5)
    # And the frames sent after the flood are counted too, each with its outcome
    final = settled_counters(counters, sent)
    assert outcome_total(final) == final["received"] == sent, final
    assert service.stop() == 0
