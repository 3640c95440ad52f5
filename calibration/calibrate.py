"""The calibration stage: exported encoders + labelled images -> a prototype bundle.

Steps (:func:`calibrate`):

1. Text prototypes from the class names and prompt templates (exported text encoder).
2. k shots per class drawn (seeded) from the pool; image prototypes from their embeddings
   (exported image encoder: the VLM's own).
3. The rest of the pool is held out. With ``lam="auto"`` it is split in two seeded halves:
   lambda (and, for TrustVLM*, the temperature) is chosen by AURC on one half, the accept
   threshold is selected on the other, so the threshold's guarantee does not rest on data
   that also chose the score. With a fixed lambda the whole rest selects the threshold.
   Shots never take part: their own embedding is inside their prototype.
4. Accept threshold by SGR (risk <= alpha with probability >= 1 - delta).
5. prototypes.npz + trust_head.onnx + bundle.json, published atomically.

For Fashion-MNIST the pool is the 5,000-image calibration split, never the test split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustvlm.calibration.bundle import BundleInfo, PrototypeBundle, engine_sha256, json_safe, write_bundle
from trustvlm.calibration.image_prototypes import (encode_images, prototypes_from_embeddings, remaining_indices,
                                                   sample_shots)
from trustvlm.calibration.pools import LabelledPool, describe_shots, load_pool
from trustvlm.calibration.risk_control import (ThresholdChoice, choose_lambda, choose_lambda_temperature,
                                               select_threshold)
from trustvlm.calibration.scores import (DEFAULT_TEMPERATURE, check_prototype_shapes, compute_scores, l2_normalize,
                                         softmax)
from trustvlm.calibration.text_prototypes import build_text_prototypes
from trustvlm.models.prompts import build_prompts, get_templates
from trustvlm.runtime.artifacts import encoder_path, read_manifest
from trustvlm.runtime.onnx_engine import OnnxEncoder
from trustvlm.runtime.preprocess import PreprocessConfig

LAMBDA_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
TEMPERATURE_GRID = (0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
PAPER_LAMBDA = 1.0


@dataclass(frozen=True)
class Encoders:
    """The exported encoders of one artifacts folder, opened for calibration."""

    artifacts_dir: Path
    manifest: dict
    image: OnnxEncoder
    preprocess: PreprocessConfig
    precision: str


@dataclass(frozen=True)
class LambdaChoice:
    """Lambda (and T) for the score, with how they were chosen."""

    lam: float
    temperature: float
    method: str
    table: list


def open_encoders(artifacts_dir: str | os.PathLike, precision: str = "fp32", threads: int | None = None) -> Encoders:
    """Read the manifest and open the image encoder (sha256-checked against the manifest)."""
    folder = Path(artifacts_dir)
    manifest = read_manifest(folder)
    engine = OnnxEncoder(encoder_path(folder, manifest, "image", precision), threads=threads, precision=precision)
    return Encoders(folder, manifest, engine, PreprocessConfig.from_dict(manifest["preprocess"]), precision)


def check_labels(labels: np.ndarray, class_names: tuple[str, ...]) -> None:
    """Raise ValueError unless every label indexes a class name."""
    labels = np.asarray(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"class count mismatch: labels span [{labels.min()}, {labels.max()}] but there are "
                         f"{len(class_names)} class names")


def check_embedding_size(text_prototypes: np.ndarray, image_embeddings: np.ndarray, manifest: dict) -> None:
    """Raise ValueError unless text and image embeddings have the manifest's embedding size."""
    expected = int(manifest["embedding"]["dim"])
    for name, array in (("text encoder", text_prototypes), ("image encoder", image_embeddings)):
        if array.shape[1] != expected:
            raise ValueError(f"embedding size mismatch: the {name} returns D={array.shape[1]}, "
                             f"the manifest says D={expected}; re-export the model")


def split_held_out(rest: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded halves (lambda part, threshold part) of the held-out indices."""
    order = np.random.default_rng([seed, 1]).permutation(rest)
    half = len(order) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def probs_and_similarities(embeddings: np.ndarray, text: np.ndarray, image: np.ndarray,
                           logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """VLM class probabilities and image-prototype cosines, ``N x C`` each (float64)."""
    f = l2_normalize(embeddings, axis=1, name="image embeddings")
    t, p = l2_normalize(text, axis=1), l2_normalize(image, axis=1)
    return softmax(logit_scale * f @ t.T, axis=1), f @ p.T


def choose_score_lambda(score: str, embeddings: np.ndarray, labels: np.ndarray, text: np.ndarray,
                        image: np.ndarray, logit_scale: float) -> LambdaChoice:
    """Lambda by calibration AURC (and T too for TrustVLM*), from the risk_control grids."""
    if score == "trustvlm_star":
        probs, sims = probs_and_similarities(embeddings, text, image, logit_scale)
        lam, temperature, table = choose_lambda_temperature(probs, sims, labels, LAMBDA_GRID, TEMPERATURE_GRID)
        return LambdaChoice(lam, temperature, "auto", table)
    base = compute_scores(embeddings, text, image, logit_scale, lam=0.0)
    lam, table = choose_lambda(base.msp, base.s_ii, base.pred == labels, LAMBDA_GRID)
    return LambdaChoice(lam, DEFAULT_TEMPERATURE, "auto", table)


def fixed_lambda(lam: float) -> LambdaChoice:
    """A lambda given by the user; 1.0 is the paper's."""
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lambda should be 'auto' or a finite number >= 0, but got {lam!r}")
    return LambdaChoice(lam, DEFAULT_TEMPERATURE, "paper" if lam == PAPER_LAMBDA else "manual", [])


def select_score_threshold(score: str, embeddings: np.ndarray, labels: np.ndarray, text: np.ndarray,
                           image: np.ndarray, logit_scale: float, choice: LambdaChoice, alpha: float,
                           delta: float) -> ThresholdChoice:
    """SGR threshold on `score` (its own prediction decides correctness)."""
    scores = compute_scores(embeddings, text, image, logit_scale, choice.lam, choice.temperature)
    correct = scores.prediction_for(score) == labels
    return select_threshold(getattr(scores, score), correct, alpha, delta)


def _parse_lambda(lam) -> str | float:
    if isinstance(lam, str) and lam == "auto":
        return lam
    try:
        value = float(lam)
    except (TypeError, ValueError) as error:
        raise ValueError(f"lambda should be 'auto' or a number >= 0, but got {lam!r}") from error
    return fixed_lambda(value).lam


def _check_risk_targets(alpha: float, delta: float) -> None:
    for name, value in (("alpha", alpha), ("delta", delta)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} should be in (0, 1), but got {value!r}")


def calibrate(artifacts_dir: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike,
              k: int = 16, seed: int = 0, lam: str | float = "auto", alpha: float = 0.05, delta: float = 0.1,
              templates: str = "paper", score: str = "trustvlm", precision: str = "fp32",
              threads: int | None = None) -> PrototypeBundle:
    """Build and write a prototype bundle (see the module docstring).

    Args:
        artifacts_dir: Export folder with manifest.json and the encoders.
        data: ``"fashion-mnist"`` (its calibration split) or an ImageFolder path.
        out_dir: Bundle folder to write (replaced atomically).
        k: Shots per class for the image prototypes.
        seed: Seed of the shot sampling and of the held-out split.
        lam: ``"auto"`` (chosen by calibration AURC) or a number (1.0 is the paper's).
        alpha: Target risk among accepted predictions, in (0, 1).
        delta: Allowed probability that the true risk exceeds alpha, in (0, 1).
        templates: Prompt template set, ``"paper"`` or ``"ensemble"``.
        score: ``"trustvlm"`` or ``"trustvlm_star"``: the score the threshold applies to.
        precision: Which exported encoders to use.
        threads: ONNX Runtime intra-op threads (None: its default).

    Returns:
        The written bundle.

    Raises:
        ValueError: Bad arguments, a class with fewer than k images, class count or
            embedding size mismatch, NaN embeddings (EmbeddingError), unreadable images.
        FileNotFoundError: Missing dataset or folder.
        trustvlm.runtime.onnx_engine.EngineError: An encoder that cannot run.
    """
    lam = _parse_lambda(lam)
    _check_risk_targets(alpha, delta)
    if score not in ("trustvlm", "trustvlm_star"):
        raise ValueError(f"score should be 'trustvlm' or 'trustvlm_star', but got {score!r}")
    template_list = get_templates(templates)
    encoders = open_encoders(artifacts_dir, precision, threads)
    pool = load_pool(data)
    check_labels(pool.labels, pool.class_names)
    shots = sample_shots(pool.labels, len(pool.class_names), k, seed, pool.class_names)
    embeddings = encode_images(encoders.image, pool.images, encoders.preprocess, ids=list(map(str, pool.ids)))
    text = build_text_prototypes(encoders.artifacts_dir, pool.class_names, template_list, precision)
    check_embedding_size(text, embeddings, encoders.manifest)
    # Calibrate on exactly what the bundle stores (float32) so the threshold fits the runtime head.
    text = text.astype(np.float32).astype(np.float64)
    image = prototypes_from_embeddings(embeddings, shots).astype(np.float32).astype(np.float64)
    check_prototype_shapes(text.shape, image.shape)
    rest = remaining_indices(len(pool), shots)
    choice, threshold_part, selection = _choose_lambda(score, lam, rest, seed, embeddings, pool, text, image,
                                                       float(encoders.manifest["logit_scale"]))
    threshold = select_score_threshold(score, embeddings[threshold_part], pool.labels[threshold_part], text, image,
                                       float(encoders.manifest["logit_scale"]), choice, alpha, delta)
    info = _bundle_info(encoders, pool, shots, template_list, templates, k, seed, choice, score, threshold, selection)
    return write_bundle(out_dir, text, image, info)


def _choose_lambda(score, lam, rest, seed, embeddings, pool: LabelledPool, text, image,
                   logit_scale) -> tuple[LambdaChoice, np.ndarray, dict]:
    """Lambda (fixed or auto on one half of `rest`) and the indices left to select the threshold on."""
    if lam == "auto":
        lambda_part, threshold_part = split_held_out(rest, seed)
        if len(lambda_part) < 2 or len(threshold_part) < 1:
            raise ValueError(f"only {len(rest)} held-out image(s) after the shots: too few to choose lambda "
                             "and a threshold; lower k or add images")
        choice = choose_score_lambda(score, embeddings[lambda_part], pool.labels[lambda_part], text, image,
                                     logit_scale)
    else:
        lambda_part, threshold_part, choice = rest[:0], rest, fixed_lambda(lam)
    selection = {"data": pool.source, "shots": int(len(pool) - len(rest)), "lambda_images": int(len(lambda_part)),
                 "threshold_images": int(len(threshold_part)), "lambda_table": json_safe(choice.table)}
    return choice, threshold_part, selection


def _bundle_info(encoders: Encoders, pool: LabelledPool, shots: np.ndarray, template_list: list[str],
                 template_set: str, k: int, seed: int, choice: LambdaChoice, score: str,
                 threshold: ThresholdChoice, selection: dict) -> BundleInfo:
    manifest = encoders.manifest
    return BundleInfo(
        model=manifest["model"], architecture=manifest["architecture"], weights_id=manifest["weights"]["id"],
        precision=encoders.precision, engine_sha256=engine_sha256(manifest, encoders.precision),
        preprocess=dict(manifest["preprocess"]), logit_scale=float(manifest["logit_scale"]),
        class_names=tuple(pool.class_names), template_set=template_set, templates=tuple(template_list),
        prompts=tuple(tuple(p) for p in build_prompts(pool.class_names, template_list)),
        image_prototype_encoder=encoders.image.path.name, k=int(k), seed=int(seed),
        shots=describe_shots(pool, shots), lam=float(choice.lam), lam_method=choice.method,
        temperature=float(choice.temperature), score=score, threshold=threshold, selection=selection)
