"""Token ids for the text-tower parity gate, and the tokenizer files an export carries.

The parity gate compares the ONNX text encoder with the torch one on token ids; it needs ids, not
a tokenizer. The prompts of the parity set are tokenized when the model's tokenizer is at hand:
open_clip's own (CLIP), or a Hugging Face one (SigLIP) from ``--tokenizer DIR`` or the local
Hugging Face cache (see :mod:`trustvlm.models.tokenizers`). Without it, the gate runs on
*synthetic* ids: drawn (seed 0) within the model's vocabulary, each row a random-length "text"
followed by padding, the vocabulary's first and last ids included. They exercise every op of the
graph (the embedding gather over the whole id range, attention, pooling) as prompts do; the
manifest says which ids were used (``text_input.parity_tokens``).

A Hugging Face tokenizer the export used is saved into ``artifacts/<model>/tokenizer/`` so that
``trustvlm calibrate`` finds it offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from trustvlm.models.tokenizers import (TOKENIZER_FOLDER, TokenizerInfo, TokenizerUnavailableError, load_tokenizer,
                                        tokenizer_info)
from trustvlm.contract.files import sha256_file

PROMPTS = "prompts"
SYNTHETIC = "synthetic ids within the vocabulary (seed 0): no tokenizer at hand"
SYNTHETIC_SEED = 0


@dataclass
class PromptTokenizer:
    """The tokenizer an export uses for its parity prompts (None: synthetic ids), and why."""

    info: TokenizerInfo
    tokenizer: Callable | None
    note: str = ""           # why there is no tokenizer (printed; empty when there is one)

    @property
    def bundled(self) -> bool:
        """Whether the export carries the tokenizer files (Hugging Face tokenizers only)."""
        return self.tokenizer is not None and self.info.hf_name is not None


def prompt_tokenizer(architecture: str, model: str, folder: Path | None = None) -> PromptTokenizer:
    """Find the tokenizer of a CLIP-style model for the export.

    A `folder` that does not hold a loadable tokenizer raises :class:`TokenizerUnavailableError`
    (the user asked for it). Without a folder, a Hugging Face tokenizer missing from the local cache
    (or its packages missing) is not an error: the parity gate falls back to synthetic ids.
    """
    info = tokenizer_info(architecture)
    if info.hf_name is None:
        return PromptTokenizer(info, None)  # open_clip's, from the loaded model: see with_model_tokenizer
    if folder is not None:
        return PromptTokenizer(info, load_tokenizer(architecture, model, folder))
    try:
        return PromptTokenizer(info, load_tokenizer(architecture, model))
    except TokenizerUnavailableError as error:
        note = (f"text parity on token ids drawn within the vocabulary ({info.vocab_size}), not prompts; "
                f"`trustvlm calibrate` will need the tokenizer. {error}")
        return PromptTokenizer(info, None, note)


def with_model_tokenizer(plan: PromptTokenizer, tokenizer: Callable | None, context_length: int | None
                         ) -> PromptTokenizer:
    """An open_clip tokenizer comes with the loaded model (sized to its context); adopt it."""
    if plan.info.hf_name is not None or tokenizer is None:
        return plan
    info = TokenizerInfo(plan.info.kind, int(context_length or plan.info.context_length), plan.info.vocab_size,
                         plan.info.kwargs)
    return PromptTokenizer(info, tokenizer)


def synthetic_token_ids(rows: int, context_length: int, vocab_size: int, seed: int = SYNTHETIC_SEED,
                        pad_id: int = 0) -> np.ndarray:
    """int64 rows x context_length ids in [0, vocab_size): random-length texts, then `pad_id`."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=(rows, context_length), dtype=np.int64)
    lengths = rng.integers(2, context_length + 1, size=rows)
    ids[np.arange(context_length)[None, :] >= lengths[:, None]] = pad_id
    ids[0, :2] = (vocab_size - 1, 0)  # both ends of the embedding table
    return ids


def tokenize_prompts(plan: PromptTokenizer, prompts: list[str], model: str) -> tuple[np.ndarray, str]:
    """Token ids of the parity prompts (or synthetic ids of the same count) and which they are."""
    info = plan.info
    if plan.tokenizer is None:
        return synthetic_token_ids(len(prompts), info.context_length, info.vocab_size), SYNTHETIC
    tokens = plan.tokenizer(prompts).numpy().astype(np.int64)
    fits = tokens.min() >= 0 and tokens.max() < info.vocab_size and tokens.shape[1] == info.context_length
    if info.hf_name is not None and not fits:  # open_clip's ids always fit (compact models remap them)
        raise TokenizerUnavailableError(
            f"{model}: the tokenizer gives ids in [{tokens.min()}, {tokens.max()}] x {tokens.shape[1]} tokens, but "
            f"the model takes ids in [0, {info.vocab_size}) x {info.context_length}; expected the tokenizer of "
            f"{info.hf_name}")
    return tokens, PROMPTS


def save_tokenizer(plan: PromptTokenizer, stage: Path) -> list[dict] | None:
    """Write a Hugging Face tokenizer's files into ``stage/tokenizer/``; return their records."""
    if not plan.bundled:
        return None
    folder = stage / TOKENIZER_FOLDER
    plan.tokenizer.save_pretrained(str(folder))
    return [{"file": path.relative_to(folder).as_posix(), "sha256": sha256_file(path)}
            for path in sorted(folder.rglob("*")) if path.is_file()]
