"""The tokenizer that matches an export (open_clip's, chosen from the manifest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trustvlm.models.registry import MODEL_CONFIG_DIR


def get_tokenizer(manifest: dict):
    """Return a callable: list of prompts -> int64 token ids (N x context_length)."""
    import open_clip  # noqa: PLC0415 - calibration-side dependency

    context_length = int(manifest["text_input"]["shape"][1])
    architecture = manifest["architecture"]
    if (Path(MODEL_CONFIG_DIR) / f"{architecture}.json").exists():
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    else:
        tokenizer = open_clip.get_tokenizer(architecture, context_length=context_length)
    return lambda prompts: tokenizer(list(prompts)).numpy().astype(np.int64)
