"""Scoreboard: joins decisions and truth in either order; counts, accuracies, coverage and latency by hand."""

from __future__ import annotations

import json
import math

import pytest

from trustvlm.pipelines.scoreboard import DecisionRecord, Scoreboard, Truth, TruthTail, percentile
from trustvlm.runtime.messages import Decision


def record(camera: str, seq: int, decision: str, label: str | None, e2e_ms: float = 10.0,
           reason: str | None = None) -> DecisionRecord:
    reason = reason or ("meets_threshold" if decision == "accept" else "below_threshold")
    return DecisionRecord(camera, seq, Decision(decision), reason, label, None if label is None else 0.5, 0.4,
                          e2e_ms - 1.0, e2e_ms)


def test_decisions_and_truth_join_in_either_order_with_hand_worked_figures():
    # Given 5 labelled frames: 3 accepted (2 right), 1 deferred but right, 1 dropped before scoring,
    # plus one decision of an unlabelled camera, one duplicate, and truth rows before and after the decisions
    board = Scoreboard()
    board.add_truth(Truth("cam", 0, "bag"))
    board.add_truth(Truth("cam", 1, "coat"))
    board.add_decision(record("cam", 0, "accept", "bag", e2e_ms=10))       # right, truth came first
    board.add_decision(record("cam", 1, "accept", "shirt", e2e_ms=20))     # wrong
    board.add_decision(record("cam", 2, "accept", "dress", e2e_ms=30))     # right, truth comes later
    board.add_decision(record("cam", 3, "defer", "sandal", e2e_ms=40))     # right but deferred
    board.add_decision(record("cam", 4, "defer", None, e2e_ms=50, reason="dropped"))
    board.add_decision(record("video", 0, "accept", "bag", e2e_ms=60))     # no truth for this camera
    board.add_decision(record("cam", 0, "accept", "bag"))                  # a duplicate is not counted again
    for seq, label in ((2, "dress"), (3, "sandal"), (4, "trouser"), (5, "coat")):  # seq 5 never answered
        board.add_truth(Truth("cam", seq, label))
    summary = board.summary()
    # Then: 6 decisions, 4 accepted; labelled: 5 frames, 4 scored, 3 correct; accepted 3 of which 2 correct
    assert (summary["decisions"], summary["accepted"], summary["deferred"], summary["duplicates"]) == (6, 4, 2, 1)
    labelled = summary["labelled"]
    assert (labelled["frames"], labelled["scored"], labelled["correct"]) == (5, 4, 3)
    assert (labelled["accepted"], labelled["accepted_correct"]) == (3, 2)
    assert labelled["accuracy_all"] == pytest.approx(3 / 4)
    assert labelled["accuracy_accepted"] == pytest.approx(2 / 3)
    assert labelled["coverage"] == pytest.approx(3 / 5)
    assert labelled["unanswered"] == {"cam": 1}
    assert labelled["decisions_without_truth"] == 1
    assert summary["cameras"]["video"] == {"decisions": 1, "accepted": 1, "deferred": 0, "labelled": 0}
    assert summary["reasons"] == {"below_threshold": 1, "dropped": 1, "meets_threshold": 4}
    # And latency percentiles over the 6 first decisions: 10..60 ms, p50 = 35 (linear interpolation)
    assert summary["latency_ms"]["e2e_from_capture"]["p50"] == pytest.approx(35.0)
    assert summary["latency_ms"]["publish_from_capture"]["p50"] == pytest.approx(34.0)


def test_empty_scoreboard_reports_nan_not_zero():
    summary = Scoreboard().summary()
    assert summary["decisions"] == 0
    assert math.isnan(summary["labelled"]["accuracy_accepted"]) and math.isnan(summary["coverage_all_frames"])
    assert math.isnan(summary["latency_ms"]["e2e_from_capture"]["p99"])
    assert math.isnan(percentile([], 50)) and percentile([1.0, 3.0], 50) == 2.0


def test_truth_rows_round_trip_and_bad_rows_are_rejected():
    truth = Truth("cam", 7, "T-shirt/top", 0)
    assert Truth.from_dict(truth.to_dict()) == truth
    for bad in ({"camera_id": "cam", "seq": -1, "label": "bag"}, {"camera_id": "cam", "seq": True, "label": "bag"},
                {"seq": 1, "label": "bag"}, {"camera_id": "cam", "seq": 1, "label": None}, [1, 2]):
        with pytest.raises(ValueError, match="truth row should be"):
            Truth.from_dict(bad)


def test_truth_tail_reads_only_complete_lines_as_the_file_grows(tmp_path):
    # Given a truth file that does not exist yet
    path = tmp_path / "truth.jsonl"
    tail = TruthTail(path)
    assert tail.poll() == []
    # When a row and half of the next are written, then the rest and a bad row
    first, second = (json.dumps({"camera_id": "c", "seq": s, "label": "bag"}) for s in (0, 1))
    path.write_text(first + "\n" + second[:10])
    assert [t.seq for t in tail.poll()] == [0]
    with open(path, "a") as handle:
        handle.write(second[10:] + "\n" + "not json\n")
    # Then each complete row is read once, and the bad one is counted
    assert [t.seq for t in tail.poll()] == [1]
    assert tail.poll() == [] and tail.bad_rows == 1


def test_a_run_of_dropped_frames_counts_each_frame_and_joins_each_truth_row():
    # Given truth for seq 0..5 of one camera, and one dropped run for seq 1..4 (schema 1.2), then seq 5 scored
    board = Scoreboard()
    for seq in range(6):
        board.add_truth(Truth("cam", seq, "bag"))
    board.add_decision(record("cam", 0, "accept", "bag"))
    board.add_run(record("cam", 1, "defer", None, reason="dropped"), seq_last=4, frames=4)
    board.add_decision(record("cam", 5, "accept", "bag"))
    summary = board.summary()
    # Then 6 decisions, 4 of them dropped, and every labelled frame answered
    assert (summary["decisions"], summary["deferred"], summary["reasons"]["dropped"]) == (6, 4, 4)
    assert summary["labelled"]["frames"] == 6 and summary["labelled"]["unanswered"] == {}
    # And a run with a gap (seq 7..10 as 3 frames: one never reached the service) counts 3, named by its ends
    board.add_run(record("cam", 7, "defer", None, reason="dropped"), seq_last=10, frames=3)
    summary = board.summary()
    assert (summary["decisions"], summary["reasons"]["dropped"]) == (9, 7)
    assert summary["cameras"]["cam"]["deferred"] == 7
