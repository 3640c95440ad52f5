"""Prototype bundles: what calibration hands to the runtime, in one folder.

    bundle/
        prototypes.npz    text_prototypes, image_prototypes (float32, C x D, unit rows)
        trust_head.onnx   the fused trust head (calibration/trust_head.py) built from them
        ood_gate.onnx     the out-of-distribution gate (contract/ood_gate.py), when it has one
        bundle.json       how it was made: model, weights, engine sha256s, preprocessing, class
                          names, prompts, shots, k, seed, lambda, T, accept threshold, file sha256s

A bundle is only valid with the exact encoders it was built with: :func:`load_bundle` checks
the schema version, its own files' sha256 and the engine sha256s against the artifacts
manifest, and refuses a mismatch with a :class:`BundleMismatchError` that says what differs
and how to rebuild. Calibration writes bundles (``trustvlm.calibration.bundle.write_bundle``,
which builds the trust head); this module only reads and verifies them, so the runtime needs
neither torch nor onnx.

A bundle whose image prototypes come from an auxiliary image encoder (TrustVLM's DINOv2
option) records that encoder in ``aux_encoder`` (:class:`AuxEncoderInfo`: model, weights id,
engine sha256); its trust head then takes the auxiliary embedding as a second input, and
:func:`load_bundle` needs the auxiliary artifacts folder to verify it.

A bundle whose held-out images were split to choose the score also records the fitted fused
scores (``fused``: name -> :class:`~trustvlm.contract.fused.FusedModel`; its trust head then has
their outputs) and, when the score was chosen there (``--score auto``), the choice and the table it
was made from (``score_choice``).

How the image prototypes were averaged is ``prototype_recipe`` (:data:`PROTOTYPE_RECIPES`):
``unit-mean`` normalizes each shot's embedding, averages per class and normalizes the mean;
``raw-mean`` averages the raw embeddings and normalizes once (the official TrustVLM code's recipe
for its DINOv2 prototypes).

A bundle may hold an out-of-distribution gate, ``ood_gate.onnx``, recorded in ``ood_gate``
(:class:`~trustvlm.contract.ood_gate.OodGateInfo`); without one, frames go straight to the trust
threshold.

A bundle may record the guarantee monitor's reference sample, ``monitor_reference``
(:class:`~trustvlm.contract.monitor_reference.MonitorReference`): held-out values of the served score and the
gate's typicality that the runtime ranks each thinned frame among; without it the camera is not watched.

Schema history: 1.3 added ``monitor_reference`` (absent or null: none) and ``guarantee_frontier`` (absent: empty); 1.2 added ``fused`` and ``score_choice`` (empty when absent), ``prototype_recipe``
(absent in older bundles, which all used ``unit-mean``) and ``ood_gate`` (absent or null: no gate);
1.1 added ``aux_encoder`` (null for the VLM's own prototypes); 1.0 and 1.1 bundles still load.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np

from trustvlm.contract.encoders import (AuxEncoderInfo, BundleError, BundleMismatchError, engine_sha256,
                                        rebuild_hint)
from trustvlm.contract.files import json_safe, sha256_file
from trustvlm.contract.fused import FusedModel
from trustvlm.contract.manifest import read_manifest
from trustvlm.contract.monitor_reference import MonitorReference
from trustvlm.contract.ood_gate import OOD_GATE_FILE, OodGateInfo
from trustvlm.contract.scores import SCORES
from trustvlm.contract.threshold import ThresholdChoice

__all__ = [
    "BUNDLE_SCHEMA_VERSION", "BundleError", "BundleMismatchError", "AuxEncoderInfo", "BundleInfo", "PrototypeBundle",
    "BUNDLE_JSON", "PROTOTYPES_FILE", "TRUST_HEAD_FILE", "LAMBDA_METHODS", "engine_sha256", "read_bundle_info",
    "load_bundle", "describe_bundle", "rebuild_hint", "PROTOTYPE_RECIPES", "UNIT_MEAN", "RAW_MEAN",
]

BUNDLE_SCHEMA_VERSION = "1.3"
BUNDLE_JSON = "bundle.json"
PROTOTYPES_FILE = "prototypes.npz"
TRUST_HEAD_FILE = "trust_head.onnx"
LAMBDA_METHODS = ("paper", "auto", "manual")
UNIT_MEAN, RAW_MEAN = "unit-mean", "raw-mean"
#: How shot embeddings become a class's image prototype (see the module docstring).
PROTOTYPE_RECIPES = (UNIT_MEAN, RAW_MEAN)


@dataclass(frozen=True)
class BundleInfo:
    """The contents of bundle.json (see the module docstring).

    Attributes:
        model: Name of the model: the manifest's ``name`` (``trustvlm export --name``; the registry name unless
            the export was given another).
        architecture: Its open_clip architecture.
        weights_id: The manifest's ``weights.id``.
        precision: Precision of the encoders used (``fp32``, ``fp16`` or ``int8``: quantized image encoder,
            fp32 text encoder).
        engine_sha256: ``{"image_encoder": sha, "text_encoder": sha}`` of those encoders.
        preprocess: The manifest's preprocessing.
        logit_scale: The model's multiplicative logit scale.
        class_names: Class names, in label order.
        template_set: Name of the prompt template set.
        templates: The templates.
        prompts: ``prompts[c][t]``, the prompts encoded for the text prototypes.
        image_prototype_encoder: File name of the encoder the image prototypes came from
            (the VLM's own image encoder), or ``<aux model>:<file name>``.
        k: Shots per class.
        seed: Seed of the shot sampling.
        shots: Where the shots came from and which they are (indices or file sha256s).
        lam: Weight lambda of the image-prototype terms.
        lam_method: ``paper`` (1.0), ``auto`` (chosen on calibration data) or ``manual``.
        temperature: Temperature T of TrustVLM*'s prototype softmax.
        score: Score the threshold applies to (a name in ``trustvlm.contract.scores.SCORES``).
        threshold: The accept threshold with its guarantee.
        selection: How lambda and the threshold were chosen (data counts, lambda table).
        aux_encoder: The auxiliary image encoder of the image prototypes, or None when they
            come from the VLM's own image encoder.
        fused: The fitted fused scores, by score name (empty: none; the trust head then lacks
            their outputs).
        score_choice: How ``score`` was chosen with ``--score auto`` (criterion, the table of
            candidates with their guaranteed coverage and AURC, the winner); empty otherwise.
        prototype_recipe: How the shots were averaged, one of :data:`PROTOTYPE_RECIPES`
            (``unit-mean`` when bundle.json predates the field).
        ood_gate: The out-of-distribution gate (``ood_gate.onnx``), or None: no gate.
        monitor_reference: The guarantee monitor's reference sample, or None: the camera is not watched.
        guarantee_frontier: What the threshold images certify at other alphas, same delta and procedure:
            ``[{"alpha", "coverage", "threshold"}]``, threshold None where nothing is certified
            (:mod:`trustvlm.calibration.guarantee_frontier`); empty when bundle.json predates the field.
        files: sha256 of ``prototypes.npz``, ``trust_head.onnx`` and ``ood_gate.onnx`` if any (filled in when
            the bundle is written).
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
    aux_encoder: AuxEncoderInfo | None = None
    fused: dict[str, FusedModel] = field(default_factory=dict)
    score_choice: dict = field(default_factory=dict)
    prototype_recipe: str = UNIT_MEAN
    ood_gate: OodGateInfo | None = None
    monitor_reference: MonitorReference | None = None
    guarantee_frontier: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    created_utc: str = ""
    schema_version: str = BUNDLE_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.lam_method not in LAMBDA_METHODS:
            raise ValueError(f"lam_method should be one of {LAMBDA_METHODS}, but got {self.lam_method!r}")
        if self.score not in SCORES:
            raise ValueError(f"score should be one of {tuple(SCORES)}, but got {self.score!r}")
        if SCORES[self.score].fitted and self.score not in self.fused:
            raise ValueError(f"score {self.score} is fitted on calibration images, but the bundle has no fitted "
                             f"model for it (has {sorted(self.fused)})")
        for name, model in self.fused.items():
            if model.score != name:
                raise ValueError(f"fused[{name!r}] holds the model of {model.score!r}")
        star = self.fused.get("fused_star")
        if self.score == "fused_star" and (star.lam, star.temperature) != (self.lam, self.temperature):
            raise ValueError(f"score fused_star rates TrustVLM*'s prediction at lambda={star.lam:g}, T={star.temperature:g}"
                             f", but the bundle's trust head uses lambda={self.lam:g}, T={self.temperature:g}")
        if self.prototype_recipe not in PROTOTYPE_RECIPES:
            raise ValueError(f"prototype_recipe should be one of {PROTOTYPE_RECIPES}, but got {self.prototype_recipe!r}")

    def to_dict(self) -> dict:
        """JSON-safe dict; :meth:`from_dict` restores an equal object."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["threshold"] = self.threshold.to_dict()
        data["aux_encoder"] = None if self.aux_encoder is None else self.aux_encoder.to_dict()
        data["fused"] = {name: model.to_dict() for name, model in self.fused.items()}
        data["ood_gate"] = None if self.ood_gate is None else self.ood_gate.to_dict()
        data["monitor_reference"] = None if self.monitor_reference is None else self.monitor_reference.to_dict()
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
        aux = data.get("aux_encoder")
        values["aux_encoder"] = None if aux is None else AuxEncoderInfo.from_dict(aux)
        values["fused"] = {name: FusedModel.from_dict(model) for name, model in data.get("fused", {}).items()}
        gate = data.get("ood_gate")
        values["ood_gate"] = None if gate is None else OodGateInfo.from_dict(gate)
        reference = data.get("monitor_reference")
        values["monitor_reference"] = None if reference is None else MonitorReference.from_dict(reference)
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
        image_prototypes: ``C x D`` float32 (``C x D_aux`` with an auxiliary encoder).
        info: Its bundle.json.
    """

    path: Path
    text_prototypes: np.ndarray
    image_prototypes: np.ndarray
    info: BundleInfo

    @property
    def trust_head_path(self) -> Path:
        return self.path / TRUST_HEAD_FILE

    @property
    def ood_gate_path(self) -> Path | None:
        """The out-of-distribution gate's graph, or None for a bundle without one."""
        return None if self.info.ood_gate is None else self.path / OOD_GATE_FILE


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
    for name in (PROTOTYPES_FILE, TRUST_HEAD_FILE, *([OOD_GATE_FILE] if info.ood_gate is not None else [])):
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


def _check_aux_engine(bundle_dir: Path, aux_artifacts_dir: Path | None, info: BundleInfo) -> int | None:
    """Verify the auxiliary encoder against its artifacts; return its embedding size (None: no aux)."""
    aux = info.aux_encoder
    if aux is None:
        if aux_artifacts_dir is not None:
            raise BundleMismatchError(f"{bundle_dir} takes its image prototypes from the VLM's own image encoder, "
                                      f"but an auxiliary encoder folder was given ({aux_artifacts_dir}); "
                                      "leave that folder out")
        return None
    if aux_artifacts_dir is None:
        raise BundleError(f"{bundle_dir} takes its image prototypes from the auxiliary encoder {aux.model} "
                          f"(weights {aux.weights_id}); pass that encoder's artifacts folder to verify and run it")
    manifest = read_manifest(aux_artifacts_dir)
    hint = (f"rebuild it with `make calibrate MODEL={info.model} "
            f"CALIBRATE_ARGS='--prototype-encoder {aux_artifacts_dir}'`")
    if manifest.get("model") != aux.model:
        raise BundleMismatchError(f"the bundle's image prototypes come from {aux.model} but {aux_artifacts_dir} "
                                  f"holds {manifest.get('model')}; {hint}")
    if manifest.get("weights", {}).get("id") != aux.weights_id:
        raise BundleMismatchError(f"the bundle's auxiliary encoder {aux.model} had weights {aux.weights_id} but "
                                  f"{aux_artifacts_dir} holds {manifest.get('weights', {}).get('id')}; {hint}")
    current = engine_sha256(manifest, aux.precision, towers=("image",))["image_encoder"]
    if current != aux.engine_sha256:
        raise BundleMismatchError(
            f"auxiliary image_encoder of {aux.model} ({aux.precision}) differs: the bundle was built with sha256 "
            f"{aux.engine_sha256[:12]}..., {aux_artifacts_dir} has {current[:12]}...; {hint}")
    return int(manifest["embedding"]["dim"])


def _load_prototypes(path: Path, info: BundleInfo, embed_dim: int,
                     image_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        text, image = data["text_prototypes"], data["image_prototypes"]
    classes = len(info.class_names)
    for name, array, dim in (("text_prototypes", text, embed_dim), ("image_prototypes", image, image_dim or embed_dim)):
        expected = (classes, dim)
        if array.shape != expected:
            raise BundleMismatchError(f"{path}: {name} has shape {array.shape}, expected {expected} "
                                      f"({classes} classes, embedding size {dim}); {rebuild_hint(info.model)}")
    return text, image


def load_bundle(bundle_dir: str | os.PathLike, artifacts_dir: str | os.PathLike,
                aux_artifacts_dir: str | os.PathLike | None = None) -> PrototypeBundle:
    """Load a bundle and verify it against itself and the artifacts it will run with.

    Args:
        bundle_dir: The bundle folder.
        artifacts_dir: The export folder (with manifest.json) whose encoders will be used.
        aux_artifacts_dir: The export folder of the auxiliary image encoder, for a bundle whose
            image prototypes come from one (required then, refused otherwise).

    Returns:
        The verified bundle.

    Raises:
        BundleError: Missing bundle.json, unknown schema major version, malformed content, or
            a bundle with an auxiliary encoder loaded without its artifacts folder.
        BundleMismatchError: A bundle file whose sha256 differs from bundle.json, engines or
            weights (VLM or auxiliary) that differ from the ones it was built with, prototype
            shapes that do not fit the class names and the embedding sizes, or an auxiliary
            folder given for a bundle that has none.
        trustvlm.contract.manifest.ArtifactError: A missing or unsupported manifest.
    """
    folder, artifacts = Path(bundle_dir), Path(artifacts_dir)
    info = read_bundle_info(folder)
    _check_own_files(folder, info)
    manifest = read_manifest(artifacts)
    _check_engines(artifacts, manifest, info)
    aux_dim = _check_aux_engine(folder, None if aux_artifacts_dir is None else Path(aux_artifacts_dir), info)
    text, image = _load_prototypes(folder / PROTOTYPES_FILE, info, int(manifest["embedding"]["dim"]), aux_dim)
    return PrototypeBundle(folder, text, image, info)


def describe_bundle(bundle: PrototypeBundle) -> str:
    """One line saying what a bundle is."""
    info, choice = bundle.info, bundle.info.threshold
    chosen = " (chosen on calibration data)" if info.score_choice else ""
    accept = (f"accept {info.score}{chosen} >= {choice.threshold:.4f} (risk <= {choice.alpha} w.p. >= {1 - choice.delta:.2f}, "
              f"calibration coverage {100 * choice.coverage:.1f}%)" if choice.feasible
              else f"no threshold meets risk <= {choice.alpha} (defer everything)")
    aux = info.aux_encoder
    source = "" if aux is None else (f", image prototypes from {aux.model}"
                                     f"{' (random-init weights)' if aux.random_init else ''}")
    gate = "" if info.ood_gate is None else f"; {info.ood_gate.describe()}"
    return (f"{info.model}: {len(info.class_names)} classes, k={info.k}{source} ({info.prototype_recipe}), "
            f"lambda={info.lam:g} ({info.lam_method}), T={info.temperature:g}; {accept}{gate}")
