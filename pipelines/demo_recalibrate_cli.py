"""`trustvlm demo-recalibrate`: the argparse layer over :mod:`trustvlm.pipelines.demo_recalibrate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from trustvlm.cli_common import CliError, ExamplesHelpFormatter, positive, wrap

EPILOG = """examples:
  trustvlm demo-recalibrate --artifacts artifacts/demo_fmnist       # `make demo-recalibrate`
  trustvlm demo-recalibrate --before 200 --dark 2000 --after 1000 --shots 8

The labels of the recorded frames come from the replay's ground truth: the demo stands in for the person who, in
the field, checks every recorded frame's label (DIR/README.txt of a recording says how) before calibrating.
"""


def add_demo_recalibrate_parser(subparsers) -> None:
    """Add `demo-recalibrate`: a camera drifts, the service raises ALARM, records, recalibrates, swaps."""
    from trustvlm.pipelines.demo_recalibrate import RECALIBRATE_DRIFT  # noqa: PLC0415

    parser = subparsers.add_parser(
        "demo-recalibrate", formatter_class=ExamplesHelpFormatter, epilog=EPILOG,
        help="the recalibration loop on real images: a camera gets darker, the guarantee monitor raises ALARM, the "
             "service records, a new bundle is calibrated on the darker frames and swapped in",
        description=wrap("Calibrate the low-light camera, serve it (guarantee monitor on, recording that camera), "
                         "replay labelled Fashion-MNIST test images that turn darker partway; once the monitor "
                         "raises ALARM and defers the camera, label the frames recorded from then on (from the "
                         "replay's ground truth, standing in for a person), calibrate a new bundle on those darker "
                         "frames only, swap it in with `trustvlm bundles swap` while the service runs, and replay "
                         "other darker test images: coverage and risk after the swap against alpha, and the frames "
                         "it took to raise ALARM before. Every step is a real trustvlm process; everything lands in "
                         "the --out folder."))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo_fmnist"), help="export folder")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <artifacts>/demo_recalibrate)")
    parser.add_argument("--drift", default=RECALIBRATE_DRIFT, metavar="NAME[:KEY=VALUE,...]",
                        help="what the low-light camera turns into (calibration.shifts with changed parameters; "
                             "gain 0.25 is too dark for this model to certify alpha 0.05 after recalibration)")
    parser.add_argument("--before", type=positive(int), default=300, help="test images sent before the drift")
    parser.add_argument("--dark", type=positive(int), default=7700,
                        help="darker test images sent next: the ALARM should come among them, and the frames from "
                             "the ALARM on are the new calibration set")
    parser.add_argument("--after", type=positive(int), default=2000,
                        help="other darker test images sent after the swap (the three counts: at most 10,000)")
    parser.add_argument("--shots", type=positive(int), default=16, help="shots per class for the image prototypes")
    parser.add_argument("--held-out", type=positive(int), default=None,
                        help="held-out calibration images of the first bundle (default: the whole calibration split)")
    parser.add_argument("--alpha", type=float, default=0.05, help="target risk among accepted frames")
    parser.add_argument("--delta", type=float, default=0.1, help="allowed probability of exceeding alpha")
    parser.add_argument("--lam", default="auto", help="lambda of the trust score: 'auto' or a number")
    parser.add_argument("--monitor-interval", type=float, default=0.0, metavar="SECONDS",
                        help="the guarantee monitor takes one frame per this much capture time; 0: every frame (the "
                             "replay's frames are independent test images: nothing to thin, and the time to ALARM "
                             "does not depend on this machine's speed)")
    parser.add_argument("--alarm-level", type=float, default=None,
                        help="the monitor's alarm level (default: the service's, 5%% false ALARMs in a week of "
                             "one frame a second)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the service")
    parser.set_defaults(handler=run_demo_recalibrate_command)


def run_demo_recalibrate_command(args: argparse.Namespace) -> int:
    """Handler of `trustvlm demo-recalibrate`."""
    from trustvlm.pipelines.demo_config import DemoError  # noqa: PLC0415
    from trustvlm.pipelines.demo_recalibrate import RecalibrateConfig, run_recalibrate_demo  # noqa: PLC0415
    from trustvlm.pipelines.processes import ProcessError  # noqa: PLC0415

    config = RecalibrateConfig(
        artifacts=args.artifacts, out=args.out or args.artifacts / "demo_recalibrate", drift=args.drift,
        before=args.before, dark=args.dark, after=args.after, shots=args.shots, held_out=args.held_out,
        alpha=args.alpha, delta=args.delta, lam=args.lam, monitor_interval_s=args.monitor_interval,
        alarm_level=args.alarm_level, threads=args.threads)
    try:
        run_recalibrate_demo(config)
    except (DemoError, ProcessError, TimeoutError) as error:
        raise CliError(str(error)) from error
    return 0
