"""Per-camera replay and order policy (runtime/ingest/sequence.py), in process and against the running service."""

from __future__ import annotations

import logging
import re
import time
import urllib.request

import pytest

from trustvlm.runtime.frames import Encoding, FrameHeader, Notice, ReceivedFrame, send_frame
from trustvlm.runtime.messages import Decision, DecisionMessage, Reason
from trustvlm.runtime.metrics import capture_latency_is_plausible
from trustvlm.runtime.ingest.sequence import SequenceGuard

from .conftest import fault_image

pytestmark = pytest.mark.timeout(60)


def frame(camera: str, seq: int, capture: int) -> ReceivedFrame:
    return ReceivedFrame(FrameHeader(camera, seq, capture, Encoding.JPEG), b"", capture)


def outcomes(guard: SequenceGuard, sent: list[tuple[str, int, int]]) -> list[str]:
    results = [guard.check(frame(*item)) for item in sent]
    return ["pass" if isinstance(r, ReceivedFrame) else r.reason.value for r in results]


def test_repeated_and_older_seqs_are_deferred_and_a_restart_passes(caplog):
    guard = SequenceGuard()
    caplog.set_level(logging.INFO, "trustvlm.runtime.ingest.sequence")
    assert outcomes(guard, [("a", 5, 100), ("a", 5, 100), ("a", 5, 100)]) == ["pass", "duplicate", "duplicate"]
    assert outcomes(guard, [("b", 600, 100), ("b", 599, 101), ("b", 598, 102), ("b", 0, 50)]) == \
        ["pass", "out_of_order", "out_of_order", "out_of_order"]  # a seq 0 captured earlier is a replay
    # A restarted camera counts from 0 again, with a newer capture time: passed, counted and logged
    assert outcomes(guard, [("b", 0, 200), ("b", 1, 201), ("b", 0, 201), ("b", 0, 202)]) == \
        ["pass", "pass", "out_of_order", "pass"]
    assert outcomes(guard, [("a", 9, 101), ("a", 7, 102), ("c", 0, 1)]) == ["pass", "out_of_order", "pass"]
    assert guard.stats() == dict(sequence_duplicate=2, sequence_out_of_order=5, sequence_restarts=2)
    assert [r.getMessage() for r in caplog.records] == ["camera b restarted: seq 0 with a newer capture time after "
                                                        "seq 600"]  # one line per camera per minute


def test_a_restarted_camera_whose_first_frames_were_lost_passes_after_the_restart_gap():
    guard = SequenceGuard()
    second = 1_000_000_000
    # Given a camera at seq 10,000; then it restarts and its frames 0-4 are lost while it reconnects
    assert outcomes(guard, [("cam", 10_000, 100 * second)]) == ["pass"]
    # Then its seq 5, captured 3 s later, is a restart, and the camera goes on from there
    assert outcomes(guard, [("cam", 5, 103 * second), ("cam", 6, 103 * second + 1)]) == ["pass", "pass"]
    # But a lower seq captured within the gap is out of order (frames swapped on the way, or a sender that
    # counts down), and an older capture time never passes, however much later it arrives
    assert outcomes(guard, [("cam", 7, 104 * second), ("cam", 3, 104 * second + 10), ("cam", 2, 50 * second)]) == \
        ["pass", "out_of_order", "out_of_order"]
    assert guard.stats()["sequence_restarts"] == 1


def test_memory_is_bounded_by_max_cameras():
    guard = SequenceGuard(max_cameras=3)
    for index in range(1000):
        assert isinstance(guard.check(frame(f"c{index}", 7, 1)), ReceivedFrame)
    assert len(guard._last) == 3
    assert isinstance(guard.check(frame("c999", 7, 1)), Notice)  # remembered: the newest cameras
    assert isinstance(guard.check(frame("c0", 7, 1)), ReceivedFrame)  # forgotten: starts afresh


def decision(reason: Reason, capture_ns: int, publish_ns: int) -> DecisionMessage:
    accept = reason is Reason.MEETS_THRESHOLD
    return DecisionMessage("cam", 0, capture_ns, publish_ns, Decision.ACCEPT if accept else Decision.DEFER, reason,
                           0.5, "trustvlm", "m@x", "m:y").stamped(publish_ns)


def test_implausible_capture_times_stay_out_of_the_latency_histogram():
    now = time.time_ns()
    assert capture_latency_is_plausible(decision(Reason.MEETS_THRESHOLD, now - 20_000_000, now))
    for reason, capture in [(Reason.MEETS_THRESHOLD, 0), (Reason.BELOW_THRESHOLD, now // 10**9),
                            (Reason.STALE, 0), (Reason.STALE, now - 2 * 10**9), (Reason.DUPLICATE, now - 10**6),
                            (Reason.MEETS_THRESHOLD, now + 3600 * 10**9)]:
        assert not capture_latency_is_plausible(decision(reason, capture, now)), (reason, capture)


def test_the_service_defers_replays_and_accepts_a_restarted_camera(serve, subscribe, push, fault_export,
                                                                   make_fault_bundle, tmp_path):
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")),
                    "--metrics", "127.0.0.1:0")
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    image = fault_image()
    start = time.time_ns()
    sent = [("a", 3, start), ("a", 3, start), ("a", 3, start),
            ("b", 600, start + 1), ("b", 599, start + 2), ("b", 598, start + 3), ("b", 0, start - 10**9),
            ("b", 0, time.time_ns())]  # the last one: the camera restarted
    expected = [Reason.MEETS_THRESHOLD, Reason.DUPLICATE, Reason.DUPLICATE, Reason.MEETS_THRESHOLD,
                Reason.OUT_OF_ORDER, Reason.OUT_OF_ORDER, Reason.OUT_OF_ORDER, Reason.MEETS_THRESHOLD]
    for count, (camera, seq, capture) in enumerate(sent, start=1):
        send_frame(sender, FrameHeader(camera, seq, capture, Encoding.RAW, image.shape, "uint8"), image.tobytes())
        assert subscriber.wait_for(lambda s: len(s.decisions) == count, 20), subscriber.decisions
    assert [d.reason for d in subscriber.decisions] == expected, [(d.seq, d.reason.value) for d in subscriber.decisions]
    assert subscriber.wait_for(lambda s: s.health[-1].counters.get("sequence_restarts") == 1, 20)
    counters = subscriber.health[-1].counters
    assert (counters["sequence_duplicate"], counters["sequence_out_of_order"]) == (2, 3), counters
    assert "camera b restarted" in service.stderr()
    # And a frame with capture time 0 (no staleness deadline here: scored) stays out of the latency histogram
    send_frame(sender, FrameHeader("z", 0, 0, Encoding.RAW, image.shape, "uint8"), image.tobytes())
    assert subscriber.wait_for(lambda s: len(s.decisions) == len(sent) + 1, 20)
    def histogram() -> dict:  # counted once sent: the last decision may reach us just before its count
        metrics = urllib.request.urlopen(f"{service.metrics}/metrics", timeout=10).read().decode()
        return dict(re.findall(r"^trustvlm_latency_from_capture_(seconds_count|seconds_sum|excluded_total) (\S+)$",
                               metrics, re.M))

    deadline = time.monotonic() + 20  # a guard only: the loop ends when the counts add up to every decision
    while (sum(float(histogram().get(k, 0)) for k in ("seconds_count", "excluded_total")) < len(sent) + 1
           and time.monotonic() < deadline):
        time.sleep(0.05)
    histogram = histogram()
    assert float(histogram["seconds_count"]) == 3 and float(histogram["excluded_total"]) == 6, histogram
    assert float(histogram["seconds_sum"]) < 60, histogram
    assert service.stop() == 0
