"""File utilities shared by every stage: sha256, atomic JSON and folder publishing, JSON-safe floats."""

from __future__ import annotations

import dataclasses

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["NON_FINITE_MODES", "check_record_keys", "json_safe", "sha256_file", "write_json_atomic", "stage_beside", "staged_folder"]

#: How :func:`json_safe` writes NaN and infinities: as the strings 'nan', 'inf', '-inf' (``"text"``,
#: which :func:`float` reads back) or as JSON null (``"null"``, for summaries read by other tools).
NON_FINITE_MODES = ("text", "null")


def json_safe(value, *, non_finite: str = "text"):
    """`value` with every float made strict-JSON-safe, recursively through dicts, lists and tuples.

    numpy floats and integers become Python ones; tuples become lists.

    Args:
        value: A JSON-like structure.
        non_finite: ``"text"``: NaN and infinities become ``'nan'``, ``'inf'``, ``'-inf'``;
            ``"null"``: they become None.

    Returns:
        A structure ``json.dumps(..., allow_nan=False)`` accepts (given JSON-able leaves).

    Raises:
        ValueError: For a `non_finite` mode other than those in ``NON_FINITE_MODES``.
    """
    if non_finite not in NON_FINITE_MODES:
        raise ValueError(f"non_finite should be one of {NON_FINITE_MODES}, but got {non_finite!r}")
    return _json_safe(value, non_finite == "null")


def _json_safe(value, as_null: bool):
    if isinstance(value, dict):
        return {key: _json_safe(item, as_null) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item, as_null) for item in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isfinite(value):
            return value
        if as_null:
            return None
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, np.integer):
        return int(value)
    return value


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary name in the same folder, then rename over `path`."""
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON (indented, one trailing newline) atomically, as :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


@contextmanager
def stage_beside(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside `output_dir` (same file system), removed whatever happens.

    The caller decides how its content is published; :func:`staged_folder` swaps it in whole.

    Raises:
        OSError: If the parent folder cannot be created or written.
    """
    target = Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged_folder(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty stage folder beside `output_dir`; publish it there if the block succeeds.

    Use it for any output that is read as a whole (a prototype bundle, an evaluation report):
    readers see the old folder or the complete new one, never a half-written mix, and an error
    leaves the old folder untouched.

    Args:
        output_dir: The folder to create or replace.

    Yields:
        The stage folder to write into.

    Raises:
        OSError: If the parent folder cannot be written. Any exception raised in the block
            propagates after the stage folder is removed; `output_dir` is left as it was.
    """
    target = Path(output_dir)
    with stage_beside(target) as stage:
        yield stage
        _apply_umask(stage)
        _swap_into_place(stage, target)


def _apply_umask(stage: Path) -> None:
    """Give the stage the permissions a plain mkdir/open would have (mkdtemp/mkstemp use 0700/0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [stage, *stage.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _swap_into_place(stage: Path, target: Path) -> None:
    """Rename `stage` to `target`; an existing `target` is moved aside first, then deleted."""
    old = None
    if target.exists():
        # A folder cannot be renamed over a non-empty one, so the swap takes two renames.
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
    try:
        os.replace(stage, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_record_keys(record_type, data: dict, what: str) -> None:
    """Refuse a dict read from a file unless its keys are exactly the fields of the dataclass `record_type`.

    Raises:
        ValueError: naming `what`, the unknown keys and the missing ones.
    """
    names = {f.name for f in dataclasses.fields(record_type)}
    unknown, missing = sorted(set(data) - names), sorted(names - set(data))
    if unknown or missing:
        raise ValueError(f"{what}: unknown keys {unknown}, missing keys {missing}")
