"""The `trustvlm` command: one subcommand per stage of the pipeline, assembled from each package's cli.py.

Each subcommand is a thin layer over a library call, defined next to that library; heavy imports
(torch) happen only in the subcommands that need them, so the runtime commands work on a device
without torch. What every subcommand shares (:class:`CliError`, the help layout, the dispatch) is in
:mod:`trustvlm.cli_common`.
"""

from __future__ import annotations

import argparse
import sys

from trustvlm.benchmarks.cli import add_bench_parser, add_soak_parser, run_bench
from trustvlm.calibration.cli import add_calibrate_parser, add_eval_parser
from trustvlm.cli_common import CliError, run_handler
from trustvlm.cluster.cli import add_cluster_options
from trustvlm.export.cli import add_export_parser
from trustvlm.models.cli import add_models_parser
from trustvlm.pipelines.cli import add_controller_parser, add_demo_parser, add_source_parser, add_zeroshot_parser
from trustvlm.pipelines.bundles_cli import add_bundles_parser
from trustvlm.pipelines.decode_gate_cli import add_decode_gate_parser
from trustvlm.pipelines.demo_recalibrate_cli import add_demo_recalibrate_parser
from trustvlm.runtime.cli import add_keys_parser, add_serve_parser
from trustvlm.runtime.monitor.audit_cli import add_audit_parser
from trustvlm.training.cli import add_train_parser

__all__ = ["CliError", "SUBCOMMANDS", "build_parser", "main"]

#: The subcommands in the order `trustvlm --help` lists them: the pipeline's stages, then the tools.
SUBCOMMANDS = (add_export_parser, add_zeroshot_parser, add_calibrate_parser, add_eval_parser, add_serve_parser,
               add_keys_parser, add_audit_parser, add_bundles_parser, add_source_parser, add_controller_parser,
               add_demo_parser, add_demo_recalibrate_parser, add_soak_parser, add_bench_parser, add_train_parser,
               add_models_parser, add_decode_gate_parser)

EPILOG = """examples:
  trustvlm export --model demo_fmnist
  trustvlm export --model clip_vitb32 --weights random
  trustvlm export --model clip_vitb32 --weights ~/ViT-B-32-openai.pt --precision fp16 --format engine
  trustvlm calibrate --artifacts artifacts/demo_fmnist --alpha 0.05 --delta 0.1
  trustvlm eval --artifacts artifacts/demo_fmnist
  trustvlm serve --artifacts artifacts/demo_fmnist --bundle artifacts/demo_fmnist/bundle
  trustvlm source --video /usr/share/doc/opencv-doc/examples/data/vtest.avi --fps native
  trustvlm controller --connect tcp://127.0.0.1:5556
  trustvlm demo --artifacts artifacts/demo_fmnist      # the end-to-end streaming demo (`make demo`)

`trustvlm COMMAND --help` explains each command and its flags.
"""


def build_parser() -> argparse.ArgumentParser:
    """The `trustvlm` parser with every subcommand of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="trustvlm", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="trustvlm-edge: tell a robot, frame by frame, whether to trust what a vision-language "
                    "model said about a camera image (TrustVLM).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for add in SUBCOMMANDS:
        add(subparsers)
    add_cluster_options(subparsers)  # `serve --cluster`: scoring on a Ray cluster
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn expected failures into one line and exit 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every flag, --help included, belongs to the benchmark suite's parser
        return run_bench(argparse.Namespace(bench_args=argv[1:]))
    return run_handler(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
