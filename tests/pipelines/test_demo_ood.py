"""The demo's out-of-distribution line, from a controller decision log."""

from __future__ import annotations

import json

from trustvlm.pipelines.demo_ood import count_camera_reasons, format_ood_line


def test_the_line_counts_the_video_cameras_gate_deferrals_and_accepts(tmp_path):
    # Given a decision log with an event row, a torn last line and decisions of two cameras
    log = tmp_path / "decisions.jsonl"
    rows = [{"event": "safe_exit", "reason": "first heartbeat"}]
    rows += [{"camera_id": "vtest", "reason": "out_of_distribution"}] * 7
    rows += [{"camera_id": "vtest", "reason": "meets_threshold"}, {"camera_id": "vtest", "reason": "below_threshold"}]
    rows += [{"camera_id": "fmnist", "reason": "meets_threshold"}] * 3
    log.write_text("\n".join(json.dumps(row) for row in rows) + '\n{"camera_id": "vte')
    # Then only the video camera's decisions are counted, by reason
    assert count_camera_reasons(log, "vtest") == {"out_of_distribution": 7, "meets_threshold": 1, "below_threshold": 1}
    assert format_ood_line(log, "vtest", "fmnist") == (
        "  out of distribution: deferred 7 of 9 frames as out_of_distribution (other deferrals: below_threshold 1); "
        "accepted 1 of 9 (11.1%); fmnist frames deferred as out_of_distribution: 0 of 3")
    # And a camera without decisions, or a bundle without a gate, is said plainly
    assert "no decisions of camera cam9" in format_ood_line(log, "cam9")
    assert "no frame deferred as out_of_distribution" in format_ood_line(log, "fmnist")
