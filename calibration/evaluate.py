"""Evaluation harness: misclassification detection of every score, clean and under camera shifts.

The data (:mod:`eval_data`): Fashion-MNIST (calibration split / test split), an image folder with
a separate test folder, or a CoOp split file ("train" shots, "val" held out, "test" reported on).
For each dataset (the clean data, then each shift of :mod:`shifts`):

* the calibration split and the test split are shifted the same way (seeded) and encoded once;
* image prototypes come from k shots per class of the *shifted calibration* split (the paper
  builds prototypes from each target dataset's train split; a split file's "train" rows); text
  prototypes are shared;
* the held-out rest of the calibration data (a split file's "val") is halved (seeded): lambda
  ("auto") is chosen by AURC on one half, a risk-guaranteed accept threshold (alpha, delta;
  ``EvalConfig.threshold_method``) is selected on the other, as in calibration;
* the fused scores are fitted, and ``auto`` chooses its score, on the lambda half too
  (:mod:`eval_fused`);
* on the test split every method gets ACC, AURC x1000, E-AURC x1000, AUROC and FPR95
  (:func:`trustvlm.calibration.metrics.evaluate_selective`);
* the risk-control rows give the guaranteed coverage (test coverage and test risk of the threshold
  chosen on the threshold half), the certifiable limit on that half and the test oracle coverage
  (:mod:`coverage_limits`); for ``auto``, the guarantee frontier and estimate (:mod:`guarantee_frontier`).

With ``EvalConfig.prototype_encoder`` set to an auxiliary image encoder's artifacts (e.g.
DINOv2), both splits are encoded by it too and the report compares, side by side, image
prototypes from the VLM's own encoder (the rows of :data:`METHODS`) with prototypes from the
auxiliary one (:data:`AUX_METHODS`: same shots, same halves, same lambda grid).

Ablations on the clean dataset (VLM prototypes, :mod:`eval_ablations`): k in {1, 2, 4, 8, 16}
over 5 shot seeds (mean and std), a lambda grid, and the image-prototype classifier's own accuracy. All scoring is float64 numpy;
:mod:`eval_report` writes the tables, JSON, per-sample npz and plots.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from trustvlm.calibration.calibrate import (LAMBDA_GRID, PAPER_LAMBDA, VLM_PROTOTYPES, Encoders, open_encoders,
                                            open_prototype_encoder, split_held_out)
from trustvlm.calibration.coverage_limits import risk_control_row
from trustvlm.calibration.eval_ablations import ablate_lambda, ablate_shots
from trustvlm.calibration.eval_data import load_eval_data
from trustvlm.calibration.eval_fused import FUSED_METHODS, FUSED_STAR_PREDICTIONS, evaluate_fused
from trustvlm.calibration.guarantee_frontier import dataset_guarantee
from trustvlm.calibration.image_prototypes import (check_recipe, default_recipe, encode_images,
                                                   prototypes_from_embeddings, remaining_indices, sample_shots)
from trustvlm.calibration.lambda_choice import choose_lambda
from trustvlm.calibration.metrics import evaluate_selective
from trustvlm.calibration.pools import read_class_names
from trustvlm.calibration.scores import DEFAULT_TEMPERATURE, TrustScores, compute_scores
from trustvlm.calibration.shifts import SHIFTS, apply_shift
from trustvlm.calibration.small_data import draw_checked_shots
from trustvlm.calibration.text_prototypes import build_text_prototypes
from trustvlm.calibration.threshold_selection import DEFAULT_THRESHOLD_METHOD, THRESHOLD_METHODS, threshold_grid
from trustvlm.calibration.vocabulary import check_class_vocabulary
from trustvlm.contract.manifest import model_name
from trustvlm.data.fashion_mnist import LabelledImages, load_split, to_rgb
from trustvlm.models.prompts import get_templates

CLEAN = "clean"

#: (key, table label) of every method, in table order.
METHODS: tuple[tuple[str, str], ...] = (
    ("msp", "MSP"),
    ("max_logit", "MaxLogit"),
    ("energy", "Energy"),
    ("entropy", "Entropy"),
    ("doctor", "DOCTOR"),
    ("proto_sim", "Proto-sim (cos(f, P_pred))"),
    ("trustvlm", "TrustVLM (lambda=1, paper)"),
    ("trustvlm_auto", "TrustVLM (lambda=auto)"),
    ("trustvlm_star", "TrustVLM* (lambda=1, T=0.01)"),
)
#: Rows added when an auxiliary prototype encoder is evaluated (same scores, its prototypes).
AUX_METHODS: tuple[tuple[str, str], ...] = (
    ("proto_sim_aux", "Proto-sim, aux prototypes"),
    ("trustvlm_aux", "TrustVLM, aux prototypes (lambda=1)"),
    ("trustvlm_aux_auto", "TrustVLM, aux prototypes (lambda=auto)"),
    ("trustvlm_star_aux", "TrustVLM*, aux prototypes (lambda=1, T=0.01)"),
)
#: Methods whose prediction is a TrustVLM* one (pred_star / pred_star_aux), not the VLM's.
STAR_PREDICTIONS = {"trustvlm_star": "pred_star", "trustvlm_star_aux": "pred_star_aux", **FUSED_STAR_PREDICTIONS}


def methods_of(result: "DatasetResult") -> tuple[tuple[str, str], ...]:
    """(key, label) of the methods measured on `result`, in table order (labels with its lambda and T)."""
    lam, temperature = result.info.get("paper_lambda", PAPER_LAMBDA), result.info.get("paper_temperature")
    temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
    return tuple((key, label.replace("lambda=1", f"lambda={lam:g}").replace("T=0.01", f"T={temperature:g}"))
                 for key, label in METHODS + FUSED_METHODS + AUX_METHODS if key in result.metrics)


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate.

    Attributes:
        k: Shots per class for the image prototypes.
        seed: Seed of the shot sampling, the held-out halves and the shifts.
        templates: Prompt template set (``paper`` or ``ensemble``).
        shifts: Names of the shifts to evaluate besides the clean data.
        alpha: Target risk of the threshold in the risk-control table.
        delta: Its failure probability.
        ablations: Whether to run the ablations on the clean data.
        test_limit: Use only the first N test images (None: all 10,000).
        precision: Which exported encoders to run.
        threads: ONNX Runtime intra-op threads (None: its default).
        prototype_encoder: ``"vlm"``, or an auxiliary image encoder's artifacts folder to
            compare its image prototypes with the VLM's (rows of :data:`AUX_METHODS`).
        threshold_method: How the risk-control thresholds are chosen (``"ltt"`` or ``"sgr"``).
        data: ``"fashion-mnist"``, an image folder or a CoOp split file (see :mod:`eval_data`).
        image_root: The folder a split file's image paths start from.
        test_data: An image folder to report on (required with a folder `data`).
        lam: Lambda of the paper rows (TrustVLM, TrustVLM*): 1 in the paper, 0.1 on its Pets.
        temperature: T of TrustVLM*'s prototype softmax in the paper rows.
        prototype_recipe: How shots are averaged into prototypes (``unit-mean`` / ``raw-mean``);
            None: ``unit-mean`` for the VLM's prototypes, the official ``raw-mean`` for the auxiliary ones.
        allow_unknown_words: Go on when class names are outside the model's vocabulary.
    """

    k: int = 16
    seed: int = 0
    templates: str = "paper"
    shifts: tuple[str, ...] = tuple(SHIFTS)
    alpha: float = 0.05
    delta: float = 0.1
    ablations: bool = True
    test_limit: int | None = None
    precision: str = "fp32"
    threads: int | None = None
    prototype_encoder: str = VLM_PROTOTYPES
    threshold_method: str = DEFAULT_THRESHOLD_METHOD
    data: str = "fashion-mnist"
    image_root: str | None = None
    test_data: str | None = None
    lam: float = PAPER_LAMBDA
    temperature: float = DEFAULT_TEMPERATURE
    prototype_recipe: str | None = None
    allow_unknown_words: bool = False

    def __post_init__(self) -> None:
        if self.threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold method should be one of {list(THRESHOLD_METHODS)}, "
                             f"but got {self.threshold_method!r}")
        unknown = [name for name in self.shifts if name not in SHIFTS]
        if unknown:
            raise ValueError(f"unknown shifts {unknown}; expected some of {list(SHIFTS)}")
        if not (np.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"lam should be a finite number >= 0, but got {self.lam!r}")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature should be a finite number > 0, but got {self.temperature!r}")
        if self.prototype_recipe is not None:
            check_recipe(self.prototype_recipe)

    def recipe(self, auxiliary: bool) -> str:
        """The prototype recipe of the VLM's (False) or the auxiliary encoder's (True) prototypes."""
        return default_recipe(auxiliary) if self.prototype_recipe is None else self.prototype_recipe


@dataclass(frozen=True)
class DatasetEmbeddings:
    """Embeddings of one dataset's calibration and test images (float64, raw).

    ``aux_calib`` / ``aux_test``: the auxiliary prototype encoder's embeddings of the same images
    (None without one). ``shot_pool`` / ``held_out_pool``: the calibration rows shots are drawn from
    and the rows that choose lambda and the threshold (None: any row / the rows that are not shots).
    """

    name: str
    calib: np.ndarray
    calib_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    aux_calib: np.ndarray | None = None
    aux_test: np.ndarray | None = None
    shot_pool: np.ndarray | None = None
    held_out_pool: np.ndarray | None = None

    def draw_shots(self, num_classes: int, k: int, seed: int,
                   class_names: tuple[str, ...] | None = None) -> np.ndarray:
        """``C x k`` calibration rows of the shots (from ``shot_pool`` when set)."""
        candidates = np.arange(len(self.calib_labels)) if self.shot_pool is None else self.shot_pool
        return candidates[sample_shots(self.calib_labels[candidates], num_classes, k, seed, class_names)]

    def held_out(self, shots: np.ndarray) -> np.ndarray:
        """Calibration rows that choose lambda and the threshold."""
        if self.held_out_pool is None:
            return remaining_indices(len(self.calib_labels), shots)
        return self.held_out_pool


@dataclass
class DatasetResult:
    """Everything measured on one dataset."""

    name: str
    metrics: dict[str, dict]
    per_sample: dict[str, np.ndarray]
    lambda_auto: float
    lambda_table: list
    risk_control: dict
    info: dict = field(default_factory=dict)


def shifted(name: str, images: np.ndarray, seed: int) -> np.ndarray:
    """`images` under the shift `name` (unchanged for the clean dataset); a list is shifted image by image."""
    if name == CLEAN:
        return images
    if isinstance(images, np.ndarray):
        return apply_shift(name, images, seed)
    return [apply_shift(name, image[None], seed * 1_000_003 + i)[0] for i, image in enumerate(images)]


def _rgb(images):
    return to_rgb(images) if isinstance(images, np.ndarray) else images


def embed_datasets(encoders: Encoders, calib, test, config: EvalConfig,
                   aux: Encoders | None = None) -> Iterator[DatasetEmbeddings]:
    """Yield the clean dataset, then each shift: both splits shifted alike and encoded once (by each encoder).

    `calib` and `test` have ``images`` and ``labels`` (LabelledImages or a calibration pool);
    a pool's ``shot_pool`` / ``held_out_pool`` carry over.
    """
    pools = {"shot_pool": getattr(calib, "shot_pool", None), "held_out_pool": getattr(calib, "held_out_pool", None)}
    for offset, name in enumerate((CLEAN, *config.shifts)):
        seeds = (config.seed + 2 * offset, config.seed + 2 * offset + 1)  # distinct noise per split
        calib_rgb = _rgb(shifted(name, calib.images, seeds[0]))
        test_rgb = _rgb(shifted(name, test.images, seeds[1]))
        calib_emb = encode_images(encoders.image, calib_rgb, encoders.preprocess)
        test_emb = encode_images(encoders.image, test_rgb, encoders.preprocess)
        aux_calib = aux_test = None
        if aux is not None:
            aux_calib = encode_images(aux.image, calib_rgb, aux.preprocess)
            aux_test = encode_images(aux.image, test_rgb, aux.preprocess)
        yield DatasetEmbeddings(name, calib_emb, calib.labels, test_emb, test.labels, aux_calib, aux_test, **pools)


def method_scores(paper: TrustScores, auto: TrustScores) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{method key: (confidence, prediction)}`` for every entry of :data:`METHODS`."""
    return {
        "msp": (paper.msp, paper.pred),
        "max_logit": (paper.max_logit, paper.pred),
        "energy": (paper.energy, paper.pred),
        "entropy": (paper.neg_entropy, paper.pred),
        "doctor": (paper.doctor, paper.pred),
        "proto_sim": (paper.s_ii, paper.pred),
        "trustvlm": (paper.trustvlm, paper.pred),
        "trustvlm_auto": (auto.trustvlm, auto.pred),
        "trustvlm_star": (paper.trustvlm_star, paper.pred_star),
    }


def evaluate_dataset(data: DatasetEmbeddings, text: np.ndarray, logit_scale: float, config: EvalConfig,
                     class_names: tuple[str, ...] | None = None) -> DatasetResult:
    """Prototypes from the dataset's calibration shots, lambda and thresholds on the rest, metrics on test."""
    shots = data.draw_shots(text.shape[0], config.k, config.seed, class_names)
    image = prototypes_from_embeddings(data.calib, shots, config.recipe(False))
    lambda_part, threshold_part = split_held_out(data.held_out(shots), config.seed)
    base = compute_scores(data.calib[lambda_part], text, image, logit_scale, lam=0.0)
    lam_auto, lambda_table = choose_lambda(base.msp, base.s_ii, base.pred == data.calib_labels[lambda_part],
                                           LAMBDA_GRID)
    paper = compute_scores(data.test, text, image, logit_scale, config.lam, config.temperature)
    auto = compute_scores(data.test, text, image, logit_scale, lam_auto, config.temperature)
    scored = method_scores(paper, auto)
    calib_auto = compute_scores(data.calib[threshold_part], text, image, logit_scale, lam_auto)
    calib_labels = data.calib_labels[threshold_part]
    calib_scored = {"msp": (calib_auto.msp, calib_auto.pred), "trustvlm_auto": (calib_auto.trustvlm, calib_auto.pred)}
    grid_auto = compute_scores(data.calib[lambda_part], text, image, logit_scale, lam_auto)
    grids = {"msp": grid_auto.msp, "trustvlm_auto": grid_auto.trustvlm}  # LTT grids: lambda-half scores
    per_sample = {"labels": data.test_labels, "pred": paper.pred, "pred_star": paper.pred_star,
                  "proto_pred": paper.proto_pred}
    info = {"n_calib_shots": int(shots.size), "n_calib_lambda": int(len(lambda_part)),
            "n_calib_threshold": int(len(threshold_part)), "n_test": int(len(data.test_labels)),
            "zero_shot_accuracy": float(np.mean(paper.pred == data.test_labels)),
            "prototype_classifier_accuracy": float(np.mean(paper.proto_pred == data.test_labels)),
            "paper_lambda": float(config.lam), "paper_temperature": float(config.temperature),
            "prototype_recipe": config.recipe(False)}
    fused = evaluate_fused(data.calib, data.calib_labels, data.test, text, image, logit_scale, lambda_part,
                           threshold_part, config.alpha, config.delta, config.seed)
    scored.update(fused["scored"])
    calib_scored.update(fused["calib_scored"])
    grids.update(fused["grids"])
    per_sample.update(fused["per_sample"])
    info.update(fused["info"])
    if data.aux_calib is not None:
        aux = _evaluate_aux(data, text, logit_scale, shots, lambda_part, threshold_part, config)
        scored.update(aux["scored"])
        calib_scored["trustvlm_aux_auto"] = aux["calib_auto"]
        per_sample.update(aux["per_sample"])
        info.update(aux["info"])
    metrics = {key: evaluate_selective(conf, pred == data.test_labels) for key, (conf, pred) in scored.items()}
    risk = {key: risk_control_row(conf, calib_pred == calib_labels, scored[key][0],
                                  scored[key][1] == data.test_labels, config.alpha, config.delta,
                                  method=config.threshold_method,
                                  grid=threshold_grid(grids.get(key), config.threshold_method))
            for key, (conf, calib_pred) in calib_scored.items()}
    per_sample.update({key: conf for key, (conf, _) in scored.items()})
    info.update(dataset_guarantee(calib_scored["auto"], calib_labels, grids.get("auto"), config, info))
    return DatasetResult(data.name, metrics, per_sample, float(lam_auto), lambda_table, risk, info)


def _evaluate_aux(data: DatasetEmbeddings, text: np.ndarray, logit_scale: float, shots: np.ndarray,
                  lambda_part: np.ndarray, threshold_part: np.ndarray, config: EvalConfig) -> dict:
    """The TrustVLM rows with auxiliary prototypes: same shots, halves and lambda grid as the VLM rows."""
    image = prototypes_from_embeddings(data.aux_calib, shots, config.recipe(True))
    base = compute_scores(data.calib[lambda_part], text, image, logit_scale, lam=0.0,
                          aux_embeddings=data.aux_calib[lambda_part])
    lam_auto, lambda_table = choose_lambda(base.msp, base.s_ii, base.pred == data.calib_labels[lambda_part],
                                           LAMBDA_GRID)
    paper = compute_scores(data.test, text, image, logit_scale, config.lam, config.temperature,
                           aux_embeddings=data.aux_test)
    auto = compute_scores(data.test, text, image, logit_scale, lam_auto, config.temperature,
                          aux_embeddings=data.aux_test)
    calib_auto = compute_scores(data.calib[threshold_part], text, image, logit_scale, lam_auto,
                                aux_embeddings=data.aux_calib[threshold_part])
    scored = {"proto_sim_aux": (paper.s_ii, paper.pred), "trustvlm_aux": (paper.trustvlm, paper.pred),
              "trustvlm_aux_auto": (auto.trustvlm, auto.pred),
              "trustvlm_star_aux": (paper.trustvlm_star, paper.pred_star)}
    return {"scored": scored, "calib_auto": (calib_auto.trustvlm, calib_auto.pred),
            "per_sample": {"pred_star_aux": paper.pred_star, "proto_pred_aux": paper.proto_pred},
            "info": {"prototype_classifier_accuracy_aux": float(np.mean(paper.proto_pred == data.test_labels)),
                     "lambda_auto_aux": float(lam_auto), "lambda_table_aux": lambda_table,
                     "prototype_recipe_aux": config.recipe(True)}}


@dataclass
class EvalReport:
    """All results of one evaluation run."""

    meta: dict
    datasets: list[DatasetResult]
    ablations: dict
    seconds: dict


def load_eval_splits(limit: int | None) -> tuple[LabelledImages, LabelledImages]:
    """The Fashion-MNIST calibration split and the (first `limit`) test images."""
    calib, test = load_split("calib"), load_split("test")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"test_limit should be >= 1, but got {limit}")
        test = LabelledImages(test.images[:limit], test.labels[:limit], test.class_names, test.indices[:limit])
    return calib, test


def run_evaluation(artifacts_dir: str | os.PathLike, config: EvalConfig = EvalConfig()) -> EvalReport:
    """Encode, score and measure every dataset (nothing is written; see eval_report.write_report).

    Args:
        artifacts_dir: Export folder with manifest.json and the encoders.
        config: What to evaluate.

    Returns:
        The :class:`EvalReport`.

    Raises:
        ValueError: Bad configuration, NaN embeddings, too few calibration images per class, no
            separate test set (:class:`~trustvlm.calibration.eval_data.NoTestSetError`), class names
            the model cannot read (:class:`~trustvlm.calibration.vocabulary.UnknownWordsError`).
        FileNotFoundError: Missing data (Fashion-MNIST not installed, a folder, split file or image).
        trustvlm.runtime.scoring.onnx_engine.EngineError: An encoder that cannot run.
    """
    started = time.perf_counter()
    encoders = open_encoders(artifacts_dir, config.precision, config.threads)
    aux = open_prototype_encoder(config.prototype_encoder, config.precision, config.threads)
    unreadable = check_class_vocabulary(artifacts_dir, encoders.manifest, read_class_names(config.data, config.image_root),
                                        config.allow_unknown_words)  # before reading any pixel
    loaded = load_eval_data(config.data, config.image_root, config.test_data, config.test_limit, config.seed)
    calib, test = loaded.calib, loaded.test
    # shots, lambda and the threshold need enough images: refused in one line before any encoding
    draw_checked_shots(calib, config.k, config.seed, fixed_lambda_hint=False)
    logit_scale = float(encoders.manifest["logit_scale"])
    text = build_text_prototypes(artifacts_dir, calib.class_names, get_templates(config.templates), config.precision)
    seconds = {"setup": time.perf_counter() - started}
    results, ablations = [], {}
    tick = time.perf_counter()
    for data in embed_datasets(encoders, calib, test, config, aux):  # encoding happens as the loop advances
        results.append(evaluate_dataset(data, text, logit_scale, config, calib.class_names))
        if data.name == CLEAN and config.ablations:
            paper = {"temperature": config.temperature, "recipe": config.recipe(False)}
            ablations = {"dataset": CLEAN, "shots": ablate_shots(data, text, logit_scale, config.seed, lam=config.lam,
                                                                 **paper),
                         "lambda": ablate_lambda(data, text, logit_scale, config.k, config.seed, **paper)}
        seconds[data.name], tick = time.perf_counter() - tick, time.perf_counter()
    manifest = encoders.manifest
    meta = {"model": model_name(manifest), "weights_id": manifest["weights"]["id"], "artifacts": str(artifacts_dir),
            "precision": config.precision, "logit_scale": logit_scale, "class_names": list(calib.class_names),
            "config": {**asdict(config), "shifts": list(config.shifts)}, "data": loaded.identity,
            "unreadable_class_names": {name: list(words) for name, words in unreadable.items()},
            "prototype_encoder": VLM_PROTOTYPES if aux is None else {
                "model": aux.manifest["model"], "weights_id": aux.manifest["weights"]["id"],
                "artifacts": str(config.prototype_encoder)}}
    seconds["total"] = time.perf_counter() - started
    return EvalReport(meta, results, ablations, seconds)
