"""Train a small CLIP-style model on a labelled image set (the project's demo VLM).

Contrastive training between images and captions made from class names and prompt templates:
every step encodes all captions (classes x templates) and scores each image against them; an
image's positives are its class's captions, a caption's positives are the images of its class
in the batch (in-batch negatives of the same class would be false negatives with ten classes).
"""

from __future__ import annotations

import json
import math
import time
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
from trustvlm.runtime.preprocess import PreprocessConfig, preprocess_batch
from trustvlm.models.compact_clip import CompactVocabCLIP, compact_vocabulary, save_checkpoint


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the demo trainer."""

    epochs: int = 8
    batch_size: int = 256
    templates_per_step: int = 2  # captions per class encoded each step (sampled from the templates)
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    seed: int = 0
    threads: int = 2


def prepare_pixels(images: np.ndarray, preprocess: PreprocessConfig) -> np.ndarray:
    """Raw images -> uint8 N x S x S x 3 exactly as the runtime preprocesses camera frames."""
    return preprocess_batch(to_rgb(images), preprocess)


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 3 pixels (uint8 N x H x W x 3)."""
    flip = torch.rand(len(pixels), generator=generator) < 0.5
    pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(2), pixels)
    padded = F.pad(pixels.permute(0, 3, 1, 2).float(), (3, 3, 3, 3), mode="replicate")
    dx, dy = torch.randint(0, 7, (2,), generator=generator).tolist()
    size = pixels.shape[1]
    return padded[:, :, dy:dy + size, dx:dx + size].permute(0, 2, 3, 1).to(torch.uint8)


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
def zero_shot_accuracy(model, pixels: np.ndarray, labels: np.ndarray, caption_tokens, num_classes,
                       preprocess: PreprocessConfig, batch_size: int = 1000) -> float:
    """Zero-shot top-1 accuracy with the template-ensemble text prototypes."""
    model.eval()
    prototypes = class_text_prototypes(model, caption_tokens, num_classes)
    mean, std = torch.tensor(preprocess.mean), torch.tensor(preprocess.std)
    correct = 0
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(pixels[start:start + batch_size])
        emb = model.encode_image(normalize_uint8_nhwc(batch, mean, std), normalize=True)
        correct += int((emb @ prototypes.T).argmax(1).eq(torch.from_numpy(labels[start:start + batch_size])).sum())
    return correct / len(pixels)


def effective_batch_size(num_images: int, batch_size: int) -> int:
    """The configured batch, smaller for small image folders so that an epoch has >= 16 steps."""
    return max(1, min(batch_size, max(16, num_images // 16)))


def learning_rate_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up (at most a fifth of training, for small image folders) then cosine decay."""
    warmup = max(1, min(config.warmup_steps, total // 5))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def train_model(train: LabelledImages, validation: LabelledImages | None, templates: list[str],
                model_config: dict, preprocess: PreprocessConfig, config: TrainConfig,
                output: Path) -> dict:
    """Train, save the checkpoint to `output`, and return a summary (accuracies, time, sha256)."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    caption_tokens = tokenize_captions(train.class_names, templates, model_config["text_cfg"]["context_length"])
    num_classes = len(train.class_names)
    caption_labels = torch.arange(num_classes).repeat_interleave(len(templates))
    model = CompactVocabCLIP(model_config, compact_vocabulary(caption_tokens))
    pixels = prepare_pixels(train.images, preprocess)
    val_pixels = prepare_pixels(validation.images, preprocess) if validation is not None else None
    mean, std = torch.tensor(preprocess.mean), torch.tensor(preprocess.std)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    batch_size = effective_batch_size(len(pixels), config.batch_size)
    steps_per_epoch = len(pixels) // batch_size
    total_steps = steps_per_epoch * config.epochs
    history, step, started = [], 0, time.perf_counter()
    labels_all = torch.from_numpy(train.labels)
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(pixels), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step")
        for batch_index in bar:
            index = order[batch_index * batch_size:(batch_index + 1) * batch_size]
            images = normalize_uint8_nhwc(augment(torch.from_numpy(pixels[index.numpy()]), generator), mean, std)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, total_steps, config)
            captions = sample_captions(num_classes, len(templates), config.templates_per_step, generator)
            loss = contrastive_loss(model.encode_image(images), model.encode_text(caption_tokens[captions]),
                                    labels_all[index], caption_labels[captions],
                                    model.logit_scale.exp().clamp(max=100))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        entry = {"epoch": epoch + 1, "loss": round(loss.item(), 4), "seconds": round(time.perf_counter() - started, 1)}
        if val_pixels is not None:
            entry["calib_zero_shot_accuracy"] = round(zero_shot_accuracy(
                model, val_pixels, validation.labels, caption_tokens, num_classes, preprocess), 4)
        history.append(entry)
        tqdm.write(json.dumps(entry))
    model.eval()
    metadata = {"class_names": list(train.class_names), "templates": templates,
                "train_config": asdict(config), "preprocess": preprocess.to_dict(),
                "logit_scale": float(model.logit_scale.exp().detach()), "history": history,
                "train_images": len(pixels), "train_seconds": round(time.perf_counter() - started, 1)}
    sha256 = save_checkpoint(model, output, metadata)
    return {**metadata, "checkpoint": str(output), "checkpoint_sha256": sha256, "model": model}
