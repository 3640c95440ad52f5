"""Prototype bundles: what calibration hands to the runtime, in one folder.

    bundle/
        prototypes.npz    text_prototypes, image_prototypes (float32, C x D, unit rows)
        trust_head.onnx   the fused trust head (calibration/trust_head.py) built from them
        bundle.json       how it was made: model, weights, engine sha256s, preprocessing, class
                          names, prompts, shots, k, seed, lambda, T, accept threshold, file sha256s

A bundle is only valid with the exact encoders it was built with: :func:`load_bundle` checks
the schema version, its own files' sha256 and the engine sha256s against the artifacts
manifest, and refuses a mismatch with a :class:`BundleMismatchError` that says what differs
and how to rebuild. :func:`write_bundle` publishes the folder atomically.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from trustvlm.calibration.risk_control import ThresholdChoice
from trustvlm.calibration.staging import staged_folder
from trustvlm.calibration.trust_head import build_trust_head, save_trust_head
from trustvlm.runtime.artifacts import TOWERS, read_manifest, sha256_file, write_json_atomic

__all__ = [
    "BUNDLE_SCHEMA_VERSION", "BundleError", "BundleMismatchError", "BundleInfo", "PrototypeBundle",
    "engine_sha256", "write_bundle", "read_bundle_info", "load_bundle", "describe_bundle", "json_safe",
]

BUNDLE_SCHEMA_VERSION = "1.0"
BUNDLE_JSON = "bundle.json"
PROTOTYPES_FILE = "prototypes.npz"
TRUST_HEAD_FILE = "trust_head.onnx"
LAMBDA_METHODS = ("paper", "auto", "manual")
SCORES = ("trustvlm", "trustvlm_star")


class BundleError(ValueError):
    """A bundle folder that cannot be read (missing, unknown schema, malformed)."""


class BundleMismatchError(BundleError):
    """A bundle whose files or engines differ from what it records."""


def rebuild_hint(model: str) -> str:
    """The command that rebuilds a bundle for `model`."""
    return f"rebuild it with `make calibrate MODEL={model}`"


def json_safe(value):
    """Replace non-finite floats (nested in dicts/lists) by the strings 'nan', 'inf', '-inf'."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass(frozen=True)
class BundleInfo:
    """The contents of bundle.json (see the module docstring).

    Attributes:
        model: Registry name of the model.
        architecture: Its open_clip architecture.
        weights_id: The manifest's ``weights.id``.
        precision: Precision of the encoders used (``fp32`` or ``fp16``).
        engine_sha256: ``{"image_encoder": sha, "text_encoder": sha}`` of those encoders.
        preprocess: The manifest's preprocessing.
        logit_scale: The model's multiplicative logit scale.
        class_names: Class names, in label order.
        template_set: Name of the prompt template set.
        templates: The templates.
        prompts: ``prompts[c][t]``, the prompts encoded for the text prototypes.
        image_prototype_encoder: File name of the encoder the image prototypes came from
            (the VLM's own image encoder).
        k: Shots per class.
        seed: Seed of the shot sampling.
        shots: Where the shots came from and which they are (indices or file sha256s).
        lam: Weight lambda of the image-prototype terms.
        lam_method: ``paper`` (1.0), ``auto`` (chosen on calibration data) or ``manual``.
        temperature: Temperature T of TrustVLM*'s prototype softmax.
        score: Score the threshold applies to (``trustvlm`` or ``trustvlm_star``).
        threshold: The accept threshold with its guarantee.
        selection: How lambda and the threshold were chosen (data counts, lambda table).
        files: sha256 of ``prototypes.npz`` and ``trust_head.onnx`` (filled by write_bundle).
        created_utc: ISO time of writing.
        schema_version: bundle.json schema.
    """

    model: str
    architecture: str
    weights_id: str
    precision: str
    engine_sha256: dict
    preprocess: dict
    logit_scale: float
    class_names: tuple[str, ...]
    template_set: str
    templates: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    image_prototype_encoder: str
    k: int
    seed: int
    shots: dict
    lam: float
    lam_method: str
    temperature: float
    score: str
    threshold: ThresholdChoice
    selection: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    created_utc: str = ""
    schema_version: str = BUNDLE_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.lam_method not in LAMBDA_METHODS:
            raise ValueError(f"lam_method should be one of {LAMBDA_METHODS}, but got {self.lam_method!r}")
        if self.score not in SCORES:
            raise ValueError(f"score should be one of {SCORES}, but got {self.score!r}")

    def to_dict(self) -> dict:
        """JSON-safe dict; :meth:`from_dict` restores an equal object."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["threshold"] = self.threshold.to_dict()
        data["class_names"], data["templates"] = list(self.class_names), list(self.templates)
        data["prompts"] = [list(per_class) for per_class in self.prompts]
        return json_safe(data)

    @classmethod
    def from_dict(cls, data: dict) -> "BundleInfo":
        """Inverse of :meth:`to_dict`; ValueError on missing or unknown keys."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        unknown, missing = sorted(set(data) - names), sorted(required - set(data))
        if unknown or missing:
            raise ValueError(f"bundle.json: unknown keys {unknown}, missing keys {missing}")
        values = dict(data)
        values["threshold"] = ThresholdChoice.from_dict(data["threshold"])
        values["class_names"] = tuple(data["class_names"])
        values["templates"] = tuple(data["templates"])
        values["prompts"] = tuple(tuple(per_class) for per_class in data["prompts"])
        values["logit_scale"], values["lam"] = float(data["logit_scale"]), float(data["lam"])
        values["temperature"] = float(data["temperature"])
        return cls(**values)


@dataclass(frozen=True)
class PrototypeBundle:
    """A loaded (and verified) bundle.

    Attributes:
        path: The bundle folder.
        text_prototypes: ``C x D`` float32.
        image_prototypes: ``C x D`` float32.
        info: Its bundle.json.
    """

    path: Path
    text_prototypes: np.ndarray
    image_prototypes: np.ndarray
    info: BundleInfo

    @property
    def trust_head_path(self) -> Path:
        return self.path / TRUST_HEAD_FILE


def engine_sha256(manifest: dict, precision: str) -> dict[str, str]:
    """``{"image_encoder": sha, "text_encoder": sha}`` as the manifest records them."""
    entry = manifest.get("precisions", {}).get(precision)
    if entry is None:
        raise BundleError(f"the artifacts have no {precision} export (have {sorted(manifest.get('precisions', {}))})")
    return {f"{tower}_encoder": entry["files"][f"{tower}_encoder"]["sha256"] for tower in TOWERS}


def write_bundle(out_dir: str | os.PathLike, text_prototypes: np.ndarray, image_prototypes: np.ndarray,
                 info: BundleInfo) -> PrototypeBundle:
    """Write prototypes.npz, trust_head.onnx and bundle.json into `out_dir`, atomically.

    Args:
        out_dir: The bundle folder (replaced as a whole if it exists).
        text_prototypes: ``C x D`` text prototypes (stored as float32).
        image_prototypes: ``C x D`` image prototypes (stored as float32).
        info: Everything but ``files`` and ``created_utc``, which are filled in here.

    Returns:
        The bundle as written.

    Raises:
        ValueError: On prototype shape mismatch or NaN (from the trust head builder).
        OSError: If the folder cannot be written; nothing is published then.
    """
    text = np.ascontiguousarray(text_prototypes, dtype=np.float32)
    image = np.ascontiguousarray(image_prototypes, dtype=np.float32)
    head = build_trust_head(text, image, info.logit_scale, info.lam, info.temperature)
    target = Path(out_dir)
    with staged_folder(target) as stage:
        np.savez(stage / PROTOTYPES_FILE, text_prototypes=text, image_prototypes=image)
        save_trust_head(head, stage / TRUST_HEAD_FILE)
        files = {name: sha256_file(stage / name) for name in (PROTOTYPES_FILE, TRUST_HEAD_FILE)}
        info = replace(info, files=files, created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_json_atomic(stage / BUNDLE_JSON, info.to_dict())
    return PrototypeBundle(target, text, image, info)


def read_bundle_info(bundle_dir: str | os.PathLike) -> BundleInfo:
    """Read and version-check bundle.json (no file checks)."""
    path = Path(bundle_dir) / BUNDLE_JSON
    if not path.exists():
        raise BundleError(f"no {BUNDLE_JSON} in {bundle_dir}: build a bundle with `make calibrate MODEL=<name>`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BundleError(f"{path} is not valid JSON ({error}); {rebuild_hint('<name>')}") from error
    major = str(data.get("schema_version", "0")).split(".")[0]
    if major != BUNDLE_SCHEMA_VERSION.split(".")[0]:
        raise BundleError(f"{path}: bundle schema {data.get('schema_version')} is not supported "
                          f"(expected {BUNDLE_SCHEMA_VERSION.split('.')[0]}.x); "
                          f"{rebuild_hint(data.get('model', '<name>'))}")
    try:
        return BundleInfo.from_dict(data)
    except (TypeError, ValueError) as error:
        raise BundleError(f"{path}: {error}") from error


def _check_own_files(bundle_dir: Path, info: BundleInfo) -> None:
    for name in (PROTOTYPES_FILE, TRUST_HEAD_FILE):
        path = bundle_dir / name
        if not path.exists():
            raise BundleMismatchError(f"{path} is missing; {rebuild_hint(info.model)}")
        if sha256_file(path) != info.files.get(name):
            raise BundleMismatchError(f"{path}: sha256 differs from the one in {BUNDLE_JSON} "
                                      f"(tampered or partly copied); {rebuild_hint(info.model)}")


def _check_engines(artifacts_dir: Path, manifest: dict, info: BundleInfo) -> None:
    if manifest.get("weights", {}).get("id") != info.weights_id:
        raise BundleMismatchError(f"the bundle was built for weights {info.weights_id} but {artifacts_dir} holds "
                                  f"{manifest.get('weights', {}).get('id')}; {rebuild_hint(manifest.get('model'))}")
    current = engine_sha256(manifest, info.precision)
    for name, recorded in sorted(info.engine_sha256.items()):
        if current.get(name) != recorded:
            raise BundleMismatchError(
                f"{name} ({info.precision}) differs: the bundle was built with sha256 {recorded[:12]}..., "
                f"{artifacts_dir} has {str(current.get(name))[:12]}...; {rebuild_hint(info.model)}")


def _load_prototypes(path: Path, info: BundleInfo, embed_dim: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        text, image = data["text_prototypes"], data["image_prototypes"]
    expected = (len(info.class_names), embed_dim)
    for name, array in (("text_prototypes", text), ("image_prototypes", image)):
        if array.shape != expected:
            raise BundleMismatchError(f"{path}: {name} has shape {array.shape}, expected {expected} "
                                      f"({expected[0]} classes, embedding size {embed_dim}); "
                                      f"{rebuild_hint(info.model)}")
    return text, image


def load_bundle(bundle_dir: str | os.PathLike, artifacts_dir: str | os.PathLike) -> PrototypeBundle:
    """Load a bundle and verify it against itself and the artifacts it will run with.

    Args:
        bundle_dir: The bundle folder.
        artifacts_dir: The export folder (with manifest.json) whose encoders will be used.

    Returns:
        The verified bundle.

    Raises:
        BundleError: Missing bundle.json, unknown schema major version, malformed content.
        BundleMismatchError: A bundle file whose sha256 differs from bundle.json, engines or
            weights that differ from the ones it was built with, or prototype shapes that do
            not fit the class names and the model's embedding size.
        trustvlm.runtime.artifacts.ArtifactError: A missing or unsupported manifest.
    """
    folder, artifacts = Path(bundle_dir), Path(artifacts_dir)
    info = read_bundle_info(folder)
    _check_own_files(folder, info)
    manifest = read_manifest(artifacts)
    _check_engines(artifacts, manifest, info)
    text, image = _load_prototypes(folder / PROTOTYPES_FILE, info, int(manifest["embedding"]["dim"]))
    return PrototypeBundle(folder, text, image, info)


def describe_bundle(bundle: PrototypeBundle) -> str:
    """One line saying what a bundle is."""
    info, choice = bundle.info, bundle.info.threshold
    accept = (f"accept {info.score} >= {choice.threshold:.4f} (risk <= {choice.alpha} w.p. >= {1 - choice.delta:.2f}, "
              f"calibration coverage {100 * choice.coverage:.1f}%)" if choice.feasible
              else f"no threshold meets risk <= {choice.alpha} (defer everything)")
    return (f"{info.model}: {len(info.class_names)} classes, k={info.k}, lambda={info.lam:g} ({info.lam_method}), "
            f"T={info.temperature:g}; {accept}")
