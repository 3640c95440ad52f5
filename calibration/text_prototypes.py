"""Text prototypes: one normalized embedding per class from prompt templates.

Prompts are encoded by the exported text encoder through the same engine layer the runtime uses,
so prototypes match what the device computes. A template ensemble is averaged after
normalization, then normalized again (CLIP's recipe).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trustvlm.calibration.tokenizer import get_tokenizer
from trustvlm.contract.manifest import encoder_path, read_manifest
from trustvlm.models.prompts import build_prompts
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalize each row (float64 in, float64 out)."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def build_text_prototypes(artifacts_dir: str | os.PathLike, class_names, templates: list[str],
                          precision: str = "fp32", providers=("cpu",), batch_size: int = 256) -> np.ndarray:
    """Class x D float64 text prototypes from the exported text encoder."""
    manifest = read_manifest(artifacts_dir)
    engine = OnnxEncoder(encoder_path(Path(artifacts_dir), manifest, "text", precision), providers,
                         precision=precision)
    prompts = [p for per_class in build_prompts(class_names, templates) for p in per_class]
    embeddings = engine.encode_in_batches(get_tokenizer(manifest, artifacts_dir)(prompts), batch_size).astype(np.float64)
    per_prompt = normalize_rows(embeddings).reshape(len(class_names), len(templates), -1)
    return normalize_rows(per_prompt.mean(axis=1))
