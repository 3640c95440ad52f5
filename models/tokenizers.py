"""The tokenizer of a registry VLM, found without the network.

Two families:

* ``open_clip``: CLIP's byte-pair tokenizer, shipped inside open_clip (every ``clip_*`` entry and
  the project's own configs in ``models/model_configs/``).
* ``hf:<repo>``: a Hugging Face tokenizer named by the open_clip config (SigLIP:
  ``timm/ViT-B-16-SigLIP``, a SentencePiece vocabulary). It needs ``transformers`` and
  ``sentencepiece`` (both in the ``[export]`` extra) and the tokenizer files, taken from a local
  folder (``trustvlm export --tokenizer DIR``; the export copies them into
  ``artifacts/<model>/tokenizer/``) or from the local Hugging Face cache.

The hub is never contacted: offline, ``transformers`` retries for about 45 s before it fails, and
an edge device cannot reach it anyway. When no tokenizer can be had the error is one line naming
the files to fetch and where to put them.

Importing this module needs neither torch nor open_clip, nor does :func:`tokenizer_info` for a
built-in open_clip architecture (its packaged config file is read directly), nor refusing a folder
without the tokenizer's files; loading a tokenizer does.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from trustvlm.models.registry import MODEL_CONFIG_DIR

OPEN_CLIP = "open_clip"
HF_PREFIX = "hf:"
#: Folder of an export (artifacts/<model>/) holding the tokenizer files of an ``hf:`` tokenizer.
TOKENIZER_FOLDER = "tokenizer"
#: What `hf download` leaves out to fetch a repository's tokenizer (and configs) without its weights.
HF_WEIGHT_PATTERNS = ("*.bin", "*.safetensors")
#: Files a Hugging Face tokenizer is read from: a folder with none of them holds no tokenizer.
HF_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "spiece.model", "tokenizer.model",
                      "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "config.json", "special_tokens_map.json")


class TokenizerUnavailableError(FileNotFoundError):
    """No tokenizer for a model's prompts can be had here (missing package or files)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class TokenizerInfo:
    """What tokenizes a model's prompts: its family, context length, vocabulary and options."""

    kind: str                   # "open_clip" or "hf:<repo>"
    context_length: int
    vocab_size: int
    kwargs: dict = field(default_factory=dict)   # open_clip's tokenizer_kwargs (e.g. clean="canonicalize")

    @property
    def hf_name(self) -> str | None:
        """The Hugging Face repository of an ``hf:`` tokenizer (None for open_clip's)."""
        return self.kind[len(HF_PREFIX):] if self.kind.startswith(HF_PREFIX) else None


def _packaged_open_clip_config(architecture: str) -> Path | None:
    """open_clip's own config file of a built-in architecture, found without importing open_clip (torch)."""
    package = importlib.util.find_spec("open_clip")
    for location in (package.submodule_search_locations or []) if package else []:
        path = Path(location) / "model_configs" / f"{architecture}.json"
        if path.is_file():
            return path
    return None


def _model_config(architecture: str) -> dict:
    local = Path(MODEL_CONFIG_DIR) / f"{architecture}.json"
    if local.is_file():
        return json.loads(local.read_text())
    packaged = _packaged_open_clip_config(architecture)
    if packaged is not None:
        return json.loads(packaged.read_text())  # what open_clip.get_model_config returns for it
    import open_clip  # noqa: PLC0415 - heavy (torch), only when asked

    config = open_clip.get_model_config(architecture)
    if config is None:
        raise ValueError(f"architecture {architecture!r} is neither an open_clip built-in nor a file in "
                         f"{MODEL_CONFIG_DIR}; expected one of open_clip.list_models()")
    return config


def tokenizer_info(architecture: str) -> TokenizerInfo:
    """The tokenizer an open_clip architecture (built-in or ``models/model_configs/``) expects."""
    text = _model_config(architecture).get("text_cfg", {})
    hf_name = text.get("hf_tokenizer_name")
    kind = f"{HF_PREFIX}{hf_name}" if hf_name else OPEN_CLIP
    return TokenizerInfo(kind, int(text.get("context_length", 77)), int(text.get("vocab_size", 49408)),
                         dict(text.get("tokenizer_kwargs", {})))


def fetch_hint(info: TokenizerInfo, target: str) -> str:
    """How to get an ``hf:`` tokenizer onto an offline machine, in one sentence."""
    return (f"fetch the tokenizer files of {info.hf_name} on a connected machine (`hf download {info.hf_name} "
            f"--exclude {' '.join(repr(p) for p in HF_WEIGHT_PATTERNS)} --local-dir DIR`) and {target}")


def check_tokenizer_folder(info: TokenizerInfo, folder: str | Path, model: str,
                           where: str = "pass that folder as --tokenizer DIR") -> None:
    """Refuse a tokenizer folder that does not exist or holds none of :data:`HF_TOKENIZER_FILES`.

    Needs no package: `trustvlm export` refuses such a folder before it imports anything heavy.
    Raises :class:`TokenizerUnavailableError`, in the words of a failed load.
    """
    if not Path(folder).is_dir():
        raise TokenizerUnavailableError(f"{model}: tokenizer folder {folder} does not exist; "
                                        f"{fetch_hint(info, where)}")
    if not any((Path(folder) / name).is_file() for name in HF_TOKENIZER_FILES):
        raise TokenizerUnavailableError(
            f"{model}: cannot load the tokenizer {info.hf_name} from {folder} (it holds none of the files of a "
            f"Hugging Face tokenizer: {', '.join(HF_TOKENIZER_FILES[:3])}, ...); {fetch_hint(info, where)}")


def load_hf_tokenizer(info: TokenizerInfo, source: str | Path, model: str, where: str):
    """open_clip's HFTokenizer over local files only (a folder, or the cache of a hub name).

    Returns a callable: list of prompts -> int64 torch tensor (N x context_length), padded and
    cleaned as open_clip does for this model. `where` ends the error's hint ("pass that folder as
    --tokenizer DIR"). Raises :class:`TokenizerUnavailableError`.
    """
    try:
        import sentencepiece  # noqa: F401, PLC0415 - checked so that the error names it
        import transformers  # noqa: F401, PLC0415
    except ImportError as error:
        raise TokenizerUnavailableError(
            f"{model}: its tokenizer ({info.hf_name}) needs the {error.name} package; install the export "
            "extra (pip install 'trustvlm-edge[export]')") from error
    in_cache = str(source) == info.hf_name
    if not in_cache:
        check_tokenizer_folder(info, source, model, where)  # before open_clip (torch) is imported
    import logging  # noqa: PLC0415

    from open_clip.tokenizer import HFTokenizer  # noqa: PLC0415

    logging.disable(logging.ERROR)  # transformers logs its own multi-line error; ours is the one line
    try:
        return HFTokenizer(str(source), context_length=info.context_length, local_files_only=True, **info.kwargs)
    except Exception as error:  # transformers raises OSError, ValueError, ... for missing or bad files
        if in_cache:
            raise TokenizerUnavailableError(
                f"{model}: no tokenizer for its prompts ({info.hf_name} is not in the local Hugging Face cache, "
                f"and the hub is not contacted); {fetch_hint(info, where)}") from error
        lines = str(error).strip().splitlines()
        raise TokenizerUnavailableError(
            f"{model}: cannot load the tokenizer {info.hf_name} from {source} ({type(error).__name__}: "
            f"{lines[0][:160] if lines else ''}); {fetch_hint(info, where)}") from error
    finally:
        logging.disable(logging.NOTSET)


def load_tokenizer(architecture: str, model: str, folder: str | Path | None = None, *,
                   where: str = "pass that folder as --tokenizer DIR", context_length: int | None = None):
    """The tokenizer of `architecture`: open_clip's, or an ``hf:`` one from `folder` or the local cache.

    Returns a callable: list of prompts -> int64 torch tensor (N x context_length). Raises
    :class:`TokenizerUnavailableError` (one line: what to fetch, where to put it).
    """
    info = tokenizer_info(architecture)
    if context_length is not None:
        info = TokenizerInfo(info.kind, int(context_length), info.vocab_size, info.kwargs)
    if info.hf_name is None:
        import open_clip  # noqa: PLC0415

        return open_clip.tokenizer.SimpleTokenizer(context_length=info.context_length, **info.kwargs)
    if folder is not None:
        if not Path(folder).is_dir():
            check_tokenizer_folder(info, folder, model, where)  # raises: the folder does not exist
        return load_hf_tokenizer(info, folder, model, where)
    return load_hf_tokenizer(info, info.hf_name, model, where)
