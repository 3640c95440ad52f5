"""A small open_clip CLIP whose text tower knows only the token ids its captions use.

A domain model trained on a few class names needs a few hundred tokens, not CLIP's 49,408: the
token embedding shrinks from 6.3M to ~30k parameters. The model still takes standard open_clip
token ids; a lookup table maps them to compact ids (0 = padding, 1 = unknown, then the used ids
in increasing order, so the end-of-text token stays the largest id and open_clip's argmax
pooling keeps working).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import open_clip
import torch
from torch import nn

CHECKPOINT_FORMAT = "trustvlm-compact-clip/1"
FULL_VOCAB_SIZE = 49408
PAD_ID, UNKNOWN_ID = 0, 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or of an unknown format."""


def compact_vocabulary(token_batches: torch.Tensor) -> list[int]:
    """The sorted non-padding token ids used by a batch of tokenized captions."""
    return sorted(int(t) for t in torch.unique(token_batches) if int(t) != PAD_ID)


class CompactVocabCLIP(nn.Module):
    """open_clip CLIP + the table from full token ids to the compact ids its text tower uses."""

    def __init__(self, model_config: dict, vocab_ids: list[int]):
        super().__init__()
        config = dict(model_config)
        config["text_cfg"] = dict(config["text_cfg"], vocab_size=len(vocab_ids) + 2)
        self.model_config = config
        self.vocab_ids = list(vocab_ids)
        self.clip = open_clip.model.CLIP(**config)
        table = torch.full((FULL_VOCAB_SIZE,), UNKNOWN_ID, dtype=torch.int32)
        table[PAD_ID] = PAD_ID
        table[torch.tensor(self.vocab_ids)] = torch.arange(2, len(self.vocab_ids) + 2, dtype=torch.int32)
        self.register_buffer("token_table", table, persistent=False)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def compact_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full open_clip token ids -> the compact ids of this model's text tower."""
        return self.token_table[tokens].long()

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_image(images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(self.compact_tokens(tokens), normalize=normalize)


def save_checkpoint(model: CompactVocabCLIP, path: str | os.PathLike, metadata: dict) -> str:
    """Save weights in fp16 with everything needed to rebuild the model; return the sha256."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.clip.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "model_config": model.model_config,
               "vocab_ids": model.vocab_ids, "state_dict": state, "metadata": metadata}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".partial")
    temporary.write_bytes(data)
    os.replace(temporary, target)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path: str | os.PathLike) -> tuple[CompactVocabCLIP, dict]:
    """Rebuild a CompactVocabCLIP (float32, eval mode) and return it with its metadata."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many types for a corrupt file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: expected a {CHECKPOINT_FORMAT} checkpoint")
    model = CompactVocabCLIP(payload["model_config"], payload["vocab_ids"])
    model.clip.load_state_dict({k: v.float() if v.is_floating_point() else v
                                for k, v in payload["state_dict"].items()})
    return model.eval(), payload.get("metadata", {})
