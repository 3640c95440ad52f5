"""`trustvlm export`: a thin argparse layer over :func:`trustvlm.export.pipeline.export_model`.

Wire it into the top-level parser with ``add_export_parser(subparsers)`` (sets ``handler``). The
export code (torch) is imported only when the command runs, so ``--help`` works without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trustvlm.cli_common import CliError, help_formatter


def add_export_parser(subparsers) -> None:
    """Add `export`: registry model -> ONNX encoders (+ fp16, int8, TensorRT) with parity gates."""
    parser = subparsers.add_parser(
        "export", formatter_class=help_formatter,
        help="turn a registry model into ONNX image/text encoders (fp16, int8, TensorRT optional), checked "
             "against the torch model",
        description="Export a registry model's image and text encoders to ONNX with dynamic batch, check them "
                    "against the torch model (parity gates) and write artifacts/<name>/manifest.json (name: "
                    "--name, else the model's; a checkpoint trained with `trustvlm train-demo` on your own data "
                    "is named after its file: --weights digits.pt -> artifacts/digits). "
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
    parser.add_argument("--tokenizer", type=Path, default=None, metavar="DIR",
                        help="local folder of the model's Hugging Face tokenizer (SigLIP: the files of "
                             "timm/ViT-B-16-SigLIP without its weights), for offline machines; copied into the "
                             "export so that `trustvlm calibrate` finds it. Without it: the local Hugging Face "
                             "cache, else the text parity gate runs on token ids within the vocabulary")
    parser.add_argument("--name", default=None,
                        help="name of the exported model: its folder <output>/<name> and the model name in its "
                             "manifest and in every report; when not given, the registry name, or for a checkpoint "
                             "trained with `trustvlm train-demo` other than the shipped one its file name without .pt")
    parser.add_argument("--output", type=Path, default=Path("artifacts"), help="artifacts root folder")
    parser.add_argument("--parity-images", type=int, default=200, help="real images used by the parity gates")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Handler of `trustvlm export`: bad input is refused before torch is imported (seconds)."""
    from trustvlm.export.errors import (ExportError, TensorRTUnavailableError,  # noqa: PLC0415
                                        WeightsUnavailableError)
    from trustvlm.export.preflight import check_export  # noqa: PLC0415
    from trustvlm.models.registry import UnknownModelError  # noqa: PLC0415
    from trustvlm.models.tokenizers import TokenizerUnavailableError  # noqa: PLC0415

    try:
        check_export(args.model, weights=args.weights, output_root=args.output, name=args.name,
                     engine=args.format == "engine", tokenizer_dir=args.tokenizer)
        from trustvlm.export.pipeline import ExportRequest, export_model  # noqa: PLC0415 - torch, only here

        result = export_model(ExportRequest(args.model, args.precision, args.format, args.weights,
                                            args.output, args.parity_images, tokenizer_dir=args.tokenizer,
                                            name=args.name))
    except (ExportError, WeightsUnavailableError, TensorRTUnavailableError, UnknownModelError,
            TokenizerUnavailableError) as error:
        raise CliError(str(error)) from error
    manifest = result.manifest
    stamp = " [random-init weights: speed work only]" if manifest["weights"]["random_init"] else ""
    named = manifest["name"] if manifest["name"] == manifest["model"] else f"{manifest['name']} ({manifest['model']})"
    print(f"exported {named}{stamp} to {result.output_dir} in "
          f"{sum(result.step_seconds.values()):.1f} s "
          f"({', '.join(f'{k} {v:.1f}s' for k, v in result.step_seconds.items())})")
    return 0
