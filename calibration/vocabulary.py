"""Can the model read the class names? Refuse names its text encoder maps to unknown tokens.

A model trained on a few class names (the project's compact-vocabulary CLIPs,
:mod:`trustvlm.models.compact_clip`) knows only the token ids of its training captions: its
exported text encoder starts with a lookup table from open_clip token ids to compact ids, and
every id it never saw maps to one "unknown" id. Prompts of a class named with other words then
encode to the same few vectors whatever the name, and the text prototypes mean nothing.

:func:`check_class_vocabulary` tokenizes each class name with the model's own tokenizer, reads
the lookup table from the exported text encoder, and raises :class:`UnknownWordsError` (one
line naming the words) when half or more of a class name's tokens are unknown, unless the caller
allows it. Models without such a table (real CLIP byte-pair tokenizers, SigLIP's SentencePiece
one) know every word in this sense and always pass; the check costs one tokenizer call and one
read of the text graph's constants.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from trustvlm.calibration.tokenizer import get_tokenizer
from trustvlm.contract.manifest import encoder_path

#: The compact id every unseen token maps to (trustvlm.models.compact_clip.UNKNOWN_ID).
UNKNOWN_COMPACT_ID = 1
#: A class name is unreadable when at least this share of its tokens is unknown.
UNREADABLE_SHARE = 0.5
ALLOW_FLAG = "--allow-unknown-words"
#: open_clip's vocabulary size, for manifests that do not record one.
OPEN_CLIP_VOCAB_SIZE = 49408

Tokenize = Callable[[Sequence[str]], np.ndarray]


class UnknownWordsError(ValueError):
    """Class names the model's vocabulary cannot read."""


def known_token_mask(text_encoder: str | os.PathLike, vocab_size: int) -> np.ndarray | None:
    """Which token ids the text encoder tells apart: a bool mask over the vocabulary, or None (all).

    The mask comes from a 1-D integer constant of `vocab_size` entries in the graph (the compact
    lookup table); ids it maps to the unknown id are unknown. No such table: None.
    """
    import onnx  # noqa: PLC0415 - calibration-side dependency
    from onnx import numpy_helper  # noqa: PLC0415

    model = onnx.load(str(text_encoder), load_external_data=False)
    tensors = list(model.graph.initializer)
    tensors += [attr.t for node in model.graph.node if node.op_type == "Constant"
                for attr in node.attribute if attr.name == "value"]
    for tensor in tensors:
        if list(tensor.dims) != [vocab_size] or tensor.data_type not in (onnx.TensorProto.INT32,
                                                                          onnx.TensorProto.INT64):
            continue
        table = numpy_helper.to_array(tensor)
        if table.min() >= 0 and table.max() < vocab_size and np.any(table == UNKNOWN_COMPACT_ID):
            known = table != UNKNOWN_COMPACT_ID
            known[UNKNOWN_COMPACT_ID] = True  # an id the tokenizer never emits for words
            return known
    return None


def unreadable_class_names(class_names: Sequence[str], tokenize: Tokenize,
                           known: np.ndarray | None) -> dict[str, tuple[str, ...]]:
    """``{class name: its unknown words}`` for the names with half or more of their tokens unknown.

    Args:
        class_names: The class names.
        tokenize: The model's tokenizer: list of texts -> ``N x L`` int ids.
        known: Mask of the ids the model knows (:func:`known_token_mask`); None: every id.

    Returns:
        The unreadable class names, each with the words (whitespace-separated) that have an
        unknown token; empty when every name is readable.
    """
    if known is None or not class_names:
        return {}
    special = set(int(i) for i in np.asarray(tokenize([""])).reshape(-1)) | {0}
    words = [name.split() or [name] for name in class_names]
    flat = [word for per_name in words for word in per_name]
    rows = np.asarray(tokenize(flat))
    unknown_words: dict[str, list[str]] = {}
    share: dict[str, list[int]] = {}
    position = 0
    for name, per_name in zip(class_names, words):
        counts = share.setdefault(name, [0, 0])
        for word in per_name:
            ids = [int(i) for i in rows[position] if int(i) not in special]
            position += 1
            bad = sum(1 for i in ids if i >= len(known) or not known[i])
            counts[0] += bad
            counts[1] += len(ids)
            if bad:
                unknown_words.setdefault(name, []).append(word)
    return {name: tuple(unknown_words.get(name, ())) for name, (bad, total) in share.items()
            if total and bad / total >= UNREADABLE_SHARE}


def check_class_vocabulary(artifacts_dir: str | os.PathLike, manifest: dict, class_names: Sequence[str],
                           allow_unknown_words: bool = False) -> dict[str, tuple[str, ...]]:
    """Raise :class:`UnknownWordsError` unless the model can read every class name (or it is allowed).

    Args:
        artifacts_dir: The model's export folder.
        manifest: Its manifest.
        class_names: The class names that become prompts.
        allow_unknown_words: Go on anyway (the names are returned for the record).

    Returns:
        The unreadable class names and their unknown words (empty when all are readable).
    """
    text_encoder = encoder_path(Path(artifacts_dir), manifest, "text", "fp32")
    known = known_token_mask(text_encoder, int(manifest["text_input"].get("vocab_size", OPEN_CLIP_VOCAB_SIZE)))
    if known is None:
        return {}  # no lookup table: the model embeds every id its tokenizer emits
    unreadable = unreadable_class_names(class_names, get_tokenizer(manifest, artifacts_dir), known)
    if unreadable and not allow_unknown_words:
        words = sorted({word for per_name in unreadable.values() for word in per_name})
        raise UnknownWordsError(
            f"{manifest.get('model', 'the model')} cannot read {len(unreadable)} of {len(class_names)} class names: "
            f"the words {', '.join(map(repr, words[:12]))}{' ...' if len(words) > 12 else ''} are outside its "
            "vocabulary, so their prompts encode to unknown tokens and the text prototypes mean nothing; name the "
            "classes with words it was trained on, train a model on these names (`trustvlm train-demo --data "
            f"FOLDER`), or pass {ALLOW_FLAG} to go on anyway")
    return unreadable
