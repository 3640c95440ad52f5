"""Risk-coverage of a live run, from the controller's decision log and the source's ground truth.

:func:`load_scored_frames` joins the JSONL decision log (``trustvlm controller --log``) to the truth file
(``trustvlm source --truth``) on ``(camera_id, seq)`` and keeps the frames that were scored;
:func:`plot_live_risk_coverage` draws selective risk against coverage for the trust score (kappa) and for MSP
alone, with the operating point the service's threshold gave and the target risk alpha. matplotlib is needed
only here.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustvlm.calibration.metrics import aurc, risk_coverage_curve
from trustvlm.pipelines.scoreboard import read_truth


@dataclass(frozen=True)
class ScoredFrames:
    """Labelled, scored frames of one run (one entry per frame).

    Attributes:
        kappa: The trust score the service thresholded.
        msp: The maximum softmax probability (the MSP baseline).
        correct: The prediction matched the ground truth.
        accepted: The service accepted the frame.
        threshold: The service's accept threshold (the last one seen).
        score_name: What kappa is (e.g. ``trustvlm``).
    """

    kappa: np.ndarray
    msp: np.ndarray
    correct: np.ndarray
    accepted: np.ndarray
    threshold: float
    score_name: str

    def __len__(self) -> int:
        return len(self.kappa)


def load_scored_frames(log_path: str | os.PathLike, truth_path: str | os.PathLike,
                       camera_id: str | None = None) -> ScoredFrames:
    """Join the decision log to the truth rows; keep scored frames (finite kappa and MSP) with a truth row.

    Raises:
        FileNotFoundError: A missing log or truth file.
    """
    if not Path(truth_path).exists():
        raise FileNotFoundError(f"truth file {truth_path} does not exist")
    truth = {(row.camera_id, row.seq): row.label for row in read_truth(truth_path)}
    rows, threshold, score_name, seen = [], float("nan"), "", set()
    with open(log_path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("event") != "decision" or (camera_id and record["camera_id"] != camera_id):
                continue
            key = (record["camera_id"], record["seq"])
            kappa, msp = record.get("kappa"), record.get("msp")
            if key in seen or key not in truth or record.get("label") is None or kappa is None or msp is None:
                continue
            if not (math.isfinite(kappa) and math.isfinite(msp)):
                continue
            seen.add(key)
            threshold, score_name = float(record["threshold"]), record["score_name"]
            rows.append((kappa, msp, record["label"] == truth[key], record["decision"] == "accept"))
    columns = list(zip(*rows)) if rows else [(), (), (), ()]
    return ScoredFrames(np.asarray(columns[0], np.float64), np.asarray(columns[1], np.float64),
                        np.asarray(columns[2], bool), np.asarray(columns[3], bool), threshold, score_name)


def plot_live_risk_coverage(frames: ScoredFrames, path: str | os.PathLike, title: str,
                            alpha: float | None = None) -> Path:
    """Write a PNG: risk against coverage for kappa and MSP, the live operating point, and alpha.

    Raises:
        ValueError: Fewer than 2 scored frames (no curve to draw).
    """
    if len(frames) < 2:
        raise ValueError(f"a risk-coverage plot needs at least 2 scored, labelled frames, but got {len(frames)}")
    from matplotlib.figure import Figure  # noqa: PLC0415 - reporting-only dependency

    figure = Figure(figsize=(5.6, 4.0), dpi=120)
    axes = figure.subplots()
    same = bool(np.allclose(frames.kappa, frames.msp, rtol=0, atol=1e-6))
    kappa_label = f"{frames.score_name or 'kappa'}{' (= MSP: the bundle has lambda 0)' if same else ''}"
    for score, label, style in ((frames.kappa, kappa_label, "-"), (frames.msp, "MSP", ":")):
        coverage, risk, _ = risk_coverage_curve(score, frames.correct)
        axes.plot(coverage, risk, style, linewidth=1.4,
                  label=f"{label}, AURC x1000 {aurc(score, frames.correct):.1f}")
    accepted = int(frames.accepted.sum())
    if accepted:
        point_risk = 1.0 - float(frames.correct[frames.accepted].mean())
        axes.plot([accepted / len(frames)], [point_risk], "o", color="black",
                  label=f"live: accept at {frames.threshold:.3f} (coverage {accepted / len(frames):.2f}, "
                        f"risk {point_risk:.3f})")
    if alpha is not None:
        axes.axhline(alpha, color="grey", linestyle="--", linewidth=1.0, label=f"target risk alpha = {alpha:g}")
    axes.set(xlabel="coverage (share of frames accepted)", ylabel="selective risk (errors among accepted)",
             title=title, xlim=(0, 1), ylim=(0, None))
    axes.title.set_fontsize(9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, format="png")
    return target
