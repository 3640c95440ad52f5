"""The accept threshold of LTT and SGR on every demo camera: calibration coverage, test coverage and test risk.

``python -m trustvlm.benchmarks.threshold_cameras`` does for each camera (clean, then each degraded
camera of :mod:`trustvlm.calibration.shifts`) what the demo does: the Fashion-MNIST calibration
split through the camera (:func:`trustvlm.pipelines.calibration_set.write_camera_calibration_set`;
the clean camera calibrates on the split itself), then ``calibrate`` once per threshold method
(same shots, lambda and held-out half), and applies each bundle to the Fashion-MNIST test images
through the same camera (camera noise seed = test index, as the demo's replay). It prints one line
per camera and method: the threshold, its coverage on the calibration half, coverage and risk
among accepted on the test images, and the test oracle (largest test coverage at risk <= alpha).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trustvlm.calibration.calibrate import calibrate, open_encoders
from trustvlm.calibration.coverage_limits import oracle_coverage
from trustvlm.calibration.image_prototypes import encode_images
from trustvlm.calibration.scores import compute_scores
from trustvlm.calibration.shifts import SHIFTS
from trustvlm.calibration.threshold_selection import THRESHOLD_METHODS
from trustvlm.cli_common import help_formatter, positive
from trustvlm.data.fashion_mnist import load_split, to_rgb
from trustvlm.pipelines.calibration_set import write_camera_calibration_set
from trustvlm.pipelines.captures import degrade

CLEAN = "clean"


def test_embeddings(encoders, camera: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and labels of the (first `limit`) test images through `camera`."""
    test = load_split("test")
    images, labels = test.images[:limit], test.labels[:limit]
    if camera != CLEAN:
        images = np.stack([degrade(image, camera, seed=i) for i, image in enumerate(images)])
    return encode_images(encoders.image, to_rgb(images), encoders.preprocess), labels


def measure_camera(artifacts: Path, camera: str, work: Path, alpha: float, delta: float, shots: int,
                   limit: int | None) -> list[dict]:
    """One row per threshold method for `camera`."""
    if camera == CLEAN:
        data, image_root = "fashion-mnist", None
    else:
        calibration = write_camera_calibration_set(work / f"calibration_{camera}", camera, shots)
        data, image_root = str(calibration.split_file), calibration.image_root
    encoders = open_encoders(artifacts)
    embeddings, labels = test_embeddings(encoders, camera, limit)
    logit_scale = float(encoders.manifest["logit_scale"])
    rows = []
    for method in THRESHOLD_METHODS:
        bundle = calibrate(artifacts, data, work / f"bundle_{camera}_{method}", k=shots, alpha=alpha, delta=delta,
                           image_root=image_root, threshold_method=method, score="trustvlm")
        info = bundle.info
        scores = compute_scores(embeddings, bundle.text_prototypes.astype(np.float64),
                                bundle.image_prototypes.astype(np.float64), logit_scale, info.lam, info.temperature)
        confidence = getattr(scores, info.score)
        correct = scores.prediction_for(info.score) == labels
        accepted = confidence >= info.threshold.threshold
        rows.append({"camera": camera, "method": method, "score": info.score, "threshold": info.threshold.threshold,
                     "feasible": info.threshold.feasible, "calib_images": info.threshold.n_calibration,
                     "calib_coverage": info.threshold.coverage, "test_images": int(labels.size),
                     "test_coverage": float(accepted.mean()),
                     "test_risk": float(np.mean(~correct[accepted])) if accepted.any() else float("nan"),
                     "test_oracle_coverage": oracle_coverage(confidence, correct, alpha).coverage})
    return rows


def markdown_table(rows: list[dict], alpha: float, delta: float) -> list[str]:
    lines = ["| camera | method | threshold | calib coverage | test coverage | test risk | test oracle coverage |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['camera']} | {r['method'].upper()} | {r['threshold']:.4f} | {100 * r['calib_coverage']:.1f}% "
                     f"| {100 * r['test_coverage']:.1f}% | {100 * r['test_risk']:.2f}% "
                     f"| {100 * r['test_oracle_coverage']:.1f}% |")
    lines.append(f"\nalpha = {alpha:g}, delta = {delta:g}; score: {rows[0]['score'] if rows else '-'}; calibration "
                 f"half: {rows[0]['calib_images'] if rows else '-'} images; test: {rows[0]['test_images'] if rows else '-'} "
                 "images through the same camera. Test oracle: the largest test coverage whose test risk is <= alpha.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trustvlm.benchmarks.threshold_cameras", formatter_class=help_formatter,
        description="Calibrate on every demo camera with each threshold method (LTT, SGR) and report the threshold, "
                    "calibration coverage, test coverage and test risk.")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo_fmnist"), help="export folder")
    parser.add_argument("--cameras", nargs="+", default=[CLEAN, *SHIFTS], choices=[CLEAN, *SHIFTS],
                        help="cameras to measure")
    parser.add_argument("--alpha", type=float, default=0.05, help="target risk among accepted")
    parser.add_argument("--delta", type=float, default=0.1, help="allowed probability of exceeding alpha")
    parser.add_argument("--shots", type=positive(int), default=16, help="shots per class (the demo's)")
    parser.add_argument("--test-limit", type=positive(int), default=None, help="use only the first N test images")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="threshold_cameras_") as tmp:
            for camera in tqdm(args.cameras, desc="cameras", unit="camera"):
                rows += measure_camera(args.artifacts, camera, Path(tmp), args.alpha, args.delta, args.shots,
                                       args.test_limit)
    except (ValueError, FileNotFoundError) as error:  # missing export or dataset, bad alpha/delta: one line
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print("\n".join(markdown_table(rows, args.alpha, args.delta)))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
