"""The export manifest: what a set of artifacts is, how it was made, and the sha256 of each file.

The runtime and the prototype bundles read this file, never the torch model. Schema versioned.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone

from trustvlm.contract.manifest import MANIFEST_SCHEMA_VERSION, installed_versions
from trustvlm.models.registry import CLIP, IMAGE_ENCODER

LIBRARIES = ("torch", "open_clip_torch", "timm", "onnx", "onnxruntime", "numpy", "tensorrt")
TOKEN_MEAN_POOLING = "mean over all output tokens (timm forward_features: class + patch tokens after the final norm)"


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape an export."""
    return {"python": platform.python_version(), **installed_versions(LIBRARIES)}


def build_manifest(*, model: str, architecture: str, weights_id: str, weights_source: str, preprocess: dict,
                   embed_dim: int, logit_scale: float | None, context_length: int | None, eot_token_id: int,
                   opset: int, precisions: dict, engines: dict | None = None, kind: str = CLIP) -> dict:
    """Assemble the manifest dictionary (see docs in README, 'Artifacts').

    An image encoder (``kind="image-encoder"``) has no ``text_input``, a null ``logit_scale`` and
    says how its embedding is pooled.
    """
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "model": model,
        "kind": kind,
        "architecture": architecture,
        "weights": {"id": weights_id, "source": weights_source, "random_init": weights_id == "random-init"},
        "preprocess": preprocess,
        "image_input": {"name": "pixels", "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                        "shape": ["batch", preprocess["size"], preprocess["size"], 3],
                        "normalization": "inside the graph: (pixels / 255 - mean) / std"},
        "text_input": {"name": "tokens", "dtype": "int64", "shape": ["batch", context_length],
                       "tokenizer": "open_clip", "eot_token_id": eot_token_id},
        "embedding": {"name": "embedding", "dim": embed_dim, "normalized": False},
        "logit_scale": logit_scale,
        "opset": opset,
        "precisions": precisions,
        "engines": engines or {},
        "libraries": library_versions(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if kind == IMAGE_ENCODER:
        del manifest["text_input"]
        manifest["embedding"]["pooling"] = TOKEN_MEAN_POOLING
    return manifest
