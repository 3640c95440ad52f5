"""Runs of superseded frames (``dropped_runs``): one ``dropped`` outcome covers seq a..b of a camera."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import cv2
import pytest

from trustvlm.runtime.ingest.frame_buffer import _RateMeter, BufferConfig, FrameBuffer
from trustvlm.runtime.frames import Encoding, FrameHeader, Notice, ReceivedFrame, send_frame
from trustvlm.runtime.messages import Reason

NOW_NS = 1_700_000_000_000_000_000


def frame(camera: str, seq: int) -> ReceivedFrame:
    return ReceivedFrame(FrameHeader(camera, seq, NOW_NS, Encoding.JPEG), b"jpeg", NOW_NS)


def describe(items) -> list[tuple]:
    return [(i.header.camera_id, i.header.seq, "frame") if isinstance(i, ReceivedFrame)
            else (i.camera_id, i.seq, i.seq_last, i.frames, i.reason.value) for i in items]


def test_runs_are_exactly_the_superseded_frames():
    # Given a buffer answering runs, and camera a: frames 0..3, an undecodable notice (seq 4), frames 5..7
    buffer = FrameBuffer(BufferConfig(dropped_runs=True), clock_ns=lambda: NOW_NS)
    for seq in range(4):
        buffer.put(frame("a", seq))
    buffer.put(Notice("a", 4, NOW_NS, NOW_NS, Reason.UNDECODABLE, "bad"))
    for seq in range(5, 8):
        buffer.put(frame("a", seq))
    buffer.put(frame("b", 0))
    # Then 0..2 are one run (3 frames); frame 3, superseded after the notice came, a notice of its own (the notice
    # stands between it and the run); 5..6 a new run; the newest frames wait to be scored
    assert describe(buffer.take(8)) == [("a", 0, 2, 3, "dropped"), ("a", 3, None, 1, "dropped"),
                                        ("a", 4, None, 1, "undecodable"), ("a", 5, 6, 2, "dropped"),
                                        ("a", 7, "frame"), ("b", 0, "frame")]
    assert buffer.stats().dropped == 6


def test_without_runs_every_superseded_frame_has_its_own_notice():
    buffer = FrameBuffer(BufferConfig(), clock_ns=lambda: NOW_NS)
    for seq in range(4):
        buffer.put(frame("a", seq))
    assert describe(buffer.take(8)) == [("a", 0, None, 1, "dropped"), ("a", 1, None, 1, "dropped"),
                                        ("a", 2, None, 1, "dropped"), ("a", 3, "frame")]


def test_a_restarted_camera_does_not_join_the_run_of_its_old_seqs():
    buffer = FrameBuffer(BufferConfig(dropped_runs=True), clock_ns=lambda: NOW_NS)
    for seq in (10, 11, 0, 1):
        buffer.put(frame("a", seq))
    # 10 and 11 are a run; 0 (a restart) is not 12: a notice of its own
    assert describe(buffer.take(8)) == [("a", 10, 11, 2, "dropped"), ("a", 0, None, 1, "dropped"), ("a", 1, "frame")]


@pytest.mark.timeout(120)
def test_a_flood_answered_with_runs_gives_every_frame_one_outcome_in_camera_order(serve, subscribe, push,
                                                                                demo_export, demo_bundle,
                                                                                vtest_frames):
    # Given the service answering runs of superseded frames, and 4 cameras flooding 768x576 JPEG
    service = serve("--artifacts", str(demo_export), "--bundle", str(demo_bundle), "--dropped-runs")
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    payloads = [cv2.imencode(".jpg", f)[1].tobytes() for f in vtest_frames]
    for i in range(400):
        send_frame(sender, FrameHeader(f"cam{i % 4}", i // 4, time.time_ns(), Encoding.JPEG), payloads[i % 6])
    # Then the outcomes cover all 400 frames: each camera's seqs 0..99 once, in order, runs included
    frames = lambda s: sum(d.frames for d in s.decisions)  # noqa: E731
    assert subscriber.wait_for(lambda s: frames(s) >= 400, 60), f"outcomes for {frames(subscriber)} frames"
    covered = defaultdict(list)
    for d in subscriber.decisions:
        seqs = list(range(d.seq, d.seq_last + 1)) if d.seq_last is not None else [d.seq]
        assert len(seqs) == d.frames and (d.seq_last is None or d.reason is Reason.DROPPED), d
        covered[d.camera_id].extend(seqs)
    assert dict(covered) == {f"cam{c}": list(range(100)) for c in range(4)}
    # And the heartbeat counts frames, not messages: received = decisions
    assert subscriber.wait_for(lambda s: s.health[-1].counters.get("decisions") == 400, 20), \
        subscriber.health[-1].counters
    assert subscriber.health[-1].counters["reason_dropped"] == sum(d.frames for d in subscriber.decisions
                                                                   if d.reason is Reason.DROPPED)
    assert service.stop() == 0


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_the_ingest_waits_for_scoring_once_enough_frames_were_superseded():
    # Given a buffer that lets 2 frames of a camera be superseded between takes, at any rate, with a long wait bound
    buffer = FrameBuffer(BufferConfig(max_superseded_per_take=2, superseded_wait_ms=60_000, flood_superseded_per_s=0),
                         clock_ns=lambda: NOW_NS)
    done = threading.Event()

    def produce():
        for seq in range(4):
            buffer.put(frame("a", seq))
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    # When the third frame supersedes the second (2 superseded), the put waits ...
    assert wait_until(lambda: buffer.stats().ingest_waits == 1), "put() did not wait"
    assert buffer.stats().frames_in == 3 and not done.is_set()
    # ... until scoring takes a batch; then the ingest goes on
    assert describe(buffer.take(8)) == [("a", 0, None, 1, "dropped"), ("a", 1, None, 1, "dropped"),
                                        ("a", 2, "frame")]
    assert done.wait(10), "put() still waits after a take"
    producer.join(10)
    assert buffer.stats().frames_in == 4 and buffer.stats().ingest_waits == 1


def test_closing_the_buffer_ends_a_waiting_put():
    buffer = FrameBuffer(BufferConfig(max_superseded_per_take=1, superseded_wait_ms=60_000, flood_superseded_per_s=0),
                         clock_ns=lambda: NOW_NS)
    producer = threading.Thread(target=lambda: [buffer.put(frame("a", seq)) for seq in range(2)], daemon=True)
    producer.start()
    assert wait_until(lambda: buffer.stats().ingest_waits == 1)
    buffer.close()
    producer.join(10)
    assert not producer.is_alive()


def test_below_the_flood_rate_the_ingest_never_waits():
    # Given the default bound (2 frames of a camera) and a flood rate no test machine reaches with 9 frames
    buffer = FrameBuffer(BufferConfig(superseded_wait_ms=60_000, flood_superseded_per_s=1e9), clock_ns=lambda: NOW_NS)
    # When one camera's 9 frames arrive with no take between them (8 superseded), then 4 of camera b
    for seq in range(9):
        buffer.put(frame("a", seq))
    for seq in range(4):
        buffer.put(frame("b", seq))
    # Then put() never waited, and every frame is in the buffer: one waiting per camera, the rest dropped
    assert buffer.stats().ingest_waits == 0 and buffer.stats().frames_in == 13
    assert [(c, s, kind) for c, s, *_, kind in describe(buffer.take(8))].count(("a", 8, "frame")) == 1


def test_the_rate_meter_counts_events_over_the_last_two_quarter_seconds():
    now = [10.0]
    meter = _RateMeter(clock=lambda: now[0])
    for _ in range(50):
        meter.add()
    now[0] = 10.3  # the next bucket: 50 events in the quarter second before, over 0.25 + 0.05 s
    assert meter.per_second() == pytest.approx(50 / 0.3)
    now[0] = 11.0  # more than a bucket later: nothing recent
    assert meter.per_second() == 0
