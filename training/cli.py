"""`trustvlm train-demo`: train the demo model or a domain model on an image folder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from trustvlm.data.fashion_mnist import LabelledImages, load_split
from trustvlm.data.image_folder import load_image_folder
from trustvlm.models.prompts import get_templates
from trustvlm.models.registry import get_model_spec
from trustvlm.training.train_demo import TrainConfig, prepare_pixels, train_model, zero_shot_accuracy, \
    tokenize_captions

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
