"""Does the guarantee monitor keep its promises on real frames, and how fast does it see a real camera shift?

    python -m trustvlm.benchmarks.drift --artifacts artifacts/demo_fmnist [--quick] [--markdown drift.md]

The service watches each camera without labels (:class:`~trustvlm.runtime.monitor.drift.DriftDetector`: OK,
WATCH, ALARM) and audits its accepted frames with labels (:class:`~trustvlm.runtime.monitor.audit.RiskAudit`:
unverified, verified, VIOLATED). This benchmark measures both on the demo model with real images:

1. A bundle for the demo's low-light camera (Fashion-MNIST calibration split through ``low_light``, gain 0.5),
   calibrated as the demo does, on the first ``--held-out`` non-shot images only (cached under ``--work``). Every
   frame below is scored by the runtime scorer (``decide`` on raw or JPEG frames: the score, typicality and
   decision the service publishes): the pool (the bundle's reference rows and the calibration images it never
   saw), the test split through the calibrated camera and through darker, blurred, noisier and JPEG cameras,
   and OpenCV's street video.
2. Stationary streams: each replicate draws a fresh reference of the bundle's size from the pool and a stream of
   thinned frames resampled from the rest of it; the share of replicates whose mean detector reaches a level
   within ``--frames`` frames is set against the stated bound ``T / level + reference_delta``, at the service's
   levels and at lower ones where the bound is testable. The same on the test split of the calibrated camera
   (a mild real shift: its test split is harder than its calibration split), and on real clips looped through a
   camera calibrated on the clip's other frames (:mod:`~trustvlm.benchmarks.drift_clip`).
3. Shifts at a known frame: 100 calibration frames, then frames of a shifted camera (bundle's own reference,
   service levels): thinned frames from the change to WATCH and to ALARM.
4. Audits: labels (and camera frames at 2% and 5% audit rates) until VIOLATED at a risk of alpha + 5 points, and
   how often a camera whose risk is at most alpha is found VIOLATED.
5. Cost: the monitor's work per thinned frame and the service tap's per decision, against the image encoder's
   time per frame, measured in the same run.

Writes ``--output`` (JSON) and prints a Markdown section for BENCHMARKS.md (``--markdown`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trustvlm.benchmarks.drift_clip import clip_markdown, clip_streams
from trustvlm.benchmarks.drift_data import (CALIBRATED, CONDITIONS, QUICK_CONDITIONS, Camera, costs, crossing_check,
                                            fresh_reference_crossings, open_camera, quantile, score_condition,
                                            stream_values)
from trustvlm.benchmarks.machine import cpu_share_of_others, describe_machine, read_cpu_times
from trustvlm.cli_common import positive
from trustvlm.contract.files import json_safe
from trustvlm.runtime.monitor.audit import RiskAudit, first_violations
from trustvlm.runtime.monitor.binomial import binomial_upper
from trustvlm.runtime.monitor.config import MonitorConfig
from trustvlm.runtime.monitor.drift import DriftConfig, first_crossings

REPO = Path(__file__).resolve().parents[1]
#: Sizes of a full run and of --quick (the test's).
SIZES = {"full": {"replicates": 2000, "frames": 10_000, "shift_replicates": 1000, "horizon": 2000,
                  "audit_replicates": 2000, "audit_labels": 10_000, "test_limit": None, "pool_limit": None,
                  "street_limit": None, "timing_calls": 20_000},
         "quick": {"replicates": 100, "frames": 1000, "shift_replicates": 100, "horizon": 300,
                   "audit_replicates": 300, "audit_labels": 2000, "test_limit": 400, "pool_limit": 600,
                   "street_limit": 60, "timing_calls": 2000}}
CHANGE = 100
AUDIT_RATES = (0.02, 0.05)
SERVICE = DriftConfig()
POOL_TITLE = "calibration frames of the calibrated camera (the pool)"


def level_rows(first: np.ndarray, levels: list[tuple[str, float]], frames: int) -> list[dict]:
    """Per level (name, line of the mean detector): crossed share within `frames` against the bound, run lengths."""
    runs = np.where(first >= 0, first + 1, np.inf)
    rows = []
    for i, (name, level) in enumerate(levels):
        crossed = int((first[i] >= 0).sum())
        rows.append({"level_name": name, "level": level, "crossed": crossed, "replicates": first.shape[1],
                     "rate": crossed / first.shape[1], "rate_upper95": binomial_upper(crossed, first.shape[1], 0.05),
                     "bound": min(1.0, frames / level + SERVICE.reference_delta),
                     "median_run": quantile(runs[i], 0.5),
                     "censored_mean_run": float(np.minimum(runs[i], frames).mean())})
    return rows


def stationary(camera: Camera, pool: dict, calibrated: dict, sizes: dict, rng: np.random.Generator) -> dict:
    """Section 2: false WATCH / ALARM rates on streams like the reference, and on the calibrated camera's test split."""
    T, reps = sizes["frames"], sizes["replicates"]
    levels = [("", 100.0), ("", 1000.0), ("T / 0.5", T / 0.5), ("T / 0.2", T / 0.2), ("T / 0.05", T / 0.05),
              ("service WATCH", SERVICE.watch_level), ("service ALARM", SERVICE.alarm_level)]
    values, size = stream_values(pool), len(camera.reference)
    out = {"frames": T, "reference_size": size, "pool": len(values["score"]), "runs": {}}
    for name, stream in (("calibration pool", None), ("calibrated camera, test split", stream_values(calibrated))):
        with tqdm(total=T, desc=f"stationary: {name}", unit="frame", leave=False) as bar:
            lines = np.array([level for _, level in levels])
            first = fresh_reference_crossings(values, size, reps, T, lines, rng, stream, progress=bar.update)
        out["runs"][name] = {"reference": "fresh draw per replicate", "rows": level_rows(first, levels, T)}
    detector, unused = camera.detector, stream_values(pool, ~pool["reference"])
    fixed = levels[3:4] + levels[5:]
    for name, stream in (("calibration frames (unused pool)", unused),
                         ("calibrated camera, test split", stream_values(calibrated))):
        picks = rng.integers(0, len(stream["score"]), (reps, T))
        streams = {stat: column[picks] for stat, column in stream.items()}
        first = np.stack([first_crossings(detector, streams, level, seed=int(rng.integers(2**32)))
                          for _, level in tqdm(fixed, desc=f"bundle reference: {name}", leave=False)])
        out["runs"][f"{name}, bundle's reference"] = {"reference": "the bundle's own",
                                                       "rows": level_rows(first, fixed, T)}
    return out


def shifts(camera: Camera, pool: dict, scored: dict, sizes: dict, rng: np.random.Generator) -> list[dict]:
    """Section 3: frames from a change at frame CHANGE to WATCH and ALARM, per shifted camera."""
    detector, reps, horizon = camera.detector, sizes["shift_replicates"], sizes["horizon"]
    before = stream_values(pool, ~pool["reference"])
    tenth = {name: min((b for b in detector.bets if b.statistic == name),
                       key=lambda b: abs(b.bucket - 0.1 * len(camera.reference))) for name in before}
    rows = []
    for condition in tqdm([c for c in CONDITIONS if c.name in scored], desc="shifts", leave=False):
        frames, after = scored[condition.name], stream_values(scored[condition.name])
        pre = rng.integers(0, len(before["score"]), (reps, CHANGE))
        post = rng.integers(0, len(after["score"]), (reps, horizon))
        streams = {n: np.concatenate([before[n][pre], after[n][post]], axis=1) for n in before}
        row = {"name": condition.name, "title": condition.title, "severe": condition.severe,
               "frames": int(len(frames["score"])), "accept_share": float(frames["accepted"].mean()),
               "accepted": int(frames["accepted"].sum()),
               "risk": float(1 - frames["correct"][frames["accepted"]].mean()) if frames["accepted"].any() else None,
               "below_tenth": {n: float((after[n] < tenth[n].threshold).mean()) for n in after}}
        for state, level in (("watch", SERVICE.watch_level), ("alarm", SERVICE.alarm_level)):
            first = first_crossings(detector, streams, level, seed=int(rng.integers(2**32)))
            early = (first >= 0) & (first < CHANGE)
            delay = np.where(first >= CHANGE, first - CHANGE + 1, np.inf)[~early]
            row[state] = {"before_change": float(early.mean()), "detected": float(np.isfinite(delay).mean()),
                          "median": quantile(delay, 0.5), "p95": quantile(delay, 0.95)}
        rows.append(row)
    return rows


def audits(camera: Camera, pool: dict, scored: dict, sizes: dict, rng: np.random.Generator) -> dict:
    """Section 4: labels and camera frames to VIOLATED at a risk above alpha (simulated at alpha + 0.05, and every
    labelled camera above alpha), and how often cameras at or below alpha are found VIOLATED."""
    alpha, delta = camera.scorer.bundle.info.threshold.alpha, MonitorConfig().audit_delta
    reps, labels, target = sizes["audit_replicates"], sizes["audit_labels"], alpha + 0.05
    cameras = {POOL_TITLE: pool}
    cameras.update((c.title, scored[c.name]) for c in CONDITIONS if c.name in scored and c.kind != "street")
    risks = {name: (1 - f["correct"][f["accepted"]].mean(), f["accepted"].mean()) for name, f in cameras.items()
             if f["accepted"].sum() >= 100}  # enough accepted frames to resample
    above = sorted((name for name, (risk, _) in risks.items() if risk > alpha), key=lambda name: risks[name][0])
    harmless = [name for name in (POOL_TITLE, CALIBRATED.title) if name in risks and risks[name][0] <= alpha]
    harmless += [max((n for n, (risk, _) in risks.items() if risk <= alpha and n not in harmless),
                     key=lambda n: risks[n][0], default=None)]
    nearest = min(above, key=lambda name: abs(risks[name][0] - target), default=None)
    cases = [("Bernoulli(alpha + 0.05) simulation", None)] + [(name, name) for name in above + harmless if name]
    rows = []
    for name, source in tqdm(cases, desc="audits", leave=False):
        if source is None:
            risk, share = target, risks.get(CALIBRATED.title, risks[POOL_TITLE])[1]
            errors = rng.random((reps, labels)) < risk
        else:
            frames = cameras[source]
            correct, (risk, share) = frames["correct"][frames["accepted"]], risks[source]
            errors = ~correct[rng.integers(0, len(correct), (reps, labels))]
        first = first_violations(errors, alpha, delta)
        needed = np.where(first >= 0, first + 1, np.inf)
        row = {"case": name, "risk": float(risk), "accept_share": float(share), "harmless": bool(risk <= alpha),
               "simulated": source is None, "nearest": source is not None and source == nearest,
               "violated": float((first >= 0).mean()),
               "median_labels": quantile(needed, 0.5), "p95_labels": quantile(needed, 0.95), "frames": {}}
        for rate in AUDIT_RATES:  # camera frames until that many audited labels: each frame is one w.p. rate x share
            done = np.isfinite(needed)
            extra = rng.negative_binomial(np.where(done, needed, 1).astype(np.int64), rate * share)
            frames_needed = np.where(done, needed + extra, np.inf)
            row["frames"][str(rate)] = {"median": quantile(frames_needed, 0.5), "p95": quantile(frames_needed, 0.95)}
        rows.append(row)
    return {"alpha": alpha, "delta": delta, "labels": labels, "replicates": reps, "rows": rows,
            "guarantee": RiskAudit(alpha, delta).guarantee()}


def run(args: argparse.Namespace) -> dict:
    sizes = dict(SIZES["quick" if args.quick else "full"])
    sizes.update({k: v for k, v in (("replicates", args.replicates), ("frames", args.frames)) if v is not None})
    rng, started, cpu = np.random.default_rng(args.seed), time.monotonic(), read_cpu_times()
    camera = open_camera(args.artifacts, args.work, args.held_out, seed=args.seed)
    conditions = CONDITIONS if not args.quick else QUICK_CONDITIONS
    scored = {}
    with tqdm(desc="scoring frames (runtime scorer)", unit="frame", leave=False) as bar:
        pool = score_condition(camera, None, sizes["pool_limit"], bar.update)
        for condition in conditions:
            limit = sizes["street_limit"] if condition.kind == "street" else sizes["test_limit"]
            scored[condition.name] = score_condition(camera, condition, limit, bar.update)
    info, reference = camera.scorer.bundle.info, camera.scorer.bundle.info.monitor_reference
    checks = {"reference_max_abs_diff": {n: float(np.abs(np.sort(pool[n][pool["reference"]]) - np.asarray(v)).max())
                                         for n, v in reference.statistics.items()},
              "replicate_loop_equals_first_crossings": crossing_check(camera, pool, rng)}
    result = {"setup": {"artifacts": str(args.artifacts), "bundle": str(camera.bundle_dir), "score": info.score,
                        "alpha": info.threshold.alpha, "delta": info.threshold.delta,
                        "threshold_coverage": info.threshold.coverage, "held_out": camera.held_out,
                        "reference_rows": reference.rows, "reference_source": reference.source,
                        "pool": int(len(pool["score"])), "unused": int((~pool["reference"]).sum()),
                        "pool_accept_share": float(pool["accepted"].mean()),
                        "pool_risk": float(1 - pool["correct"][pool["accepted"]].mean()),
                        "drift_config": asdict(SERVICE), "guarantee": camera.detector.guarantee(sizes["frames"]),
                        "sizes": sizes, "quick": bool(args.quick), "seed": args.seed},
              "checks": checks}
    result["stationary"] = stationary(camera, pool, scored["gain_0.5"], sizes, rng)
    result["clips"] = clip_streams(camera, sizes["frames"], args.quick, np.random.default_rng([args.seed, 1]))
    result["shifts"] = shifts(camera, pool, scored, sizes, rng)
    result["audits"] = audits(camera, pool, scored, sizes, rng)
    result["cost"] = costs(camera, pool, sizes["timing_calls"])
    result["machine"] = describe_machine(REPO).to_dict()
    result["machine"]["others_cpu"] = cpu_share_of_others(cpu, read_cpu_times())
    result["wall_s"] = time.monotonic() - started
    return result


def _pct(value, digits: int = 1) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{100 * value:.{digits}f}%"


def _n(value, horizon: int | None = None) -> str:
    if value is None or np.isnan(value) or (np.isinf(value) and horizon is None):
        return "—"
    return f"> {horizon:,}" if np.isinf(value) else f"{value:,.0f}"


def markdown(result: dict) -> list[str]:
    """The BENCHMARKS.md section of a run."""
    setup, machine, st, cost = result["setup"], result["machine"], result["stationary"], result["cost"]
    sizes, checks, audit = setup["sizes"], result["checks"], result["audits"]
    others = machine.get("others_cpu") or {}
    lines = ["### Guarantee monitor and audit: promises against measurements", "",
             "```", "python -m trustvlm.benchmarks.drift --artifacts artifacts/demo_fmnist", "```", "",
             f"{'**Quick run (--quick): small sizes, not for the record.** ' if setup['quick'] else ''}"
             f"Machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs, flags "
             f"{', '.join(machine['cpu_flags']) or 'none of interest'}; load average at the start "
             f"{machine['load_average'][0]:.2f}; other processes took "
             f"{others.get('others_percent', float('nan')):.0f}% "
             f"of the CPU time during the run; wall time {result['wall_s']:.0f} s.", "",
             f"Camera: the demo's low-light camera (Fashion-MNIST through `low_light`, gain 0.5). Its bundle is "
             f"calibrated as the demo does (16 shots per class, lambda auto, LTT, gate auto) on the first "
             f"{setup['held_out']:,} non-shot calibration images: score `{setup['score']}`, alpha {setup['alpha']:g}, "
             f"delta {setup['delta']:g}, coverage {_pct(setup['threshold_coverage'])} on its threshold half. Monitor "
             f"reference: {setup['reference_rows']} {setup['reference_source']}. Pool of frames exchangeable with it: "
             f"those rows and the {setup['unused']:,} calibration images calibration never saw (accept share "
             f"{_pct(setup['pool_accept_share'])}, risk among accepted {_pct(setup['pool_risk'], 2)}). Every score, "
             f"typicality and decision is the runtime scorer's (`decide` on raw or JPEG frames); the reference rows' "
             f"values match the bundle's recorded sample to "
             f"{max(checks['reference_max_abs_diff'].values()):.1e}, and the benchmark's replicate loop gives the "
             f"frames `first_crossings` gives "
             f"({'checked' if checks['replicate_loop_equals_first_crossings'] else 'MISMATCH'}).",
             "", f"**Promises.** Monitor: {setup['guarantee']} (`DriftDetector.guarantee`); in general a level L is "
             "crossed falsely within T thinned frames with probability at most T / L + reference_delta, and the mean "
             "time to a false crossing is at least L frames. It assumes the reference values are i.i.d. draws of the "
             "calibrated camera's law and that each thinned frame, given the past, is no more likely to be low than "
             "that law; the streams below are resampled i.i.d. (the service thins a real video to one frame a "
             "second to come near that), except the looped real clips, which test it, and the gate's cuts were set "
             "on the reference rows' half, a dependence the bound does not cover and these rates do. Audit: "
             f"{audit['guarantee']}. It assumes the audited frames are a uniform random share of the accepted "
             "frames, their labels are right, and the order the labels come back in does not depend on whether the "
             "frame was wrong.", "", "#### What each camera does to the served decisions", "",
             "| camera | frames | accept share | risk among accepted (accepted) | score below the reference's 10% "
             "point | typicality below it |", "|---|---:|---:|---:|---:|---:|"]
    for row in result["shifts"]:
        lines.append(f"| {row['title']} | {row['frames']:,} | {_pct(row['accept_share'])} | {_pct(row['risk'], 2)} "
                     f"({row['accepted']:,}) | {_pct(row['below_tenth']['score'])} | "
                     f"{_pct(row['below_tenth']['typicality'])} |")
    lines += ["", f"#### Stationary streams: false crossings within T = {st['frames']:,} thinned frames", "",
              f"{sizes['replicates']:,} replicates. Fresh reference: each replicate draws {st['reference_size']} "
              f"reference values from the pool of {st['pool']:,} and resamples its stream from the rest. Bundle's "
              "reference: the deployed sample, streams resampled from the unused calibration images (or the test "
              "split). A level is the mean detector's line: the service's WATCH (86,400) and ALARM (a week at 5%) and "
              "lower ones where the bound is below 1.", "",
              "| stream | reference | level | bound on P(crossed within T) | measured (95% upper) | median run length "
              "| mean run length >= |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, run in st["runs"].items():
        for row in run["rows"]:
            lines.append(f"| {name.split(', bundle')[0]} | {run['reference']} | "
                         f"{row['level_name'] + ' = ' if row['level_name'] else ''}{row['level']:,.0f} | "
                         f"{_pct(row['bound'])} | {_pct(row['rate'], 2)} "
                         f"({_pct(row['rate_upper95'], 2)}) | {_n(row['median_run'], st['frames'])} | "
                         f"{row['censored_mean_run']:,.0f} |")
    mild = next(r for r in result["shifts"] if r["name"] == "gain_0.5")
    rows = {row["level_name"]: row for row in st["runs"]["calibrated camera, test split"]["rows"]}
    lines += ["", "Mean run length >= : the mean of min(run length, T), a lower bound of the mean run length (the "
              "promise: at least the level).", "",
              f"The calibrated camera's test split is a mild real shift: risk among accepted {_pct(mild['risk'], 2)} "
              f"against {_pct(setup['pool_risk'], 2)} on the pool, accept share {_pct(mild['accept_share'])} against "
              f"{_pct(setup['pool_accept_share'])}; its score falls below the reference's 10% point on "
              f"{_pct(mild['below_tenth']['score'])} of frames and its typicality on "
              f"{_pct(mild['below_tenth']['typicality'])} (10% expected); the monitor "
              f"{'flags it' if rows['service ALARM']['rate'] > 0.05 else 'treats it like the calibration'}: "
              f"WATCH within T in {_pct(rows['service WATCH']['rate'], 2)} of the replicates, ALARM in "
              f"{_pct(rows['service ALARM']['rate'], 2)}.", "", *clip_markdown(result["clips"]), "",
              f"#### Shifts at thinned frame {CHANGE} (bundle's reference, service levels)", "",
              f"{sizes['shift_replicates']:,} replicates: {CHANGE} calibration frames, then {sizes['horizon']:,} "
              "frames of the shifted camera (both resampled); thinned frames from the change to WATCH and to "
              "ALARM, counting the frame that raised it.", "",
              "| camera | accept share | risk among accepted | WATCH median / p95 | ALARM median / p95 | ALARM before "
              "the change | ALARM within the horizon |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in result["shifts"]:
        w, a, h = row["watch"], row["alarm"], sizes["horizon"]
        lines.append(f"| {'**' if row['severe'] else ''}{row['title']}{'**' if row['severe'] else ''} | "
                     f"{_pct(row['accept_share'])} | {_pct(row['risk'], 2)} | {_n(w['median'], h)} / {_n(w['p95'], h)} "
                     f"| {_n(a['median'], h)} / {_n(a['p95'], h)} | {_pct(a['before_change'], 2)} | "
                     f"{_pct(a['detected'])} |")
    severe = [r for r in result["shifts"] if r["severe"]]
    missed = [r["title"] for r in severe if not r["alarm"]["median"] <= 60]
    lines += ["", f"Target: severe shifts (bold) raise ALARM within a median of 60 thinned frames: "
              f"{'met' if not missed else 'missed by ' + ', '.join(missed)}.", "",
              f"#### Audits (alpha {audit['alpha']:g}, audit delta {audit['delta']:g})", "",
              f"{audit['replicates']:,} replicates of up to {audit['labels']:,} labels each, drawn from the accepted "
              "frames' correctness (or simulated). Camera frames to reach those labels at an audit rate r: labels / "
              "(r x accept share) on average (drawn here).", "",
              "| case | true risk | VIOLATED within the labels | labels: median / p95 | frames at 2%: median / p95 "
              "| frames at 5%: median / p95 |", "|---|---:|---:|---:|---:|---:|"]
    for row in audit["rows"]:
        f2, f5, n = row["frames"]["0.02"], row["frames"]["0.05"], audit["labels"]
        mark = " (risk <= alpha)" if row["harmless"] else " (nearest alpha + 5 points)" if row["nearest"] else ""
        lines.append(f"| {row['case']}{mark} | {_pct(row['risk'], 2)} | {_pct(row['violated'], 2)} | "
                     f"{_n(row['median_labels'], n)} / {_n(row['p95_labels'], n)} | {_n(f2['median'])} / "
                     f"{_n(f2['p95'])} | {_n(f5['median'])} / {_n(f5['p95'])} |")
    near = [f"{r['case']} ({_pct(r['risk'], 2)}): {_n(r['median_labels'], audit['labels'])}"
            for r in audit["rows"] if r["nearest"] or r["simulated"]]
    harmless = [f"{_pct(r['violated'], 2)}" for r in audit["rows"] if r["harmless"]]
    lines += ["", f"Targets: at a risk of alpha + 5 points a median of at most 500 labels ({'; '.join(near)}); a "
              f"camera at risk <= alpha found VIOLATED at most {_pct(audit['delta'], 0)} of the time "
              f"({', '.join(harmless) or 'no such case'}).", "",
              "#### Cost per frame (this machine, one thread)", "",
              "| step | p50 | p99 | mean |", "|---|---:|---:|---:|"]
    names = {"update": "DriftDetector.update, per thinned frame",
             "tap_1fps": "GuaranteeWatch tap per decision, 1 frame/s camera (every decision thinned)",
             "tap_30fps": "GuaranteeWatch tap per decision, 30 frame/s camera",
             "encoder_batch_1": "image encoder per frame, batch 1",
             "encoder_batch_8": "image encoder per frame, batch 8"}
    for key, title in names.items():
        c = cost[key]
        lines.append(f"| {title} | {c['p50_us']:.1f} µs | {c['p99_us']:.1f} µs | {c['mean_us']:.1f} µs |")
    encoder = min(cost["encoder_batch_1"]["p50_us"], cost["encoder_batch_8"]["p50_us"])
    share = {key: cost[key]["p99_us"] / encoder for key in ("update", "tap_1fps")}
    lines += ["", f"Monitor p99 against the encoder's fastest time per frame ({encoder:.0f} µs): update "
              f"{_pct(share['update'], 2)}, the whole tap on a thinned decision {_pct(share['tap_1fps'], 2)} (target "
              f"< 1%: {'met' if share['update'] < 0.01 else 'missed'} for the update, "
              f"{'met' if share['tap_1fps'] < 0.01 else 'missed'} for the tap). The update runs once per camera per "
              "second; the encoder on every frame."]
    return lines


EPILOG = """examples:
  python -m trustvlm.benchmarks.drift --quick               # every section at small sizes (about 30 s)
  python -m trustvlm.benchmarks.drift --markdown drift.md   # the full run for BENCHMARKS.md (3-5 min on 2 cores)

The calibrated bundle and the scored frames are cached under --work: a second run only re-simulates."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trustvlm.benchmarks.drift", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Measure the guarantee monitor (the label-free drift detector: OK / WATCH / ALARM) and the\n"
                    "risk audit (labels: VIOLATED) on the demo model with real images: false WATCH/ALARM rates\n"
                    "against their stated bounds, frames to detect real camera shifts, labels to find a violated\n"
                    "risk, and the monitor's cost per frame. Prints a Markdown section for BENCHMARKS.md and\n"
                    "writes every number as JSON.")
    add = parser.add_argument
    add("--artifacts", type=Path, default=Path("artifacts/demo_fmnist"),
        help="the demo model's export folder (`trustvlm export --model demo_fmnist`; default: %(default)s)")
    add("--work", type=Path, help="cache of the calibrated bundle and scored frames (default: <artifacts>/drift_work)")
    add("--output", type=Path, help="JSON of every number (default: <artifacts>/drift.json)")
    add("--markdown", type=Path, help="also write the Markdown section to this file")
    add("--quick", action="store_true", help="a small run: few replicates, short streams, 4 cameras, 400 test images")
    add("--held-out", type=positive(int), default=2400,
        help="non-shot calibration images the bundle is calibrated on; the rest of the 5,000 are fresh frames for the "
             "stationary streams (default: %(default)s)")
    add("--replicates", type=positive(int), help="stationary replicates (default: 2,000; 100 with --quick)")
    add("--frames", type=positive(int), help="thinned frames T per stationary stream (default: 10,000; 1,000 --quick)")
    add("--seed", type=int, default=0, help="seed of the calibration and of every draw (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.work = args.work or args.artifacts / "drift_work"
    output = args.output or args.artifacts / "drift.json"
    if not (args.artifacts / "manifest.json").exists():
        parser.exit(2, f"{parser.prog}: error: no export in {args.artifacts}: run `trustvlm export --model "
                       "demo_fmnist`\n")
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n")
    text = "\n".join(markdown(result))
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
