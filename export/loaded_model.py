"""What loading a model gives the export: the torch model and what identifies its weights.

Shared by :mod:`trustvlm.export.model_loading` (CLIP-style models) and
:mod:`trustvlm.export.image_encoder_loading` (image-only encoders such as DINOv2).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from trustvlm.export.errors import WeightsUnavailableError

__all__ = ["RANDOM_INIT", "RANDOM_WEIGHTS_SEED", "LoadedModel", "WeightsUnavailableError", "quiet_logging"]

RANDOM_INIT = "random-init"
RANDOM_WEIGHTS_SEED = 0


@dataclass
class LoadedModel:
    """A torch model ready for export, with what identifies its weights.

    Image encoders (no text tower) have no tokenizer, logit scale or context length (None); their
    ``model`` has an ``encode_image`` like the CLIP models. Models whose tokenizer is a Hugging Face
    one (SigLIP) get theirs from :mod:`trustvlm.export.text_tokens` (None here).
    """

    model: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor] | None
    weights_id: str          # "sha256:<hex>", "open_clip:<arch>/<tag>", "timm:<name>" or "random-init"
    weights_source: str      # human-readable origin
    logit_scale: float | None
    context_length: int | None
    logit_bias: float | None = None  # SigLIP: logits = scale * cos + bias (cancels in the softmax over classes)

    @property
    def is_random_init(self) -> bool:
        return self.weights_id == RANDOM_INIT


@contextmanager
def quiet_logging():
    """open_clip logs its own multi-line error on a failed download; ours is the one line."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
