"""Writing an evaluation report: results.md, results.json, per-sample npz and risk-coverage plots.

    eval/
        results.md                     tables in the paper's layout (+ details, risk control, ablations)
        results.json                   every number, JSON-safe (NaN/inf as strings)
        <dataset>_scores.npz           labels, predictions and every score per test image
        <dataset>_risk_coverage.png    MSP vs TrustVLM vs TrustVLM* vs auto

The folder is published atomically (:func:`trustvlm.contract.files.staged_folder`). Plots use matplotlib's ``Figure`` directly
(Agg canvas), never pyplot, so nothing depends on a display or global backend state.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from trustvlm.calibration.eval_data import describe_data
from trustvlm.calibration.evaluate import STAR_PREDICTIONS, DatasetResult, EvalReport, methods_of
from trustvlm.calibration.metrics import risk_coverage_curve
from trustvlm.contract.files import json_safe
from trustvlm.contract.files import staged_folder
from trustvlm.contract.files import write_json_atomic

RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"
PLOTTED = (("msp", "MSP"), ("trustvlm", "TrustVLM (lambda=1)"), ("trustvlm_star", "TrustVLM* (lambda=1, T=0.01)"),
           ("trustvlm_aux", "TrustVLM, aux prototypes (lambda=1)"), ("auto", "auto (score chosen on the lambda half)"))
#: Main-table columns: (metric key, header, scale, lower is better).
MAIN_COLUMNS = (("aurc_x1000", "AURC↓", 1.0, True), ("auroc", "AUROC↑", 100.0, False),
                ("fpr_at_95_tpr", "FPR95↓", 100.0, True), ("accuracy", "ACC↑", 100.0, False))
DETAIL_COLUMNS = (("accuracy", "ACC %", 100.0), ("aurc_x1000", "AURC x1000", 1.0),
                  ("e_aurc_x1000", "E-AURC x1000", 1.0), ("auroc", "AUROC %", 100.0),
                  ("fpr_at_95_tpr", "FPR95 %", 100.0), ("aupr_success", "AUPR-S %", 100.0),
                  ("aupr_error", "AUPR-E %", 100.0))


def _fmt(value: float, scale: float = 1.0) -> str:
    return "nan" if value is None or math.isnan(value) else f"{scale * value:.2f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _best(result: DatasetResult, key: str, lower: bool) -> float | None:
    values = [v for v in (result.metrics[m][key] for m, _ in methods_of(result)) if not math.isnan(v)]
    return (min(values) if lower else max(values)) if values else None


def main_table(datasets: list[DatasetResult]) -> list[str]:
    """Rows = methods; per dataset AURC, AUROC, FPR95, ACC (the paper's Table 1 layout); best in bold."""
    header = ["Method"] + [f"{d.name} {title}" for d in datasets for _, title, _, _ in MAIN_COLUMNS]
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for method, label in methods_of(datasets[0]):
        cells = [label]
        for result in datasets:
            for key, _, scale, lower in MAIN_COLUMNS:
                value = result.metrics[method][key]
                text = _fmt(value, scale)
                cells.append(f"**{text}**" if key != "accuracy" and value == _best(result, key, lower) else text)
        lines.append(_row(cells))
    return lines


def detail_table(result: DatasetResult) -> list[str]:
    """Every metric of every method on one dataset."""
    header = ["Method"] + [title for _, title, _ in DETAIL_COLUMNS]
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for method, label in methods_of(result):
        lines.append(_row([label] + [_fmt(result.metrics[method][key], scale) for key, _, scale in DETAIL_COLUMNS]))
    return lines


def _lambda_cell(result: DatasetResult, key: str) -> str:
    if key == "auto":
        chosen = result.info.get("auto_choice", {})
        return f"{chosen.get('label', '?')} ({chosen.get('lambda', float('nan')):g}, T {chosen.get('temperature', 0):g})"
    return {"trustvlm_auto": f"{result.lambda_auto:g}",
            "trustvlm_aux_auto": f"{result.info.get('lambda_auto_aux', float('nan')):g}"}.get(key, "-")


def risk_control_table(datasets: list[DatasetResult]) -> list[str]:
    """The threshold chosen on calibration data, its coverage and risk on test, and the two limits.

    "guaranteed test coverage / risk": what the threshold selected on the threshold half does on test;
    "certifiable limit": the most coverage one Clopper-Pearson test could certify on that half;
    "oracle coverage": the most test coverage at observed test risk <= alpha.
    """
    lines = [_row(["Dataset", "Score", "lambda", "threshold", "calib coverage %", "guaranteed test coverage %",
                   "test risk %", "certifiable limit %", "oracle coverage %", "alpha %"]),
             _row(["---"] * 2 + ["---:"] * 8)]
    for result in datasets:
        for key, row in result.risk_control.items():
            choice = row["threshold"]
            threshold = choice["threshold"] if isinstance(choice["threshold"], str) else f"{choice['threshold']:.4f}"
            lines.append(_row([result.name, key, _lambda_cell(result, key), threshold, _fmt(choice["coverage"], 100),
                               _fmt(row["test_coverage"], 100), _fmt(row["test_risk"], 100),
                               _fmt(row.get("certifiable_limit", float("nan")), 100),
                               _fmt(row.get("oracle_coverage", float("nan")), 100), _fmt(choice["alpha"], 100)]))
    return lines


def _pm(stats: dict, scale: float) -> str:
    return f"{scale * stats['mean']:.2f} ± {scale * stats['std']:.2f}"


def ablation_tables(ablations: dict) -> list[str]:
    """k x 5 shot seeds (mean ± std) and the lambda grid, on the clean dataset."""
    if not ablations:
        return []
    shots = ablations["shots"]
    seeds = shots[0]["seeds"] if shots else []
    lines = [f"### Shots per class (k), mean ± std over shot seeds {seeds}", "",
             _row(["k", "proto-classifier ACC %", "TrustVLM AURC", "TrustVLM AUROC %", "TrustVLM FPR95 %",
                   "TrustVLM* ACC %", "TrustVLM* AURC"]), _row(["---:"] * 7)]
    for row in shots:
        lines.append(_row([str(row["k"]), _pm(row["proto_acc"], 100), _pm(row["trustvlm_aurc"], 1),
                           _pm(row["trustvlm_auroc"], 100), _pm(row["trustvlm_fpr95"], 100),
                           _pm(row["star_acc"], 100), _pm(row["star_aurc"], 1)]))
    lines += ["", "### Lambda grid (k and seed as in the main table)", "",
              _row(["lambda", "TrustVLM AURC", "TrustVLM AUROC %", "TrustVLM FPR95 %", "TrustVLM* ACC %",
                    "TrustVLM* AURC"]), _row(["---:"] * 6)]
    for row in ablations["lambda"]:
        lines.append(_row([f"{row['lambda']:g}", _fmt(row["trustvlm_aurc"]), _fmt(row["trustvlm_auroc"], 100),
                           _fmt(row["trustvlm_fpr95"], 100), _fmt(row["star_acc"], 100), _fmt(row["star_aurc"])]))
    return lines


def format_markdown(report: EvalReport) -> str:
    """The whole results.md."""
    meta, config = report.meta, report.meta["config"]
    lines = [f"# Evaluation: {meta['model']} ({meta['precision']}, weights {meta['weights_id'][:19]}...)", "",
             describe_data(meta["data"]) if "data" in meta else
             f"Fashion-MNIST test split ({report.datasets[0].info['n_test']} images).",
             "", f"Image prototypes from k={config['k']} shots per class (seed {config['seed']}) of the equally "
             f"shifted calibration images, averaged '{report.datasets[0].info.get('prototype_recipe', 'unit-mean')}'; "
             f"'{config['templates']}' templates; logit scale {meta['logit_scale']:.2f}; paper rows with "
             f"lambda={config.get('lam', 1.0):g}, T={config.get('temperature', 0.01):g}. "
             "AURC and E-AURC x1000; AUROC, FPR95, ACC in %.", "",
             "## Misclassification detection", ""]
    if meta.get("unreadable_class_names"):
        lines[-2:-2] = ["Class names outside the model's vocabulary (evaluated anyway, --allow-unknown-words): "
                        + ", ".join(sorted(meta["unreadable_class_names"])) + "; their text prototypes mean nothing.",
                        ""]
    lines += main_table(report.datasets)
    lines += ["", "lambda=auto per dataset: " + ", ".join(f"{d.name} {d.lambda_auto:g}" for d in report.datasets),
              "", "image-prototype classifier ACC %: "
              + ", ".join(f"{d.name} {100 * d.info['prototype_classifier_accuracy']:.2f}" for d in report.datasets)]
    if any("prototype_classifier_accuracy_aux" in d.info for d in report.datasets):
        aux = meta["prototype_encoder"]
        lines += ["", f"Rows marked 'aux prototypes': image prototypes and S_ii from the auxiliary encoder "
                      f"{aux['model']} (weights {aux['weights_id'][:19]}), same shots and halves, averaged "
                      f"'{report.datasets[0].info.get('prototype_recipe_aux', 'unit-mean')}'; logits from the VLM.",
                  "", "lambda=auto per dataset, aux prototypes: "
                  + ", ".join(f"{d.name} {d.info['lambda_auto_aux']:g}" for d in report.datasets),
                  "", "aux image-prototype classifier ACC %: "
                  + ", ".join(f"{d.name} {100 * d.info['prototype_classifier_accuracy_aux']:.2f}"
                              for d in report.datasets)]
    for result in report.datasets:
        lines += ["", f"### {result.name}", ""] + detail_table(result)
    lines += ["", f"## Risk control ({config.get('threshold_method', 'sgr').upper()}, alpha={config['alpha']}, delta={config['delta']}; threshold on held-out "
              "calibration images)", "",
              "Guaranteed test coverage and test risk: the threshold selected on the threshold half, applied to test. "
              "Certifiable limit: the most coverage one Clopper-Pearson test (no multiplicity correction) could "
              "certify on that half. Oracle coverage: the most test coverage at test risk <= alpha, for a threshold "
              "set knowing the test labels. 'auto' chose its score on the lambda half.", ""]
    lines += risk_control_table(report.datasets)
    if report.ablations:
        lines += ["", f"## Ablations ({report.ablations['dataset']} data, test split)", ""]
        lines += ablation_tables(report.ablations)
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()), ""]
    return "\n".join(lines)


def report_dict(report: EvalReport) -> dict:
    """results.json content."""
    datasets = {d.name: {"metrics": d.metrics, "lambda_auto": d.lambda_auto, "lambda_table": d.lambda_table,
                         "risk_control": d.risk_control, **d.info} for d in report.datasets}
    return json_safe({"schema_version": "1.0", **report.meta, "methods": dict(methods_of(report.datasets[0])),
                      "datasets": datasets,
                      "ablations": report.ablations, "seconds": report.seconds})


def plot_risk_coverage(result: DatasetResult, path: Path) -> None:
    """Selective risk against coverage for MSP, TrustVLM and TrustVLM* on one dataset."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - reporting-only dependency

    figure = Figure(figsize=(5.0, 3.6), dpi=120)
    axes = figure.subplots()
    labels = result.per_sample["labels"]
    labels_of = dict(methods_of(result))
    for key, label in PLOTTED:
        label = labels_of.get(key, label)
        if key not in result.per_sample:
            continue  # aux rows only with an auxiliary prototype encoder
        pred = result.per_sample[STAR_PREDICTIONS.get(key, "pred")]
        coverage, risk, _ = risk_coverage_curve(result.per_sample[key], pred == labels)
        aurc = result.metrics[key]["aurc_x1000"]
        axes.plot(coverage, risk, label=f"{label} (AURC {aurc:.1f})", linewidth=1.4)
    axes.set(xlabel="coverage", ylabel="selective risk", title=f"risk-coverage: {result.name}", xlim=(0, 1))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, format="png")


def write_report(report: EvalReport, out_dir: str | os.PathLike) -> Path:
    """Write results.md, results.json, npz files and plots into `out_dir` (replaced atomically).

    Returns:
        The output folder.
    """
    target = Path(out_dir)
    with staged_folder(target) as stage:
        for result in report.datasets:
            np.savez(stage / f"{result.name}_scores.npz", **result.per_sample)
            plot_risk_coverage(result, stage / f"{result.name}_risk_coverage.png")
        (stage / RESULTS_MD).write_text(format_markdown(report))
        write_json_atomic(stage / RESULTS_JSON, report_dict(report))
    return target
