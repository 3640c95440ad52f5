"""The export manifest (``manifest.json``) of an artifacts folder, and its readers (no torch needed)."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

from trustvlm.contract.files import sha256_file

__all__ = ["MANIFEST_NAME", "MANIFEST_SCHEMA_VERSION", "PRECISIONS", "TOWERS", "ArtifactError", "encoder_file_name",
           "installed_versions", "read_manifest", "encoder_path", "model_name"]

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = "1.0"
#: Encoder precisions an export may hold. int8 quantizes the image encoder only (ONNX Runtime, CPUs);
#: its manifest entry lists the fp32 text encoder, which runs once per class at calibration.
PRECISIONS = ("fp32", "fp16", "int8")
TOWERS = ("image", "text")


class ArtifactError(ValueError):
    """Artifacts that are missing, of an unknown version, or do not match their manifest."""


def encoder_file_name(tower: str, precision: str, suffix: str = ".onnx") -> str:
    """image_encoder.onnx for fp32, image_encoder.fp16.onnx otherwise."""
    return f"{tower}_encoder{'' if precision == 'fp32' else '.' + precision}{suffix}"


def installed_versions(names) -> dict[str, str]:
    """Installed versions of the named distributions; absent ones are left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read_manifest(artifacts_dir: str | os.PathLike) -> dict:
    """Read and version-check the manifest of an artifacts folder.

    Raises:
        ArtifactError: No manifest, or one of another schema major version.
    """
    path = Path(artifacts_dir) / MANIFEST_NAME
    if not path.exists():
        raise ArtifactError(f"no {MANIFEST_NAME} in {artifacts_dir}: run `make export MODEL=<name>` first")
    data = json.loads(path.read_text())
    major = str(data.get("schema_version", "0")).split(".")[0]
    if major != MANIFEST_SCHEMA_VERSION.split(".")[0]:
        raise ArtifactError(f"{path}: manifest schema {data.get('schema_version')} is not supported "
                            f"(expected {MANIFEST_SCHEMA_VERSION.split('.')[0]}.x)")
    return data


def model_name(manifest: dict) -> str:
    """The exported model's name, as reports show it: ``name`` (``trustvlm export --name``), else the registry
    ``model`` (manifests written before exports had names)."""
    return str(manifest.get("name") or manifest["model"])


def encoder_path(artifacts_dir: str | os.PathLike, manifest: dict, tower: str, precision: str = "fp32",
                 verify: bool = True) -> Path:
    """Path of one encoder file, checked against the manifest's sha256 when `verify`.

    Raises:
        ArtifactError: No such precision, a listed file that is missing, or (with `verify`) one
            whose sha256 differs from the manifest's.
    """
    entry = manifest.get("precisions", {}).get(precision)
    if entry is None:
        raise ArtifactError(f"{artifacts_dir}: no {precision} export (have {sorted(manifest.get('precisions', {}))})")
    record = entry["files"][f"{tower}_encoder"]
    path = Path(artifacts_dir) / record["file"]
    if not path.exists():
        raise ArtifactError(f"{path} is listed in the manifest but missing")
    if verify and sha256_file(path) != record["sha256"]:
        raise ArtifactError(f"{path}: sha256 does not match the manifest (corrupt or replaced); re-export it")
    return path
