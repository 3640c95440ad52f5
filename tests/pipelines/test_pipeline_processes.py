"""The pipeline as real processes on loopback sockets: serve + source + controller, heartbeat loss, bad input."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest

from trustvlm.pipelines.controller import REASON_HEARTBEAT_MISSING, REASON_SERVICE_STOPPED
from trustvlm.pipelines.processes import ChildProcess
from trustvlm.pipelines.serve_process import ServeProcess

from .conftest import SHIFT, VTEST, require_vtest, trustvlm

pytestmark = pytest.mark.timeout(120)

LABELLED_FRAMES, VIDEO_FRAMES, AFTER_RESTART_FRAMES = 200, 20, 30


def start_serve(demo_export, camera_bundle, log_dir, name: str, publish: str = "tcp://127.0.0.1:*"):
    serve = ServeProcess(demo_export, camera_bundle, log_dir,
                         ("--heartbeat-ms", "100", "--threads", "1", "--no-watch", "--staleness-ms", "0"),
                         publish=publish, name=name, start_timeout_s=90).start()
    return serve, serve.ingest, serve.publish


def wait_for_decisions(controller: ChildProcess, count: int, timeout_s: float = 30.0) -> int:
    """Wait until a progress line reports at least `count` decisions; return the last count seen."""
    deadline, seen = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        counts = [int(m.group(1)) for line in list(controller.lines)
                  if (m := re.match(r"progress: (\d+) decisions", line))]
        seen = counts[-1] if counts else -1
        if seen >= count:
            return seen
        time.sleep(0.1)
    return seen


def test_every_frame_gets_one_decision_and_a_killed_service_puts_the_controller_in_safe_state(
        tmp_path, demo_export, camera_bundle):
    require_vtest()
    truth, log, summary_path = tmp_path / "truth.jsonl", tmp_path / "decisions.jsonl", tmp_path / "summary.json"
    children = []
    try:
        # Given a service and a controller following it, with the ground truth of the labelled camera
        serve, ingest, publish = start_serve(demo_export, camera_bundle, tmp_path, "serve")
        children.append(serve)
        controller = ChildProcess("controller", [
            "controller", "--connect", publish, "--truth", str(truth), "--log", str(log), "--summary",
            str(summary_path), "--print", "events", "--progress-s", "0.2", "--heartbeat-timeout-ms", "600",
            "--exit-on-stop"], tmp_path, echo=False)
        children.append(controller)
        controller.wait_for_line(r"^OK: first heartbeat", 30)

        # When a labelled low-light replay and a real video clip are streamed to it
        labelled = trustvlm("source", "--dataset", "fashion-mnist", "--shift", SHIFT, "--encoding", "raw",
                            "--camera-id", "fmnist", "--connect", ingest, "--max-in-flight", "1", "--decisions",
                            publish, "--truth", str(truth), "--limit", str(LABELLED_FRAMES),
                            "--summary", str(tmp_path / "fmnist.json"))
        video = trustvlm("source", "--video", str(VTEST), "--fps", "20", "--encoding", "jpeg", "--camera-id",
                         "street", "--connect", ingest, "--limit", str(VIDEO_FRAMES),
                         "--summary", str(tmp_path / "street.json"))
        assert labelled.returncode == 0, f"labelled source failed:\n{labelled.stderr}"
        assert video.returncode == 0, f"video source failed:\n{video.stderr}"
        sent = {name: json.loads((tmp_path / f"{name}.json").read_text())["frames_sent"]
                for name in ("fmnist", "street")}
        assert sent == {"fmnist": LABELLED_FRAMES, "street": VIDEO_FRAMES}, f"sources sent {sent}"
        total = LABELLED_FRAMES + VIDEO_FRAMES
        assert wait_for_decisions(controller, total) == total, f"controller lines: {controller.lines[-3:]}"

        # When the service is killed without a goodbye
        serve.kill()
        # Then the controller says it entered SAFE because the heartbeat went missing
        safe = controller.wait_for_line(r"^SAFE: no heartbeat for (\d+) ms \(timeout 600 ms\)", 15)
        assert int(safe.group(1)) >= 600, safe.group(0)

        # When a service comes back on the same publish address and takes frames of another camera
        serve2, ingest2, publish2 = start_serve(demo_export, camera_bundle, tmp_path, "serve2", publish)
        children.append(serve2)
        assert publish2 == publish
        controller.wait_for_line(r"^OK: heartbeat back", 30)
        after = trustvlm("source", "--dataset", "fashion-mnist", "--start", "5000", "--encoding", "png",
                         "--camera-id", "after", "--connect", ingest2, "--max-in-flight", "1", "--decisions",
                         publish, "--limit", str(AFTER_RESTART_FRAMES))
        assert after.returncode == 0, f"source after the restart failed:\n{after.stderr}"
        assert wait_for_decisions(controller, total + AFTER_RESTART_FRAMES) == total + AFTER_RESTART_FRAMES

        # And the second service stops gracefully: the controller ends on its 'stopped' heartbeat
        assert serve2.stop() == 0, serve2.stderr_tail()
        assert controller.wait(20) == 0, controller.stderr_tail()
    finally:
        for child in children:
            child.kill()

    summary = json.loads(summary_path.read_text())
    # Then every frame sent got exactly one decision, and the controller's counts match the sources' and service's
    logged = Counter((r["camera_id"], r["seq"]) for r in map(json.loads, log.read_text().splitlines())
                     if r["event"] == "decision")
    expected = ({("fmnist", s) for s in range(LABELLED_FRAMES)} | {("street", s) for s in range(VIDEO_FRAMES)}
                | {("after", s) for s in range(AFTER_RESTART_FRAMES)})
    assert set(logged) == expected, (f"missing {sorted(expected - set(logged))[:5]}, "
                                     f"extra {sorted(set(logged) - expected)[:5]}")
    assert max(logged.values()) == 1, f"duplicated decisions: {[k for k, n in logged.items() if n > 1][:5]}"
    cameras = summary["cameras"]
    assert {c: cameras[c]["decisions"] for c in cameras} == {"fmnist": LABELLED_FRAMES, "street": VIDEO_FRAMES,
                                                             "after": AFTER_RESTART_FRAMES}
    assert summary["decisions"] == summary["accepted"] + summary["deferred"] == total + AFTER_RESTART_FRAMES
    assert summary["duplicates"] == 0
    counters = summary["service"]["counters"]
    assert counters["decisions_accept"] + counters["decisions_defer"] == AFTER_RESTART_FRAMES, counters
    # And the labelled frames were scored against their truth rows, some accepted and some deferred
    labelled_summary = summary["labelled"]
    assert labelled_summary["truth_rows"] == labelled_summary["frames"] == LABELLED_FRAMES
    assert labelled_summary["scored"] == LABELLED_FRAMES, "the decision window let a labelled frame be superseded"
    assert labelled_summary["unanswered"] == {}
    assert 0 < labelled_summary["accepted"] < LABELLED_FRAMES, labelled_summary
    assert labelled_summary["accuracy_accepted"] >= labelled_summary["accuracy_all"], labelled_summary
    # And the SAFE episodes were counted: the kill, the final stop, and any other silence the controller measured
    # over its timeout (a heartbeat late on a busy machine is one, correctly)
    records = [r for r in map(json.loads, log.read_text().splitlines()) if r["event"] != "decision"]
    events = [r["event"] for r in records]
    episodes = len(events) // 2
    assert events == ["safe_exit", "safe_enter"] * episodes and episodes >= 2, events
    enters = [r for r in records if r["event"] == "safe_enter"]
    assert enters[-1]["reason"] == REASON_SERVICE_STOPPED, enters[-1]
    assert all(r["reason"] == REASON_HEARTBEAT_MISSING and r["silent_ms"] >= 600 for r in enters[:-1]), enters
    assert summary["safe"]["entries"] == episodes and summary["ended_by"] == "service_stopped", summary["safe"]


@pytest.mark.parametrize(("args", "message"), [
    (["--video", "/nonexistent/clip.avi"], r"video file /nonexistent/clip.avi does not exist"),
    (["--camera", "47"], r"cannot open camera index 47: OpenCV found no such device"),
    (["--rtsp", "rtsp://127.0.0.1:9/stream"], r"cannot open stream rtsp://127.0.0.1:9/stream: unreachable"),
    (["--images", "/nonexistent/frames"], r"image folder /nonexistent/frames does not exist"),
    (["--dataset", "fashion-mnist", "--start", "10000"], r"start index should be in \[0, 10000\)"),
    (["--video", str(VTEST), "--truth", "truth.jsonl"], r"--truth needs a labelled source"),
    (["--dataset", "fashion-mnist", "--max-in-flight", "1"], r"--max-in-flight 1 needs .* --decisions"),
])
def test_bad_source_input_is_one_line_and_a_non_zero_exit(args, message):
    # Given a source whose input cannot work
    result = trustvlm("source", *args, "--connect", "tcp://127.0.0.1:1")
    # Then it exits 1 with one line naming the problem, no traceback and no OpenCV log noise
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert lines[0].startswith("trustvlm source: error: "), lines[0]
    assert re.search(message, lines[0]), lines[0]


def test_source_without_a_runtime_gives_up_with_one_line():
    # Given no service behind the ingest address, a send HWM of 1 and short send timeouts
    result = trustvlm("source", "--dataset", "fashion-mnist", "--connect", "tcp://127.0.0.1:9",
                      "--send-hwm", "1", "--send-timeout-ms", "100", "--max-send-failures", "2")
    # Then the source stops after 2 timed-out sends and says what to check
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.search(r"took no frame for 2 sends in a row \(100 ms each\): is trustvlm serve running", last), last


def test_paced_source_without_a_runtime_waits_for_a_heartbeat_then_gives_up():
    result = trustvlm("source", "--dataset", "fashion-mnist", "--connect", "tcp://127.0.0.1:9", "--max-in-flight",
                      "1", "--decisions", "tcp://127.0.0.1:9", "--ready-timeout-s", "0.5")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "trustvlm source: error: no heartbeat from tcp://127.0.0.1:9 within 0.5 s: is trustvlm serve publishing there?")
