"""What a replica needs to score with one bundle, carried as verified bytes to every node of a cluster.

The gateway reads the files the scorer opens (the export's ``manifest.json`` and the image encoder
of the bundle's precision, the bundle's ``bundle.json``, ``prototypes.npz`` and ``trust_head.onnx``)
once, records the sha256 of each, and puts the :class:`BundlePayload` into Ray's object store. A
replica, on any node, writes it into a folder of its own with :func:`materialize_payload`, which
refuses any file whose bytes do not hash to the recorded sha256; the scorer then verifies the
folder exactly as on a single machine (:func:`trustvlm.runtime.scoring.scorer.load_scorer`: the manifest's
encoder sha256, the bundle's own files and engine sha256s), so nodes need no shared file system and
a node never scores with bytes that differ from the gateway's.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from trustvlm.contract.bundle import BUNDLE_JSON, PROTOTYPES_FILE, TRUST_HEAD_FILE, BundleError, read_bundle_info
from trustvlm.contract.ood_gate import OOD_GATE_FILE
from trustvlm.contract.manifest import MANIFEST_NAME, read_manifest

__all__ = ["PayloadError", "BundlePayload", "artifact_files", "bundle_files", "collect_payload", "materialize_payload"]

ARTIFACTS_FOLDER, BUNDLE_FOLDER = "artifacts", "bundle"


class PayloadError(BundleError):
    """A payload that cannot be written out as it was recorded (a sha256 that differs, a bad file name)."""


@dataclass(frozen=True)
class BundlePayload:
    """The files of one bundle and its image encoder, by relative path, with their sha256.

    Attributes:
        bundle_id: The scorer's bundle id (``<model>:<12 hex>``), the key replicas cache scorers under.
        files: Relative POSIX path (under ``artifacts/`` or ``bundle/``) -> bytes.
        sha256: Relative path -> hex sha256 of those bytes, as read by the gateway.
    """

    bundle_id: str
    files: dict[str, bytes]
    sha256: dict[str, str]

    @property
    def size_bytes(self) -> int:
        return sum(len(data) for data in self.files.values())


def _read(path: Path, name: str, files: dict[str, bytes], digests: dict[str, str]) -> None:
    data = path.read_bytes()
    files[name], digests[name] = data, hashlib.sha256(data).hexdigest()


def artifact_files(artifacts_dir: str | os.PathLike, bundle_dir: str | os.PathLike, info) -> list[str]:
    """The export's files a replica opens to score with the bundle in `bundle_dir` (whose bundle.json is `info`),
    as names relative to the export folder.

    Raises:
        BundleError: A bundle of an auxiliary prototype encoder (not carried to replicas yet), or an
            export without the image encoder of the bundle's precision.
        trustvlm.contract.manifest.ArtifactError: Unreadable artifacts.
    """
    artifacts = Path(artifacts_dir)
    if info.aux_encoder is not None:
        raise BundleError(f"{bundle_dir} takes its image prototypes from {info.aux_encoder.model}; cluster mode "
                          "serves bundles of the model's own prototypes: serve this one without --cluster")
    manifest = read_manifest(artifacts)
    entry = manifest.get("precisions", {}).get(info.precision, {})
    encoder = entry.get("files", {}).get("image_encoder", {}).get("file")
    if encoder is None:
        raise BundleError(f"{artifacts}: no {info.precision} image encoder, which {bundle_dir} was calibrated with")
    # an ONNX file over 2 GB keeps its weights beside it
    return [MANIFEST_NAME, encoder] + ([f"{encoder}.data"] if (artifacts / f"{encoder}.data").exists() else [])


def bundle_files(info) -> list[str]:
    """The files of a bundle folder a replica opens (names relative to the folder)."""
    return [BUNDLE_JSON, PROTOTYPES_FILE, TRUST_HEAD_FILE] + ([OOD_GATE_FILE] if info.ood_gate is not None else [])


def collect_payload(artifacts_dir: str | os.PathLike, bundle_dir: str | os.PathLike, bundle_id: str) -> BundlePayload:
    """Read the files a replica needs to score with the bundle in `bundle_dir`.

    Raises:
        BundleError: See :func:`artifact_files`.
        trustvlm.contract.manifest.ArtifactError, OSError: Unreadable artifacts.
    """
    artifacts, bundle = Path(artifacts_dir), Path(bundle_dir)
    info = read_bundle_info(bundle)
    files: dict[str, bytes] = {}
    digests: dict[str, str] = {}
    for name in artifact_files(artifacts, bundle, info):
        _read(artifacts / name, f"{ARTIFACTS_FOLDER}/{name}", files, digests)
    for name in bundle_files(info):
        _read(bundle / name, f"{BUNDLE_FOLDER}/{name}", files, digests)
    return BundlePayload(bundle_id, files, digests)


def materialize_payload(payload: BundlePayload, root: str | os.PathLike) -> tuple[Path, Path]:
    """Write `payload` under `root` after checking every file's sha256; return (artifacts, bundle) folders.

    Raises:
        PayloadError: A file whose bytes differ from the recorded sha256, or a path outside `root`.
    """
    root = Path(root)
    for name, data in sorted(payload.files.items()):
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or relative.parts[0] not in (ARTIFACTS_FOLDER,
                                                                                         BUNDLE_FOLDER):
            raise PayloadError(f"bundle payload {payload.bundle_id}: refusing the file name {name!r}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != payload.sha256.get(name):
            raise PayloadError(f"bundle payload {payload.bundle_id}: {name} has sha256 {digest[:12]}..., the "
                               f"gateway read {str(payload.sha256.get(name))[:12]}...; refusing it")
        path = root.joinpath(*relative.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root / ARTIFACTS_FOLDER, root / BUNDLE_FOLDER
