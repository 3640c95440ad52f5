"""The export manifest: what a set of artifacts is, how it was made, and the sha256 of each file.

The runtime and the prototype bundles read this file, never the torch model. Schema versioned.

``logit_scale`` and ``logit_bias`` are the model's own: zero-shot logits are
``logit_scale * cos(f, T) + logit_bias`` (SigLIP learns the bias with its sigmoid loss; CLIP has
none: null). The bias is one number added to every class's logit, so it cancels in the softmax over
classes: MSP, kappa = MSP + lambda * cos(f, P[pred]), the predictions, top-k and every other score of
the trust head are the same with or without it, and calibration leaves it out. Scores on raw logits
(``max_logit``, ``energy`` in the float64 reference) move by exactly the bias for every sample: their
ranking, AUROC and AURC do not change. A per-class sigmoid (SigLIP's own training objective) is a
different score; none is computed.

``text_input.tokenizer`` is ``open_clip`` (CLIP's byte-pair tokenizer) or ``hf:<repo>`` (a Hugging
Face tokenizer, SigLIP's); ``tokenizer_folder`` names the folder of the export holding the latter's
files, when the export had them (``--tokenizer DIR``). ``parity_tokens`` says whether the text parity
gate ran on tokenized prompts or on synthetic ids within the vocabulary (no tokenizer at hand).

``model`` is the registry entry the export was made from (architecture, tokenizer, preprocessing);
``name`` names the exported model itself: its folder, and the model in every report (calibrate,
eval, serve). They differ for weights trained on your own data (``trustvlm export --name``).
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone

from trustvlm.contract.manifest import MANIFEST_SCHEMA_VERSION, installed_versions
from trustvlm.models.registry import CLIP, IMAGE_ENCODER

LIBRARIES = ("torch", "open_clip_torch", "timm", "onnx", "onnxruntime", "numpy", "tensorrt", "transformers",
             "sentencepiece")
TOKEN_MEAN_POOLING = "mean over all output tokens (timm forward_features: class + patch tokens after the final norm)"


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape an export."""
    return {"python": platform.python_version(), **installed_versions(LIBRARIES)}


def build_manifest(*, model: str, architecture: str, weights_id: str, weights_source: str, preprocess: dict,
                   embed_dim: int, logit_scale: float | None, context_length: int | None, eot_token_id: int,
                   opset: int, precisions: dict, engines: dict | None = None, kind: str = CLIP,
                   logit_bias: float | None = None, text_tokens: dict | None = None, name: str | None = None) -> dict:
    """Assemble the manifest dictionary (see docs in README, 'Artifacts').

    An image encoder (``kind="image-encoder"``) has no ``text_input``, a null ``logit_scale`` and
    says how its embedding is pooled. `text_tokens` adds to ``text_input`` (tokenizer, vocab_size,
    tokenizer_folder, parity_tokens; see the module docstring). `name` is the export's name
    (:mod:`trustvlm.export.naming`; default: `model`, the registry entry).
    """
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "model": model,
        "name": name or model,
        "kind": kind,
        "architecture": architecture,
        "weights": {"id": weights_id, "source": weights_source, "random_init": weights_id == "random-init"},
        "preprocess": preprocess,
        "image_input": {"name": "pixels", "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                        "shape": ["batch", preprocess["size"], preprocess["size"], 3],
                        "normalization": "inside the graph: (pixels / 255 - mean) / std"},
        "text_input": {"name": "tokens", "dtype": "int64", "shape": ["batch", context_length],
                       "tokenizer": "open_clip", "eot_token_id": eot_token_id, **(text_tokens or {})},
        "embedding": {"name": "embedding", "dim": embed_dim, "normalized": False},
        "logit_scale": logit_scale,
        "logit_bias": logit_bias,
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
