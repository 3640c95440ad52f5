"""Load an image encoder of the registry (kind "image-encoder": a timm backbone) for export.

Weights, as for the CLIP models (:mod:`trustvlm.export.model_loading`):
    WEIGHTS=random         the real architecture with random weights (seed 0; every artifact and
                           bundle is stamped `random-init`).
    WEIGHTS=/path/to/file  a local checkpoint: timm's safetensors / pth, or the official DINOv2
                           `dinov2_vit*14_pretrain.pth` (timm converts it).
    (nothing)              timm's pretrained tag (`<architecture>.<pretrained>`) from the local
                           hub cache or the network.

The backbone is built at the registry's input size; timm resamples pretrained position
embeddings to it (DINOv2 is trained at 518 px, TrustVLM runs it at 224 px). The loaded model is
a :class:`~trustvlm.export.torch_wrappers.TokenMeanEncoder` (mean over all output tokens).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from trustvlm.contract.files import sha256_file
from trustvlm.export.loaded_model import (RANDOM_INIT, RANDOM_WEIGHTS_SEED, LoadedModel, WeightsUnavailableError,
                                          quiet_logging)
from trustvlm.export.torch_wrappers import TokenMeanEncoder
from trustvlm.models.registry import ModelSpec


def _finish(backbone: nn.Module, weights_id: str, source: str) -> LoadedModel:
    model = TokenMeanEncoder(backbone).eval().float()
    return LoadedModel(model, None, weights_id, source, None, None)


def _create(spec: ModelSpec, **options) -> nn.Module:
    # Without a pretrained tag timm would look up the default one; random init needs neither.
    return timm.create_model(spec.timm_name if options.get("pretrained") else spec.architecture,
                             img_size=spec.preprocess.size, num_classes=0, **options)


@torch.no_grad()
def _open_layer_scales(backbone: nn.Module) -> int:
    """Set every LayerScale gamma to 1; return how many there are.

    timm initializes DINOv2's layer scales at 1e-5, which makes every randomly initialized block
    nearly the identity: a parity gate on such a model would never see the attention and MLP
    graphs. Trained DINOv2 scales are far from 1e-5 too.
    """
    gammas = [module.gamma for module in backbone.modules() if type(module).__name__ == "LayerScale"]
    for gamma in gammas:
        gamma.fill_(1.0)
    return len(gammas)


def _load_random(spec: ModelSpec) -> LoadedModel:
    torch.manual_seed(RANDOM_WEIGHTS_SEED)
    backbone = _create(spec, pretrained=False)
    opened = _open_layer_scales(backbone)
    note = f", {opened} layer scales set to 1" if opened else ""
    return _finish(backbone, RANDOM_INIT, f"random init (seed {RANDOM_WEIGHTS_SEED}{note}) of {spec.architecture}")


def _load_file(spec: ModelSpec, path: Path) -> LoadedModel:
    if not path.is_file():
        raise WeightsUnavailableError(f"{spec.name}: checkpoint {path} does not exist")
    digest = sha256_file(path)
    try:
        with quiet_logging():
            backbone = _create(spec, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    except Exception as error:  # torch/safetensors/timm raise many types for a corrupt or mismatched file
        raise WeightsUnavailableError(f"{spec.name}: cannot load {path} as {spec.timm_name} weights "
                                      f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from error
    return _finish(backbone, f"sha256:{digest}", str(path))


def _load_pretrained(spec: ModelSpec) -> LoadedModel:
    try:
        with quiet_logging():
            backbone = _create(spec, pretrained=True)
    except Exception as error:  # hub/network errors come in many types
        raise WeightsUnavailableError(
            f"{spec.name}: no weights for timm {spec.timm_name} (not in the local hub cache and the hub cannot be "
            f"reached: {type(error).__name__}). Fetch {spec.checkpoint_file} on a connected machine and pass "
            f"WEIGHTS=/path/to/{spec.checkpoint_file.split(' ')[0]}, or WEIGHTS=random for speed work") from error
    return _finish(backbone, f"timm:{spec.timm_name}", f"timm pretrained {spec.timm_name}")


def load_image_encoder(spec: ModelSpec, weights: str | None = None) -> LoadedModel:
    """Load the timm backbone of an image-encoder entry, wrapped as a token-mean encoder.

    Args:
        spec: A registry entry of kind ``image-encoder``.
        weights: ``"random"``, a checkpoint path, or None for timm's pretrained tag.

    Returns:
        The model (``encode_image``: images -> embedding) and what identifies its weights; no
        tokenizer, logit scale or context length.

    Raises:
        WeightsUnavailableError: No weights can be had (offline, missing or unreadable file).
    """
    if weights == "random":
        return _load_random(spec)
    if weights:
        return _load_file(spec, Path(weights).expanduser())
    if spec.pretrained is None:
        raise WeightsUnavailableError(f"{spec.name}: no pretrained tag in the registry; pass WEIGHTS=")
    return _load_pretrained(spec)
