"""The `trustvlm` command: one subcommand per stage of the pipeline.

Each subcommand is a thin layer over a library call; heavy imports (torch) happen only in the
subcommands that need them, so the runtime commands work on a device without torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """stages:
  export      turn a registry model into ONNX encoders (+ fp16, + TensorRT engine) with parity gates
  calibrate   build a prototype bundle: text/image prototypes, lambda, guaranteed-risk accept threshold
  eval        misclassification-detection table (MSP, baselines, TrustVLM, TrustVLM*), clean and shifted
  serve       the streaming service: ZeroMQ frames in, accept/defer decisions out (no torch)
  keys        write a CurveZMQ key pair for authenticated ingest/publish
  source      publish frames (video, camera, RTSP, image folder, labelled dataset replay) to the service
  controller  reference robot controller: decisions, heartbeat watchdog (SAFE state), live accuracy
  zeroshot    zero-shot accuracy of exported encoders on the Fashion-MNIST test images
  train-demo  train the small demo VLM (or your own domain model) on a labelled image folder
  bench       CPU benchmarks -> BENCHMARKS.md (`make bench`; `make bench-gpu` on a CUDA machine)
  models      list the model registry

examples:
  trustvlm export --model demo_fmnist
  trustvlm export --model clip_vitb32 --weights random
  trustvlm export --model clip_vitb32 --weights ~/ViT-B-32-openai.pt --precision fp16 --format engine
  trustvlm calibrate --artifacts artifacts/demo_fmnist --alpha 0.05 --delta 0.1
  trustvlm eval --artifacts artifacts/demo_fmnist
  trustvlm serve --artifacts artifacts/demo_fmnist --bundle artifacts/demo_fmnist/bundle
  trustvlm source --video /usr/share/doc/opencv-doc/examples/data/vtest.avi --fps native
  trustvlm controller --connect tcp://127.0.0.1:5556
  python -m trustvlm.pipelines.demo    # the end-to-end streaming demo (`make demo`)
"""


class CliError(Exception):
    """A failure that is reported as one line and a non-zero exit."""


def help_formatter(prog):
    """The help layout every subcommand shares: defaults shown, flags aligned."""
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=32)


def add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", formatter_class=help_formatter,
        help="export a model's image and text encoders to ONNX (and TensorRT)",
        description="Export a registry model's image and text encoders to ONNX with dynamic batch, check them "
                    "against the torch model (parity gates) and write artifacts/<model>/manifest.json. "
                    "Needs the [export] extra (torch, open_clip_torch, onnx).")
    parser.add_argument("--model", required=True, help="registry name (`trustvlm models` lists them)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                        help="fp16 also writes *.fp16.onnx, gated against fp32; int8 also writes "
                             "image_encoder.int8.onnx (ONNX Runtime static quantization, for CPUs; text stays fp32)")
    parser.add_argument("--format", default="onnx", choices=["onnx", "engine"],
                        help="engine also builds TensorRT engines (needs tensorrt and a GPU)")
    parser.add_argument("--weights", default=None,
                        help="'random' for random-init weights (speed work), or a checkpoint path; "
                             "default: embedded checkpoint or open_clip's pretrained tag")
    parser.add_argument("--output", type=Path, default=Path("artifacts"), help="artifacts root folder")
    parser.add_argument("--parity-images", type=int, default=200, help="real images used by the parity gates")
    parser.set_defaults(handler=run_export)


def run_export(args) -> int:
    from trustvlm.export.model_loading import WeightsUnavailableError
    from trustvlm.export.pipeline import ExportError, ExportRequest, export_model
    from trustvlm.export.tensorrt_engine import TensorRTUnavailableError
    from trustvlm.models.registry import UnknownModelError

    try:
        result = export_model(ExportRequest(args.model, args.precision, args.format, args.weights,
                                            args.output, args.parity_images))
    except (ExportError, WeightsUnavailableError, TensorRTUnavailableError, UnknownModelError) as error:
        raise CliError(str(error)) from error
    manifest = result.manifest
    stamp = " [random-init weights: speed work only]" if manifest["weights"]["random_init"] else ""
    print(f"exported {manifest['model']}{stamp} to {result.output_dir} in "
          f"{sum(result.step_seconds.values()):.1f} s "
          f"({', '.join(f'{k} {v:.1f}s' for k, v in result.step_seconds.items())})")
    return 0


def add_zeroshot_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "zeroshot", formatter_class=help_formatter,
        help="zero-shot accuracy of exported encoders on Fashion-MNIST test images",
        description="Run the exported ONNX encoders (ONNX Runtime, no torch model) on the 10,000 Fashion-MNIST "
                    "test images and report zero-shot top-1 accuracy with the template ensemble.")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo_fmnist"), help="export folder")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="which encoders to run")
    parser.add_argument("--templates", default="ensemble", choices=["ensemble", "paper"], help="prompt set")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    parser.set_defaults(handler=run_zeroshot)


def run_zeroshot(args) -> int:
    from trustvlm.pipelines.zero_shot_check import zero_shot_check
    from trustvlm.contract.manifest import ArtifactError

    try:
        result = zero_shot_check(args.artifacts, args.precision, args.templates, args.limit)
    except ArtifactError as error:
        raise CliError(str(error)) from error
    print(result.summary())
    return 0


def add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-demo", formatter_class=help_formatter,
        help="train the small CLIP-style demo model (or one on your own image folder)",
        description="Train a small open_clip CLIP contrastively on labelled images with captions built from "
                    "class names and prompt templates. Default data: Fashion-MNIST (55,000 training images; "
                    "the 5,000-image calibration split is never trained on). Needs the [export] extra.")
    parser.add_argument("--data", default="fashion-mnist",
                        help="'fashion-mnist' or an image folder with one sub-folder per class")
    parser.add_argument("--output", type=Path, default=Path("models/checkpoints/demo_fmnist.pt"),
                        help="checkpoint file to write")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the trainer's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.set_defaults(handler=run_train)


def run_train(args) -> int:
    from trustvlm.training.cli import train_from_args

    summary = train_from_args(args.data, args.output, args.epochs, args.seed)
    print(summary)
    return 0


def add_bench_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", add_help=False,
        help="CPU benchmarks -> BENCHMARKS.md (`trustvlm bench --help` lists the benchmark flags)")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="flags of python -m trustvlm.benchmarks")
    parser.set_defaults(handler=run_bench)


def run_bench(args) -> int:
    from trustvlm.benchmarks.suite import main as bench_main

    return bench_main(args.bench_args)


def add_models_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the model registry", formatter_class=help_formatter,
                                   description="List the named models of models/registry.json.")
    parser.set_defaults(handler=run_models)


def run_models(args) -> int:
    from trustvlm.models.registry import get_model_spec, list_models

    for name in list_models():
        spec = get_model_spec(name)
        print(f"{name:15s} {spec.architecture:22s} pretrained={spec.pretrained or '-':8s} "
              f"embed={spec.embed_dim:<5d} input={spec.preprocess.size}px")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trustvlm", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="trustvlm-edge: tell a robot, frame by frame, whether to trust what a vision-language "
                    "model said about a camera image (TrustVLM).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from trustvlm.calibration.cli import add_calibrate_parser, add_eval_parser  # noqa: PLC0415 - uses CliError
    from trustvlm.pipelines.cli import add_controller_parser, add_source_parser  # noqa: PLC0415
    from trustvlm.runtime.cli import add_keys_parser, add_serve_parser  # noqa: PLC0415

    for add in (add_export_parser, add_calibrate_parser, add_eval_parser, add_serve_parser, add_keys_parser,
                add_source_parser, add_controller_parser, add_zeroshot_parser, add_train_parser, add_bench_parser, add_models_parser):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn expected failures into one line and exit 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every flag, --help included, belongs to the benchmark suite's parser
        return run_bench(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CliError as error:
        print(f"trustvlm {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"trustvlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
