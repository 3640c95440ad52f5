"""What the streaming demo ends with: the summary lines and the live risk-coverage plot."""

from __future__ import annotations

import math
from pathlib import Path

from trustvlm.pipelines.calibration_set import CalibrationSet
from trustvlm.pipelines.demo_config import DemoConfig
from trustvlm.pipelines.demo_ood import format_ood_line


def _pct(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _ms(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f} ms"


def format_demo_summary(summary: dict, config: DemoConfig, calibration: CalibrationSet, bundle_line: str,
                        statuses: dict[str, int], plot: Path | None, seconds: float,
                        coverage: list[str] | None = None) -> list[str]:
    """The lines the demo ends with (figures from the controller's summary).

    Args:
        summary: The controller's ``--summary`` JSON.
        config: What the demo ran.
        calibration: The camera's calibration set.
        bundle_line: The 'wrote ...' line of ``trustvlm calibrate``.
        statuses: Exit status of each process, by name, in the order they ended.
        plot: The risk-coverage plot, None when it was not written.
        seconds: How long the demo took.
        coverage: The labelled camera's coverage lines (:func:`coverage_lines`), printed after its accuracy.
    """
    camera, video_camera = config.dataset_camera, config.video_camera
    cams, labelled = summary["cameras"], summary["labelled"]
    stream = cams.get(camera, {"decisions": 0, "accepted": 0, "deferred": 0})
    latency = summary["latency_ms"]["e2e_from_capture"]
    lines = [
        "",
        "=== trustvlm-edge streaming demo: summary ===",
        f"camera {camera}: Fashion-MNIST test images through the {config.shift} camera; calibrated on that camera "
        f"({calibration.shots} shots, {calibration.held_out} held-out images, alpha {config.alpha:g}, "
        f"delta {config.delta:g})",
        f"  bundle: {bundle_line}",
        f"  frames {stream['decisions']} | accepted {stream['accepted']} | deferred {stream['deferred']}",
        f"  accuracy on accepted frames {_pct(labelled['accuracy_accepted'])} vs {_pct(labelled['accuracy_all'])} "
        f"on all frames, at coverage {_pct(labelled['coverage'])}: the robot acts on the accepted frames only",
        *(coverage or []),
    ]
    if video_camera in cams:
        video = cams[video_camera]
        lines.append(f"camera {video_camera}: {config.video.name} street scene (not clothing) through the video "
                     f"path: frames {video['decisions']} | accepted {video['accepted']} | deferred {video['deferred']}")
        lines.append(format_ood_line(config.out / "decisions.jsonl", video_camera, camera))
    unanswered = sum(labelled["unanswered"].values())
    lines += [
        f"all cameras: frames {summary['decisions']} | accepted {summary['accepted']} | deferred "
        f"{summary['deferred']} | duplicates {summary['duplicates']} | labelled frames sent without a decision "
        f"{unanswered}",
        f"latency from capture to the controller: p50 {_ms(latency['p50'])}, p95 {_ms(latency['p95'])}, "
        f"p99 {_ms(latency['p99'])}",
        f"controller: SAFE entered {summary['safe']['entries']} time(s) (the service's final stop included); "
        f"ended by {summary['ended_by']}",
        f"risk-coverage plot: {plot}" if plot else "risk-coverage plot: not written (too few scored frames)",
        "processes: " + ", ".join(f"{name} exit {status}" for name, status in statuses.items()),
        f"outputs in {config.out} ({seconds:.0f} s)",
    ]
    return lines


def coverage_lines(bundle: Path, log: Path, truth: Path, config: DemoConfig) -> list[str]:
    """The labelled camera's coverage with the bundle's score, against the certifiable limit and the oracle.

    Returns:
        Three lines; none when no labelled frame was scored.
    """
    from trustvlm.calibration.coverage_limits import oracle_coverage  # noqa: PLC0415 - calibration only here
    from trustvlm.contract.bundle import read_bundle_info  # noqa: PLC0415
    from trustvlm.pipelines.report import load_scored_frames  # noqa: PLC0415 - matplotlib

    info = read_bundle_info(bundle)
    frames = load_scored_frames(log, truth, config.dataset_camera)
    if len(frames.kappa) == 0:
        return []
    accepted = frames.accepted
    risk = float(1.0 - frames.correct[accepted].mean()) if accepted.any() else math.nan
    how = (f"chosen on calibration data from {len(info.score_choice.get('table', []))} candidates"
           if info.score_choice else "set by --score")
    limit = info.selection.get("certifiable_limit")
    return [
        f"  score {info.score} (lambda {info.lam:g}, T {info.temperature:g}; {how}): coverage {_pct(accepted.mean())}, "
        f"accuracy on accepted frames {_pct(1.0 - risk)} (risk {_pct(risk)}, target <= {_pct(config.alpha)})",
        f"  certifiable limit {_pct(limit)}: the most coverage one Clopper-Pearson test could certify on the "
        f"{info.threshold.n_calibration} calibration images that set the threshold; no guarantee goes beyond it",
        f"  oracle coverage {_pct(oracle_coverage(frames.kappa, frames.correct, config.alpha).coverage)}: the most coverage "
        f"at risk <= {_pct(config.alpha)} for a threshold set knowing these frames' labels; nothing can promise it",
    ]


def plot_demo_risk_coverage(log: Path, truth: Path, plot: Path, config: DemoConfig) -> Path | None:
    """The labelled camera's live risk-coverage plot from the decision log and the truth file.

    Returns:
        The plot's path; None with fewer than 2 scored, labelled frames.
    """
    from trustvlm.pipelines.report import load_scored_frames, plot_live_risk_coverage  # noqa: PLC0415 - matplotlib

    camera = config.dataset_camera
    frames = load_scored_frames(log, truth, camera)
    if len(frames) < 2:
        return None
    return plot_live_risk_coverage(
        frames, plot, alpha=config.alpha,
        title=f"live risk-coverage: camera {camera}, {len(frames)} labelled frames\n"
              f"bundle calibrated on the {config.shift} camera")
