"""`trustvlm models`: list the model registry (models/registry.json).

Wire it into the top-level parser with ``add_models_parser(subparsers)`` (sets ``handler``).
"""

from __future__ import annotations

import argparse

from trustvlm.cli_common import help_formatter


def add_models_parser(subparsers) -> None:
    """Add `models`: one line per registry model."""
    parser = subparsers.add_parser(
        "models", formatter_class=help_formatter,
        help="list the models `trustvlm export --model` accepts, with architecture and input size",
        description="List the named models of models/registry.json.")
    parser.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    """Handler of `trustvlm models`."""
    from trustvlm.models.registry import get_model_spec, list_models  # noqa: PLC0415

    for name in list_models():
        spec = get_model_spec(name)
        print(f"{name:15s} {spec.architecture:22s} pretrained={spec.pretrained or '-':8s} "
              f"embed={spec.embed_dim:<5d} input={spec.preprocess.size}px")
    return 0
