"""The end-to-end streaming demo: calibrate on your camera, then trust it; real processes, real sockets.

    python -m trustvlm.pipelines.demo --artifacts artifacts/demo_fmnist      # `make demo` runs this

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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from trustvlm.calibration.shifts import SHIFTS
from trustvlm.data.fashion_mnist import DatasetMissingError, load_split
from trustvlm.pipelines.captures import degrade

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
DATASET_CAMERA = "fmnist_{shift}"
VIDEO_CAMERA = "vtest"
#: Seeds of the calibration images' camera noise start here, apart from the stream's (seed = seq, from 0).
CALIBRATION_SEED_OFFSET = 1_000_000


class DemoError(Exception):
    """A step of the demo that failed; the message says which and why."""


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
        artifacts: Export folder of the model (``trustvlm export`` output).
        out: Folder for everything the demo writes.
        shift: The degraded camera (a name of calibration.shifts.SHIFTS).
        shots: Labelled shots per class for the image prototypes.
        seed: Seed of the shot draw.
        alpha: Target risk among accepted frames.
        delta: Allowed probability that the risk exceeds alpha.
        lam: Weight of the image-prototype term: "auto" (chosen on calibration data) or a number.
        frames: Test images replayed (None: all 10,000).
        video: Video file of the second camera (None: no second camera).
        heartbeat_ms: The service's heartbeat period.
        heartbeat_timeout_ms: The controller's SAFE timeout.
        threads: ONNX Runtime threads of the service.
        step_timeout_s: Longest any one step may take.
    """

    artifacts: Path
    out: Path
    shift: str = "low_light"
    shots: int = 16
    seed: int = 0
    alpha: float = 0.05
    delta: float = 0.1
    lam: str = "auto"
    frames: int | None = None
    video: Path | None = VTEST
    heartbeat_ms: int = 200
    heartbeat_timeout_ms: int = 1000
    threads: int = 1
    step_timeout_s: float = 900.0


@dataclass(frozen=True)
class CalibrationSet:
    """A camera's calibration images on disk, as a CoOp split file."""

    split_file: Path
    image_root: Path
    shots: int
    held_out: int


def write_camera_calibration_set(out: Path, shift: str, shots_per_class: int, seed: int = 0,
                                 held_out_limit: int | None = None) -> CalibrationSet:
    """The Fashion-MNIST calibration split through the degraded camera `shift`, as PNGs + a CoOp split file.

    "train" holds `shots_per_class` seeded shots per class (the image prototypes); "val" the rest (lambda
    and the threshold), or its first `held_out_limit` images. Image i of the split gets camera noise seed
    ``CALIBRATION_SEED_OFFSET + i``. `out` is replaced.

    Raises:
        ValueError: An unknown shift, or too few images per class.
        trustvlm.data.fashion_mnist.DatasetMissingError: Fashion-MNIST is not installed.
    """
    if shift not in SHIFTS:
        raise ValueError(f"unknown camera shift {shift!r}; expected one of {list(SHIFTS)}")
    calib = load_split("calib")
    rng = np.random.default_rng(seed)
    shots = set()
    for class_id in range(len(calib.class_names)):
        members = np.flatnonzero(calib.labels == class_id)
        if len(members) <= shots_per_class:
            raise ValueError(f"class {calib.class_names[class_id]!r} has {len(members)} calibration images; "
                             f"need more than {shots_per_class} shots")
        shots.update(int(i) for i in rng.choice(members, shots_per_class, replace=False))
    image_root = out / "images"
    if out.exists():
        shutil.rmtree(out)
    image_root.mkdir(parents=True)
    splits = {"train": [], "val": [], "test": []}
    for i, (image, label) in enumerate(zip(calib.images, calib.labels)):
        split = "train" if i in shots else "val"
        if split == "val" and held_out_limit is not None and len(splits["val"]) >= held_out_limit:
            continue
        relpath = f"{int(calib.indices[i])}.png"
        if not cv2.imwrite(str(image_root / relpath), degrade(image, shift, CALIBRATION_SEED_OFFSET + i)):
            raise OSError(f"cannot write {image_root / relpath}")
        splits[split].append([relpath, int(label), calib.class_names[int(label)]])
    split_file = out / f"split_fmnist_calib_{shift}.json"
    split_file.write_text(json.dumps(splits))
    return CalibrationSet(split_file, image_root, len(splits["train"]), len(splits["val"]))


class ChildProcess:
    """A ``trustvlm`` subcommand in its own process: stdout echoed with a prefix and kept, stderr to a file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, echo: bool = True):
        self.name, self.echo = name, echo
        self.stderr_path = log_dir / f"{name}.stderr"
        self.lines: list[str] = []
        self._changed = threading.Condition()
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen([sys.executable, "-m", "trustvlm", *args], stdout=subprocess.PIPE,
                                            stderr=stderr, text=True, bufsize=1,
                                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self._pump = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._pump.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            line = line.rstrip("\n")
            if self.echo:
                print(f"  [{self.name}] {line}", flush=True)
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match:
        """The first stdout line matching `pattern`; DemoError if the process ends or `timeout_s` passes first."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        checked = 0
        with self._changed:
            while True:
                for line in self.lines[checked:]:
                    match = regex.search(line)
                    if match:
                        return match
                checked = len(self.lines)
                remaining = deadline - time.monotonic()
                if self.process.poll() is not None and not self._pump.is_alive():
                    raise DemoError(f"{self.name} exited with status {self.process.returncode} before printing "
                                    f"/{pattern}/; {self.stderr_tail()}")
                if remaining <= 0:
                    raise DemoError(f"{self.name} did not print /{pattern}/ within {timeout_s:.0f} s; "
                                    f"{self.stderr_tail()}")
                self._changed.wait(min(remaining, 0.5))

    def wait(self, timeout_s: float) -> int:
        """The exit status; DemoError (after killing it) if it has not ended within `timeout_s`."""
        try:
            status = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise DemoError(f"{self.name} did not end within {timeout_s:.0f} s and was killed; "
                            f"{self.stderr_tail()}") from None
        self._pump.join(5)
        return status

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (graceful for every trustvlm command), then the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def expect_success(self, status: int) -> None:
        if status != 0:
            raise DemoError(f"{self.name} exited with status {status}; {self.stderr_tail()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stderr_tail(self, lines: int = 5) -> str:
        tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return f"last stderr lines ({self.stderr_path}):\n    " + "\n    ".join(tail) if tail else "no stderr output"


def _check_inputs(config: DemoConfig) -> None:
    if not (config.artifacts / "manifest.json").exists():
        raise DemoError(f"no export in {config.artifacts} (manifest.json missing): run "
                        "`trustvlm export --model demo_fmnist` (or `make demo`) first")
    if config.shift not in SHIFTS:
        raise DemoError(f"unknown camera shift {config.shift!r}; expected one of {list(SHIFTS)}")
    if config.video is not None and not config.video.is_file():
        raise DemoError(f"video {config.video} is missing: apt-get install opencv-doc (or `make system-packages`), "
                        "or pass --no-video")


def _pct(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _ms(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f} ms"


def format_demo_summary(summary: dict, config: DemoConfig, calibration: CalibrationSet, bundle_line: str,
                        statuses: dict[str, int], plot: Path | None, seconds: float) -> list[str]:
    """The lines the demo ends with (figures from the controller's summary)."""
    camera = DATASET_CAMERA.format(shift=config.shift)
    cams, labelled = summary["cameras"], summary["labelled"]
    stream = cams.get(camera, {"decisions": 0, "accepted": 0, "deferred": 0})
    latency = summary["latency_ms"]["e2e_from_capture"]
    lines = [
        "",
        "=== trustvlm-edge streaming demo: summary ===",
        f"camera {camera}: Fashion-MNIST test images through the {config.shift} camera; calibrated on that camera "
        f"({calibration.shots} shots, {calibration.held_out} held-out images, alpha {config.alpha:g}, "
        f"delta {config.delta:g})",
        f"  bundle: {bundle_line}",
        f"  frames {stream['decisions']} | accepted {stream['accepted']} | deferred {stream['deferred']}",
        f"  accuracy on accepted frames {_pct(labelled['accuracy_accepted'])} vs {_pct(labelled['accuracy_all'])} "
        f"on all frames, at coverage {_pct(labelled['coverage'])}: the robot acts on the accepted frames only",
    ]
    if VIDEO_CAMERA in cams:
        video = cams[VIDEO_CAMERA]
        lines.append(f"camera {VIDEO_CAMERA}: {config.video.name} street scene (not clothing) through the video "
                     f"path: frames {video['decisions']} | accepted {video['accepted']} | deferred {video['deferred']}")
    unanswered = sum(labelled["unanswered"].values())
    lines += [
        f"all cameras: frames {summary['decisions']} | accepted {summary['accepted']} | deferred "
        f"{summary['deferred']} | duplicates {summary['duplicates']} | labelled frames sent without a decision "
        f"{unanswered}",
        f"latency from capture to the controller: p50 {_ms(latency['p50'])}, p95 {_ms(latency['p95'])}, "
        f"p99 {_ms(latency['p99'])}",
        f"controller: SAFE entered {summary['safe']['entries']} time(s) (the service's final stop included); "
        f"ended by {summary['ended_by']}",
        f"risk-coverage plot: {plot}" if plot else "risk-coverage plot: not written (too few scored frames)",
        "processes: " + ", ".join(f"{name} exit {status}" for name, status in statuses.items()),
        f"outputs in {config.out} ({seconds:.0f} s)",
    ]
    return lines


def run_demo(config: DemoConfig) -> dict:
    """Run the demo of the module docstring; return the controller's summary.

    Raises:
        DemoError: A step that failed (the message names it and quotes the process's stderr).
    """
    _check_inputs(config)
    started = time.monotonic()
    out = config.out
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    artifacts, timeout = str(config.artifacts), config.step_timeout_s
    camera = DATASET_CAMERA.format(shift=config.shift)
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
        str(config.seed), "--alpha", str(config.alpha), "--delta", str(config.delta), "--lam", str(config.lam)], logs)
    calibrate.expect_success(calibrate.wait(timeout))
    bundle_line = calibrate.wait_for_line(r"^wrote (.*)", 5).group(0)

    children: dict[str, ChildProcess] = {}
    statuses: dict[str, int] = {}
    try:
        print("[3/5] trustvlm serve + trustvlm controller", flush=True)
        serve = children["serve"] = ChildProcess("serve", [
            "serve", "--artifacts", artifacts, "--bundle", str(paths["bundle"]), "--ingest", "tcp://127.0.0.1:*",
            "--publish", "tcp://127.0.0.1:*", "--heartbeat-ms", str(config.heartbeat_ms), "--threads",
            str(config.threads), "--no-watch"], logs)
        listening = serve.wait_for_line(r"ingest=(\S+) .*publish=(\S+)", 120)
        ingest, publish = listening.group(1), listening.group(2)
        controller = children["controller"] = ChildProcess("controller", [
            "controller", "--connect", publish, "--truth", str(paths["truth"]), "--log", str(paths["log"]),
            "--summary", str(paths["summary"]), "--print", "events", "--progress-s", "10",
            "--heartbeat-timeout-ms", str(config.heartbeat_timeout_ms), "--exit-on-stop"], logs)
        controller.wait_for_line(r"^OK: first heartbeat", 60)

        print("[4/5] cameras: labelled replay through the degraded camera"
              f"{' + the video clip' if config.video else ''}", flush=True)
        replay = children[f"source-{camera}"] = ChildProcess(f"source-{camera}", [
            "source", "--dataset", "fashion-mnist", "--split", "test", "--shift", config.shift, "--encoding", "raw",
            "--camera-id", camera, "--connect", ingest, "--max-in-flight", "1", "--decisions", publish,
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
        serve.expect_success(statuses["serve"])
        statuses["controller"] = controller.wait(60)
        controller.expect_success(statuses["controller"])
    finally:
        for child in children.values():
            child.kill()
    summary = json.loads(paths["summary"].read_text())
    plot = _plot(paths, config, camera)
    lines = format_demo_summary(summary, config, calibration, bundle_line, {"calibrate": 0, **statuses}, plot,
                                time.monotonic() - started)
    print("\n".join(lines), flush=True)
    paths["demo"].write_text(json.dumps({"config": {k: str(v) for k, v in vars(config).items()},
                                         "controller": summary, "processes": statuses}, indent=2) + "\n")
    return summary


def _plot(paths: dict, config: DemoConfig, camera: str) -> Path | None:
    from trustvlm.pipelines.report import load_scored_frames, plot_live_risk_coverage  # noqa: PLC0415 - matplotlib

    frames = load_scored_frames(paths["log"], paths["truth"], camera)
    if len(frames) < 2:
        return None
    return plot_live_risk_coverage(
        frames, paths["plot"], alpha=config.alpha,
        title=f"live risk-coverage: camera {camera}, {len(frames)} labelled frames\n"
              f"bundle calibrated on the {config.shift} camera")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trustvlm.pipelines.demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="End-to-end streaming demo: calibrate on a degraded camera, serve, replay Fashion-MNIST test "
                    "images through that camera with labels plus a real video clip, score live with the "
                    "controller, summarize and plot risk-coverage.")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo_fmnist"), help="export folder")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <artifacts>/demo_stream)")
    parser.add_argument("--shift", default="low_light", choices=list(SHIFTS), help="the degraded camera")
    parser.add_argument("--shots", type=int, default=16, help="shots per class for the image prototypes")
    parser.add_argument("--alpha", type=float, default=0.05, help="target risk among accepted frames")
    parser.add_argument("--delta", type=float, default=0.1, help="allowed probability of exceeding alpha")
    parser.add_argument("--lam", default="auto", help="lambda of the trust score: 'auto' or a number (1: the paper's)")
    parser.add_argument("--frames", type=int, default=None, help="test images to replay (default: all 10,000)")
    parser.add_argument("--video", type=Path, default=VTEST, help="video file of the second camera")
    parser.add_argument("--no-video", dest="use_video", action="store_false", help="run without the video camera")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the service")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames is not None and args.frames < 1:
        print(f"demo: error: --frames should be >= 1, but got {args.frames}", file=sys.stderr)
        return 2
    config = DemoConfig(artifacts=args.artifacts, out=args.out or args.artifacts / "demo_stream", shift=args.shift,
                        shots=args.shots, alpha=args.alpha, delta=args.delta, lam=args.lam, frames=args.frames,
                        video=args.video if args.use_video else None, threads=args.threads)
    try:
        run_demo(config)
    except DemoError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
