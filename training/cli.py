"""`trustvlm train-demo`: train the demo model or a domain model on an image folder.

Wire it into the top-level parser with ``add_train_parser(subparsers)`` (sets ``handler``). The
trainer (torch, open_clip) is imported only when the command runs, so ``--help`` works without it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from trustvlm.cli_common import help_formatter
from trustvlm.data.fashion_mnist import LabelledImages, load_split
from trustvlm.data.image_folder import load_image_folder
from trustvlm.models.prompts import get_templates
from trustvlm.models.registry import get_model_spec

DEMO_MODEL = "demo_fmnist"


def _split_validation(data: LabelledImages, fraction: float = 0.1, seed: int = 0):
    """Hold out a validation part of a user's image folder (per-image, seeded)."""
    import numpy as np  # noqa: PLC0415

    order = np.random.default_rng(seed).permutation(len(data))
    cut = max(1, int(len(data) * fraction))
    pick = lambda idx: LabelledImages(data.images[idx], data.labels[idx], data.class_names, data.indices[idx])  # noqa: E731
    return pick(np.sort(order[cut:])), pick(np.sort(order[:cut]))


def train_from_args(data: str, output: Path, epochs: int | None, seed: int) -> str:
    """Train on Fashion-MNIST or an image folder; return a one-paragraph summary."""
    from trustvlm.training.train_demo import (TrainConfig, prepare_pixels, tokenize_captions,  # noqa: PLC0415
                                              train_model, zero_shot_accuracy)

    spec = get_model_spec(DEMO_MODEL)
    model_config = json.loads(spec.local_config.read_text())
    config = TrainConfig(seed=seed) if epochs is None else TrainConfig(seed=seed, epochs=epochs)
    templates = get_templates("ensemble")
    if data == "fashion-mnist":
        train, validation, test = load_split("train"), load_split("calib"), load_split("test")
    else:
        train, validation = _split_validation(load_image_folder(data, size=spec.preprocess.size), seed=seed)
        test = validation
    result = train_model(train, validation, templates, model_config, spec.preprocess, replace(config), output)
    tokens = tokenize_captions(test.class_names, templates, model_config["text_cfg"]["context_length"])
    accuracy = zero_shot_accuracy(result["model"], prepare_pixels(test.images, spec.preprocess), test.labels,
                                  tokens, len(test.class_names), spec.preprocess)
    return (f"trained in {result['train_seconds']:.0f} s; zero-shot accuracy {100 * accuracy:.2f}% on "
            f"{len(test)} {'test' if data == 'fashion-mnist' else 'validation'} images; logit scale "
            f"{result['logit_scale']:.2f}; wrote {output} (sha256 {result['checkpoint_sha256']})")


def add_train_parser(subparsers) -> None:
    """Add `train-demo`: contrastive training of the small demo model (or one on your own images)."""
    parser = subparsers.add_parser(
        "train-demo", formatter_class=help_formatter,
        help="train the small CLIP-style demo model (or one on your own labelled image folder)",
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


def run_train(args: argparse.Namespace) -> int:
    """Handler of `trustvlm train-demo`."""
    print(train_from_args(args.data, args.output, args.epochs, args.seed))
    return 0
