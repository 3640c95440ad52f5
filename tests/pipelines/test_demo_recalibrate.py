"""The recalibration demo at small scale: drift -> ALARM -> record -> label -> calibrate -> swap -> OK."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest

from .conftest import REPO, trustvlm


def test_recalibration_demo_refuses_counts_beyond_the_test_split_in_one_line(tmp_path, demo_export):
    result = trustvlm("demo-recalibrate", "--artifacts", str(demo_export), "--out", str(tmp_path), "--before", "5000",
                      "--dark", "5000", "--after", "1")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == ("trustvlm demo-recalibrate: error: frames before the drift, darker and after the "
                                     "swap should each be >= 1 and together at most the 10000 test images, but got "
                                     "5000 + 5000 + 1")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_recalibration_loop_runs_end_to_end_at_small_scale(tmp_path, demo_export):
    # Given a small run: 20 frames as calibrated, 400 darker (gain 0.25, the streaming demo's: an ALARM sooner than
    # at the default 0.3), 60 other darker ones after the swap; 4 shots, a
    # threshold at alpha 0.5 (feasible on a few hundred darker frames), the monitor on every frame and, as a few
    # hundred frames do not reliably reach the service's default level (a week of frames), alarm level 10,000
    out = tmp_path / "recal"
    result = subprocess.run([sys.executable, "-m", "trustvlm", "demo-recalibrate", "--artifacts", str(demo_export),
                             "--out", str(out), "--drift", "low_light:gain=0.25", "--before", "20", "--dark", "400",
                             "--after", "60", "--shots", "4", "--held-out", "400", "--lam", "1", "--alpha", "0.5",
                             "--monitor-interval", "0", "--alarm-level", "10000"],
                            capture_output=True, text=True, timeout=140, cwd=REPO)
    # Then it succeeds through its seven steps and every process exited 0
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-3000:]
    text = result.stdout
    assert [int(n) for n in re.findall(r"^\[(\d)/7\]", text, flags=re.M)] == list(range(1, 8)), text[-3000:]
    processes = re.search(r"^processes: (.*)", text, flags=re.M).group(1)
    assert all(entry.endswith(" exit 0") for entry in processes.split(", ")), processes
    summary = json.loads((out / "recalibrate_summary.json").read_text())
    drift, labelled, swap, after = summary["drift"], summary["labelled"], summary["swap"], summary["after"]
    # And the old bundle's monitor raised ALARM on a darker frame (none before the drift), and counted the same
    # thinned frames as the service's own log line; from then on every frame was deferred guarantee_lost
    alarm = drift["alarm_seq"]
    assert alarm is not None and alarm >= 20 and drift["alarm_before_drift"] is None, drift
    assert drift["frames_to_alarm"] == alarm - 20 + 1
    logged = re.search(r"-> ALARM after (\d+) thinned frames", (out / "logs" / "serve.stderr").read_text())
    assert logged and int(logged.group(1)) == drift["thinned_at_alarm"] == alarm + 1
    assert 0 < drift["guarantee_lost"] <= 420 - alarm  # a frame the gate defers keeps its own reason
    assert drift["unwatched"]["acted"] >= drift["watched"]["acted"] == drift["watched_before_alarm"]["acted"]
    # And the service recorded every frame; the frames recorded in ALARM were labelled from the truth file
    assert summary["record"]["written"] == 420 and summary["record"]["dropped_queue_full"] == 0
    assert (labelled["kept"], labelled["unlabelled"], labelled["first_seq"], labelled["last_seq"]) == (
        420 - alarm, 0, alarm, 419)
    truth = {row["seq"]: row["label"] for row in map(json.loads, (out / "truth_before.jsonl").open())}
    with open(out / "labelled" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    seqs = [int(re.fullmatch(r"images/fmnist_low_light_(\d+)_\d+\.png", row["path"]).group(1)) for row in rows]
    assert sorted(seqs) == list(range(alarm, 420))
    assert all(row["label"] == truth[seq] for row, seq in zip(rows, seqs))
    assert all((out / "labelled" / row["path"]).is_file() for row in rows)
    # And the new bundle was calibrated on them and swapped in: the map names it, the service took it
    assert summary["second_bundle"][0].startswith(f"wrote {out / 'bundle_low_light_recalibrated'}: ")
    assert '"fmnist_low_light" = "bundle_low_light_recalibrated"' in (out / "cameras.toml").read_text()
    assert swap["new_bundle_id"] != swap["old_bundle_id"] and swap["line"].startswith("fmnist_low_light: now ")
    # And after the swap every frame was scored by the new bundle, whose monitor started at OK and raised no ALARM
    assert (after["frames"], after["labelled"], after["other_bundle"]) == (60, 60, 0)
    assert after["first_monitor"] == "ok" and after["alarm_seq"] is None and after["guarantee_lost"] == 0
    assert summary["guarantees_after"]["fmnist_low_light"]["monitor"] in ("ok", "watch")
    # And the summary's numbers are the ones measured
    coverage = f"{100 * after['acted'] / 60:.1f}%"
    assert (f"after the swap, 60 other darker test images (420-479, none recorded or calibrated on): the robot acted "
            f"on {after['acted']} of 60 frames ({coverage})") in text
    assert f"ALARM {alarm - 19} frames into the drift ({alarm - 19} thinned frames; frame {alarm}" in text
    assert "in the field a person must check every label" in text
