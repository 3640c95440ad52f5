"""`trustvlm source`, `controller`, `zeroshot` and `demo`: thin argparse layers over the pipelines library.

Wire them into the top-level parser with ``add_source_parser(subparsers)``,
``add_controller_parser(subparsers)``, ``add_zeroshot_parser(subparsers)`` and
``add_demo_parser(subparsers)``; each sets ``handler``. Expected failures (a missing video, a
camera that cannot be opened, a runtime that takes no frames) become one
:class:`trustvlm.cli_common.CliError` line. SIGINT/SIGTERM end `source` and `controller` cleanly,
with their summary, exit status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path

from trustvlm.cli_common import CliError, ExamplesHelpFormatter, help_formatter, positive, wrap

SOURCE_EPILOG = """examples:
  trustvlm source --video /usr/share/doc/opencv-doc/examples/data/vtest.avi --fps native --camera-id street
  trustvlm source --camera 0 --fps 15 --camera-id front
  trustvlm source --rtsp rtsp://192.168.1.20:554/stream1 --camera-id gate
  trustvlm source --images ./frames --loop --fps 5
  trustvlm source --dataset fashion-mnist --shift low_light --encoding raw --truth truth.jsonl \\
      --max-in-flight 1 --decisions tcp://127.0.0.1:5556
  trustvlm source --dataset fashion-mnist --shift low_light --drift low_light:gain=0.25 --drift-after 5000 ...
"""
CONTROLLER_EPILOG = """examples:
  trustvlm controller --connect tcp://127.0.0.1:5556
  trustvlm controller --truth truth.jsonl --log decisions.jsonl --summary summary.json --print events \\
      --progress-s 5 --exit-on-stop
"""

DEMO_EPILOG = """examples:
  trustvlm demo --artifacts artifacts/demo_fmnist                  # `make demo-stream`
  trustvlm demo --artifacts artifacts/demo_fmnist --frames 500 --cameras blur noise --no-video --no-shared
"""


def _fps(text: str) -> float | str:
    if text == "native":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected 'native' or a number >= 0 (0: no pacing), got {text!r}")
    return value


def add_source_parser(subparsers) -> None:
    """Add `source`: publish a camera's frames to `trustvlm serve`."""
    from trustvlm.calibration.shifts import SHIFTS  # noqa: PLC0415 - cheap (numpy + cv2)
    from trustvlm.data.fashion_mnist import SPLITS  # noqa: PLC0415
    from trustvlm.pipelines.captures import DATASETS  # noqa: PLC0415

    parser = subparsers.add_parser(
        "source", formatter_class=ExamplesHelpFormatter, epilog=SOURCE_EPILOG,
        help="camera side: send frames from a video, camera, RTSP stream, image folder or labelled dataset to "
             "the service",
        description=wrap("Read frames (OpenCV capture, image files, or a labelled dataset replayed as a camera, "
                    "optionally through a degraded camera), encode them (JPEG, PNG or raw) and PUSH them to "
                    "`trustvlm serve` with a seq number and capture timestamp per frame (wire schema 1). A "
                    "labelled replay writes its ground truth (camera_id, seq, label) as JSONL for "
                    "`trustvlm controller --truth`."))
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--video", help="video file (or any URL OpenCV opens)")
    inputs.add_argument("--camera", type=int, help="camera index (/dev/videoN)")
    inputs.add_argument("--rtsp", help="RTSP URL, e.g. rtsp://host:554/stream")
    inputs.add_argument("--images", type=Path, help="folder of image files (sub-folders per class give labels)")
    inputs.add_argument("--dataset", choices=list(DATASETS), help="labelled dataset replayed as a grey camera")
    parser.add_argument("--split", default="test", choices=list(SPLITS), help="split of --dataset")
    parser.add_argument("--start", type=int, default=0, help="first index of --dataset")
    parser.add_argument("--connect", default="tcp://127.0.0.1:5555", help="ingest endpoint of the service")
    parser.add_argument("--camera-id", default="cam0", help="camera name on the wire: decisions come back on "
                                                            "trust/<camera-id>")
    parser.add_argument("--shift", default=None, metavar="NAME[:KEY=VALUE,...]",
                        help=f"pass every frame through this degraded camera (calibration.shifts: {', '.join(SHIFTS)}; "
                             "seed = seq), with changed parameters if given, e.g. low_light:gain=0.25")
    parser.add_argument("--drift", default=None, metavar="NAME[:KEY=VALUE,...]",
                        help="the camera changes: from frame --drift-after on, frames go through this shift instead of "
                             "--shift, e.g. low_light:gain=0.25 (darker)")
    parser.add_argument("--drift-after", type=int, default=None, metavar="N",
                        help="frames sent before the --drift change (default 0: from the first frame)")
    parser.add_argument("--encoding", default="jpeg", choices=["jpeg", "png", "raw"], help="payload encoding")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality, 1-100")
    parser.add_argument("--fps", type=_fps, default=0.0,
                        help="frames per second, real time; 'native': the video's own rate; 0: no pacing "
                             "(as fast as the socket, or the --max-in-flight window, takes them)")
    parser.add_argument("--max-in-flight", type=int, default=0,
                        help="keep at most this many frames without a decision (needs --decisions); "
                             "1 lets no frame be superseded; 0: off")
    parser.add_argument("--decisions", default=None,
                        help="publish endpoint of the service, for --max-in-flight, e.g. tcp://127.0.0.1:5556")
    parser.add_argument("--answer-timeout-ms", type=int, default=5000,
                        help="give up waiting for a frame's decision after this long (--max-in-flight)")
    parser.add_argument("--ready-timeout-s", type=float, default=30.0,
                        help="wait this long for the first heartbeat before sending (--max-in-flight)")
    parser.add_argument("--loop", action="store_true", help="start over at the end of a video, folder or dataset")
    parser.add_argument("--limit", type=int, default=None, help="send at most this many frames")
    parser.add_argument("--truth", type=Path, default=None,
                        help="write ground truth JSONL here (labelled sources: --dataset, --images with classes)")
    parser.add_argument("--send-hwm", type=int, default=16, help="frames ZeroMQ queues before a send waits")
    parser.add_argument("--send-timeout-ms", type=int, default=1000, help="how long one send may wait")
    parser.add_argument("--max-send-failures", type=int, default=10,
                        help="timed-out sends in a row before the source gives up (exit 1)")
    parser.add_argument("--summary", type=Path, default=None, help="write the final counts here as JSON")
    parser.add_argument("--record", type=Path, default=None, metavar="DIR",
                        help="also record the frames sent, thinned, into DIR/<camera-id>/to_review/_unscored/ with "
                             "DIR/<camera-id>/frames.csv, to sort into class folders for `trustvlm calibrate` (see "
                             "DIR/README.txt; oldest deleted past 1 GiB or 100,000 files)")
    parser.add_argument("--record-interval", default="1s", metavar="INTERVAL",
                        help="record at most one frame per this much capture time: 1s, 500ms, 2min; 0: every frame "
                             "sent (--record)")
    parser.set_defaults(handler=run_source)


def _open_capture(args):
    from trustvlm.pipelines.captures import DatasetCapture, ImageFolderCapture, VideoCapture  # noqa: PLC0415

    if args.dataset:
        return DatasetCapture(args.dataset, args.split, args.loop, args.start)
    if args.images:
        return ImageFolderCapture(args.images, args.loop)
    if args.camera is not None:
        return VideoCapture(args.camera, args.loop)
    return VideoCapture(args.rtsp or args.video, args.loop)


def _install_stop_handlers(stop) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: stop())
        signal.signal(signal.SIGTERM, lambda *_: stop())


def run_source(args: argparse.Namespace) -> int:
    """Handler of `trustvlm source`."""
    import zmq  # noqa: PLC0415

    from trustvlm.calibration.shifts import parse_shift  # noqa: PLC0415
    from trustvlm.pipelines.captures import CaptureError, DatasetCapture, ImageFolderCapture  # noqa: PLC0415
    from trustvlm.pipelines.frame_sender import FrameEncoder, FrameSender, SenderConfig, SourceError  # noqa: PLC0415
    from trustvlm.pipelines.source import (CameraDrift, DecisionWindowPacer, FpsPacer, FreeRunPacer,  # noqa: PLC0415
                                           TruthWriter, stream_frames)
    from trustvlm.runtime.frames import check_camera_id  # noqa: PLC0415
    from trustvlm.runtime.record import RecordConfig, Recorder  # noqa: PLC0415
    from trustvlm.runtime.schema import MessageError  # noqa: PLC0415

    if args.max_in_flight < 0 or (args.max_in_flight and not args.decisions):
        raise CliError(f"--max-in-flight {args.max_in_flight} needs a value >= 1 and --decisions <publish endpoint>")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit should be >= 1, but got {args.limit}")
    if args.drift_after is not None and (args.drift is None or args.drift_after < 0):
        raise CliError(f"--drift-after {args.drift_after} needs a value >= 0 and --drift NAME[:KEY=VALUE,...]")
    shifts = {}
    for flag in ("shift", "drift"):
        try:
            shifts[flag] = parse_shift(getattr(args, flag)) if getattr(args, flag) is not None else None
        except ValueError as error:
            raise CliError(f"--{flag}: {error}") from None
    drift = CameraDrift(shifts["drift"], args.drift_after or 0) if shifts["drift"] is not None else None
    try:
        check_camera_id(args.camera_id, "--camera-id")
        encoder = FrameEncoder(args.encoding, args.jpeg_quality)
        sender_config = SenderConfig(args.connect, args.send_hwm, args.send_timeout_ms, args.max_send_failures)
        record = RecordConfig(dir=args.record, interval=args.record_interval) if args.record is not None else None
    except (MessageError, ValueError) as error:
        raise CliError(str(error)) from error
    for path in (args.truth, args.summary):
        if path is not None and not path.parent.is_dir():
            raise CliError(f"cannot write {path}: folder {path.parent} does not exist")
    # FFmpeg prints its own connection errors to stderr; ours says it in one line (an explicit setting wins).
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        capture = _open_capture(args)
    except CaptureError as error:
        raise CliError(str(error)) from error
    labelled = isinstance(capture, DatasetCapture) or (isinstance(capture, ImageFolderCapture) and capture.class_names)
    if args.truth is not None and not labelled:
        capture.close()
        raise CliError(f"--truth needs a labelled source (--dataset, or --images with one sub-folder per class), "
                       f"but the source is {capture.description}")
    fps = getattr(capture, "fps", 0.0) if args.fps == "native" else args.fps
    if args.fps == "native" and not fps:
        capture.close()
        raise CliError(f"--fps native: {capture.description} does not report its frame rate; give --fps N")
    stop = threading.Event()
    _install_stop_handlers(stop.set)
    truth = TruthWriter(args.truth) if args.truth is not None else None
    recorder = Recorder(record) if record is not None else None
    try:
        with zmq.Context() as context, FrameSender(sender_config, context) as sender, capture:
            if args.max_in_flight:
                pacer = DecisionWindowPacer(args.decisions, args.camera_id, args.max_in_flight, context,
                                            args.answer_timeout_ms)
            else:
                pacer = FpsPacer(fps) if fps else FreeRunPacer()
            try:
                pacing = (f"at most {args.max_in_flight} frame(s) without a decision" if args.max_in_flight
                          else f"{fps:g} frames/s" if fps else "no pacing")
                print(f"source {args.camera_id}: {capture.description}"
                      f"{f' through the {args.shift} camera' if args.shift else ''}"
                      f"{f', from frame {drift.after} through {drift.shift}' if drift else ''} -> {args.connect} "
                      f"({args.encoding}, {pacing}){f', truth -> {args.truth}' if truth else ''}", flush=True)
                if args.max_in_flight:
                    pacer.wait_ready(args.ready_timeout_s, stop)
                stats = stream_frames(capture, args.camera_id, encoder, sender, pacer, truth, shifts["shift"],
                                      args.limit, stop, recorder, drift)
            finally:
                pacer.close()
    except (SourceError, CaptureError, ValueError) as error:
        raise CliError(str(error)) from error
    finally:
        if truth is not None:
            truth.close()
        if recorder is not None:
            recorder.close()
    print(stats.summary(), flush=True)
    if recorder is not None:
        print(f"recorded to {args.record}: " + ", ".join(f"{k} {v}" for k, v in recorder.stats().items()), flush=True)
    if args.summary is not None:
        args.summary.write_text(json.dumps(stats.to_dict(), indent=2) + "\n")
    return 0


def add_controller_parser(subparsers) -> None:
    """Add `controller`: the reference robot-side subscriber."""
    parser = subparsers.add_parser(
        "controller", formatter_class=ExamplesHelpFormatter, epilog=CONTROLLER_EPILOG,
        help="robot side: follow the service's accept/defer decisions, go SAFE when its heartbeat stops, "
             "score against ground truth",
        description=wrap("Subscribe to the service's decisions and heartbeat; act on a label only when it is accepted "
                    "and the service is alive; enter a SAFE state (every camera deferred) when the heartbeat goes "
                    "missing and leave it when heartbeats resume. With --truth, report accuracy of accepted vs "
                    "all frames, coverage and latency from capture. Ends after --max-decisions, --duration-s, "
                    "the service's stop (--exit-on-stop) or SIGINT, with a summary (text and --summary JSON)."))
    parser.add_argument("--connect", default="tcp://127.0.0.1:5556", help="publish endpoint of the service")
    parser.add_argument("--camera", action="append", default=[], dest="cameras",
                        help="follow only this camera (repeat for several; default: all)")
    parser.add_argument("--heartbeat-timeout-ms", type=float, default=2500.0,
                        help="enter SAFE after this long without a heartbeat (keep it above the service's "
                             "--heartbeat-ms)")
    parser.add_argument("--truth", type=Path, action="append", default=[],
                        help="ground truth JSONL written by `trustvlm source` (repeat: one per labelled source)")
    parser.add_argument("--log", type=Path, default=None, help="write every decision and state change here (JSONL)")
    parser.add_argument("--summary", type=Path, default=None, help="write the final summary here (JSON)")
    parser.add_argument("--print", dest="print_mode", default="decisions", choices=["decisions", "events"],
                        help="print every decision, or only state changes (and progress)")
    parser.add_argument("--progress-s", type=float, default=0.0, help="print a progress line this often (0: never)")
    parser.add_argument("--max-decisions", type=int, default=None, help="end after this many decisions")
    parser.add_argument("--duration-s", type=float, default=None, help="end after this many seconds")
    parser.add_argument("--exit-on-stop", action="store_true",
                        help="end when the service publishes its 'stopped' heartbeat")
    parser.set_defaults(handler=run_controller)


def run_controller(args: argparse.Namespace) -> int:
    """Handler of `trustvlm controller`."""
    import zmq  # noqa: PLC0415

    from trustvlm.pipelines.controller import Controller, ControllerConfig  # noqa: PLC0415
    from trustvlm.pipelines.controller_output import ConsolePrinter, JsonlLogger, ObserverGroup  # noqa: PLC0415
    from trustvlm.contract.files import json_safe  # noqa: PLC0415
    from trustvlm.runtime.frames import check_camera_id  # noqa: PLC0415
    from trustvlm.runtime.schema import MessageError  # noqa: PLC0415

    try:
        for camera in args.cameras:
            check_camera_id(camera, "--camera")
        config = ControllerConfig(args.connect, tuple(args.cameras), args.heartbeat_timeout_ms, tuple(args.truth),
                                  args.max_decisions, args.duration_s, args.exit_on_stop, args.progress_s)
    except (MessageError, ValueError) as error:
        raise CliError(str(error)) from error
    for path in (args.log, args.summary):
        if path is not None and not path.parent.is_dir():
            raise CliError(f"cannot write {path}: folder {path.parent} does not exist")
    observers = [ConsolePrinter(args.print_mode, args.heartbeat_timeout_ms)]
    logger = JsonlLogger(args.log) if args.log else None
    if logger:
        observers.append(logger)
    try:
        with zmq.Context() as context, Controller(config, context, ObserverGroup(*observers)) as controller:
            _install_stop_handlers(controller.request_stop)
            cameras = ", ".join(args.cameras) or "all cameras"
            print(f"controller: following {args.connect} ({cameras}); SAFE until the first heartbeat "
                  f"(timeout {args.heartbeat_timeout_ms:.0f} ms)", flush=True)
            summary = controller.run()
    except ValueError as error:
        raise CliError(str(error)) from error
    finally:
        if logger:
            logger.close()
    if args.summary is not None:
        args.summary.write_text(json.dumps(json_safe(summary, non_finite="null"), indent=2) + "\n")
    return 0


def add_zeroshot_parser(subparsers) -> None:
    """Add `zeroshot`: zero-shot accuracy of an export on the Fashion-MNIST test images."""
    parser = subparsers.add_parser(
        "zeroshot", formatter_class=help_formatter,
        help="check an export: zero-shot accuracy of its ONNX encoders on the Fashion-MNIST test images",
        description="Run the exported ONNX encoders (ONNX Runtime, no torch model) on the 10,000 Fashion-MNIST "
                    "test images and report zero-shot top-1 accuracy with the template ensemble.")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo_fmnist"), help="export folder")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="which encoders to run")
    parser.add_argument("--templates", default="ensemble", choices=["ensemble", "paper"], help="prompt set")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    parser.set_defaults(handler=run_zeroshot)


def run_zeroshot(args: argparse.Namespace) -> int:
    """Handler of `trustvlm zeroshot`."""
    from trustvlm.pipelines.zero_shot_check import zero_shot_check  # noqa: PLC0415
    from trustvlm.contract.manifest import ArtifactError  # noqa: PLC0415

    try:
        result = zero_shot_check(args.artifacts, args.precision, args.templates, args.limit)
    except ArtifactError as error:
        raise CliError(str(error)) from error
    print(result.summary())
    return 0


def add_demo_parser(subparsers) -> None:
    """Add `demo`: the end-to-end streaming demo (`make demo-stream`)."""
    from trustvlm.calibration.shifts import SHIFTS  # noqa: PLC0415 - cheap (numpy + cv2)
    from trustvlm.pipelines.demo_config import DARKER, MONITOR_INTERVAL_S, VTEST  # noqa: PLC0415

    parser = subparsers.add_parser(
        "demo", formatter_class=ExamplesHelpFormatter, epilog=DEMO_EPILOG,
        help="the end-to-end streaming demo: calibrate each degraded camera, serve them with a camera map, "
             "against one shared bundle, controller, "
             "summary",
        description=wrap("End-to-end streaming demo: calibrate each degraded camera on its own frames, serve them "
                         "all with one service and a camera map, replay Fashion-MNIST test images through each "
                         "camera with labels plus a real video clip, score live with the controller; halfway "
                         "through, the low-light camera gets darker and the service's guarantee monitor should "
                         "raise ALARM; then the same streams against one shared bundle; print the per-camera "
                         "table and the drift's outcome, plot risk-coverage. "
                         "Every step is a real trustvlm process; everything lands in the --out folder."))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo_fmnist"), help="export folder")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <artifacts>/demo_stream)")
    parser.add_argument("--cameras", nargs="+", default=["low_light", "blur", "jpeg"], choices=list(SHIFTS),
                        help="the degraded cameras, each calibrated on its own frames and scored against its own "
                             "bundle by one service")
    parser.add_argument("--shared", default="clean", choices=["clean", *SHIFTS],
                        help="the camera one shared bundle is calibrated on: the same streams scored against it "
                             "show what one bundle for every camera costs")
    parser.add_argument("--no-shared", dest="use_shared", action="store_false",
                        help="skip the shared-bundle run (about half the demo's time)")
    parser.add_argument("--shots", type=int, default=16, help="shots per class for the image prototypes")
    parser.add_argument("--alpha", type=float, default=0.05, help="target risk among accepted frames")
    parser.add_argument("--delta", type=float, default=0.1, help="allowed probability of exceeding alpha")
    parser.add_argument("--lam", default="auto", help="lambda of the trust score: 'auto' or a number (1: the paper's)")
    parser.add_argument("--frames", type=positive(int), default=None,
                        help="test images to replay (default: all 10,000)")
    parser.add_argument("--video", type=Path, default=VTEST, help="video file of the second camera")
    parser.add_argument("--no-video", dest="use_video", action="store_false", help="run without the video camera")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the service")
    parser.add_argument("--threshold-method", default="ltt", choices=["ltt", "sgr"],
                        help="how calibrate chooses the accept threshold (see `trustvlm calibrate --help`)")
    parser.add_argument("--no-drift", dest="drift", action="store_false",
                        help=f"keep the low-light camera as calibrated (otherwise it turns {DARKER} halfway)")
    parser.add_argument("--monitor-interval", type=float, default=MONITOR_INTERVAL_S, metavar="SECONDS",
                        help="the services' guarantee monitor takes one frame per camera per this much capture time")
    parser.set_defaults(handler=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    """Handler of `trustvlm demo`."""
    from trustvlm.pipelines.demo import DemoConfig, DemoError, run_demo  # noqa: PLC0415
    from trustvlm.pipelines.demo_config import DARKER  # noqa: PLC0415
    from trustvlm.pipelines.processes import ProcessError  # noqa: PLC0415

    config = DemoConfig(artifacts=args.artifacts, out=args.out or args.artifacts / "demo_stream",
                        cameras=tuple(args.cameras), shared=args.shared if args.use_shared else None,
                        shots=args.shots, alpha=args.alpha, delta=args.delta, lam=args.lam, frames=args.frames,
                        video=args.video if args.use_video else None, threads=args.threads,
                        threshold_method=args.threshold_method, drift=DARKER if args.drift else None,
                        monitor_interval_s=args.monitor_interval)
    try:
        run_demo(config)
    except (DemoError, ProcessError) as error:
        raise CliError(str(error)) from error
    return 0
