"""`trustvlm decode-gate`: a thin argparse layer over :func:`trustvlm.pipelines.decode_gate.run_decode_gate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from trustvlm.cli_common import CliError, ExamplesHelpFormatter, positive

EPILOG = """examples:
  trustvlm decode-gate --artifacts artifacts/demo_fmnist
  trustvlm decode-gate --artifacts artifacts/ViT-B-32 --precision fp16 --frames-per-video 20
"""


def add_decode_gate_parser(subparsers) -> None:
    """Add `decode-gate`: allow (or not) reduced-resolution JPEG decoding for an export."""
    parser = subparsers.add_parser(
        "decode-gate", formatter_class=ExamplesHelpFormatter, epilog=EPILOG,
        help="check whether JPEG decoded at 1/2, 1/4, 1/8 scale keeps the model's embeddings (serve uses it if so)",
        description="Embed real video frames and labelled images decoded at full size and at a reduced JPEG scale "
                    "(what `serve --decode-scale auto` does), compare (cosine >= 0.995, top-1 agreement >= 99%), "
                    "and write decode_gate.json into the artifacts folder. `trustvlm serve` decodes reduced only "
                    "for an encoder that passed; re-run after every export.")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo_fmnist"), help="export folder")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "fp16", "int8"],
                        help="encoders to check (none: every precision of the export)")
    parser.add_argument("--frames-per-video", type=positive(int), default=40,
                        help="frames of each OpenCV sample video (vtest, Megamind, tree), each also at 1920x1080")
    parser.add_argument("--labelled", type=positive(int), default=1200, help="Fashion-MNIST test images")
    parser.add_argument("--threads", type=positive(int), default=None, help="ONNX Runtime intra-op threads (none: its choice)")
    parser.set_defaults(handler=run_decode_gate_command)


def run_decode_gate_command(args: argparse.Namespace) -> int:
    """Handler of `trustvlm decode-gate`: exit 0 when every encoder passed, 1 otherwise."""
    from trustvlm.contract.manifest import ArtifactError  # noqa: PLC0415 - keep --help light
    from trustvlm.pipelines.decode_gate import run_decode_gate  # noqa: PLC0415

    try:
        record = run_decode_gate(args.artifacts, tuple(args.precision or ()), args.frames_per_video, args.labelled,
                                 args.threads)
    except (ArtifactError, ValueError) as error:
        raise CliError(str(error)) from error
    for precision, entry in record["encoders"].items():
        print(f"{precision}: {'passed' if entry['passed'] else 'FAILED'}: min cosine {entry['min_cosine']:.4f} "
              f"(mean {entry['mean_cosine']:.4f}) over {entry['frames']} frames and {entry['labelled']} labelled "
              f"images, top-1 agreement {entry['top1_agreement']:.2%}, headroom "
              f"{entry['headroom']}, scales 1/{', 1/'.join(map(str, entry['scales']))}"
              + "".join(f"\n  headroom {h}: min cosine {t['min_cosine']:.4f}, top-1 agreement {t['top1_agreement']:.2%}"
                        for h, t in entry["tried"].items()))
    print(f"wrote {Path(args.artifacts) / 'decode_gate.json'}: reduced decode "
          f"{'allowed' if record['passed'] else 'refused for the encoders that failed'}")
    return 0 if record["passed"] else 1
