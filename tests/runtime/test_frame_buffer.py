"""The latest-frame-wins buffer: one outcome per item, camera order, staleness, bounds."""

from __future__ import annotations

import threading

import pytest

from trustvlm.runtime.ingest.frame_buffer import BufferConfig, FrameBuffer
from trustvlm.runtime.frames import Encoding, FrameHeader, Notice, ReceivedFrame
from trustvlm.runtime.messages import Decision, DecisionMessage, Reason
from trustvlm.runtime.metrics import ServiceStats

from .conftest import assert_accounting_by_name

pytestmark = pytest.mark.timeout(30)
NOW_NS = 1_000_000_000_000


def frame(camera: str, seq: int, age_ms: float = 0.0) -> ReceivedFrame:
    capture = NOW_NS - int(age_ms * 1e6)
    return ReceivedFrame(FrameHeader(camera, seq, capture, Encoding.JPEG), b"jpeg", capture)


def notice(camera: str, seq: int) -> Notice:
    return Notice(camera, seq, NOW_NS, NOW_NS, Reason.UNDECODABLE, "bad")


def make_buffer(**config) -> FrameBuffer:
    return FrameBuffer(BufferConfig(**config), clock_ns=lambda: NOW_NS)


def describe(items) -> list[tuple]:
    return [(i.header.camera_id, i.header.seq, "frame") if isinstance(i, ReceivedFrame)
            else (i.camera_id, i.seq, i.reason.value) for i in items]


def test_a_newer_frame_supersedes_the_waiting_one_which_becomes_a_dropped_notice():
    buffer = make_buffer()
    for seq in range(3):
        buffer.put(frame("a", seq))
    buffer.put(frame("b", 0))
    items = buffer.take(max_frames=8)
    assert describe(items) == [("a", 0, "dropped"), ("a", 1, "dropped"), ("a", 2, "frame"), ("b", 0, "frame")]
    assert "superseded by seq 1" in items[0].detail
    stats = buffer.stats()
    assert (stats.frames_in, stats.dropped, stats.pending_frames) == (4, 2, 0)


def test_notices_keep_their_place_in_the_camera_order():
    # Given a frame waiting, then a bad frame of the same camera, then a frame of another camera
    buffer = make_buffer()
    buffer.put(frame("a", 0))
    buffer.put(notice("a", 1))
    buffer.put(frame("b", 0))
    # Then the good frame is not dropped for the bad one, and the order is arrival order
    assert describe(buffer.take(8)) == [("a", 0, "frame"), ("a", 1, "undecodable"), ("b", 0, "frame")]


def test_a_batch_takes_at_most_max_frames_oldest_camera_first():
    buffer = make_buffer()
    for camera in "cab":
        buffer.put(frame(camera, 0))
    assert describe(buffer.take(max_frames=2)) == [("c", 0, "frame"), ("a", 0, "frame")]
    assert describe(buffer.take(max_frames=2)) == [("b", 0, "frame")]
    assert buffer.take(max_frames=2, timeout_s=0.01) == [], "empty after a timeout"


def test_frames_past_the_staleness_deadline_become_stale_notices():
    buffer = make_buffer(staleness_ms=200)
    buffer.put(frame("a", 0, age_ms=250))
    buffer.put(frame("b", 0, age_ms=150))
    items = buffer.take(8)
    assert describe(items) == [("a", 0, "stale"), ("b", 0, "frame")]
    assert "250 ms since capture exceeds the staleness deadline of 200 ms" in items[0].detail
    assert buffer.stats().stale == 1


def test_camera_limit_evicts_idle_cameras_and_defers_when_none_is_idle():
    buffer = make_buffer(max_cameras=2)
    buffer.put(frame("a", 0))
    buffer.put(frame("b", 0))
    buffer.put(frame("c", 0))  # a and b both wait: no slot for c
    assert describe(buffer.take(8)) == [("a", 0, "frame"), ("b", 0, "frame"), ("c", 0, "camera_limit")]
    buffer.put(frame("c", 1))  # a and b are idle now: the least recently seen one makes room
    assert describe(buffer.take(8)) == [("c", 1, "frame")]
    assert buffer.stats().camera_limit == 1 and buffer.stats().cameras == 2


def test_notices_beyond_the_per_camera_bound_are_counted_not_kept():
    buffer = make_buffer(max_notices_per_camera=3)
    for seq in range(5):
        buffer.put(notice("a", seq))
    assert [i.seq for i in buffer.take(8)] == [0, 1, 2]
    assert buffer.stats().notices_suppressed == 2


def test_every_item_put_from_another_thread_comes_out_exactly_once():
    # Given a producer thread putting 300 frames of 3 cameras while this thread takes batches
    buffer = make_buffer(max_notices_per_camera=1000)

    def produce():
        for seq in range(100):
            for camera in "xyz":
                buffer.put(frame(camera, seq))
        buffer.close()

    producer = threading.Thread(target=produce)
    producer.start()
    seen = []
    while (items := buffer.take(max_frames=2, max_wait_s=0.001, timeout_s=1.0)) is not None:
        seen.extend(describe(items))
    producer.join()
    # Then each (camera, seq) appears once, in seq order per camera, and the last of each is scored
    for camera in "xyz":
        seqs = [seq for cam, seq, _ in seen if cam == camera]
        assert seqs == list(range(100)), f"camera {camera}: {seqs[:10]}..."
        assert (camera, 99, "frame") in seen, "the newest frame is never dropped"
    stats = buffer.stats()
    assert stats.dropped == sum(1 for *_, kind in seen if kind == "dropped")


def test_close_drains_then_ends():
    buffer = make_buffer()
    buffer.put(frame("a", 0))
    buffer.close()
    assert describe(buffer.take(8, max_wait_s=5.0)) == [("a", 0, "frame")], "closing does not wait max_wait"
    assert buffer.take(8) is None


def test_heartbeat_counters_add_up_by_name_when_outcomes_are_suppressed():
    # Given the service's counters fed by a buffer whose notice bound is 2, one camera slot, and a flood
    stats = ServiceStats()
    buffer = FrameBuffer(BufferConfig(max_cameras=1, max_notices_per_camera=2), clock_ns=lambda: NOW_NS,
                         on_suppressed=stats.on_suppressed)
    items = [frame("a", seq) for seq in range(6)] + [notice("a", 6), frame("b", 0), notice("b", 1)]
    for item in items:
        stats.on_received("a")
        buffer.put(item)
    stats.on_received(None)
    stats.on_rejected(Reason.BAD_HEADER, "x")
    # When what was taken is published
    counters = stats.snapshot()
    assert counters["pending"] == len(items) - counters["suppressed"]  # nothing decided yet
    for item in buffer.take(8):
        reason = Reason.MEETS_THRESHOLD if isinstance(item, ReceivedFrame) else item.reason
        stats.on_published(DecisionMessage("a", 0, 1, 1, Decision.ACCEPT if reason is Reason.MEETS_THRESHOLD
                                           else Decision.DEFER, reason, 0.5, "trustvlm", "m", "b"))
    # Then received = decisions + rejected + suppressed + pending, and the buffer's events are not in it
    counters = stats.snapshot()
    assert_accounting_by_name(counters)
    assert counters["pending"] == 0 and counters["received"] == len(items) + 1
    assert (counters["suppressed_dropped"], counters["suppressed_undecodable"]) == (3, 1), counters
    # The buffer's event counts overlap the outcomes: 5 frames superseded, 2 'dropped' decisions, 3 suppressed
    assert buffer.stats().dropped == 5 and counters["reason_dropped"] == 2
    assert buffer.stats().camera_limit == 2 and counters["reason_camera_limit"] == 1
