"""The drift's outcome from a decision log and a truth file: time to ALARM, deferrals, risk had nobody watched."""

from __future__ import annotations

import json

from trustvlm.pipelines.drift_report import drift_outcome, first_alarms, format_drift_lines

MS = 1_000_000


def write_run(tmp_path, rows):
    """A decision log and a truth file of camera ``cam`` from (seq, ms, reason, kappa, monitor, right) rows."""
    log, truth = tmp_path / "decisions.jsonl", tmp_path / "truth.jsonl"
    with open(log, "w") as handle:
        handle.write(json.dumps({"event": "guarantee_changed", "reason": "cam: monitor alarm"}) + "\n")
        for seq, ms, reason, kappa, monitor, right in rows:
            handle.write(json.dumps({
                "event": "decision", "camera_id": "cam", "seq": seq, "capture_ts_ns": ms * MS, "bundle_id": "b",
                "decision": "accept" if reason == "meets_threshold" else "defer", "reason": reason,
                "label": "bag" if right else "coat", "kappa": kappa, "threshold": 0.5, "monitor": monitor}) + "\n")
    truth.write_text("".join(json.dumps({"camera_id": "cam", "seq": row[0], "label": "bag"}) + "\n" for row in rows))
    return log, truth


def test_the_outcome_counts_frames_to_alarm_replays_the_thinning_and_prices_what_the_monitor_deferred(tmp_path):
    # Given 2 frames as calibrated, then a drift at frame 2: two accepted darker frames (one wrong), an ALARM on
    # frame 4, then frames deferred guarantee_lost: two above the threshold (one wrong), one below it
    log, truth = write_run(tmp_path, [
        (0, 0, "meets_threshold", 0.9, "ok", True), (1, 10, "below_threshold", 0.1, "ok", True),
        (2, 20, "meets_threshold", 0.8, "ok", False), (3, 60, "meets_threshold", 0.7, "watch", True),
        (4, 120, "guarantee_lost", 0.6, "alarm", False), (5, 130, "guarantee_lost", 0.9, "alarm", True),
        (6, 200, "guarantee_lost", 0.2, "alarm", False)])
    # When the monitor took one frame per 50 ms of capture time
    outcome = drift_outcome(log, truth, "cam", drift_after=2, interval_s=0.05)
    # Then the ALARM came on the 3rd drifted frame; the monitor took frames 0, 3 (60 ms), 4 (120 ms) and 6 (200 ms)
    assert (outcome.alarm_seq, outcome.frames_to_alarm, outcome.frames_after) == (4, 3, 5)
    assert (outcome.thinned_to_alarm, outcome.thinned_at_alarm, outcome.thinned_after) == (2, 3, 3)
    assert outcome.guarantee_lost == 3 and outcome.alarm_before_drift is None
    # And unwatched, the robot would have acted on frames 2, 3, 4 and 5 (kappa >= threshold), 2 of them wrong;
    # watched, on frames 2 and 3 (before the ALARM), 1 wrong
    assert (outcome.unwatched.acted, outcome.unwatched.wrong, outcome.unwatched.frames) == (4, 2, 5)
    assert (outcome.watched.acted, outcome.watched.wrong) == (2, 1) == (outcome.watched_before_alarm.acted,
                                                                        outcome.watched_before_alarm.wrong)
    assert (outcome.before.acted, outcome.before.wrong, outcome.before.frames) == (1, 0, 2)
    lines = format_drift_lines(outcome, alpha=0.05)
    assert lines[0] == ("  ALARM 3 frames into the drift (2 thinned frames; frame 4, thinned frame 3 of the run); 3 "
                        "frames deferred guarantee_lost from then on")
    assert lines[1].startswith("  after the drift, had nobody watched: the robot would have acted on 4 of 5 frames "
                               "(80.0%) at risk 50.0%: above alpha 5.0% (before the drift: 1 of 2 frames")
    assert lines[2].endswith("before the ALARM, on 0 after it")
    assert first_alarms(log, ["cam", "other"]) == {"cam": 4, "other": None}


def test_without_an_alarm_nothing_is_deferred_and_an_alarm_before_the_drift_is_called_false(tmp_path):
    log, truth = write_run(tmp_path, [(0, 0, "meets_threshold", 0.9, "ok", True),
                                      (1, 10, "meets_threshold", 0.9, "watch", False)])
    quiet = drift_outcome(log, truth, "cam", drift_after=1, interval_s=0.0)
    assert (quiet.alarm_seq, quiet.thinned_after, quiet.guarantee_lost) == (None, 1, 0)
    assert format_drift_lines(quiet, 0.05)[0].startswith("  no ALARM within the 1 frames after the drift")
    log, truth = write_run(tmp_path, [(0, 0, "guarantee_lost", 0.9, "alarm", True),
                                      (1, 10, "guarantee_lost", 0.9, "alarm", False)])
    early = drift_outcome(log, truth, "cam", drift_after=1, interval_s=0.0)
    assert (early.alarm_before_drift, early.alarm_seq, early.frames_to_alarm) == (0, None, None)
    assert format_drift_lines(early, 0.05)[0].startswith("  a false ALARM before the drift, on frame 0")
