"""Load the torch model behind a registry entry: real weights, a checkpoint file, or random init.

Weights, in order of precedence:
    WEIGHTS=random         the real architecture with random weights (speed work only;
                           every artifact and report is stamped `random-init`).
    WEIGHTS=/path/to/file  a local checkpoint: an open_clip/OpenAI state dict, or this
                           project's compact-vocabulary checkpoint.
    (nothing)              the embedded checkpoint (demo model) or open_clip's pretrained tag,
                           from the local hub cache or the network.

Image encoders of the registry (kind "image-encoder", timm backbones such as DINOv2) are loaded by
:mod:`trustvlm.export.image_encoder_loading` with the same three choices; :func:`load_model`
dispatches on the entry's kind.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from torch import nn

from trustvlm.contract.files import sha256_file
from trustvlm.export.image_encoder_loading import load_image_encoder
from trustvlm.export.loaded_model import (RANDOM_INIT, RANDOM_WEIGHTS_SEED, LoadedModel, WeightsUnavailableError,
                                          quiet_logging)
from trustvlm.models.compact_clip import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint
from trustvlm.models.registry import IMAGE_ENCODER, MODEL_CONFIG_DIR, ModelSpec
from trustvlm.models.tokenizers import OPEN_CLIP, tokenizer_info


def _register_local_configs() -> None:
    open_clip.add_model_config(MODEL_CONFIG_DIR)


def _context_length(model: nn.Module) -> int:
    clip = getattr(model, "clip", model)
    tower = getattr(clip, "text", clip)
    return int(getattr(tower, "context_length", None) or tower.positional_embedding.shape[0])


def _finish(model: nn.Module, spec: ModelSpec, weights_id: str, source: str) -> LoadedModel:
    model = model.eval().float()
    context_length = _context_length(model)
    tokenizer, info = None, tokenizer_info(spec.architecture)
    if info.kind == OPEN_CLIP:  # a Hugging Face one (SigLIP) comes from trustvlm.export.text_tokens
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length, **info.kwargs)
    scale = float(getattr(model, "logit_scale").exp().detach())
    bias = getattr(getattr(model, "clip", model), "logit_bias", None)
    return LoadedModel(model, tokenizer, weights_id, source, scale, context_length,
                       None if bias is None else float(bias.detach().reshape(-1)[0]))


def is_compact_checkpoint(path: Path) -> bool:
    """True for a checkpoint written by this project's trainer (a compact-vocabulary CLIP)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT


def _load_file(spec: ModelSpec, path: Path) -> LoadedModel:
    if not path.is_file():
        raise WeightsUnavailableError(f"{spec.name}: checkpoint {path} does not exist")
    digest = sha256_file(path)
    if is_compact_checkpoint(path):
        try:
            model, _ = load_checkpoint(path)
        except CheckpointError as error:
            raise WeightsUnavailableError(f"{spec.name}: {error}") from error
        return _finish(model, spec, f"sha256:{digest}", str(path))
    _register_local_configs()
    try:
        with quiet_logging():
            model = open_clip.create_model(spec.architecture, pretrained=str(path), device="cpu")
    except Exception as error:  # open_clip/torch raise many types for a corrupt or mismatched file
        raise WeightsUnavailableError(f"{spec.name}: cannot load {path} as {spec.architecture} weights "
                                      f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from error
    return _finish(model, spec, f"sha256:{digest}", str(path))


def _load_random(spec: ModelSpec) -> LoadedModel:
    _register_local_configs()
    torch.manual_seed(RANDOM_WEIGHTS_SEED)
    model = open_clip.create_model(spec.architecture, pretrained=None, device="cpu")
    return _finish(model, spec, RANDOM_INIT, f"random init (seed {RANDOM_WEIGHTS_SEED}) of {spec.architecture}")


def _load_embedded(spec: ModelSpec) -> LoadedModel:
    path = spec.embedded_checkpoint
    if not path.is_file():
        raise WeightsUnavailableError(f"{spec.name}: the embedded checkpoint {path} is missing; "
                                      "retrain it with `make demo-model` or pass WEIGHTS=/path/to/checkpoint")
    digest = sha256_file(path)
    if spec.checkpoint_sha256 and digest != spec.checkpoint_sha256:
        raise WeightsUnavailableError(f"{spec.name}: {path} has sha256 {digest[:12]}..., the registry expects "
                                      f"{spec.checkpoint_sha256[:12]}...; the file is corrupt or was replaced")
    return _load_file(spec, path)


def _load_pretrained(spec: ModelSpec) -> LoadedModel:
    _register_local_configs()
    try:
        with quiet_logging():
            model = open_clip.create_model(spec.architecture, pretrained=spec.pretrained, device="cpu")
    except Exception as error:  # hub/network errors come in many types
        raise WeightsUnavailableError(
            f"{spec.name}: no weights for open_clip {spec.architecture} '{spec.pretrained}' (not in the local "
            f"hub cache and the hub cannot be reached: {type(error).__name__}). Fetch {spec.checkpoint_file} "
            f"on a connected machine and pass WEIGHTS=/path/to/{spec.checkpoint_file.split(' ')[0]}, "
            "or WEIGHTS=random for speed work") from error
    return _finish(model, spec, f"open_clip:{spec.architecture}/{spec.pretrained}",
                   f"open_clip pretrained {spec.architecture} '{spec.pretrained}'")


def load_model(spec: ModelSpec, weights: str | None = None) -> LoadedModel:
    """Load the torch model of a registry entry (see the module docstring for `weights`)."""
    if spec.kind == IMAGE_ENCODER:
        return load_image_encoder(spec, weights)
    if weights == "random":
        return _load_random(spec)
    if weights:
        return _load_file(spec, Path(weights).expanduser())
    if spec.embedded_checkpoint is not None:
        return _load_embedded(spec)
    if spec.pretrained is None:
        raise WeightsUnavailableError(f"{spec.name}: no pretrained tag and no embedded checkpoint; pass WEIGHTS=")
    return _load_pretrained(spec)
