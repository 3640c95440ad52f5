"""`trustvlm train-demo`: train the demo model or a domain model on an image folder.

Wire it into the top-level parser with ``add_train_parser(subparsers)`` (sets ``handler``). The
trainer (torch, open_clip) is imported only when the command runs, so ``--help`` works without it.

A run prints its plan (steps, epochs, expected time measured over its first steps) and ends with a
one-sided binomial test of the validation zero-shot accuracy against chance
(:mod:`trustvlm.training.chance`): a model not clearly above chance is refused (non-zero exit, no
checkpoint) unless ``--keep-weak``, which writes it marked ``"weak": true``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trustvlm.cli_common import CliError, help_formatter, positive
from trustvlm.data.fashion_mnist import LabelledImages, load_split
from trustvlm.data.image_folder import load_image_folder
from trustvlm.models.prompts import get_templates
from trustvlm.models.registry import get_model_spec
from trustvlm.training.augment import AUGMENT_POLICIES, DEFAULT_AUGMENT

DEMO_MODEL = "demo_fmnist"
FASHION_MNIST = "fashion-mnist"
SHIPPED_OUTPUT = Path("models/checkpoints/demo_fmnist.pt")


def _split_validation(data: LabelledImages, fraction: float = 0.1, seed: int = 0):
    """Hold out a validation part of a user's image folder (per-image, seeded)."""
    import numpy as np  # noqa: PLC0415

    order = np.random.default_rng(seed).permutation(len(data))
    cut = max(1, int(len(data) * fraction))
    pick = lambda idx: LabelledImages(data.images[idx], data.labels[idx], data.class_names, data.indices[idx])  # noqa: E731
    return pick(np.sort(order[cut:])), pick(np.sort(order[:cut]))


def default_output(data: str) -> Path:
    """The shipped checkpoint's path for Fashion-MNIST, else ``<folder name>.pt`` in the current folder."""
    return SHIPPED_OUTPUT if data == FASHION_MNIST else Path(f"{Path(data).resolve().name}.pt")


def _check_output(data: str, output: Path) -> None:
    shipped = get_model_spec(DEMO_MODEL).embedded_checkpoint
    if data != FASHION_MNIST and shipped is not None and output.resolve() == shipped.resolve():
        raise CliError(f"--output {output} is the shipped demo checkpoint; a model trained on {data} needs its own "
                       "file (e.g. --output my_model.pt)")


def _load(data: str, size: int, seed: int) -> tuple[LabelledImages, LabelledImages, LabelledImages, str]:
    """Training, validation and test images, and one line saying what they are."""
    if data == FASHION_MNIST:
        train, validation, test = load_split("train"), load_split("calib"), load_split("test")
        return train, validation, test, (f"data: Fashion-MNIST, {len(train):,} training images, {len(validation):,} "
                                         f"validation (calibration split), {len(test):,} test")
    try:
        images = load_image_folder(data, size=size)
    except (FileNotFoundError, ValueError) as error:
        raise CliError(f"--data {data}: {error}") from error
    train, validation = _split_validation(images, seed=seed)
    return train, validation, validation, (
        f"data: {data}, {len(images):,} images of {len(images.class_names)} classes "
        f"({', '.join(images.class_names)}): {len(train):,} training, {len(validation):,} validation (10%, seed {seed})")


def train_from_args(data: str, output: Path | None, epochs: int | None, seed: int, steps: int | None = None,
                    augment: str = DEFAULT_AUGMENT, keep_weak: bool = False, threads: int = 2) -> str:
    """Train on Fashion-MNIST or an image folder, test the result against chance, write the checkpoint.

    Returns:
        A one-paragraph summary.

    Raises:
        CliError: Unreadable data, an output that would replace the shipped checkpoint, or a model whose
            validation accuracy is not clearly above chance (without `keep_weak`).
    """
    from trustvlm.training.chance import check_above_chance  # noqa: PLC0415 - scipy, torch: only here
    from trustvlm.training.train_demo import (TrainConfig, prepare_pixels, save_trained,  # noqa: PLC0415
                                              tokenize_captions, train_model, zero_shot_accuracy)

    output = default_output(data) if output is None else output
    _check_output(data, output)
    spec = get_model_spec(DEMO_MODEL)
    model_config = json.loads(spec.local_config.read_text())
    config = TrainConfig(seed=seed, steps=steps, epochs=epochs, augment=augment, threads=threads)
    templates = get_templates("ensemble")
    train, validation, test, described = _load(data, spec.preprocess.size, seed)
    print(described)
    result = train_model(train, validation, templates, model_config, spec.preprocess, config)
    verdict = check_above_chance(*result["validation"], classes=len(train.class_names))
    if verdict.above_chance or keep_weak:
        print(verdict.describe())
    else:
        raise CliError(f"{verdict.describe()}; wrote no checkpoint. Check that each sub-folder holds its class's "
                       "images, train longer (--steps), or write it anyway with --keep-weak")
    sha256 = save_trained(result, output, {"validation": verdict.to_dict(), "weak": not verdict.above_chance,
                                           "data": str(data)})
    accuracy, which = verdict.accuracy, "validation"
    if data == FASHION_MNIST:
        tokens = tokenize_captions(test.class_names, templates, model_config["text_cfg"]["context_length"])
        accuracy, which = zero_shot_accuracy(result["model"], prepare_pixels(test.images, spec.preprocess),
                                             test.labels, tokens, len(test.class_names), spec.preprocess), "test"
    weak = " WEAK (kept with --keep-weak: not clearly above chance)" if not verdict.above_chance else ""
    export = ("" if data == FASHION_MNIST else f"; export it with `trustvlm export --model {DEMO_MODEL} --weights "
              f"{output}` (writes artifacts/{output.stem}/)")
    return (f"trained in {result['train_seconds']:.0f} s ({result['plan']['steps']} steps, augmentation "
            f"{augment}); zero-shot accuracy {100 * accuracy:.2f}% on {len(test)} {which} images; logit scale "
            f"{result['logit_scale']:.2f}; wrote {output}{weak} (sha256 {sha256}){export}")


def add_train_parser(subparsers) -> None:
    """Add `train-demo`: contrastive training of the small demo model (or one on your own images)."""
    parser = subparsers.add_parser(
        "train-demo", formatter_class=help_formatter,
        help="train the small CLIP-style demo model (or one on your own labelled image folder)",
        description="Train a small open_clip CLIP contrastively on labelled images with captions built from "
                    "class names and prompt templates. Default data: Fashion-MNIST (55,000 training images; "
                    "the 5,000-image calibration split is never trained on). An image folder is split 90/10 "
                    "into training and validation. The run is scheduled in optimisation steps (the plan and "
                    "the expected time are printed first); at the end the validation zero-shot accuracy must "
                    "be clearly above chance (one-sided binomial test, p < 0.001), else no checkpoint is "
                    "written and the exit status is 1. Needs the [export] extra.")
    parser.add_argument("--data", default=FASHION_MNIST,
                        help="'fashion-mnist' or an image folder with one sub-folder per class (the sub-folder "
                             "names are the class names the captions use)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"checkpoint file to write; when not given, {SHIPPED_OUTPUT} for fashion-mnist and "
                             "<folder name>.pt in the current folder for an image folder")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive(), default=None,
                        help="optimisation steps; when not given, 8 epochs' worth, at least 2000, at most 4000")
    length.add_argument("--epochs", type=positive(), default=None, help="the run's length in epochs instead")
    parser.add_argument("--augment", default=DEFAULT_AUGMENT, choices=AUGMENT_POLICIES,
                        help="shift-erase: each image moved by up to 3 pixels and half of them with a square "
                             "erased (safe for any image); shift: one shift of up to 3 pixels per batch; flip: "
                             "mirror half the images, then shift (only for mirror-symmetric classes: never "
                             "digits, text or signs; the shipped Fashion-MNIST model used it); none")
    parser.add_argument("--keep-weak", action="store_true",
                        help="write the checkpoint even when validation accuracy is not clearly above chance "
                             "(marked weak in its metadata)")
    parser.add_argument("--threads", type=positive(), default=2,
                        help="torch CPU threads (on a machine busy with other work, 1 is often faster)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Handler of `trustvlm train-demo`."""
    print(train_from_args(args.data, args.output, args.epochs, args.seed, steps=args.steps, augment=args.augment,
                          keep_weak=args.keep_weak, threads=args.threads))
    return 0
