"""The end-to-end streaming demo: calibrate on your camera, then trust it; real processes, real sockets.

    trustvlm demo --artifacts artifacts/demo_fmnist      # `make demo` runs this

Steps (each a real ``trustvlm`` process, exit codes checked):

1. Build the camera's calibration set: the Fashion-MNIST calibration split (never trained on, never the test
   split) through the degraded camera (``--shift``, default ``low_light``; :func:`captures.degrade`, the very
   function the source applies to each frame), saved as PNGs with a CoOp split file: ``k`` shots per class
   (seeded) for the image prototypes in "train", the rest in "val" for lambda and the guaranteed-risk threshold.
2. ``trustvlm calibrate`` on that set -> a bundle for this camera.
3. ``trustvlm serve`` on random loopback ports; ``trustvlm controller`` with the ground truth, waiting for the
   first heartbeat.
4. Two cameras: the Fashion-MNIST test images replayed through the same degraded camera with labels (raw
   frames, at most one frame without a decision, so none is superseded), and a real video clip (OpenCV's
   ``vtest.avi``, a street scene) through the video capture path at its own frame rate, looping until the
   labelled replay ends.
5. Stop the video camera and the service (SIGTERM: in-flight frames are answered, a final ``stopped``
   heartbeat is published); the controller ends on that heartbeat and writes its summary.
6. Print the summary and write a risk-coverage plot from the logged decisions.

Everything lands in ``<artifacts>/demo_stream/`` (calibration set, bundle, truth, decision log, summaries,
plot, each process's stderr under ``logs/``). Children that are still running when the demo fails or is
interrupted are killed, so no process outlives it.

The jobs it builds on: :mod:`~trustvlm.pipelines.calibration_set` (step 1),
:mod:`~trustvlm.pipelines.serve_process` and :mod:`~trustvlm.pipelines.processes` (the processes),
:mod:`~trustvlm.pipelines.demo_summary` (step 6).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from trustvlm.calibration.shifts import SHIFTS
from trustvlm.data.fashion_mnist import DatasetMissingError
from trustvlm.pipelines.calibration_set import write_camera_calibration_set
from trustvlm.pipelines.demo_config import VIDEO_CAMERA, VTEST, DemoConfig, DemoError
from trustvlm.pipelines.demo_summary import coverage_lines, format_demo_summary, plot_demo_risk_coverage
from trustvlm.pipelines.processes import ChildProcess
from trustvlm.pipelines.serve_process import ServeProcess

def _check_inputs(config: DemoConfig) -> None:
    if not (config.artifacts / "manifest.json").exists():
        raise DemoError(f"no export in {config.artifacts} (manifest.json missing): run "
                        "`trustvlm export --model demo_fmnist` (or `make demo`) first")
    if config.shift not in SHIFTS:
        raise DemoError(f"unknown camera shift {config.shift!r}; expected one of {list(SHIFTS)}")
    if config.video is not None and not config.video.is_file():
        raise DemoError(f"video {config.video} is missing: apt-get install opencv-doc (or `make system-packages`), "
                        "or pass --no-video")


def run_demo(config: DemoConfig) -> dict:
    """Run the demo of the module docstring; return the controller's summary.

    Raises:
        DemoError: Missing inputs (the message says what to run or install).
        trustvlm.pipelines.processes.ProcessError: A step that failed (the message names it and quotes the
            process's stderr).
    """
    _check_inputs(config)
    started = time.monotonic()
    out = config.out
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    artifacts, timeout = str(config.artifacts), config.step_timeout_s
    camera = config.dataset_camera
    paths = {name: out / file for name, file in (
        ("truth", "truth.jsonl"), ("log", "decisions.jsonl"), ("summary", "controller_summary.json"),
        ("bundle", f"bundle_{config.shift}"), ("plot", "risk_coverage.png"), ("demo", "demo_summary.json"))}
    for name in ("truth", "log", "summary", "plot"):
        paths[name].unlink(missing_ok=True)

    print(f"[1/5] calibration set: Fashion-MNIST calibration split through the {config.shift} camera", flush=True)
    try:
        calibration = write_camera_calibration_set(out / f"calibration_{config.shift}", config.shift, config.shots,
                                                   config.seed)
    except DatasetMissingError as error:
        raise DemoError(str(error)) from error
    print(f"      {calibration.shots} shots + {calibration.held_out} held-out images -> {calibration.split_file}",
          flush=True)

    print(f"[2/5] trustvlm calibrate on the {config.shift} camera", flush=True)
    calibrate = ChildProcess("calibrate", [
        "calibrate", "--artifacts", artifacts, "--data", str(calibration.split_file), "--image-root",
        str(calibration.image_root), "--out", str(paths["bundle"]), "--k", str(config.shots), "--seed",
        str(config.seed), "--alpha", str(config.alpha), "--delta", str(config.delta), "--lam", str(config.lam),
        "--threshold-method", config.threshold_method], logs)
    calibrate.expect_success(calibrate.wait(timeout))
    bundle_line = calibrate.wait_for_line(r"^wrote (.*)", 5).group(0)

    children: dict[str, ChildProcess] = {}
    statuses: dict[str, int] = {}
    try:
        print("[3/5] trustvlm serve + trustvlm controller", flush=True)
        with ServeProcess(config.artifacts, paths["bundle"], logs, (
                "--heartbeat-ms", str(config.heartbeat_ms), "--threads", str(config.threads), "--no-watch"),
                echo=True) as serve:
            ingest, publish = serve.ingest, serve.publish
            controller = children["controller"] = ChildProcess("controller", [
                "controller", "--connect", publish, "--truth", str(paths["truth"]), "--log", str(paths["log"]),
                "--summary", str(paths["summary"]), "--print", "events", "--progress-s", "10",
                "--heartbeat-timeout-ms", str(config.heartbeat_timeout_ms), "--exit-on-stop"], logs)
            controller.wait_for_line(r"^OK: first heartbeat", 60)

            print("[4/5] cameras: labelled replay through the degraded camera"
                  f"{' + the video clip' if config.video else ''}", flush=True)
            replay = children[f"source-{camera}"] = ChildProcess(f"source-{camera}", [
                "source", "--dataset", "fashion-mnist", "--split", "test", "--shift", config.shift, "--encoding",
                "raw", "--camera-id", camera, "--connect", ingest, "--max-in-flight", "1", "--decisions", publish,
                "--truth", str(paths["truth"]), *(["--limit", str(config.frames)] if config.frames else [])], logs)
            if config.video is not None:
                children[f"source-{VIDEO_CAMERA}"] = ChildProcess(f"source-{VIDEO_CAMERA}", [
                    "source", "--video", str(config.video), "--fps", "native", "--loop", "--encoding", "jpeg",
                    "--camera-id", VIDEO_CAMERA, "--connect", ingest], logs)
            statuses[replay.name] = replay.wait(timeout)
            replay.expect_success(statuses[replay.name])
            if config.video is not None:
                video = children[f"source-{VIDEO_CAMERA}"]
                statuses[video.name] = video.stop()
                video.expect_success(statuses[video.name])

            print("[5/5] stop the service; the controller ends on its final heartbeat", flush=True)
            statuses["serve"] = serve.stop()
            serve.child.expect_success(statuses["serve"])
        statuses["controller"] = controller.wait(60)
        controller.expect_success(statuses["controller"])
    finally:
        for child in children.values():
            child.kill()
    summary = json.loads(paths["summary"].read_text())
    plot = plot_demo_risk_coverage(paths["log"], paths["truth"], paths["plot"], config)
    coverage = coverage_lines(paths["bundle"], paths["log"], paths["truth"], config)
    lines = format_demo_summary(summary, config, calibration, bundle_line, {"calibrate": 0, **statuses}, plot,
                                time.monotonic() - started, coverage)
    print("\n".join(lines), flush=True)
    paths["demo"].write_text(json.dumps({"config": {k: str(v) for k, v in vars(config).items()},
                                         "controller": summary, "processes": statuses}, indent=2) + "\n")
    return summary
