"""The model registry: named models in `models/registry.json` (data, versioned).

Reading the registry needs no torch, so the runtime and tools can list models anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from trustvlm.runtime.decode.preprocess import PreprocessConfig

REGISTRY_PATH = Path(__file__).with_name("registry.json")
MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
SUPPORTED_SCHEMA_MAJOR = 1
CLIP = "clip"
IMAGE_ENCODER = "image-encoder"
#: What an entry is: an open_clip VLM (image + text towers) or a timm image backbone alone.
KINDS = (CLIP, IMAGE_ENCODER)
_ENTRY_KEYS = frozenset({"kind", "architecture", "pretrained", "checkpoint_file", "embedded_checkpoint",
                         "checkpoint_sha256", "embed_dim", "logit_scale", "preprocess", "notes"})


class UnknownModelError(KeyError):
    """A model name that the registry does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; we want a plain line
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Attributes:
        kind: ``clip`` (open_clip model, both towers exported) or ``image-encoder`` (timm
            backbone, image tower only; an auxiliary image-prototype encoder).
    """

    name: str
    architecture: str
    pretrained: str | None
    checkpoint_file: str
    embed_dim: int
    logit_scale: float | None
    preprocess: PreprocessConfig
    embedded_checkpoint: Path | None = None
    checkpoint_sha256: str | None = None
    notes: str = ""
    kind: str = CLIP

    @property
    def has_text_encoder(self) -> bool:
        return self.kind == CLIP

    @property
    def timm_name(self) -> str:
        """``<architecture>.<pretrained tag>``, the name timm knows an image encoder by."""
        return f"{self.architecture}.{self.pretrained}" if self.pretrained else self.architecture

    @property
    def local_config(self) -> Path | None:
        """The project's own open_clip model config for this architecture, if it has one."""
        path = MODEL_CONFIG_DIR / f"{self.architecture}.json"
        return path if path.exists() else None


@lru_cache(maxsize=1)
def _read_registry() -> dict:
    data = json.loads(REGISTRY_PATH.read_text())
    major = int(str(data.get("schema_version", "0")).split(".")[0])
    if major != SUPPORTED_SCHEMA_MAJOR:
        raise ValueError(f"{REGISTRY_PATH}: schema_version {data.get('schema_version')} is not supported "
                         f"(expected {SUPPORTED_SCHEMA_MAJOR}.x)")
    return data["models"]


def list_models() -> list[str]:
    """Names of the models in the registry, sorted."""
    return sorted(_read_registry())


def get_model_spec(name: str) -> ModelSpec:
    """Return the registry entry for `name`, or raise naming the models that exist."""
    entries = _read_registry()
    if name not in entries:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    entry = dict(entries[name])
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise ValueError(f"{REGISTRY_PATH}: model {name!r} has unknown keys {unknown}; known keys: "
                         f"{sorted(_ENTRY_KEYS)}")
    kind = entry.get("kind", CLIP)
    if kind not in KINDS:
        raise ValueError(f"{REGISTRY_PATH}: model {name!r} has kind {kind!r}; expected one of {list(KINDS)}")
    embedded = entry.pop("embedded_checkpoint", None)
    return ModelSpec(
        name=name,
        architecture=entry["architecture"],
        pretrained=entry.get("pretrained"),
        checkpoint_file=entry["checkpoint_file"],
        embed_dim=int(entry["embed_dim"]),
        logit_scale=entry.get("logit_scale"),
        preprocess=PreprocessConfig.from_dict(entry["preprocess"]),
        embedded_checkpoint=REGISTRY_PATH.parent / embedded if embedded else None,
        checkpoint_sha256=entry.get("checkpoint_sha256"),
        notes=entry.get("notes", ""),
        kind=kind,
    )
