"""Train a small CLIP-style model on a labelled image set (the project's demo VLM).

Contrastive training between images and captions made from class names and prompt templates:
every step encodes all captions (classes x templates) and scores each image against them; an
image's positives are its class's captions, a caption's positives are the images of its class
in the batch (in-batch negatives of the same class would be false negatives with ten classes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from trustvlm.data.fashion_mnist import LabelledImages, to_rgb
from trustvlm.export.torch_wrappers import normalize_uint8_nhwc
from trustvlm.models.prompts import build_prompts
from trustvlm.runtime.decode.preprocess import PreprocessConfig, preprocess_batch
from trustvlm.models.compact_clip import CompactVocabCLIP, compact_vocabulary, save_checkpoint
from trustvlm.training.augment import DEFAULT_AUGMENT, augment
from trustvlm.training.schedule import describe_expected_time, describe_plan, learning_rate_at, plan_training

#: Steps (after the first) whose mean time sizes the expected time of a run.
TIMED_STEPS = 5


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the demo trainer (the run's length: :mod:`trustvlm.training.schedule`)."""

    batch_size: int = 256
    templates_per_step: int = 2  # captions per class encoded each step (sampled from the templates)
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    seed: int = 0
    threads: int = 2
    steps: int | None = None   # None: automatic (8 epochs' worth, clipped to [2000, 4000] steps)
    epochs: int | None = None  # the length in epochs instead of steps
    augment: str = DEFAULT_AUGMENT


def prepare_pixels(images: np.ndarray, preprocess: PreprocessConfig) -> np.ndarray:
    """Raw images -> uint8 N x S x S x 3 exactly as the runtime preprocesses camera frames."""
    return preprocess_batch(to_rgb(images), preprocess)


def tokenize_captions(class_names, templates, context_length: int) -> torch.Tensor:
    """Token ids (classes*templates x context), class-major."""
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    prompts = [p for per_class in build_prompts(class_names, templates) for p in per_class]
    return tokenizer(prompts)


def sample_captions(num_classes: int, num_templates: int, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Indices (class-major caption list) of `per_class` random templates for every class."""
    per_class = min(per_class, num_templates)
    picks = torch.stack([torch.randperm(num_templates, generator=generator)[:per_class] for _ in range(num_classes)])
    return (torch.arange(num_classes)[:, None] * num_templates + picks).flatten()


def contrastive_loss(image_emb, caption_emb, labels, caption_labels, logit_scale) -> torch.Tensor:
    """Symmetric CLIP loss with class-level positives (soft targets)."""
    logits = logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(caption_emb, dim=-1).T
    positives = (labels[:, None] == caption_labels[None, :]).float()
    image_to_text = -(F.log_softmax(logits, dim=1) * positives / positives.sum(1, keepdim=True)).sum(1)
    text_positives = positives.T
    has_positive = text_positives.sum(1) > 0
    text_to_image = -(F.log_softmax(logits.T, dim=1) * text_positives
                      / text_positives.sum(1, keepdim=True).clamp(min=1)).sum(1)
    return 0.5 * (image_to_text.mean() + text_to_image[has_positive].mean())


def class_text_prototypes(model, caption_tokens, num_classes) -> torch.Tensor:
    """Mean of normalized caption embeddings per class, normalized (the template ensemble)."""
    emb = F.normalize(model.encode_text(caption_tokens), dim=-1).view(num_classes, -1, model_embed_dim(model))
    return F.normalize(emb.mean(1), dim=-1)


def model_embed_dim(model) -> int:
    return model.model_config["embed_dim"]


@torch.no_grad()
def zero_shot_correct(model, pixels: np.ndarray, labels: np.ndarray, caption_tokens, num_classes,
                      preprocess: PreprocessConfig, batch_size: int = 1000) -> int:
    """Images classified right zero-shot, with the template-ensemble text prototypes."""
    model.eval()
    prototypes = class_text_prototypes(model, caption_tokens, num_classes)
    mean, std = torch.tensor(preprocess.mean), torch.tensor(preprocess.std)
    correct = 0
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(pixels[start:start + batch_size])
        emb = model.encode_image(normalize_uint8_nhwc(batch, mean, std), normalize=True)
        correct += int((emb @ prototypes.T).argmax(1).eq(torch.from_numpy(labels[start:start + batch_size])).sum())
    return correct


def zero_shot_accuracy(model, pixels: np.ndarray, labels: np.ndarray, caption_tokens, num_classes,
                       preprocess: PreprocessConfig, batch_size: int = 1000) -> float:
    """Zero-shot top-1 accuracy with the template-ensemble text prototypes."""
    return zero_shot_correct(model, pixels, labels, caption_tokens, num_classes, preprocess, batch_size) / len(pixels)


class _Validation:
    """Zero-shot validation passes, timed (the first one, before training, sizes the expected time)."""

    def __init__(self, validation: LabelledImages | None, caption_tokens, preprocess: PreprocessConfig):
        self.data, self.tokens, self.preprocess = validation, caption_tokens, preprocess
        self.pixels = prepare_pixels(validation.images, preprocess) if validation is not None else None
        self.seconds, self.correct = 0.0, None

    def run(self, model) -> float | None:
        """Accuracy now (None without validation data); the model is left in train mode."""
        if self.data is None:
            return None
        started = time.perf_counter()
        self.correct = zero_shot_correct(model, self.pixels, self.data.labels, self.tokens,
                                         len(self.data.class_names), self.preprocess)
        self.seconds = time.perf_counter() - started
        model.train()
        return self.correct / len(self.data)


def train_model(train: LabelledImages, validation: LabelledImages | None, templates: list[str],
                model_config: dict, preprocess: PreprocessConfig, config: TrainConfig,
                report: Callable[[str], None] = tqdm.write) -> dict:
    """Train by the plan of `config` and return the model with its metadata (nothing is written).

    `report` receives the plan, the expected time (measured over the first steps) and one JSON
    line per validation pass. The returned ``validation`` is (correct, count) of the last pass.
    """
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    caption_tokens = tokenize_captions(train.class_names, templates, model_config["text_cfg"]["context_length"])
    num_classes = len(train.class_names)
    caption_labels = torch.arange(num_classes).repeat_interleave(len(templates))
    model = CompactVocabCLIP(model_config, compact_vocabulary(caption_tokens))
    pixels = prepare_pixels(train.images, preprocess)
    checker = _Validation(validation, caption_tokens, preprocess)
    mean, std = torch.tensor(preprocess.mean), torch.tensor(preprocess.std)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    plan = plan_training(len(pixels), config.batch_size, config.warmup_steps, config.steps, config.epochs)
    report(describe_plan(plan, len(pixels), config.learning_rate) + f"; augmentation {config.augment}")
    started_accuracy = checker.run(model)
    history, started, timed = [], time.perf_counter(), []
    labels_all = torch.from_numpy(train.labels)
    bar = tqdm(range(plan.steps), desc="train", unit="step")
    order = torch.empty(0, dtype=torch.long)
    for step in bar:
        step_started = time.perf_counter()
        position = (step % plan.steps_per_epoch) * plan.batch_size
        if position == 0:
            order = torch.randperm(len(pixels), generator=generator)
        index = order[position:position + plan.batch_size]
        images = normalize_uint8_nhwc(augment(torch.from_numpy(pixels[index.numpy()]), generator, config.augment),
                                      mean, std)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, plan, config.learning_rate)
        captions = sample_captions(num_classes, len(templates), config.templates_per_step, generator)
        loss = contrastive_loss(model.encode_image(images), model.encode_text(caption_tokens[captions]),
                                labels_all[index], caption_labels[captions], model.logit_scale.exp().clamp(max=100))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if 1 <= step <= TIMED_STEPS:  # step 0 pays for first-call set-up
            timed.append(time.perf_counter() - step_started)
            if step == TIMED_STEPS or step + 1 == plan.steps:
                report(describe_expected_time(sum(timed) / len(timed), len(timed), checker.seconds, plan))
        if plan.is_evaluation_step(step):
            entry = {"step": step + 1, "epoch": round((step + 1) / plan.steps_per_epoch, 2),
                     "loss": round(loss.item(), 4), "seconds": round(time.perf_counter() - started, 1)}
            accuracy = checker.run(model)
            if accuracy is not None:
                entry["validation_zero_shot_accuracy"] = round(accuracy, 4)
            history.append(entry)
            report(json.dumps(entry))
    bar.close()
    model.eval()
    metadata = {"class_names": list(train.class_names), "templates": templates,
                "train_config": asdict(config), "plan": plan.to_dict(), "augment": config.augment,
                "preprocess": preprocess.to_dict(), "logit_scale": float(model.logit_scale.exp().detach()),
                "history": history, "initial_validation_accuracy": started_accuracy,
                "train_images": len(pixels), "train_seconds": round(time.perf_counter() - started, 1)}
    count = 0 if validation is None else len(validation)
    return {**metadata, "model": model, "validation": (checker.correct, count)}


def save_trained(result: dict, output: Path, extra: dict | None = None) -> str:
    """Write the checkpoint of a :func:`train_model` result (metadata plus `extra`); return its sha256."""
    metadata = {key: value for key, value in result.items() if key not in ("model", "validation")}
    return save_checkpoint(result["model"], output, {**metadata, **(extra or {})})
