"""The demo: its camera calibration set, its risk-coverage plot, and one small run of the whole orchestration."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from trustvlm.cli import build_parser
from trustvlm.data.fashion_mnist import CLASS_NAMES, load_split
from trustvlm.pipelines.captures import degrade
from trustvlm.pipelines.calibration_set import CALIBRATION_SEED_OFFSET, write_camera_calibration_set
from trustvlm.pipelines.report import load_scored_frames, plot_live_risk_coverage

from .conftest import REPO, require_fashion_mnist, require_vtest, trustvlm


def test_camera_calibration_set_is_the_calibration_split_through_the_camera(tmp_path):
    require_fashion_mnist()
    # When 3 shots per class and 50 held-out images are written through the blur camera
    result = write_camera_calibration_set(tmp_path / "set", "blur", 3, seed=0, held_out_limit=50)
    splits = json.loads(result.split_file.read_text())
    # Then "train" has 3 shots of each class, "val" 50 other images, nothing in "test"
    assert (result.shots, result.held_out) == (30, 50)
    assert sorted(label for _, label, _ in splits["train"]) == sorted(list(range(10)) * 3)
    assert len(splits["val"]) == 50 and splits["test"] == []
    assert not {r[0] for r in splits["train"]} & {r[0] for r in splits["val"]}
    # And class names are Fashion-MNIST's own, in label order (a folder name could not hold 'T-shirt/top')
    assert {(label, name) for _, label, name in splits["train"]} == set(enumerate(CLASS_NAMES))
    # And each PNG holds the calibration image through the camera, seeded by its position in the split
    calib = load_split("calib")
    position = {int(index): i for i, index in enumerate(calib.indices)}
    for relpath, label, _ in splits["train"][:5] + splits["val"][:5]:
        i = position[int(relpath.removesuffix(".png"))]
        assert calib.labels[i] == label
        stored = cv2.imread(str(result.image_root / relpath), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(stored, degrade(calib.images[i], "blur", CALIBRATION_SEED_OFFSET + i))


def test_calibration_set_refuses_an_unknown_camera(tmp_path):
    with pytest.raises(ValueError, match=r"unknown camera shift 'fog'; expected one of"):
        write_camera_calibration_set(tmp_path, "fog", 4)


def write_run(tmp_path, rows):
    """A decision log and a truth file from (seq, decision, label, truth, kappa, msp) rows."""
    log, truth = tmp_path / "decisions.jsonl", tmp_path / "truth.jsonl"
    with open(log, "w") as handle:
        handle.write(json.dumps({"event": "safe_exit", "reason": "first heartbeat"}) + "\n")
        for seq, decision, label, _, kappa, msp in rows:
            handle.write(json.dumps({"event": "decision", "camera_id": "cam", "seq": seq, "decision": decision,
                                     "label": label, "kappa": kappa, "msp": msp, "threshold": 0.5,
                                     "score_name": "trustvlm"}) + "\n")
    truth.write_text("".join(json.dumps({"camera_id": "cam", "seq": seq, "label": t}) + "\n"
                             for seq, _, _, t, _, _ in rows))
    return log, truth


def test_scored_frames_join_the_log_to_the_truth_and_plot(tmp_path):
    # Given 4 decisions: 2 accepted (1 right), 1 deferred right, 1 dropped (no label, no scores)
    log, truth = write_run(tmp_path, [(0, "accept", "bag", "bag", 0.9, 0.8), (1, "accept", "coat", "shirt", 0.6, 0.9),
                                      (2, "defer", "dress", "dress", 0.3, 0.4), (3, "defer", None, "bag", None, None)])
    frames = load_scored_frames(log, truth, "cam")
    # Then the 3 scored frames are kept, in log order
    np.testing.assert_array_equal(frames.correct, [True, False, True])
    np.testing.assert_array_equal(frames.accepted, [True, True, False])
    np.testing.assert_allclose(frames.kappa, [0.9, 0.6, 0.3])
    assert frames.threshold == 0.5 and frames.score_name == "trustvlm"
    # And the plot is a PNG image
    path = plot_live_risk_coverage(frames, tmp_path / "rc.png", "test", alpha=0.05)
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


def test_plot_needs_two_scored_frames(tmp_path):
    log, truth = write_run(tmp_path, [(0, "accept", "bag", "bag", 0.9, 0.8)])
    with pytest.raises(ValueError, match="needs at least 2 scored, labelled frames, but got 1"):
        plot_live_risk_coverage(load_scored_frames(log, truth), tmp_path / "rc.png", "test")
    with pytest.raises(FileNotFoundError, match="truth file .* does not exist"):
        load_scored_frames(log, tmp_path / "missing.jsonl")


@pytest.mark.parametrize("command", ["source", "controller", "demo", "demo-recalibrate"])
def test_pipeline_subcommands_explain_themselves(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: trustvlm {command}") and "examples:" in out


def test_demo_without_an_export_says_what_to_run_in_one_line(tmp_path):
    result = trustvlm("demo", "--artifacts", str(tmp_path), "--no-video")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (f"trustvlm demo: error: no export in {tmp_path} (manifest.json missing): run "
                                     "`trustvlm export --model demo_fmnist` (or `make demo`) first")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_runs_end_to_end_at_small_scale_and_every_process_exits_zero(tmp_path, demo_export):
    require_vtest()
    # When the demo runs two degraded cameras on 60 test images each (full calibration split), with the video
    # camera, then the same cameras against the shared (clean) bundle
    result = subprocess.run([sys.executable, "-m", "trustvlm", "demo", "--artifacts", str(demo_export),
                             "--out", str(tmp_path / "demo"), "--frames", "60", "--cameras", "low_light", "blur"],
                            capture_output=True, text=True, timeout=230, cwd=REPO)
    # Then it succeeds, every process exited 0, and the per-camera table, the summary and the plot are there
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for camera in ("fmnist_low_light", "fmnist_blur"):
        assert re.search(rf"  {camera} +60 \| +[\d.]+% +[\d.]+% +[\d.]+% \| +[\d.]+% +[\d.]+% +[\d.]+%", out), \
            out[-3000:]
        assert re.search(rf"  {camera}: shared bundle (breaks|gives away|keeps)", out), out[-3000:]
    assert "the map's default: the clean bundle" in out
    assert re.search(r"  fmnist_blur: own bundle accepts \w+ >= [-\d.]+; certifiable limit [\d.]+%, oracle coverage "
                     r"[\d.]+%", out), out[-3000:]
    processes = re.search(r"processes: (.*)", out).group(1)
    assert all(entry.endswith(" exit 0") for entry in processes.split(", ")), processes
    assert {"calibrate-low_light", "calibrate-blur", "calibrate-clean", "serve", "serve_shared", "source-vtest",
            "controller", "controller_shared"} <= {entry.rsplit(" exit", 1)[0] for entry in processes.split(", ")}
    written = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    summary = written["controller"]
    assert summary["cameras"]["fmnist_low_light"]["decisions"] == 60
    assert summary["cameras"]["fmnist_blur"]["decisions"] == 60
    assert summary["labelled"]["unanswered"] == {} and summary["duplicates"] == 0
    assert summary["labelled"]["frames"] == 120, summary["labelled"]
    counters = summary["service"]["counters"]
    assert counters["decisions_accept"] + counters["decisions_defer"] == summary["decisions"], counters
    # And each camera was decided by its own bundle in the first run, by the shared one in the second
    bundles = {}
    for name in ("decisions.jsonl", "decisions_shared.jsonl"):
        for line in (tmp_path / "demo" / name).read_text().splitlines():
            row = json.loads(line)
            if row.get("event") == "decision" and row["camera_id"].startswith("fmnist_"):
                bundles.setdefault((name, row["camera_id"]), set()).add(row["bundle_id"])
    own_low, own_blur = bundles[("decisions.jsonl", "fmnist_low_light")], bundles[("decisions.jsonl", "fmnist_blur")]
    shared = bundles[("decisions_shared.jsonl", "fmnist_low_light")] | bundles[("decisions_shared.jsonl",
                                                                                "fmnist_blur")]
    assert len(own_low) == len(own_blur) == len(shared) == 1 and len(own_low | own_blur | shared) == 3, bundles
    assert [row["frames"] for row in written["shared"]] == [60, 60]
    assert (tmp_path / "demo" / "risk_coverage.png").stat().st_size > 1000
    # And the low-light camera got darker halfway (its truth rows say which camera each frame went through), and
    # the summary says what the monitor did about it, measured from the decision log and the truth file
    truth = [json.loads(line) for line in (tmp_path / "demo" / "truth_low_light.jsonl").read_text().splitlines()]
    assert [row["shift"] for row in truth] == ["low_light"] * 30 + ["low_light:gain=0.25"] * 30
    assert ("camera fmnist_low_light gets darker halfway: from frame 30 on through low_light:gain=0.25 instead of "
            "low_light; guarantee monitor at the default alarm level, on one frame per 0.05 s of capture time") in out
    drift = written["drift"]
    assert (drift["drift_after"], drift["frames_after"], drift["before"]["frames"]) == (30, 30, 30), drift
    assert drift["alarm_before_drift"] is None
    unwatched, watched = drift["unwatched"], drift["watched"]
    assert f"had nobody watched: the robot would have acted on {unwatched['acted']} of 30 frames" in out
    assert unwatched["acted"] >= watched["acted"] and unwatched["frames"] == watched["frames"] == 30
    if drift["alarm_seq"] is None:  # 30 darker frames are few for the default level: nothing deferred for it
        assert f"no ALARM within the 30 frames after the drift (thinned frames: {drift['thinned_after']};" in out
        assert drift["guarantee_lost"] == 0 and unwatched == watched
    else:
        assert f"ALARM {drift['frames_to_alarm']} frames into the drift" in out and drift["guarantee_lost"] > 0
    assert re.search(r"^shared bundle run \(its monitor only reports, --on-drift warn\): fmnist_low_light "
                     r"(no ALARM|ALARM on frame \d+), fmnist_blur (no ALARM|ALARM on frame \d+)$", out, flags=re.M)
    assert "next: `make demo-recalibrate`" in out
