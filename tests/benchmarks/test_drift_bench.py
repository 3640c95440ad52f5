"""The guarantee-monitor benchmark in its smallest form: a real subprocess on the demo export, every section written."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trustvlm.benchmarks.drift import build_parser

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("setup", "checks", "stationary", "clips", "shifts", "audits", "cost", "machine", "wall_s")


def number(value) -> float:
    """A JSON number, or the 'inf' / 'nan' text json_safe writes for a non-finite one."""
    return float(value)


def test_help_says_what_the_benchmark_measures():
    text = " ".join(build_parser().format_help().split())
    for words in ("false WATCH/ALARM rates", "--quick", "--work", "--output", "--markdown", "BENCHMARKS.md"):
        assert words in text


@pytest.mark.timeout(240)
def test_quick_run_writes_every_section(demo_artifacts, tmp_path):
    output, markdown = tmp_path / "drift.json", tmp_path / "drift.md"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "trustvlm.benchmarks.drift", "--quick", "--artifacts",
                           str(demo_artifacts), "--work", str(tmp_path / "work"), "--output", str(output),
                           "--markdown", str(markdown)], cwd=REPO, capture_output=True, text=True, timeout=230)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert all(section in result for section in SECTIONS), sorted(result)
    checks = result["checks"]
    assert checks["replicate_loop_equals_first_crossings"] is True
    assert max(checks["reference_max_abs_diff"].values()) < 1e-3  # the runtime scorer's values are the bundle's

    setup = result["setup"]
    assert setup["quick"] and setup["reference_rows"] >= 20 and setup["unused"] > 0
    for run in result["stationary"]["runs"].values():
        for row in run["rows"]:
            assert 0 <= row["rate"] <= row["rate_upper95"] <= 1 and 0 < row["bound"] <= 1
    service_alarm = [row for row in result["stationary"]["runs"]["calibration pool"]["rows"]
                     if row["level_name"] == "service ALARM"]
    assert service_alarm and service_alarm[0]["rate"] <= 0.1  # a camera like its calibration: no alarm storm

    clips = result["clips"]  # real clips looped through a camera calibrated on the clip's other frames
    assert clips["checked"] is True  # the replicate loop = the service's thinning rule and DriftDetector.update
    assert {clip["clip"] for clip in clips["clips"]} == {"vtest.avi", "Megamind.avi", "tree.avi"}
    assert {(run["kind"], run["interval_s"]) for run in clips["runs"]} == {
        (kind, interval) for kind in ("interleaved", "split in time") for interval in (1.0, 5.0)}
    measured = [run for run in clips["runs"] if "rows" in run]
    assert measured and all("skipped" in run for run in clips["runs"] if "rows" not in run)
    for run in measured:
        assert run["reference_size"] >= 20 and 1 <= run["distinct_thinned"] <= run["played_frames"]
        assert all(0 <= share <= 1 for share in run["below_tenth"].values())
        for row in run["rows"]:
            assert row["replicates"] == clips["replicates"] and 0 < row["bound"] <= 1
            assert 0 <= row["rate"] <= row["rate_upper95"] <= 1

    shifts = {row["name"]: row for row in result["shifts"]}
    assert {"gain_0.5", "gain_0.15", "noise_0.25", "street"} <= set(shifts)
    for row in shifts.values():
        assert 0 <= row["accept_share"] <= 1
        for state in ("watch", "alarm"):
            assert 0 <= row[state]["before_change"] <= 1 and 0 <= row[state]["detected"] <= 1
    severe = [row for row in shifts.values() if row["severe"]]
    assert severe and all(row["alarm"]["detected"] >= 0.9 and number(row["alarm"]["median"]) <= 60 for row in severe)

    audit = result["audits"]
    assert audit["rows"][0]["case"].startswith("Bernoulli") and number(audit["rows"][0]["median_labels"]) <= 500
    for row in audit["rows"]:
        assert 0 <= row["violated"] <= 1 and set(row["frames"]) == {"0.02", "0.05"}
        if row["harmless"]:
            assert row["violated"] <= 0.2

    cost = result["cost"]
    for key in ("update", "tap_1fps", "tap_30fps", "encoder_batch_1", "encoder_batch_8"):
        assert 0 < cost[key]["p50_us"] <= cost[key]["p99_us"] and math.isfinite(cost[key]["mean_us"])

    text = markdown.read_text()
    assert text.strip() in done.stdout
    for heading in ("Stationary streams", "Stationary streams from real clips", "What a looped clip is",
                    "Shifts at thinned frame", "Audits", "Cost per frame", "Promises"):
        assert heading in text
    assert result["machine"]["cpu_model"] in text
    print(f"quick drift benchmark: {elapsed:.1f} s (calibration and scoring included)")
