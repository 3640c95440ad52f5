"""Evaluation harness: misclassification detection of every score, clean and under camera shifts.

For each dataset (the clean Fashion-MNIST test set, then each shift of :mod:`shifts`):

* the calibration split and the test split are shifted the same way (seeded) and encoded once;
* image prototypes come from k shots per class of the *shifted calibration* split (the paper
  builds prototypes from each target dataset's train split); text prototypes are shared;
* the rest of the calibration split is halved (seeded): lambda ("auto") is chosen by AURC on one
  half, an SGR accept threshold (alpha, delta) is selected on the other, as in calibration;
* on the test split every method gets ACC, AURC x1000, E-AURC x1000, AUROC and FPR95
  (:func:`trustvlm.calibration.metrics.evaluate_selective`).

With ``EvalConfig.prototype_encoder`` set to an auxiliary image encoder's artifacts (e.g.
DINOv2), both splits are encoded by it too and the report compares, side by side, image
prototypes from the VLM's own encoder (the rows of :data:`METHODS`) with prototypes from the
auxiliary one (:data:`AUX_METHODS`: same shots, same halves, same lambda grid).

Ablations on the clean dataset (VLM prototypes): k in {1, 2, 4, 8, 16} over 5 shot seeds (mean
and std), a lambda grid, and the image-prototype classifier's own accuracy. All scoring is float64 numpy;
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
from trustvlm.calibration.image_prototypes import (encode_images, prototypes_from_embeddings, remaining_indices,
                                                   sample_shots)
from trustvlm.calibration.lambda_choice import choose_lambda
from trustvlm.calibration.metrics import evaluate_selective
from trustvlm.calibration.scores import DEFAULT_TEMPERATURE, TrustScores, compute_scores
from trustvlm.calibration.shifts import SHIFTS, apply_shift
from trustvlm.calibration.text_prototypes import build_text_prototypes
from trustvlm.calibration.threshold_selection import select_threshold
from trustvlm.contract.manifest import model_name
from trustvlm.data.fashion_mnist import LabelledImages, load_split, to_rgb
from trustvlm.models.prompts import get_templates

CLEAN = "clean"
ABLATION_SHOTS = (1, 2, 4, 8, 16)
ABLATION_SEEDS = 5

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
STAR_PREDICTIONS = {"trustvlm_star": "pred_star", "trustvlm_star_aux": "pred_star_aux"}


def methods_of(result: "DatasetResult") -> tuple[tuple[str, str], ...]:
    """(key, label) of the methods measured on `result`, in table order."""
    return tuple((key, label) for key, label in METHODS + AUX_METHODS if key in result.metrics)


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate.

    Attributes:
        k: Shots per class for the image prototypes.
        seed: Seed of the shot sampling, the held-out halves and the shifts.
        templates: Prompt template set (``paper`` or ``ensemble``).
        shifts: Names of the shifts to evaluate besides the clean data.
        alpha: Target risk of the SGR threshold in the risk-control table.
        delta: Its failure probability.
        ablations: Whether to run the ablations on the clean data.
        test_limit: Use only the first N test images (None: all 10,000).
        precision: Which exported encoders to run.
        threads: ONNX Runtime intra-op threads (None: its default).
        prototype_encoder: ``"vlm"``, or an auxiliary image encoder's artifacts folder to
            compare its image prototypes with the VLM's (rows of :data:`AUX_METHODS`).
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

    def __post_init__(self) -> None:
        unknown = [name for name in self.shifts if name not in SHIFTS]
        if unknown:
            raise ValueError(f"unknown shifts {unknown}; expected some of {list(SHIFTS)}")


@dataclass(frozen=True)
class DatasetEmbeddings:
    """Embeddings of one dataset's calibration and test images (float64, raw).

    ``aux_calib`` / ``aux_test``: the auxiliary prototype encoder's embeddings of the same images
    (None without one).
    """

    name: str
    calib: np.ndarray
    calib_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    aux_calib: np.ndarray | None = None
    aux_test: np.ndarray | None = None


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
    """`images` under the shift `name` (unchanged for the clean dataset)."""
    return images if name == CLEAN else apply_shift(name, images, seed)


def embed_datasets(encoders: Encoders, calib: LabelledImages, test: LabelledImages, config: EvalConfig,
                   aux: Encoders | None = None) -> Iterator[DatasetEmbeddings]:
    """Yield the clean dataset, then each shift: both splits shifted alike and encoded once (by each encoder)."""
    for offset, name in enumerate((CLEAN, *config.shifts)):
        seeds = (config.seed + 2 * offset, config.seed + 2 * offset + 1)  # distinct noise per split
        calib_rgb = to_rgb(shifted(name, calib.images, seeds[0]))
        test_rgb = to_rgb(shifted(name, test.images, seeds[1]))
        calib_emb = encode_images(encoders.image, calib_rgb, encoders.preprocess)
        test_emb = encode_images(encoders.image, test_rgb, encoders.preprocess)
        aux_calib = aux_test = None
        if aux is not None:
            aux_calib = encode_images(aux.image, calib_rgb, aux.preprocess)
            aux_test = encode_images(aux.image, test_rgb, aux.preprocess)
        yield DatasetEmbeddings(name, calib_emb, calib.labels, test_emb, test.labels, aux_calib, aux_test)


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


def risk_control_row(calib_conf: np.ndarray, calib_correct: np.ndarray, test_conf: np.ndarray,
                     test_correct: np.ndarray, alpha: float, delta: float) -> dict:
    """SGR threshold on calibration scores, and what it does on the test set."""
    choice = select_threshold(calib_conf, calib_correct, alpha, delta)
    accepted = test_conf >= choice.threshold
    n_accepted = int(accepted.sum())
    return {"threshold": choice.to_dict(), "test_coverage": float(accepted.mean()),
            "test_accepted": n_accepted,
            "test_risk": float(np.mean(~test_correct[accepted])) if n_accepted else float("nan")}


def evaluate_dataset(data: DatasetEmbeddings, text: np.ndarray, logit_scale: float, config: EvalConfig,
                     class_names: tuple[str, ...] | None = None) -> DatasetResult:
    """Prototypes from the dataset's calibration shots, lambda and thresholds on the rest, metrics on test."""
    shots = sample_shots(data.calib_labels, text.shape[0], config.k, config.seed, class_names)
    image = prototypes_from_embeddings(data.calib, shots)
    lambda_part, threshold_part = split_held_out(remaining_indices(len(data.calib_labels), shots), config.seed)
    base = compute_scores(data.calib[lambda_part], text, image, logit_scale, lam=0.0)
    lam_auto, lambda_table = choose_lambda(base.msp, base.s_ii, base.pred == data.calib_labels[lambda_part],
                                           LAMBDA_GRID)
    paper = compute_scores(data.test, text, image, logit_scale, PAPER_LAMBDA, DEFAULT_TEMPERATURE)
    auto = compute_scores(data.test, text, image, logit_scale, lam_auto, DEFAULT_TEMPERATURE)
    scored = method_scores(paper, auto)
    calib_auto = compute_scores(data.calib[threshold_part], text, image, logit_scale, lam_auto)
    calib_labels = data.calib_labels[threshold_part]
    calib_scored = {"msp": (calib_auto.msp, calib_auto.pred), "trustvlm_auto": (calib_auto.trustvlm, calib_auto.pred)}
    per_sample = {"labels": data.test_labels, "pred": paper.pred, "pred_star": paper.pred_star,
                  "proto_pred": paper.proto_pred}
    info = {"n_calib_shots": int(shots.size), "n_calib_lambda": int(len(lambda_part)),
            "n_calib_threshold": int(len(threshold_part)), "n_test": int(len(data.test_labels)),
            "zero_shot_accuracy": float(np.mean(paper.pred == data.test_labels)),
            "prototype_classifier_accuracy": float(np.mean(paper.proto_pred == data.test_labels))}
    if data.aux_calib is not None:
        aux = _evaluate_aux(data, text, logit_scale, shots, lambda_part, threshold_part)
        scored.update(aux["scored"])
        calib_scored["trustvlm_aux_auto"] = aux["calib_auto"]
        per_sample.update(aux["per_sample"])
        info.update(aux["info"])
    metrics = {key: evaluate_selective(conf, pred == data.test_labels) for key, (conf, pred) in scored.items()}
    risk = {key: risk_control_row(conf, calib_pred == calib_labels, scored[key][0],
                                  scored[key][1] == data.test_labels, config.alpha, config.delta)
            for key, (conf, calib_pred) in calib_scored.items()}
    per_sample.update({key: conf for key, (conf, _) in scored.items()})
    return DatasetResult(data.name, metrics, per_sample, float(lam_auto), lambda_table, risk, info)


def _evaluate_aux(data: DatasetEmbeddings, text: np.ndarray, logit_scale: float, shots: np.ndarray,
                  lambda_part: np.ndarray, threshold_part: np.ndarray) -> dict:
    """The TrustVLM rows with auxiliary prototypes: same shots, halves and lambda grid as the VLM rows."""
    image = prototypes_from_embeddings(data.aux_calib, shots)
    base = compute_scores(data.calib[lambda_part], text, image, logit_scale, lam=0.0,
                          aux_embeddings=data.aux_calib[lambda_part])
    lam_auto, lambda_table = choose_lambda(base.msp, base.s_ii, base.pred == data.calib_labels[lambda_part],
                                           LAMBDA_GRID)
    paper = compute_scores(data.test, text, image, logit_scale, PAPER_LAMBDA, DEFAULT_TEMPERATURE,
                           aux_embeddings=data.aux_test)
    auto = compute_scores(data.test, text, image, logit_scale, lam_auto, DEFAULT_TEMPERATURE,
                          aux_embeddings=data.aux_test)
    calib_auto = compute_scores(data.calib[threshold_part], text, image, logit_scale, lam_auto,
                                aux_embeddings=data.aux_calib[threshold_part])
    scored = {"proto_sim_aux": (paper.s_ii, paper.pred), "trustvlm_aux": (paper.trustvlm, paper.pred),
              "trustvlm_aux_auto": (auto.trustvlm, auto.pred),
              "trustvlm_star_aux": (paper.trustvlm_star, paper.pred_star)}
    return {"scored": scored, "calib_auto": (calib_auto.trustvlm, calib_auto.pred),
            "per_sample": {"pred_star_aux": paper.pred_star, "proto_pred_aux": paper.proto_pred},
            "info": {"prototype_classifier_accuracy_aux": float(np.mean(paper.proto_pred == data.test_labels)),
                     "lambda_auto_aux": float(lam_auto), "lambda_table_aux": lambda_table}}


def _mean_std(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "values": [float(v) for v in array]}


def ablate_shots(data: DatasetEmbeddings, text: np.ndarray, logit_scale: float, seed: int,
                 shots: tuple[int, ...] = ABLATION_SHOTS, n_seeds: int = ABLATION_SEEDS) -> list[dict]:
    """Per k: prototype-classifier accuracy, TrustVLM and TrustVLM* metrics over `n_seeds` shot seeds."""
    rows = []
    for k in shots:
        runs = {"proto_acc": [], "trustvlm_aurc": [], "trustvlm_auroc": [], "trustvlm_fpr95": [],
                "star_acc": [], "star_aurc": []}
        for shot_seed in range(seed, seed + n_seeds):
            image = prototypes_from_embeddings(data.calib, sample_shots(data.calib_labels, text.shape[0], k, shot_seed))
            s = compute_scores(data.test, text, image, logit_scale, PAPER_LAMBDA)
            tv = evaluate_selective(s.trustvlm, s.pred == data.test_labels)
            star = evaluate_selective(s.trustvlm_star, s.pred_star == data.test_labels)
            runs["proto_acc"].append(float(np.mean(s.proto_pred == data.test_labels)))
            runs["trustvlm_aurc"].append(tv["aurc_x1000"])
            runs["trustvlm_auroc"].append(tv["auroc"])
            runs["trustvlm_fpr95"].append(tv["fpr_at_95_tpr"])
            runs["star_acc"].append(star["accuracy"])
            runs["star_aurc"].append(star["aurc_x1000"])
        rows.append({"k": int(k), "seeds": list(range(seed, seed + n_seeds)),
                     **{name: _mean_std(values) for name, values in runs.items()}})
    return rows


def ablate_lambda(data: DatasetEmbeddings, text: np.ndarray, logit_scale: float, k: int, seed: int,
                  lambdas: tuple[float, ...] = LAMBDA_GRID) -> list[dict]:
    """Per lambda (k shots, one seed): TrustVLM metrics and TrustVLM*'s accuracy and AURC on test."""
    image = prototypes_from_embeddings(data.calib, sample_shots(data.calib_labels, text.shape[0], k, seed))
    rows = []
    for lam in lambdas:
        s = compute_scores(data.test, text, image, logit_scale, lam)
        tv = evaluate_selective(s.trustvlm, s.pred == data.test_labels)
        star = evaluate_selective(s.trustvlm_star, s.pred_star == data.test_labels)
        rows.append({"lambda": float(lam), "trustvlm_aurc": tv["aurc_x1000"], "trustvlm_auroc": tv["auroc"],
                     "trustvlm_fpr95": tv["fpr_at_95_tpr"], "star_acc": star["accuracy"],
                     "star_aurc": star["aurc_x1000"]})
    return rows


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
        ValueError: Bad configuration, NaN embeddings, too few calibration images per class.
        FileNotFoundError: Fashion-MNIST is not installed.
        trustvlm.runtime.onnx_engine.EngineError: An encoder that cannot run.
    """
    started = time.perf_counter()
    encoders = open_encoders(artifacts_dir, config.precision, config.threads)
    aux = open_prototype_encoder(config.prototype_encoder, config.precision, config.threads)
    calib, test = load_eval_splits(config.test_limit)
    logit_scale = float(encoders.manifest["logit_scale"])
    text = build_text_prototypes(artifacts_dir, calib.class_names, get_templates(config.templates), config.precision)
    seconds = {"setup": time.perf_counter() - started}
    results, ablations = [], {}
    tick = time.perf_counter()
    for data in embed_datasets(encoders, calib, test, config, aux):  # encoding happens as the loop advances
        results.append(evaluate_dataset(data, text, logit_scale, config, calib.class_names))
        if data.name == CLEAN and config.ablations:
            ablations = {"dataset": CLEAN, "shots": ablate_shots(data, text, logit_scale, config.seed),
                         "lambda": ablate_lambda(data, text, logit_scale, config.k, config.seed)}
        seconds[data.name], tick = time.perf_counter() - tick, time.perf_counter()
    manifest = encoders.manifest
    meta = {"model": model_name(manifest), "weights_id": manifest["weights"]["id"], "artifacts": str(artifacts_dir),
            "precision": config.precision, "logit_scale": logit_scale, "class_names": list(calib.class_names),
            "config": {**asdict(config), "shifts": list(config.shifts)},
            "prototype_encoder": VLM_PROTOTYPES if aux is None else {
                "model": aux.manifest["model"], "weights_id": aux.manifest["weights"]["id"],
                "artifacts": str(config.prototype_encoder)}}
    seconds["total"] = time.perf_counter() - started
    return EvalReport(meta, results, ablations, seconds)
