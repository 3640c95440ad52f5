"""Checks of an export request that need neither torch nor a model: bad input is refused in one line, at once.

An export imports torch, open_clip and timm (seconds) and builds the model (seconds to minutes)
before it would notice most mistakes. These checks come first, in the order the export meets
them, and raise the error the export would raise, in its words:

* an unknown model, or a ``--name`` that cannot name a folder;
* ``--format engine`` without TensorRT or without a GPU;
* ``--tokenizer`` for a model that has no Hugging Face tokenizer, or a folder that does not exist
  or holds none of a tokenizer's files;
* an output folder that cannot be written;
* a checkpoint file that does not exist, or that is no checkpoint at all (none of the containers
  torch, safetensors and numpy read).

`trustvlm export` runs them before it imports the export code;
:func:`trustvlm.export.pipeline.export_model` runs them again, so a library caller is refused as
early. Passing them promises nothing more: a file with a checkpoint's header may still fail to
load, and the loader then says so.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from trustvlm.export.errors import ExportError, WeightsUnavailableError
from trustvlm.models.registry import ModelSpec, get_model_spec
from trustvlm.models.tokenizers import check_tokenizer_folder, tokenizer_info

#: Bytes read from the head of a checkpoint to tell what container it is.
HEAD_BYTES = 512


def check_export(model: str, *, weights: str | None = None, output_root: str | os.PathLike = "artifacts",
                 name: str | None = None, engine: bool = False, tokenizer_dir: str | os.PathLike | None = None
                 ) -> ModelSpec:
    """Refuse an export request whose mistake shows without torch; return its registry entry.

    Raises:
        UnknownModelError: `model` is not in the registry.
        ExportError: A bad `name`, a `tokenizer_dir` the model cannot take, an unwritable `output_root`.
        TensorRTUnavailableError: `engine` without TensorRT or a GPU.
        TokenizerUnavailableError: A `tokenizer_dir` that is missing or holds no tokenizer files.
        WeightsUnavailableError: A checkpoint file that is missing or is no checkpoint.
    """
    spec = get_model_spec(model)
    if name is not None:
        _check_name(name)
    if engine:
        from trustvlm.export.tensorrt_engine import describe_gpu, import_tensorrt  # noqa: PLC0415 - onnx

        import_tensorrt(), describe_gpu()
    if tokenizer_dir is not None:
        _check_tokenizer_option(spec, Path(tokenizer_dir))
    check_writable(Path(output_root))
    if weights not in (None, "random"):
        check_checkpoint_file(spec, Path(weights).expanduser())
    return spec


def _check_name(name: str) -> None:
    from trustvlm.export.naming import ArtifactNameError, check_name  # noqa: PLC0415

    try:
        check_name(name)
    except ArtifactNameError as error:
        raise ExportError(str(error)) from error


def _check_tokenizer_option(spec: ModelSpec, folder: Path) -> None:
    if not spec.has_text_encoder:
        raise ExportError(f"{spec.name} is an image encoder (no text tower); drop --tokenizer")
    info = tokenizer_info(spec.architecture)
    if info.hf_name is None:
        raise ExportError(f"--tokenizer {folder}: {spec.name} uses open_clip's built-in tokenizer; "
                          "--tokenizer is for models with a Hugging Face tokenizer (siglip_*); drop it")
    check_tokenizer_folder(info, folder, spec.name)


def check_writable(output_root: Path) -> None:
    """Refuse an artifacts root that cannot be created or written (as the export's staging would)."""
    existing = output_root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        code = errno.EEXIST if existing == output_root else errno.ENOTDIR
    elif not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
    else:
        return
    raise ExportError(f"cannot write to {output_root}: {os.strerror(code)}")


def looks_like_a_checkpoint(path: Path) -> bool:
    """Whether `path` starts like a container torch, safetensors or numpy can read.

    zip (torch.save, TorchScript archives such as OpenAI's .pt, .npz), a pickle (torch's legacy
    format), tar (its oldest), safetensors (an 8-byte header length, then JSON) or .npy.
    """
    with open(path, "rb") as file:
        head = file.read(HEAD_BYTES)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or head[:6] == b"\x93NUMPY":
        return True
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True  # pickle protocol 2-5
    if head[:1] == b"L" and head[1:2].isdigit():
        return True  # pickle protocol 0/1 (a legacy torch.save begins with its magic number, a long)
    if head[257:262] == b"ustar":
        return True
    header_length = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    return head[8:9] == b"{" and 8 + header_length <= path.stat().st_size


def check_checkpoint_file(spec: ModelSpec, path: Path) -> None:
    """Refuse a checkpoint file that does not exist or is no checkpoint (in the loaders' words)."""
    if not path.is_file():
        raise WeightsUnavailableError(f"{spec.name}: checkpoint {path} does not exist")
    if not looks_like_a_checkpoint(path):
        kind = spec.timm_name if not spec.has_text_encoder else spec.architecture
        raise WeightsUnavailableError(f"{spec.name}: cannot load {path} as {kind} weights (not a checkpoint: "
                                      "neither a zip or TorchScript archive, a pickle, safetensors nor numpy)")
