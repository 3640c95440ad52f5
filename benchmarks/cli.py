"""`trustvlm bench`: the CPU benchmark suite.

Wire it into the top-level parser with ``add_bench_parser(subparsers)`` (sets ``handler``). `bench`
hands every flag, ``--help`` included, to the suite's own parser (``python -m trustvlm.benchmarks``).
"""

from __future__ import annotations

import argparse


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
