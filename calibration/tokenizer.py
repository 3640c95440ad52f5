"""The tokenizer that matches an export (chosen from the manifest's ``text_input.tokenizer``).

``open_clip``: CLIP's byte-pair tokenizer, shipped inside open_clip. ``hf:<repo>`` (SigLIP): a
Hugging Face tokenizer, loaded from local files only (the hub is never contacted), in this order:
the export's ``tokenizer/`` folder (``trustvlm export --tokenizer DIR`` puts it there), then the
local Hugging Face cache. Without either, :class:`TokenizerUnavailableError` (a FileNotFoundError)
says in one line what to fetch and where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trustvlm.models.registry import MODEL_CONFIG_DIR
from trustvlm.models.tokenizers import (HF_PREFIX, TOKENIZER_FOLDER, TokenizerInfo, TokenizerUnavailableError,
                                        load_hf_tokenizer, tokenizer_info)

__all__ = ["TokenizerUnavailableError", "get_tokenizer"]


def _hf_tokenizer(manifest: dict, artifacts_dir: str | os.PathLike | None):
    text_input = manifest["text_input"]
    info = TokenizerInfo(text_input["tokenizer"], int(text_input["shape"][1]), int(text_input["vocab_size"]),
                         tokenizer_info(manifest["architecture"]).kwargs)  # open_clip's cleaning options
    model = manifest.get("model", manifest["architecture"])
    folder = None if artifacts_dir is None else Path(artifacts_dir) / TOKENIZER_FOLDER
    where = (f"put them in {folder}/ (or re-export with --tokenizer DIR)" if folder is not None
             else "re-export with --tokenizer DIR")
    if folder is not None and folder.is_dir():
        return load_hf_tokenizer(info, folder, model, where)
    return load_hf_tokenizer(info, info.hf_name, model, where)


def get_tokenizer(manifest: dict, artifacts_dir: str | os.PathLike | None = None):
    """Return a callable: list of prompts -> int64 token ids (N x context_length).

    `artifacts_dir` (the export folder) is where an ``hf:`` tokenizer's files are looked for first.
    """
    import open_clip  # noqa: PLC0415 - calibration-side dependency

    context_length = int(manifest["text_input"]["shape"][1])
    architecture = manifest["architecture"]
    if str(manifest["text_input"].get("tokenizer", "open_clip")).startswith(HF_PREFIX):
        tokenizer = _hf_tokenizer(manifest, artifacts_dir)
    elif (Path(MODEL_CONFIG_DIR) / f"{architecture}.json").exists():
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    else:
        tokenizer = open_clip.get_tokenizer(architecture, context_length=context_length)
    return lambda prompts: tokenizer(list(prompts)).numpy().astype(np.int64)
