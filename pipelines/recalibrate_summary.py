"""What the recalibration demo ends with (:mod:`.demo_recalibrate`): its summary lines, from what each step found."""

from __future__ import annotations

import math

from trustvlm.pipelines.drift_report import FrameRow, format_drift_lines, labelled_outcome, pct, thinning_words

__all__ = ["phase_after", "format_recalibrate_summary"]


def phase_after(rows: list[FrameRow], bundle_id: str) -> dict:
    """The frames after the swap (`rows`: the camera's decisions joined to their truth): coverage and risk among
    the labelled ones, accuracy on all of them, and the camera's monitor on the first and the last frame.

    Args:
        rows: :func:`~trustvlm.pipelines.drift_report.load_camera_frames` of the replay after the swap.
        bundle_id: The new bundle's id (frames scored by another bundle are counted apart).
    """
    acted = labelled_outcome(rows)
    scored = [row for row in rows if row.correct is not None]
    alarm = next((row.seq for row in rows if row.monitor == "alarm"), None)
    return {"frames": len(rows), "labelled": acted.frames, "acted": acted.acted, "wrong": acted.wrong,
            "coverage": acted.coverage, "risk": acted.risk,
            "accuracy_all": sum(row.correct for row in scored) / len(scored) if scored else math.nan,
            "first_monitor": rows[0].monitor if rows else "", "last_monitor": rows[-1].monitor if rows else "",
            "alarm_seq": alarm, "guarantee_lost": sum(row.reason == "guarantee_lost" for row in rows),
            "other_bundle": sum(row.bundle_id != bundle_id for row in rows)}


def _within(risk: float, alpha: float) -> str:
    if not math.isfinite(risk):
        return "no frame acted on"
    return f"{'within' if risk <= alpha else 'above'} alpha {pct(alpha)}"


def format_recalibrate_summary(config, result: dict) -> list[str]:
    """The summary lines of the recalibration demo.

    Args:
        config: The :class:`~trustvlm.pipelines.demo_recalibrate.RecalibrateConfig` it ran.
        result: What the run found (``recalibrate_summary.json``, with ``drift`` the
            :class:`~trustvlm.pipelines.drift_report.DriftOutcome` itself).
    """
    outcome = result["drift"]
    labelled, swap, after, record = result["labelled"], result["swap"], result["after"], result["record"]
    used = labelled["kept"] - labelled["unlabelled"]
    level = "the default alarm level" if config.alarm_level is None else f"alarm level {config.alarm_level:g}"
    start = config.before + config.dark
    end_state = (f"ALARM again on frame {after['alarm_seq']}" if after["alarm_seq"] is not None
                 else f"{after['last_monitor'] or 'off'} at the end (no ALARM in {after['frames']} frames)")
    old = outcome.unwatched
    return [
        "", "=== trustvlm-edge recalibration demo: summary ===",
        f"camera {config.camera}, first bundle on the Fashion-MNIST calibration split through the {config.shift} "
        f"camera (alpha {config.alpha:g}, delta {config.delta:g}):",
        *(f"  {line}" for line in result["first_bundle"]),
        f"before: {config.before} test images as calibrated, then {config.dark} darker ({config.drift}); guarantee "
        f"monitor on {thinning_words(config.monitor_interval_s)} (the replay's frames are independent test images"
        f"{': nothing to thin' if config.monitor_interval_s == 0 else ', sent back to back'}), {level}:",
        *format_drift_lines(outcome, config.alpha),
        f"recorded (serve --record, this camera only, every frame, all along): {record.get('written', 0)} frames "
        f"written, {record.get('dropped_queue_full', 0)} dropped; kept the {labelled['kept']} recorded in ALARM "
        f"(frames {labelled['first_seq']}-{labelled['last_seq']}), {used} labelled from the replay's ground truth "
        f"standing in for a person (in the field a person must check every label: the model's own, the folder the "
        f"recorder sorted each frame into, was wrong on {labelled['model_wrong']} of them, "
        f"{pct(labelled['model_wrong'] / used if used else math.nan)})",
        f"second bundle, calibrated on those {used} darker frames only:",
        *(f"  {line}" for line in result["second_bundle"]),
        f"swap: {swap['line']}",
        f"  the service scored {config.camera} with bundle {swap['new_bundle_id']} {swap['seconds']:.1f} s after the "
        f"swap (heartbeat); its monitor started afresh: {after['first_monitor'] or 'off'} on the first frame after "
        f"the swap, {end_state}",
        f"after the swap, {after['frames']} other darker test images ({start}-{start + config.after - 1}, none "
        f"recorded or calibrated on): the robot acted on {after['acted']} of {after['labelled']} frames "
        f"({pct(after['coverage'])}) at risk {pct(after['risk'])}: {_within(after['risk'], config.alpha)} (accuracy "
        f"on all frames {pct(after['accuracy_all'])}); the old bundle, had nobody watched, acted on "
        f"{pct(old.coverage)} of the darker frames at risk {pct(old.risk)}"
        + (f"; {after['other_bundle']} frames were scored by another bundle" if after["other_bundle"] else ""),
        "processes: " + ", ".join(f"{name} exit {status}" for name, status in result["processes"].items()),
        f"outputs in {config.out} ({result['seconds']:.0f} s)",
    ]
