"""Publishing an output folder atomically: write into a stage folder, then swap it into place.

Use :func:`staged_folder` for any stage output that is read as a whole (a prototype bundle, an
evaluation report): readers see the old folder or the complete new one, never a half-written
mix, and an error leaves the old folder untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty stage folder beside `output_dir`; publish it there if the block succeeds.

    Args:
        output_dir: The folder to create or replace.

    Yields:
        The stage folder to write into.

    Raises:
        OSError: If the parent folder cannot be written. Any exception raised in the block
            propagates after the stage folder is removed; `output_dir` is left as it was.
    """
    target = Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield stage
        _apply_umask(stage)
        _swap_into_place(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
