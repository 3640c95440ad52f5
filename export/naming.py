"""The name of an export: the folder ``<output>/<name>/`` and the ``name`` in its manifest and reports.

``--name`` sets it. Without it the name is the registry model's (``artifacts/demo_fmnist``), except
for a checkpoint written by ``trustvlm train-demo`` that is not the registry's own (its sha256
differs): a model trained on your folder is another model, so it is named after its file
(``--weights digits.pt`` -> ``artifacts/digits``). A file named like a registry model
(``demo_fmnist.pt``) that is not that model's checkpoint is refused: give it a ``--name``.
"""

from __future__ import annotations

import re
from pathlib import Path

from trustvlm.contract.files import sha256_file
from trustvlm.models.registry import ModelSpec, list_models

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ArtifactNameError(ValueError):
    """A name that cannot be a folder name, or a default name that would pass for another model."""


def check_name(name: str, flag: str = "--name") -> str:
    """`name` if it is a plain folder name (letters, digits, '.', '_', '-'; at most 64), else ArtifactNameError."""
    if not NAME_PATTERN.fullmatch(name):
        raise ArtifactNameError(f"{flag} {name!r} cannot name an artifacts folder: use letters, digits, '.', '_' "
                                "and '-' (at most 64, starting with a letter or digit)")
    return name


def artifact_name(spec: ModelSpec, weights: str | None, name: str | None = None) -> str:
    """The export's name (see the module docstring).

    Raises:
        ArtifactNameError: A bad `name`, or a trained checkpoint whose file name is not a usable
            name or is a registry model's.
    """
    if name is not None:
        return check_name(name)
    if weights in (None, "random"):
        return spec.name
    from trustvlm.export.model_loading import is_compact_checkpoint  # noqa: PLC0415 - torch, only here

    path = Path(weights).expanduser()
    if not path.is_file() or not is_compact_checkpoint(path):
        return spec.name  # official weights of the entry (or a missing file, which the loader reports)
    if spec.checkpoint_sha256 and sha256_file(path) == spec.checkpoint_sha256:
        return spec.name  # the registry's own checkpoint
    if path.stem in list_models():
        raise ArtifactNameError(f"--weights {path} is not the {path.stem} model of the registry (its sha256 "
                                f"differs) but would be exported under that name; give it its own name with "
                                "--name NAME (artifacts/NAME)")
    try:
        return check_name(path.stem, flag="the file name of --weights")
    except ArtifactNameError as error:
        raise ArtifactNameError(f"{error}; or give the export a name with --name NAME") from error
