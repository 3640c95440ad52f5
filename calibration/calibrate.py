"""The calibration stage: exported encoders + labelled images -> a prototype bundle.

Steps (:func:`calibrate`):

1. Text prototypes from the class names and prompt templates (exported text encoder).
2. k shots per class drawn (seeded) from the pool; image prototypes from their embeddings
   (exported image encoder: the VLM's own, or with ``prototype_encoder=<artifacts folder>`` an
   auxiliary image encoder such as DINOv2, as in TrustVLM; then ``S_ii = cos(g, P_pred)`` uses
   the auxiliary embedding ``g`` of each image, while logits and predictions stay the VLM's).
3. The rest of the pool is held out. With ``lam="auto"`` it is split in two seeded halves:
   lambda (and, for TrustVLM*, the temperature) is chosen by AURC on one half, the accept
   threshold is selected on the other, so the threshold's guarantee does not rest on data
   that also chose the score. The lambda half also fits the fused scores and, with
   ``score="auto"`` (the default), chooses the score itself (:mod:`score_choice`: MSP,
   TrustVLM, TrustVLM* over their grids and the fused scores, by the coverage the threshold can
   guarantee there). With a fixed lambda the whole rest selects the threshold (and ``auto``
   means TrustVLM).
   Shots never take part: their own embedding is inside their prototype. A CoOp split file
   fixes both parts instead: shots from its "train" rows, lambda and threshold on "val".
4. Accept threshold with a risk guarantee (risk <= alpha with probability >= 1 - delta): Learn then
   Test fixed-sequence testing by default, SGR on request (:mod:`~trustvlm.calibration.threshold_selection`);
   the bundle also records the certifiable limit of the threshold half, what it certifies at other alphas
   and, when alpha certifies little, how many images would (:mod:`~trustvlm.calibration.guarantee_frontier`).
5. The out-of-distribution gate (:mod:`trustvlm.calibration.ood_gate`), fitted on the shots and a
   seeded half of the held-out images, its threshold set on the other half at the false-reject rate.
6. The guarantee monitor's reference sample (:mod:`~trustvlm.calibration.monitor_reference`).
7. prototypes.npz + trust_head.onnx (+ ood_gate.onnx) + bundle.json, published atomically.

For Fashion-MNIST the pool is the 5,000-image calibration split, never the test split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from trustvlm.calibration.bundle import write_bundle
from trustvlm.calibration.coverage_limits import certifiable_limit
from trustvlm.calibration.guarantee_frontier import record_guarantee
from trustvlm.calibration.monitor_reference import monitor_reference, reference_rows
from trustvlm.calibration.fused_score import fused_confidence
from trustvlm.calibration.image_prototypes import (check_recipe, default_recipe, encode_images,
                                                   prototypes_from_embeddings)
from trustvlm.calibration.lambda_choice import choose_lambda, choose_lambda_temperature
from trustvlm.calibration.numerics import softmax
from trustvlm.calibration.ood_gate import DEFAULT_FALSE_REJECT_RATE, check_gate_args, fit_calibration_gate
from trustvlm.calibration.pools import SPLIT_SUFFIX, LabelledPool, describe_shots, load_pool, read_class_names
from trustvlm.calibration.score_choice import choose_score, fit_fused_models, logits_and_similarities
from trustvlm.calibration.small_data import draw_checked_shots
from trustvlm.calibration.scores import DEFAULT_TEMPERATURE, check_prototype_shapes, compute_scores
from trustvlm.calibration.text_prototypes import build_text_prototypes
from trustvlm.calibration.threshold_selection import (DEFAULT_THRESHOLD_METHOD, GRID_NOTES, THRESHOLD_METHODS,
                                                      select_threshold, threshold_grid)
from trustvlm.calibration.tokenizer import get_tokenizer
from trustvlm.calibration.vocabulary import check_class_vocabulary
from trustvlm.contract.bundle import AuxEncoderInfo, BundleInfo, PrototypeBundle, engine_sha256
from trustvlm.contract.files import json_safe
from trustvlm.contract.manifest import encoder_path, model_name, read_manifest
from trustvlm.contract.fused import FusedModel
from trustvlm.contract.scores import AUTO_SCORE, DEFAULT_SCORE, SCORES, STAR_PREDICTION
from trustvlm.contract.threshold import ThresholdChoice
from trustvlm.data.label_csv import is_label_csv
from trustvlm.models.prompts import build_prompts, get_templates
from trustvlm.models.registry import CLIP, IMAGE_ENCODER
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder
from trustvlm.runtime.decode.preprocess import PreprocessConfig

#: ``prototype_encoder`` value for the VLM's own image encoder.
VLM_PROTOTYPES = "vlm"
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
    """Lambda (and T) for the score, with how they were chosen (and the score, the fused models and the
    score table when the lambda half chose or fitted them)."""

    lam: float
    temperature: float
    method: str
    table: list
    score: str = DEFAULT_SCORE
    fused: dict[str, FusedModel] = field(default_factory=dict)
    score_choice: dict = field(default_factory=dict)


def open_encoders(artifacts_dir: str | os.PathLike, precision: str = "fp32", threads: int | None = None,
                  need_text: bool = True) -> Encoders:
    """Read the manifest and open the image encoder (sha256-checked against the manifest).

    Args:
        artifacts_dir: Export folder with manifest.json.
        precision: Which exported encoders to open.
        threads: ONNX Runtime intra-op threads (None: its default).
        need_text: Refuse artifacts without a text encoder (an image encoder alone can only
            serve as the auxiliary prototype encoder).

    Raises:
        ValueError: An image-encoder export where a VLM is needed.
        trustvlm.contract.manifest.ArtifactError: Missing, unsupported or corrupt artifacts.
    """
    folder = Path(artifacts_dir)
    manifest = read_manifest(folder)
    if need_text and manifest.get("kind", CLIP) == IMAGE_ENCODER:
        raise ValueError(f"{folder} holds the image encoder {manifest.get('model')} without a text encoder; "
                         "calibrate a vision-language model's artifacts and pass this folder as the prototype encoder")
    engine = OnnxEncoder(encoder_path(folder, manifest, "image", precision), threads=threads, precision=precision)
    return Encoders(folder, manifest, engine, PreprocessConfig.from_dict(manifest["preprocess"]), precision)


def open_prototype_encoder(prototype_encoder: str | os.PathLike, precision: str = "fp32",
                           threads: int | None = None) -> Encoders | None:
    """The auxiliary image encoder named by `prototype_encoder` (None for ``"vlm"``, the VLM's own)."""
    if str(prototype_encoder) == VLM_PROTOTYPES:
        return None
    folder = Path(prototype_encoder)
    if not folder.is_dir():
        raise FileNotFoundError(f"prototype encoder should be {VLM_PROTOTYPES!r} or an artifacts folder (export one "
                                f"with `make export MODEL=dinov2_vitb14`), but {folder} is not a folder")
    return open_encoders(folder, precision, threads, need_text=False)


def check_labels(labels: np.ndarray, class_names: tuple[str, ...]) -> None:
    """Raise ValueError unless every label indexes a class name."""
    labels = np.asarray(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"class count mismatch: labels span [{labels.min()}, {labels.max()}] but there are "
                         f"{len(class_names)} class names")


def check_embedding_size(text_prototypes: np.ndarray | None, image_embeddings: np.ndarray, manifest: dict) -> None:
    """Raise ValueError unless text and image embeddings have the manifest's embedding size (no text: skipped)."""
    expected = int(manifest["embedding"]["dim"])
    for name, array in (("text encoder", text_prototypes), ("image encoder", image_embeddings)):
        if array is not None and array.shape[1] != expected:
            raise ValueError(f"embedding size mismatch: the {name} returns D={array.shape[1]}, "
                             f"the manifest says D={expected}; re-export the model")


def split_held_out(rest: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded halves (lambda part, threshold part) of the held-out indices."""
    order = np.random.default_rng([seed, 1]).permutation(rest)
    return np.sort(order[:len(order) // 2]), np.sort(order[len(order) // 2:])


def probs_and_similarities(embeddings: np.ndarray, text: np.ndarray, image: np.ndarray, logit_scale: float,
                           aux_embeddings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """VLM class probabilities and image-prototype cosines, ``N x C`` each (float64).

    The cosines use `aux_embeddings` when the prototypes come from an auxiliary encoder.
    """
    logits, sims = logits_and_similarities(embeddings, text, image, logit_scale, aux_embeddings)
    return softmax(logits, axis=1), sims


def choose_score_lambda(score: str, embeddings: np.ndarray, labels: np.ndarray, text: np.ndarray,
                        image: np.ndarray, logit_scale: float,
                        aux_embeddings: np.ndarray | None = None) -> LambdaChoice:
    """Lambda by calibration AURC (and T too for TrustVLM*), from the lambda_choice grids."""
    if SCORES[score].prediction == STAR_PREDICTION:  # its prediction, so correctness, moves with (lambda, T)
        probs, sims = probs_and_similarities(embeddings, text, image, logit_scale, aux_embeddings)
        lam, temperature, table = choose_lambda_temperature(probs, sims, labels, LAMBDA_GRID, TEMPERATURE_GRID)
        return LambdaChoice(lam, temperature, "auto", table)
    base = compute_scores(embeddings, text, image, logit_scale, lam=0.0, aux_embeddings=aux_embeddings)
    lam, table = choose_lambda(base.msp, base.s_ii, base.pred == labels, LAMBDA_GRID)
    return LambdaChoice(lam, DEFAULT_TEMPERATURE, "auto", table)


def fixed_lambda(lam: float) -> LambdaChoice:
    """A lambda given by the user; 1.0 is the paper's."""
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lambda should be 'auto' or a finite number >= 0, but got {lam!r}")
    return LambdaChoice(lam, DEFAULT_TEMPERATURE, "paper" if lam == PAPER_LAMBDA else "manual", [])


def score_and_correct(score: str, embeddings: np.ndarray, labels: np.ndarray, text: np.ndarray, image: np.ndarray,
                      logit_scale: float, choice: LambdaChoice,
                      aux_embeddings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`score`'s confidence on these images and whether the prediction it rates is right."""
    if SCORES[score].fitted:
        logits, sims = logits_and_similarities(embeddings, text, image, logit_scale, aux_embeddings)
        confidence, pred = fused_confidence(choice.fused[score], logits, sims)
        return confidence, pred == labels
    scores = compute_scores(embeddings, text, image, logit_scale, choice.lam, choice.temperature,
                            aux_embeddings=aux_embeddings)
    return getattr(scores, score), scores.prediction_for(score) == labels


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
              templates: str = "paper", score: str = AUTO_SCORE, precision: str = "fp32",
              threads: int | None = None, prototype_encoder: str | os.PathLike = VLM_PROTOTYPES,
              image_root: str | os.PathLike | None = None,
              threshold_method: str = DEFAULT_THRESHOLD_METHOD, prototype_recipe: str | None = None,
              allow_unknown_words: bool = False, ood_gate: str = "auto",
              ood_false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE) -> PrototypeBundle:
    """Build and write a prototype bundle (see the module docstring).

    Args:
        artifacts_dir: Export folder with manifest.json and the encoders.
        data: ``"fashion-mnist"`` (its calibration split), an ImageFolder path, or a CoOp
            split ``.json`` file (with `image_root`).
        out_dir: Bundle folder to write (replaced atomically).
        k: Shots per class for the image prototypes.
        seed: Seed of the shot sampling and of the held-out split.
        lam: ``"auto"`` (chosen by calibration AURC) or a number (1.0 is the paper's).
        alpha: Target risk among accepted predictions, in (0, 1).
        delta: Allowed probability that the true risk exceeds alpha, in (0, 1).
        templates: Prompt template set, ``"paper"`` or ``"ensemble"``.
        score: ``"auto"`` (chosen on the lambda half, see :mod:`score_choice`; TrustVLM with a
            fixed lambda) or the score the threshold applies to, a name in
            ``trustvlm.contract.scores.SCORES`` (the fitted ones need ``lam="auto"``).
        precision: Which exported encoders to use (the VLM's and the auxiliary one's).
        threads: ONNX Runtime intra-op threads (None: its default).
        prototype_encoder: ``"vlm"`` (image prototypes from the VLM's own image encoder) or
            the artifacts folder of an auxiliary image encoder (e.g. ``artifacts/dinov2_vitb14``).
        image_root: The folder a split file's image paths start from.
        threshold_method: How the threshold is chosen: ``"ltt"`` (Learn then Test, fixed-sequence
            testing) or ``"sgr"`` (see :mod:`trustvlm.calibration.threshold_selection`).
        prototype_recipe: How shots are averaged (``unit-mean`` or ``raw-mean``); None: the
            official ``raw-mean`` for an auxiliary encoder, ``unit-mean`` for the VLM's own.
        allow_unknown_words: Go on when class names are outside the model's vocabulary.
        ood_gate: The out-of-distribution gate: ``"auto"`` (fitted when the held-out images can set
            its false-reject rate, else none, with a note in ``selection``), ``"on"`` (refuse
            otherwise) or ``"off"``.
        ood_false_reject_rate: Share of in-distribution frames the gate may defer, in (0, 1).

    Returns:
        The written bundle.

    Raises:
        ValueError: Bad arguments, a class with fewer than k images, class count or
            embedding size mismatch, NaN embeddings (EmbeddingError), unreadable images,
            a malformed split file, class names the model cannot read
            (:class:`~trustvlm.calibration.vocabulary.UnknownWordsError`).
        FileNotFoundError: Missing dataset, folder, split file or prototype encoder folder.
        trustvlm.runtime.scoring.onnx_engine.EngineError: An encoder that cannot run.
    """
    lam = _parse_lambda(lam)
    _check_risk_targets(alpha, delta)
    check_gate_args(ood_gate, ood_false_reject_rate)
    if threshold_method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method should be one of {list(THRESHOLD_METHODS)}, but got {threshold_method!r}")
    if score != AUTO_SCORE and score not in SCORES:
        raise ValueError(f"score should be {' or '.join(map(repr, (AUTO_SCORE, *SCORES)))}, but got {score!r}")
    if lam != "auto" and score != AUTO_SCORE and SCORES[score].fitted:
        raise ValueError(f"score {score} is fitted on half of the held-out images, which a fixed lambda does not "
                         "set apart: use lambda 'auto' (--lam auto) or another score")
    template_list = get_templates(templates)
    encoders = open_encoders(artifacts_dir, precision, threads)
    get_tokenizer(encoders.manifest, encoders.artifacts_dir)  # no tokenizer (SigLIP offline): fail now, in one line
    aux = open_prototype_encoder(prototype_encoder, precision, threads)
    recipe = default_recipe(aux is not None) if prototype_recipe is None else check_recipe(prototype_recipe)
    if image_root is None or Path(data).suffix == SPLIT_SUFFIX or is_label_csv(data):  # else load_pool refuses
        check_class_vocabulary(encoders.artifacts_dir, encoders.manifest, read_class_names(data, image_root),
                               allow_unknown_words)  # before reading any pixel
    pool = load_pool(data, image_root)
    check_labels(pool.labels, pool.class_names)
    shots, rest = draw_checked_shots(pool, k, seed, lam, ood_gate, ood_false_reject_rate)  # too few: refused here
    ids = list(map(str, pool.ids))
    embeddings = encode_images(encoders.image, pool.images, encoders.preprocess, ids=ids)
    text = build_text_prototypes(encoders.artifacts_dir, pool.class_names, template_list, precision)
    check_embedding_size(text, embeddings, encoders.manifest)
    aux_embeddings = None
    if aux is not None:
        aux_embeddings = encode_images(aux.image, pool.images, aux.preprocess, ids=ids)
        check_embedding_size(None, aux_embeddings, aux.manifest)
    # Calibrate on exactly what the bundle stores (float32) so the threshold fits the runtime head.
    text = text.astype(np.float32).astype(np.float64)
    proto_source = embeddings if aux_embeddings is None else aux_embeddings
    image = prototypes_from_embeddings(proto_source, shots, recipe).astype(np.float32).astype(np.float64)
    check_prototype_shapes(text.shape, image.shape, same_dim=aux is None)
    scoring = _Scoring(embeddings, aux_embeddings, pool.labels, text, image, float(encoders.manifest["logit_scale"]))
    choice, lambda_part, threshold_part, selection = _choose_lambda(score, lam, rest, seed, scoring, pool, shots,
                                                                    alpha, delta)
    confidence, correct = scoring.score_and_correct(choice.score, threshold_part, choice)
    grid = threshold_grid(scoring.score_and_correct(choice.score, lambda_part, choice)[0], threshold_method)
    selection["threshold_grid"] = GRID_NOTES[grid is not None]
    threshold = select_threshold(confidence, correct, alpha, delta, method=threshold_method, grid=grid)
    selection["certifiable_limit"] = certifiable_limit(confidence, correct, alpha, delta).coverage
    frontier = record_guarantee(selection, confidence, correct, alpha, delta, threshold_method, grid)
    gate, gate_note = fit_calibration_gate(ood_gate, ood_false_reject_rate, embeddings, pool.images,
                                           encoders.preprocess, pool.labels, shots, rest, seed)
    reference_at = reference_rows(threshold_part, shots, rest, seed, gate is not None)
    reference, reference_note = monitor_reference(scoring.score_and_correct(choice.score, reference_at, choice)[0],
                                                  reference_at, gate, embeddings, pool.images, encoders.preprocess)
    selection.update((key, note) for key, note in (("ood_gate", gate_note), ("monitor", reference_note)) if note)
    info = _bundle_info(encoders, pool, shots, template_list, templates, k, seed, choice, choice.score, threshold,
                        selection, aux, frontier)
    return write_bundle(out_dir, text, image, replace(info, prototype_recipe=recipe, monitor_reference=reference),
                        ood_gate=gate)


@dataclass(frozen=True)
class _Scoring:
    """What the scores of pool images are computed from (auxiliary embeddings optional)."""

    embeddings: np.ndarray
    aux_embeddings: np.ndarray | None
    labels: np.ndarray
    text: np.ndarray
    image: np.ndarray
    logit_scale: float

    def _aux(self, rows: np.ndarray) -> np.ndarray | None:
        return None if self.aux_embeddings is None else self.aux_embeddings[rows]

    def lam(self, score: str, rows: np.ndarray) -> LambdaChoice:
        return choose_score_lambda(score, self.embeddings[rows], self.labels[rows], self.text, self.image,
                                   self.logit_scale, self._aux(rows))

    def score_and_correct(self, score: str, rows: np.ndarray, choice: LambdaChoice) -> tuple[np.ndarray, np.ndarray]:
        return score_and_correct(score, self.embeddings[rows], self.labels[rows], self.text, self.image,
                                 self.logit_scale, choice, self._aux(rows))

    def logits_and_similarities(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return logits_and_similarities(self.embeddings[rows], self.text, self.image, self.logit_scale,
                                       self._aux(rows))

    def choose(self, score: str, rows: np.ndarray, alpha: float, delta: float, seed: int) -> LambdaChoice:
        """The lambda half's choices: the score (auto), lambda and T, and the fused models."""
        logits, sims = self.logits_and_similarities(rows)
        labels = self.labels[rows]
        if score == AUTO_SCORE:
            picked = choose_score(logits, sims, labels, alpha, delta, LAMBDA_GRID, TEMPERATURE_GRID, seed)
            return LambdaChoice(picked.lam, picked.temperature, "auto", [], picked.score, picked.fused,
                                picked.record())
        fused, star = fit_fused_models(logits, sims, labels, LAMBDA_GRID, TEMPERATURE_GRID)
        if score == "fused_star":  # the head's TrustVLM* prediction is the one the model rates
            return LambdaChoice(star[0], star[1], "auto", [], score, fused)
        return replace(self.lam("trustvlm" if score == "fused" else score, rows), score=score, fused=fused)


def _choose_lambda(score, lam, rest, seed, scoring: _Scoring, pool: LabelledPool, shots: np.ndarray, alpha: float,
                   delta: float) -> tuple[LambdaChoice, np.ndarray, np.ndarray, dict]:
    """Lambda (fixed or auto on one half of `rest`), the score, and the indices of the two halves."""
    if lam == "auto":
        lambda_part, threshold_part = split_held_out(rest, seed)
        choice = scoring.choose(score, lambda_part, alpha, delta, seed)
    else:
        lambda_part, threshold_part = rest[:0], rest
        choice = replace(fixed_lambda(lam), score=DEFAULT_SCORE if score == AUTO_SCORE else score)
    selection = {"data": pool.source, **({"data_sha256": pool.source_sha256} if pool.source_sha256 else {}),
                 "shots": int(np.size(shots)), "lambda_images": int(len(lambda_part)),
                 "threshold_images": int(len(threshold_part)), "lambda_table": json_safe(choice.table)}
    return choice, lambda_part, threshold_part, selection


def _bundle_info(encoders: Encoders, pool: LabelledPool, shots: np.ndarray, template_list: list[str],
                 template_set: str, k: int, seed: int, choice: LambdaChoice, score: str,
                 threshold: ThresholdChoice, selection: dict, aux: Encoders | None, frontier: list) -> BundleInfo:
    manifest = encoders.manifest
    proto_encoder = (encoders.image.path.name if aux is None
                     else f"{aux.manifest['model']}:{aux.image.path.name}")
    return BundleInfo(
        model=model_name(manifest), architecture=manifest["architecture"], weights_id=manifest["weights"]["id"],
        precision=encoders.precision, engine_sha256=engine_sha256(manifest, encoders.precision),
        preprocess=dict(manifest["preprocess"]), logit_scale=float(manifest["logit_scale"]),
        class_names=tuple(pool.class_names), template_set=template_set, templates=tuple(template_list),
        prompts=tuple(tuple(p) for p in build_prompts(pool.class_names, template_list)),
        image_prototype_encoder=proto_encoder, k=int(k), seed=int(seed),
        shots=describe_shots(pool, shots), lam=float(choice.lam), lam_method=choice.method,
        temperature=float(choice.temperature), score=score, threshold=threshold, selection=selection,
        aux_encoder=None if aux is None else AuxEncoderInfo.from_manifest(aux.manifest, aux.precision),
        fused=dict(choice.fused), score_choice=json_safe(choice.score_choice), guarantee_frontier=frontier)
