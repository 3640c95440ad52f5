"""The end-to-end streaming demo: each camera calibrated on its own frames, one service; real processes, real sockets.

    trustvlm demo --artifacts artifacts/demo_fmnist      # `make demo` runs this

Steps (each a real ``trustvlm`` process, exit codes checked):

1. Build each camera's calibration set: the Fashion-MNIST calibration split (never trained on, never the test
   split) through that degraded camera (``--cameras``, default ``low_light blur jpeg``; :func:`captures.degrade`,
   the very function the source applies to each frame), saved as PNGs with a CoOp split file: ``k`` shots per
   class (seeded) for the image prototypes in "train", the rest in "val" for lambda and the guaranteed-risk
   threshold. The same for the shared bundle's camera (``--shared``, default ``clean``: undegraded frames).
2. ``trustvlm calibrate`` on each set -> one bundle per camera, and the shared one.
3. A camera map (``cameras.toml``): each labelled camera -> its own bundle, ``default`` -> the shared bundle
   (the street-scene camera, which nothing was calibrated for, falls there). ``trustvlm serve --bundles`` on
   random loopback ports; ``trustvlm controller`` with every camera's ground truth.
4. The cameras: the Fashion-MNIST test images replayed through each degraded camera with labels (raw frames,
   at most one frame without a decision per camera, so none is superseded), and a real video clip (OpenCV's
   ``vtest.avi``, a street scene) through the video capture path at its own frame rate, looping until the
   labelled replays end. Halfway through its replay the low-light camera gets darker (``--drift``,
   :attr:`DemoConfig.drift`); the service's guarantee monitor (one frame per ``monitor_interval_s`` of capture
   time, default alarm level) should raise ALARM and defer that camera's frames ``guarantee_lost``. Then the
   service stops (SIGTERM: in-flight frames are answered, a final ``stopped`` heartbeat is published) and the
   controller ends on that heartbeat.
5. The same labelled replays through a second service that scores every camera against the shared bundle
   (``--bundle``): what one bundle for the whole robot would have done with the same frames. Its monitor only
   reports (``--on-drift warn``), so the table shows the shared bundle's own decisions.
6. Print the per-camera table (own bundle against shared bundle: coverage, accuracy on accepted frames, risk
   against alpha), the drift's lines (:mod:`.drift_report`: frames to ALARM, frames deferred, the risk among the
   frames the robot would have acted on after the drift had nobody watched) and write a risk-coverage plot of
   the first camera from the logged decisions.

Everything lands in ``<artifacts>/demo_stream/`` (calibration sets, bundles, camera map, truth, decision logs,
summaries, plot, each process's stderr under ``logs/``). Children that are still running when the demo fails or
is interrupted are killed, so no process outlives it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from trustvlm.calibration.shifts import SHIFTS, parse_shift
from trustvlm.contract.camera_map import CameraMap, write_camera_map
from trustvlm.data.fashion_mnist import DatasetMissingError
from trustvlm.pipelines.calibration_set import CalibrationSet, write_camera_calibration_set
from trustvlm.pipelines.demo_config import CLEAN, VIDEO_CAMERA, VTEST, DemoConfig, DemoError
from trustvlm.pipelines.demo_summary import camera_rows, format_demo_summary, plot_demo_risk_coverage
from trustvlm.pipelines.drift_report import drift_outcome, first_alarms, format_drift_lines, thinning_words
from trustvlm.pipelines.processes import ChildProcess
from trustvlm.pipelines.serve_process import ServeProcess

__all__ = ["VTEST", "DemoConfig", "DemoError", "run_demo"]


def _check_inputs(config: DemoConfig) -> None:
    if not (config.artifacts / "manifest.json").exists():
        raise DemoError(f"no export in {config.artifacts} (manifest.json missing): run "
                        "`trustvlm export --model demo_fmnist` (or `make demo`) first")
    if not config.cameras or len(set(config.cameras)) != len(config.cameras) or any(
            shift not in SHIFTS for shift in config.cameras) or config.shared not in (None, CLEAN, *SHIFTS):
        raise DemoError(f"the demo's cameras should be distinct names of {list(SHIFTS)} and the shared one one of "
                        f"{[CLEAN, *SHIFTS]}, but got {list(config.cameras)} and {config.shared}")
    if config.drift is not None:
        try:
            parse_shift(config.drift)
        except ValueError as error:
            raise DemoError(f"the demo's drift: {error}") from None
    if config.video is not None and not config.video.is_file():
        raise DemoError(f"video {config.video} is missing: apt-get install opencv-doc (or `make system-packages`), "
                        "or pass --no-video")


def _calibrate(config: DemoConfig, shift: str, logs: Path) -> tuple[CalibrationSet | None, Path, str]:
    """Steps 1 and 2 for one camera: its calibration set and its bundle; the 'wrote ...' line of calibrate.

    The ``clean`` camera is the calibration split itself (``calibrate --data fashion-mnist``: no set to write).
    """
    calibration, data = None, ["--data", "fashion-mnist"]
    if shift != CLEAN:
        try:
            calibration = write_camera_calibration_set(config.out / f"calibration_{shift}", shift, config.shots,
                                                       config.seed)
        except DatasetMissingError as error:
            raise DemoError(str(error)) from error
        data = ["--data", str(calibration.split_file), "--image-root", str(calibration.image_root)]
    bundle = config.out / f"bundle_{shift}"
    calibrate = ChildProcess(f"calibrate-{shift}", [
        "calibrate", "--artifacts", str(config.artifacts), *data, "--out", str(bundle), "--k", str(config.shots),
        "--seed", str(config.seed),
        "--alpha", str(config.alpha), "--delta", str(config.delta), "--lam", str(config.lam),
        "--threshold-method", config.threshold_method], logs)
    calibrate.expect_success(calibrate.wait(config.step_timeout_s))
    return calibration, bundle, calibrate.wait_for_line(r"^wrote (.*)", 5).group(0)


def _drift_args(config: DemoConfig, shift: str) -> list[str]:
    """The source flags that make the `shift` camera drift halfway (none for the others)."""
    return ["--drift", config.drift, "--drift-after", str(config.drift_after)] if shift == config.drift_camera else []


def _stream(config: DemoConfig, served: Path, tag: str, with_video: bool, logs: Path,
            serve_args: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """One service (`served`: a bundle folder or a camera map; `serve_args`: more flags) fed by every labelled camera
    (and the video); the controller's summary and every process's exit status. Decisions go to
    ``decisions{tag}.jsonl``."""
    out, timeout = config.out, config.step_timeout_s
    log, summary_path = out / f"decisions{tag}.jsonl", out / f"controller_summary{tag}.json"
    for path in (log, summary_path):
        path.unlink(missing_ok=True)
    truth = {shift: out / f"truth_{shift}.jsonl" for shift in config.cameras}
    children: dict[str, ChildProcess] = {}
    statuses: dict[str, int] = {}
    try:
        with ServeProcess(config.artifacts, served, logs, (
                "--heartbeat-ms", str(config.heartbeat_ms), "--threads", str(config.threads), "--no-watch",
                "--monitor-interval", str(config.monitor_interval_s), *serve_args),
                echo=True, name=f"serve{tag}") as serve:
            controller = children["controller"] = ChildProcess(f"controller{tag}", [
                "controller", "--connect", serve.publish, "--log", str(log), "--summary", str(summary_path),
                *[arg for path in truth.values() for arg in ("--truth", str(path))], "--print", "events",
                "--progress-s", "10", "--heartbeat-timeout-ms", str(config.heartbeat_timeout_ms), "--exit-on-stop"],
                logs)
            controller.wait_for_line(r"^OK: first heartbeat", 60)
            replays = []
            for shift in config.cameras:
                camera = config.camera_id(shift)
                replay = children[f"source-{camera}"] = ChildProcess(f"source-{camera}{tag}", [
                    "source", "--dataset", "fashion-mnist", "--split", "test", "--shift", shift, "--encoding", "raw",
                    "--camera-id", camera, "--connect", serve.ingest, "--max-in-flight", "1", "--decisions",
                    serve.publish, "--truth", str(truth[shift]), *_drift_args(config, shift),
                    *(["--limit", str(config.frames)] if config.frames else [])], logs)
                replays.append(replay)
            if with_video:
                video = children["video"] = ChildProcess(f"source-{VIDEO_CAMERA}{tag}", [
                    "source", "--video", str(config.video), "--fps", "native", "--loop", "--encoding", "jpeg",
                    "--camera-id", VIDEO_CAMERA, "--connect", serve.ingest], logs)
            for replay in replays:
                statuses[replay.name] = replay.wait(timeout)
                replay.expect_success(statuses[replay.name])
            if with_video:
                statuses[video.name] = video.stop()
                video.expect_success(statuses[video.name])
            statuses[f"serve{tag}"] = serve.stop()
            serve.child.expect_success(statuses[f"serve{tag}"])
        statuses[controller.name] = controller.wait(60)
        controller.expect_success(statuses[controller.name])
    finally:
        for child in children.values():
            child.kill()
    return json.loads(summary_path.read_text()), statuses


def run_demo(config: DemoConfig) -> dict:
    """Run the demo of the module docstring; return the controller's summary of the per-camera run.

    Raises:
        DemoError: Missing inputs (the message says what to run or install).
        trustvlm.pipelines.processes.ProcessError: A step that failed (the message names it and quotes the
            process's stderr).
    """
    _check_inputs(config)
    started = time.monotonic()
    logs = config.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    steps = 4 if config.shared else 3
    print(f"[1/{steps}] calibration sets and bundles: Fashion-MNIST calibration split through each camera "
          f"({', '.join(config.cameras)}){f'; shared bundle on the {config.shared} camera' if config.shared else ''}",
          flush=True)
    calibrated = {}
    for shift in config.bundle_cameras:
        calibrated[shift] = _calibrate(config, shift, logs)
        print(f"      {shift}: {calibrated[shift][2]}", flush=True)
    default = calibrated[config.shared or config.cameras[0]][1]
    camera_map = write_camera_map(config.out / "cameras.toml", CameraMap(
        {config.camera_id(shift): calibrated[shift][1] for shift in config.cameras}, default))
    print(f"[2/{steps}] trustvlm serve --bundles {camera_map} (each camera its own bundle) + controller; cameras: "
          f"{', '.join(config.camera_id(s) for s in config.cameras)}"
          f"{' + the video clip' if config.video else ''}", flush=True)
    summary, statuses = _stream(config, camera_map, "", config.video is not None, logs)
    shared_rows = None
    if config.shared:
        print(f"[3/{steps}] the same labelled cameras against one shared bundle (calibrated on the {config.shared} "
              "camera)", flush=True)
        _, shared_statuses = _stream(config, calibrated[config.shared][1], "_shared", False, logs,
                                     ("--on-drift", "warn"))
        statuses.update(shared_statuses)
        shared_rows = camera_rows(config, config.out / "decisions_shared.jsonl",
                                  {shift: calibrated[config.shared][1] for shift in config.cameras})
    print(f"[{steps}/{steps}] summary", flush=True)
    rows = camera_rows(config, config.out / "decisions.jsonl",
                       {shift: calibrated[shift][1] for shift in config.cameras})
    drift, drift_lines = _drift_summary(config, shared_rows is not None)
    plot = plot_demo_risk_coverage(config.out / "decisions.jsonl", config.out / f"truth_{config.cameras[0]}.jsonl",
                                   config.out / "risk_coverage.png", config)
    lines = format_demo_summary(summary, config, calibrated, rows, shared_rows,
                                {**{f"calibrate-{s}": 0 for s in calibrated}, **statuses}, plot,
                                time.monotonic() - started, drift_lines)
    print("\n".join(lines), flush=True)
    (config.out / "demo_summary.json").write_text(json.dumps({
        "config": {k: str(v) for k, v in vars(config).items()}, "controller": summary, "processes": statuses,
        "cameras": rows, "shared": shared_rows, "drift": drift}, indent=2) + "\n")
    return summary


def _drift_summary(config: DemoConfig, shared: bool) -> tuple[dict | None, list[str]]:
    """The drifting camera's outcome (from the decision log and its truth file) and its summary lines; with the
    shared run, where that run's monitor (reporting only) raised ALARM."""
    lines = []
    if config.drift_camera is not None:
        camera = config.camera_id(config.drift_camera)
        outcome = drift_outcome(config.out / "decisions.jsonl", config.out / f"truth_{config.drift_camera}.jsonl",
                                camera, config.drift_after, config.monitor_interval_s)
        lines = [f"camera {camera} gets darker halfway: from frame {config.drift_after} on through {config.drift} "
                 f"instead of {config.drift_camera}; guarantee monitor at the default alarm level, on "
                 f"{thinning_words(config.monitor_interval_s)} (the replay sends independent test images back to "
                 "back, so this thinning is as honest as the default 1 s on video):",
                 *format_drift_lines(outcome, config.alpha)]
    if shared:
        alarms = first_alarms(config.out / "decisions_shared.jsonl", [config.camera_id(s) for s in config.cameras])
        lines.append("shared bundle run (its monitor only reports, --on-drift warn): " + ", ".join(
            f"{camera} {'ALARM on frame ' + str(seq) if seq is not None else 'no ALARM'}" for camera, seq in
            alarms.items()))
    return (outcome.to_dict() if config.drift_camera is not None else None), lines
