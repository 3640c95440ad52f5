"""`trustvlm bench` (the CPU benchmark suite) and `trustvlm soak` (a bounded soak of `serve`).

Wire them into the top-level parser with ``add_bench_parser(subparsers)`` and
``add_soak_parser(subparsers)``; each sets ``handler``. `bench` hands every flag, ``--help``
included, to the suite's own parser (``python -m trustvlm.benchmarks``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trustvlm.cli_common import CliError, help_formatter, positive


def add_bench_parser(subparsers) -> None:
    """Add `bench`: its flags are the benchmark suite's (`trustvlm bench --help` lists them)."""
    parser = subparsers.add_parser(
        "bench", add_help=False,
        help="measure how fast every stage runs on this CPU and write BENCHMARKS.md "
             "(`trustvlm bench --help` lists its flags)")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="flags of python -m trustvlm.benchmarks")
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    """Handler of `trustvlm bench`."""
    from trustvlm.benchmarks.suite import main as bench_main  # noqa: PLC0415 - imports every benchmark

    return bench_main(args.bench_args)


def add_soak_parser(subparsers) -> None:
    """Add `soak`: a fixed frame rate into a real `serve` for a fixed time, then the accounts."""
    parser = subparsers.add_parser(
        "soak", formatter_class=help_formatter,
        help="stress-test a real `serve` for a while: every frame accounted for, order kept, memory flat",
        description="Start `trustvlm serve` on free loopback ports, send frames from --cameras cameras at --rate "
                    "frames/s for --seconds, then stop it with SIGTERM and report frames sent, decided and "
                    "counted as dropped, unaccounted frames (must be 0), per-camera order, latency and the "
                    "service's memory (RSS). Exit 0 when it passes, 1 otherwise.")
    parser.add_argument("--artifacts", type=Path, required=True, help="export folder of the model")
    parser.add_argument("--bundle", type=Path, required=True, help="prototype bundle folder")
    parser.add_argument("--seconds", type=positive(float), default=180.0, help="how long frames are sent")
    parser.add_argument("--rate", type=positive(float), default=40.0, help="frames per second, all cameras together")
    parser.add_argument("--cameras", type=positive(int), default=4, help="cameras sending in turn")
    parser.add_argument("--sender-restart-s", type=float, default=60.0,
                        help="re-create the sender socket this often (0: never)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0,
                        help="fail when the service's RSS grows more than this after warm-up")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for serve, e.g. --serve-arg=--threads=1 (repeatable)")
    parser.add_argument("--output", type=Path, default=None, help="also write the report as JSON here")
    parser.set_defaults(handler=run_soak_command)


def run_soak_command(args: argparse.Namespace) -> int:
    """Handler of `trustvlm soak`: 0 when the soak passed, 1 when it did not."""
    from trustvlm.benchmarks.soak import run_soak  # noqa: PLC0415 - zmq, cv2

    try:
        report = run_soak(args.artifacts, args.bundle, args.seconds, args.rate, args.cameras, args.sender_restart_s,
                          args.max_rss_growth_mb, args.serve_arg)
    except RuntimeError as error:
        raise CliError(str(error)) from error
    print(report.summary())
    if args.output is not None:
        args.output.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.passed else 1
