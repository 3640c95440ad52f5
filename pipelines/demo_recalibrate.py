"""The recalibration demo: a camera drifts, the service notices, the camera is recalibrated and back to OK.

    trustvlm demo-recalibrate --artifacts artifacts/demo_fmnist      # `make demo-recalibrate` runs this

Steps (each a real ``trustvlm`` process, exit codes checked; every wait ends on an event: a line, an exit, a
heartbeat):

1. Calibrate the low-light camera as ``trustvlm demo`` does (the Fashion-MNIST calibration split through it).
2. A camera map with the camera's own entry; ``trustvlm serve --bundles`` (map watch on, guarantee monitor on every
   frame by default: the replay's frames are independent test images, and the thinning the service does by default
   is for video, whose consecutive frames are alike; ``--record`` of that camera only, every frame, all along).
3. Replay test images ``[0, before + dark)`` with labels: ``before`` as calibrated, then ``dark`` through the
   darker camera (``source --drift``, by default gain 0.3: darker than that, e.g. the streaming demo's 0.25, and
   this model's darker frames cannot certify 5% risk at all, so the new bundle would defer everything). The
   monitor should raise ALARM and the service defer the camera's frames ``guarantee_lost``; the run stops with
   an error if it does not.
4. Once the heartbeat says the recorder has written every frame: keep the frames recorded while the monitor said
   ``alarm`` (the frames the service itself flagged) and label them from the replay's ground truth. The demo
   stands in for a person here: in the field, a person must check every label.
5. ``trustvlm calibrate`` on those darker frames only (the old calibration frames no longer describe the camera).
6. ``trustvlm bundles swap``: the camera's map entry points to the new bundle; the running service reloads the map
   (the wait ends on the heartbeat that shows the camera's new bundle) and the camera's monitor starts afresh.
7. Replay OTHER darker test images, ``[before + dark, before + dark + after)`` (none of them recorded or
   calibrated on), and report coverage and risk after the swap against alpha, next to what the old bundle did
   with darker frames, and the time to ALARM before.

Everything lands in ``<artifacts>/demo_recalibrate/`` (bundles, camera map and its swap history, recording,
labelled frames, truth files, decision logs, ``recalibrate_summary.json``, each process's stderr under ``logs/``).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from trustvlm.calibration.shifts import parse_shift
from trustvlm.contract.camera_map import CameraMap, write_camera_map
from trustvlm.data.fashion_mnist import DatasetMissingError
from trustvlm.pipelines.bundle_swap import history_path
from trustvlm.pipelines.calibration_set import write_camera_calibration_set
from trustvlm.pipelines.demo_config import DATASET_CAMERA, TEST_FRAMES, DemoError
from trustvlm.pipelines.drift_report import drift_outcome, load_camera_frames, thinning_words
from trustvlm.pipelines.processes import ChildProcess
from trustvlm.pipelines.recalibrate_steps import Heartbeats, bundle_changed, label_recorded_frames, recorder_done
from trustvlm.pipelines.recalibrate_summary import format_recalibrate_summary, phase_after
from trustvlm.pipelines.serve_process import ServeProcess

__all__ = ["RECALIBRATE_DRIFT", "RecalibrateConfig", "run_recalibrate_demo"]

STEPS = 7
#: What the camera drifts to: a darker low-light camera whose frames, once labelled, still certify some coverage.
RECALIBRATE_DRIFT = "low_light:gain=0.3"


@dataclass(frozen=True)
class RecalibrateConfig:
    """What the recalibration demo runs.

    Attributes:
        artifacts: Export folder of the model.
        out: Folder for everything the demo writes.
        shift: The camera as calibrated (a name of calibration.shifts.SHIFTS).
        drift: What it drifts to (``name:key=value,...``).
        before: Test images sent as calibrated, before the drift.
        dark: Darker test images sent next: the ALARM comes among them, and the ones after it are recorded.
        after: Other darker test images sent after the swap.
        shots: Labelled shots per class for the image prototypes (both bundles).
        held_out: Held-out calibration images of the first bundle (None: the whole calibration split).
        seed: Seed of the shot draws.
        alpha: Target risk among accepted frames.
        delta: Allowed probability that the risk exceeds alpha.
        lam: Weight of the image-prototype term: "auto" or a number.
        threshold_method: How calibrate chooses the accept threshold.
        monitor_interval_s: The monitor takes one frame per this much capture time (``serve --monitor-interval``).
        alarm_level: The monitor's alarm level (None: the service's default); WATCH at the default or at it,
            whichever is lower.
        heartbeat_ms: The service's heartbeat period.
        threads: ONNX Runtime threads of the service.
        step_timeout_s: Longest any one step may take.
    """

    artifacts: Path
    out: Path
    shift: str = "low_light"
    drift: str = RECALIBRATE_DRIFT
    before: int = 300
    dark: int = 7700
    after: int = 2000
    shots: int = 16
    held_out: int | None = None
    seed: int = 0
    alpha: float = 0.05
    delta: float = 0.1
    lam: str = "auto"
    threshold_method: str = "ltt"
    monitor_interval_s: float = 0.0
    alarm_level: float | None = None
    heartbeat_ms: int = 200
    threads: int = 1
    step_timeout_s: float = 900.0

    @property
    def camera(self) -> str:
        """The camera id on the wire."""
        return DATASET_CAMERA.format(shift=self.shift)

    def check(self) -> None:
        """Raises: DemoError: Missing inputs or counts that do not fit the test split (one line)."""
        if not (self.artifacts / "manifest.json").exists():
            raise DemoError(f"no export in {self.artifacts} (manifest.json missing): run "
                            "`trustvlm export --model demo_fmnist` (or `make demo`) first")
        for name, value in (("shift", self.shift), ("drift", self.drift)):
            try:
                parse_shift(value)
            except ValueError as error:
                raise DemoError(f"the demo's {name}: {error}") from None
        if min(self.before, self.dark, self.after) < 1 or self.before + self.dark + self.after > TEST_FRAMES:
            raise DemoError(f"frames before the drift, darker and after the swap should each be >= 1 and together at "
                            f"most the {TEST_FRAMES} test images, but got {self.before} + {self.dark} + {self.after}")


def _calibrate(config: RecalibrateConfig, name: str, data: list[str], logs: Path) -> tuple[Path, list[str]]:
    """``trustvlm calibrate`` on `data` into ``out/bundle_<name>``: the bundle folder, and calibrate's 'wrote' line
    and 'what this data can certify' line (if it printed one)."""
    bundle = config.out / f"bundle_{name}"
    calibrate = ChildProcess(f"calibrate-{name}", [
        "calibrate", "--artifacts", str(config.artifacts), *data, "--out", str(bundle), "--k", str(config.shots),
        "--seed", str(config.seed), "--alpha", str(config.alpha), "--delta", str(config.delta), "--lam",
        str(config.lam), "--threshold-method", config.threshold_method], logs)
    calibrate.expect_success(calibrate.wait(config.step_timeout_s))
    return bundle, [line for line in calibrate.lines if line.startswith(("wrote ", "what this data can certify"))]


def _replay(config: RecalibrateConfig, serve: ServeProcess, tag: str, start: int, frames: int, args: list[str],
            logs: Path, children: dict) -> tuple[Path, Path, dict]:
    """A controller following the camera and a labelled replay of test images ``[start, start + frames)``; both end
    on their own (the controller after `frames` decisions). Returns the decision log, the truth file and the
    controller's summary."""
    log, truth, summary = (config.out / f"{kind}_{tag}.{ext}" for kind, ext in (
        ("decisions", "jsonl"), ("truth", "jsonl"), ("controller_summary", "json")))
    controller = children[f"controller-{tag}"] = ChildProcess(f"controller-{tag}", [
        "controller", "--connect", serve.publish, "--camera", config.camera, "--log", str(log), "--summary",
        str(summary), "--truth", str(truth), "--print", "events", "--max-decisions", str(frames),
        "--heartbeat-timeout-ms", str(5 * config.heartbeat_ms)], logs)
    controller.wait_for_line(r"^OK: first heartbeat", 60)
    source = children[f"source-{tag}"] = ChildProcess(f"source-{tag}", [
        "source", "--dataset", "fashion-mnist", "--split", "test", "--start", str(start), "--limit", str(frames),
        *args, "--encoding", "raw", "--camera-id", config.camera, "--connect", serve.ingest, "--max-in-flight", "1",
        "--decisions", serve.publish, "--truth", str(truth)], logs)
    for child in (source, controller):
        child.expect_success(child.wait(config.step_timeout_s))
    return log, truth, json.loads(summary.read_text())


def _serve_config(config: RecalibrateConfig) -> Path:
    """The serve config file: a recorder queue that holds a replay's burst, and the alarm level if one is set."""
    monitor = {} if config.alarm_level is None else {"alarm_level": config.alarm_level,
                                                     "watch_level": min(86_400.0, config.alarm_level)}
    path = config.out / "serve_config.json"
    path.write_text(json.dumps({"record": {"queue_size": 1024}, "monitor": monitor}, indent=2) + "\n")
    return path


def run_recalibrate_demo(config: RecalibrateConfig) -> dict:
    """Run the demo of the module docstring; return what ``recalibrate_summary.json`` holds.

    Raises:
        DemoError: Missing inputs, or a step whose outcome stops the story (no ALARM, no frames recorded in ALARM,
            a service that did not take the new bundle).
        trustvlm.pipelines.processes.ProcessError: A step that failed (the message names it and quotes its stderr).
    """
    config.check()
    started, logs, camera = time.monotonic(), config.out / "logs", config.camera
    logs.mkdir(parents=True, exist_ok=True)
    print(f"[1/{STEPS}] calibrate camera {camera}: the Fashion-MNIST calibration split through the {config.shift} "
          "camera", flush=True)
    try:
        calibration = write_camera_calibration_set(config.out / f"calibration_{config.shift}", config.shift,
                                                   config.shots, config.seed, config.held_out)
    except DatasetMissingError as error:
        raise DemoError(str(error)) from error
    bundle, wrote = _calibrate(config, config.shift, ["--data", str(calibration.split_file), "--image-root",
                                                      str(calibration.image_root)], logs)
    print(f"      {wrote[0]}", flush=True)
    camera_map = write_camera_map(config.out / "cameras.toml", CameraMap({camera: bundle}))
    history_path(camera_map).unlink(missing_ok=True)  # an earlier run's swaps
    record = config.out / "recording"
    shutil.rmtree(record, ignore_errors=True)  # the recorder appends: an earlier run's frames would be labelled too
    print(f"[2/{STEPS}] trustvlm serve --bundles {camera_map} (map watch on; guarantee monitor on "
          f"{thinning_words(config.monitor_interval_s)}; --record {record}, camera {camera}, every frame)", flush=True)
    children: dict[str, ChildProcess] = {}
    with zmq.Context() as context, ServeProcess(config.artifacts, camera_map, logs, (
            "--config", str(_serve_config(config)), "--heartbeat-ms", str(config.heartbeat_ms), "--threads",
            str(config.threads), "--monitor-interval", str(config.monitor_interval_s), "--record", str(record),
            "--record-cameras", camera, "--record-interval", "0"), echo=True) as serve, \
            Heartbeats(serve.publish, context) as heartbeats:
        try:
            result = _run_service_steps(config, serve, heartbeats, bundle, camera_map, record, logs, children)
            status = serve.stop()
            serve.child.expect_success(status)
        finally:
            for child in children.values():
                child.kill()
    result["processes"] = {**{f"calibrate-{config.shift}": 0}, **result["processes"], "serve": status}
    result.update(first_bundle=wrote, seconds=time.monotonic() - started,
                  config={k: str(v) for k, v in vars(config).items()})
    print("\n".join(format_recalibrate_summary(config, result)), flush=True)
    result["drift"] = result["drift"].to_dict()
    (config.out / "recalibrate_summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _run_service_steps(config: RecalibrateConfig, serve: ServeProcess, heartbeats: Heartbeats, bundle: Path,
                       camera_map: Path, record: Path, logs: Path, children: dict) -> dict:
    """Steps 3 to 7 against the running service; what the summary reports."""
    camera, sent = config.camera, config.before + config.dark
    print(f"[3/{STEPS}] replay test images 0-{sent - 1} with labels: {config.before} through the {config.shift} "
          f"camera, then {config.dark} darker ({config.drift})", flush=True)
    log, truth, _ = _replay(config, serve, "before", 0, sent, [
        "--shift", config.shift, "--drift", config.drift, "--drift-after", str(config.before)], logs, children)
    drift = drift_outcome(log, truth, camera, config.before, config.monitor_interval_s)
    if drift.alarm_seq is None:
        raise DemoError(f"the monitor raised no ALARM within {config.dark} darker frames ({drift.thinned_after} "
                        "thinned): give more darker frames (--dark) or a lower --alarm-level")
    old_id = load_camera_frames(log, truth, camera)[0].bundle_id
    counts = heartbeats.wait(recorder_done(sent), f"the recorder wrote all {sent} frames", 60)
    print(f"[4/{STEPS}] label the frames recorded from the ALARM on (frame {drift.alarm_seq}) from the replay's "
          "ground truth: the demo stands in for a person here, and in the field a person must check every label",
          flush=True)
    labelled = label_recorded_frames(record / camera, camera, truth, config.out / "labelled")
    if labelled.kept - labelled.unlabelled < 2 * config.shots * 10:
        raise DemoError(f"only {labelled.kept - labelled.unlabelled} frames were recorded in ALARM: too few to "
                        f"calibrate with {config.shots} shots per class; give more darker frames (--dark)")
    print(f"[5/{STEPS}] trustvlm calibrate on the {labelled.kept - labelled.unlabelled} darker frames only",
          flush=True)
    new_bundle, wrote = _calibrate(config, f"{config.shift}_recalibrated", ["--data", str(labelled.labels)], logs)
    print(f"      {wrote[0]}", flush=True)
    print(f"[6/{STEPS}] trustvlm bundles swap --camera {camera}: the running service reloads the map", flush=True)
    swap = children["bundles-swap"] = ChildProcess("bundles-swap", [
        "bundles", "swap", "--map", str(camera_map), "--camera", camera, "--bundle", str(new_bundle), "--artifacts",
        str(config.artifacts)], logs)
    swap.expect_success(swap.wait(config.step_timeout_s))
    waited = time.monotonic()
    new_id = heartbeats.wait(bundle_changed(camera, old_id), f"camera {camera} is scored by a new bundle", 60)
    took = time.monotonic() - waited
    print(f"      {camera}: bundle {old_id} -> {new_id}, in service {took:.1f} s after the swap", flush=True)
    start = sent
    print(f"[7/{STEPS}] replay other darker test images, {start}-{start + config.after - 1} (none recorded or "
          "calibrated on)", flush=True)
    log_after, truth_after, summary_after = _replay(config, serve, "after", start, config.after,
                                                    ["--shift", config.drift], logs, children)
    rows = load_camera_frames(log_after, truth_after, camera)
    return {"drift": drift, "record": counts, "labelled": {**vars(labelled), "labels": str(labelled.labels)},
            "second_bundle": wrote, "swap": {"line": swap.lines[0] if swap.lines else "", "old_bundle_id": old_id,
                                             "new_bundle_id": new_id, "seconds": took},
            "after": phase_after(rows, new_id), "guarantees_after": summary_after.get("guarantees", {}),
            "processes": {name: child.process.returncode for name, child in children.items()}}

