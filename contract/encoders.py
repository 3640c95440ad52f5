"""What a bundle records of the encoders it was built with, and the errors of reading a bundle.

:func:`engine_sha256` reads the encoder files' sha256 from an artifacts manifest;
:class:`AuxEncoderInfo` is the auxiliary image encoder (e.g. DINOv2) a bundle's image prototypes
come from. :mod:`trustvlm.contract.bundle` re-exports all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from trustvlm.contract.files import check_record_keys, json_safe
from trustvlm.contract.manifest import TOWERS

__all__ = ["BundleError", "BundleMismatchError", "rebuild_hint", "AuxEncoderInfo", "engine_sha256"]


class BundleError(ValueError):
    """A bundle folder that cannot be read (missing, unknown schema, malformed)."""


class BundleMismatchError(BundleError):
    """A bundle whose files or engines differ from what it records."""


def rebuild_hint(model: str) -> str:
    """The command that rebuilds a bundle for `model`."""
    return f"rebuild it with `make calibrate MODEL={model}`"


@dataclass(frozen=True)
class AuxEncoderInfo:
    """The auxiliary image encoder a bundle's image prototypes come from.

    Attributes:
        model: Registry name of the encoder (e.g. ``dinov2_vitb14``).
        architecture: Its architecture (timm model name).
        weights_id: Its manifest's ``weights.id`` (``random-init`` for random weights).
        precision: Precision of the encoder file used.
        engine_sha256: sha256 of that image encoder file, as its manifest records it.
        embed_dim: Its embedding size (the image prototypes' D).
        preprocess: Its manifest's preprocessing (the runtime must preprocess twice).
    """

    model: str
    architecture: str
    weights_id: str
    precision: str
    engine_sha256: str
    embed_dim: int
    preprocess: dict

    @property
    def random_init(self) -> bool:
        return self.weights_id == "random-init"

    def to_dict(self) -> dict:
        """JSON-safe dict; :meth:`from_dict` restores an equal object."""
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, data: dict) -> "AuxEncoderInfo":
        """Inverse of :meth:`to_dict`; ValueError on missing or unknown keys."""
        check_record_keys(cls, data, "aux_encoder")
        return cls(**{**data, "embed_dim": int(data["embed_dim"]), "preprocess": dict(data["preprocess"])})

    @classmethod
    def from_manifest(cls, manifest: dict, precision: str) -> "AuxEncoderInfo":
        """What a bundle records of the encoder in an artifacts manifest."""
        return cls(model=manifest["model"], architecture=manifest["architecture"],
                   weights_id=manifest["weights"]["id"], precision=precision,
                   engine_sha256=engine_sha256(manifest, precision, towers=("image",))["image_encoder"],
                   embed_dim=int(manifest["embedding"]["dim"]), preprocess=dict(manifest["preprocess"]))



def engine_sha256(manifest: dict, precision: str, towers: tuple[str, ...] = TOWERS) -> dict[str, str]:
    """``{"image_encoder": sha, "text_encoder": sha}`` (of `towers`) as the manifest records them."""
    entry = manifest.get("precisions", {}).get(precision)
    if entry is None:
        raise BundleError(f"the artifacts of {manifest.get('model')} have no {precision} export "
                          f"(have {sorted(manifest.get('precisions', {}))})")
    missing = [tower for tower in towers if f"{tower}_encoder" not in entry["files"]]
    if missing:
        raise BundleError(f"the artifacts of {manifest.get('model')} have no {' or '.join(missing)} encoder "
                          f"(have {sorted(entry['files'])})")
    return {f"{tower}_encoder": entry["files"][f"{tower}_encoder"]["sha256"] for tower in towers}
