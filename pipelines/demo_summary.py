"""What the streaming demo ends with: the per-camera table (own bundle against a shared one) and the plot."""

from __future__ import annotations

import math
from pathlib import Path

from trustvlm.pipelines.demo_config import DemoConfig
from trustvlm.pipelines.demo_ood import format_ood_line


def _pct(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _ms(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f} ms"


def camera_rows(config: DemoConfig, log: Path, bundles: dict[str, Path]) -> list[dict]:
    """Per labelled camera, from a decision log and its truth file: scored frames, coverage, accuracy on the
    accepted frames, risk (1 - that accuracy), accuracy on all frames; and the two yardsticks of the bundle that
    scored it (`bundles`: camera shift -> bundle folder): its certifiable limit and the oracle coverage."""
    from trustvlm.calibration.coverage_limits import oracle_coverage  # noqa: PLC0415 - calibration only here
    from trustvlm.contract.bundle import read_bundle_info  # noqa: PLC0415
    from trustvlm.pipelines.report import load_scored_frames  # noqa: PLC0415 - matplotlib

    rows = []
    for shift in config.cameras:
        camera = config.camera_id(shift)
        frames = load_scored_frames(log, config.out / f"truth_{shift}.jsonl", camera)
        count, accepted = len(frames.kappa), frames.accepted
        accuracy = float(frames.correct[accepted].mean()) if accepted.any() else math.nan
        info = read_bundle_info(bundles[shift])
        rows.append({"camera": camera, "shift": shift, "frames": count,
                     "coverage": float(accepted.mean()) if count else math.nan, "accuracy_accepted": accuracy,
                     "risk": 1.0 - accuracy, "accuracy_all": float(frames.correct.mean()) if count else math.nan,
                     "threshold": frames.threshold, "score_name": frames.score_name,
                     "certifiable_limit": info.selection.get("certifiable_limit", math.nan),
                     "oracle_coverage": oracle_coverage(frames.kappa, frames.correct, config.alpha).coverage
                     if count else math.nan})
    return rows


def _verdict(own: dict, shared: dict | None, alpha: float) -> str:
    """What the shared bundle does to a camera, against its own bundle."""
    if shared is None:
        return ""
    if math.isfinite(shared["risk"]) and shared["risk"] > alpha:
        return f"shared bundle breaks the risk target ({_pct(shared['risk'])} > {_pct(alpha)})"
    if shared["coverage"] < own["coverage"]:
        return (f"shared bundle gives away coverage ({_pct(shared['coverage'])} instead of "
                f"{_pct(own['coverage'])})")
    return "shared bundle keeps the target here"


def format_camera_table(config: DemoConfig, rows: list[dict], shared_rows: list[dict] | None) -> list[str]:
    """The per-camera table: own bundle, then (if measured) the shared bundle, then what the difference means."""
    shared_name = f"shared bundle ({config.shared} camera)"
    header = f"  {'camera':<18} {'frames':>6} | {'own bundle: coverage':>20} {'acc. accepted':>13} {'risk':>6}"
    if shared_rows is not None:
        header += f" | {shared_name + ': coverage':>32} {'acc. accepted':>13} {'risk':>6}"
    lines = [header]
    for index, own in enumerate(rows):
        line = (f"  {own['camera']:<18} {own['frames']:>6} | {_pct(own['coverage']):>20} "
                f"{_pct(own['accuracy_accepted']):>13} {_pct(own['risk']):>6}")
        shared = shared_rows[index] if shared_rows is not None else None
        if shared is not None:
            line += (f" | {_pct(shared['coverage']):>32} {_pct(shared['accuracy_accepted']):>13} "
                     f"{_pct(shared['risk']):>6}")
        lines.append(line)
    lines.append(f"  target: risk among accepted frames <= {_pct(config.alpha)} (delta {config.delta:g}); accuracy "
                 "on all frames: " + ", ".join(f"{own['camera']} {_pct(own['accuracy_all'])}" for own in rows))
    lines += [f"  {own['camera']}: own bundle accepts {own['score_name']} >= {own['threshold']:.4g}; certifiable "
              f"limit {_pct(own['certifiable_limit'])}, oracle coverage {_pct(own['oracle_coverage'])}" for own in rows]
    above = [own for own in rows if math.isfinite(own["risk"]) and own["risk"] > config.alpha]
    if above:
        drifted = config.camera_id(config.drift_camera) if config.drift_camera else None
        lines.append("  own bundle above the target on these test frames: " + ", ".join(
            f"{own['camera']} {_pct(own['risk'])}" + (" (its darker frames: below)" if own["camera"] == drifted else "")
            for own in above) + " (the promise is for frames like the "
            "calibration frames, with probability >= " f"{1 - config.delta:.0%}; these test images are harder than the "
            "calibration split: README, the eval table)")
    for index, own in enumerate(rows):
        verdict = _verdict(own, shared_rows[index] if shared_rows is not None else None, config.alpha)
        if verdict:
            lines.append(f"  {own['camera']}: {verdict}")
    return lines


def format_demo_summary(summary: dict, config: DemoConfig, calibrated: dict, rows: list[dict],
                        shared_rows: list[dict] | None, statuses: dict[str, int], plot: Path | None,
                        seconds: float, drift_lines: list[str] = ()) -> list[str]:
    """The lines the demo ends with.

    Args:
        summary: The controller's ``--summary`` JSON of the per-camera run.
        config: What the demo ran.
        calibrated: ``{camera shift: (calibration set, bundle folder, 'wrote ...' line of calibrate)}``.
        rows: :func:`camera_rows` of the per-camera run.
        shared_rows: The same of the shared-bundle run (None: not run).
        statuses: Exit status of each process, by name, in the order they ended.
        plot: The risk-coverage plot, None when it was not written.
        seconds: How long the demo took.
        drift_lines: The drift's lines (after the table), see :func:`trustvlm.pipelines.demo._drift_summary`.
    """
    cams, labelled = summary["cameras"], summary["labelled"]
    latency = summary["latency_ms"]["e2e_from_capture"]
    first = calibrated[config.cameras[0]][0]
    lines = ["", "=== trustvlm-edge streaming demo: summary ===",
             f"{len(config.cameras)} cameras, each calibrated on its own frames ({first.shots} shots + "
             f"{first.held_out} held-out images of the Fashion-MNIST calibration split through that camera; alpha "
             f"{config.alpha:g}, delta {config.delta:g}) and served by one service with a camera map:"]
    lines += [f"  {shift}: {calibrated[shift][2]}" for shift in config.bundle_cameras]
    lines += format_camera_table(config, rows, shared_rows)
    lines += drift_lines
    if config.video_camera in cams:
        video = cams[config.video_camera]
        lines.append(f"camera {config.video_camera}: {config.video.name} street scene (not clothing), no bundle of "
                     f"its own (the map's default{f': the {config.shared} bundle' if config.shared else ''}): "
                     f"frames {video['decisions']} | accepted {video['accepted']} | deferred {video['deferred']}")
        lines.append(format_ood_line(config.out / "decisions.jsonl", config.video_camera, config.dataset_camera))
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
    if config.drift_camera is not None:
        lines.append("next: `make demo-recalibrate` (trustvlm demo-recalibrate): a low-light camera that gets darker, "
                     "its ALARM, its darker frames recorded and labelled, a new bundle calibrated on them and swapped "
                     "in while the service runs, the camera back to OK")
    return lines


def plot_demo_risk_coverage(log: Path, truth: Path, plot: Path, config: DemoConfig) -> Path | None:
    """The first camera's live risk-coverage plot from the decision log and its truth file.

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
              f"bundle calibrated on the {config.cameras[0]} camera"
              + (f", darker from frame {config.drift_after}" if config.drift_camera == config.cameras[0] else ""))
