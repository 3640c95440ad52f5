"""Export-ready torch wrappers around open_clip encoders.

Image encoder: uint8 RGB pixels, batch x H x W x 3, normalized inside the graph (so the device
moves 4x fewer bytes and the mean/std travel with the model). Image-only backbones (timm, e.g.
DINOv2) are first wrapped in :class:`TokenMeanEncoder`, which gives them the ``encode_image`` of
the CLIP models.

Text encoder: standard open_clip token ids (int64, batch x context). The end-of-text embedding is
pooled with a one-hot mask built from `tokens == eot_id` (first occurrence), multiplied into the
token features. This avoids ArgMax on int64 (not in every TensorRT / older ONNX Runtime build) and
never casts token ids to float (49406 and 49407 collide in fp16).
"""

from __future__ import annotations

import torch
from torch import nn

EOT_TOKEN_ID = 49407  # open_clip SimpleTokenizer's <end_of_text>, the largest id


def normalize_uint8_nhwc(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 -> normalized float N x 3 x H x W.

    The cast comes first, so that the uint8 input's only consumer in the exported graph is a Cast:
    TensorRT takes uint8 only as a network input or output, never as an intermediate tensor (a
    Transpose with a uint8 output fails at parse). Casting first changes no value.
    """
    scaled = pixels.float().permute(0, 3, 1, 2) / 255.0
    return (scaled - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


class ImageEncoderForExport(nn.Module):
    """uint8 pixels in, image embedding (not normalized) out."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(normalize_uint8_nhwc(pixels, self.mean, self.std))


class TokenMeanEncoder(nn.Module):
    """A timm vision transformer as an image encoder: the mean over all its output tokens.

    ``forward_features`` returns the final-norm features of every token (class, registers if
    any, patches); their mean is TrustVLM's auxiliary image embedding (the official code takes
    ``last_hidden_state.mean(dim=1)`` of DINOv2).
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(images).mean(dim=1)


def first_eot_mask(tokens: torch.Tensor, eot_id: int) -> torch.Tensor:
    """Float one-hot (batch x context) at the first end-of-text token of each row."""
    is_eot = (tokens == eot_id).to(torch.float32)
    return is_eot * (torch.cumsum(is_eot, dim=1) == 1).to(torch.float32)


def pool_with_mask(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum features (batch x context x width) under a one-hot mask (batch x context)."""
    return torch.bmm(mask.unsqueeze(1), features).squeeze(1)


def _project(pooled: torch.Tensor, projection) -> torch.Tensor:
    if projection is None:
        return pooled
    return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection


class TextEncoderForExport(nn.Module):
    """Token ids in, text embedding (not normalized) out, for open_clip CLIP-family models.

    Handles open_clip `CLIP` (argmax/eos pooling, rewritten to a mask), `CustomTextCLIP` with a
    `TextTransformer` tower (first/last pooling exported as is; argmax/eos rewritten), and
    the project's `CompactVocabCLIP` (token table lookup first).
    """

    def __init__(self, model: nn.Module, eot_id: int = EOT_TOKEN_ID):
        super().__init__()
        self.model = model
        self.eot_id = eot_id
        clip = getattr(model, "clip", model)
        self.token_table = getattr(model, "token_table", None)
        tower = getattr(clip, "text", None)
        self.tower = tower if tower is not None else clip
        self.pool_type = getattr(self.tower, "pool_type", getattr(clip, "text_pool_type", "argmax"))
        if getattr(self.tower, "cls_emb", None) is not None:
            raise ValueError("text towers with a CLS embedding (CoCa) are not supported for export")
        if self.pool_type not in ("argmax", "eos", "first", "last"):
            raise ValueError(f"text pool type {self.pool_type!r} is not supported for export; "
                             "expected argmax, eos, first or last")

    def _embed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = tokens
        if self.token_table is not None:
            ids = torch.index_select(self.token_table, 0, tokens.reshape(-1)).reshape(tokens.shape).long()
        if hasattr(self.tower, "_embeds"):  # TextTransformer
            return self.tower._embeds(ids)
        cast_dtype = self.tower.transformer.get_cast_dtype()
        features = self.tower.token_embedding(ids).to(cast_dtype) + self.tower.positional_embedding.to(cast_dtype)
        return features, self.tower.attn_mask

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        features, attn_mask = self._embed(tokens)
        features = self.tower.ln_final(self.tower.transformer(features, attn_mask=attn_mask))
        if self.pool_type == "first":
            pooled = features[:, 0]
        elif self.pool_type == "last":
            pooled = features[:, -1]
        else:
            eot_id = getattr(self.tower, "eos_id", None) if self.pool_type == "eos" else self.eot_id
            pooled = pool_with_mask(features, first_eot_mask(tokens, eot_id if eot_id is not None else self.eot_id))
        return _project(pooled, self.tower.text_projection)
