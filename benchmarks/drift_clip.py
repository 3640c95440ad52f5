"""Stationary streams from real clips looped through a camera (a section of :mod:`trustvlm.benchmarks.drift`).

The benchmark's other stationary streams are resampled i.i.d., so they do not test a real video's correlation in
time. Here a camera looks at a real scene: one of OpenCV's sample clips (Debian's ``opencv-doc``), played at its
native frame rate and looped (``trustvlm source --video CLIP --fps native --loop``), every frame JPEG-encoded as
the source sends it (quality 90) and scored by the runtime scorer (:meth:`BundleScorer.decide
<trustvlm.runtime.scoring.scorer.BundleScorer.decide>` with the benchmark's bundle: the monitor only compares a
camera with its own reference). Capture times are those of a steady clock, ``g / fps`` for the g-th frame played,
and the service's thinning keeps a frame when it comes at least ``interval_s`` after the last kept one (as
:class:`~trustvlm.runtime.monitor.watch.GuaranteeWatch` does): the thinned stream of T frames.

The camera is "calibrated on the clip": its reference is the score and typicality of clip frames the stream never
shows, at the clip's native rate, built one of two ways:

* ``interleaved``: the stream loops the whole clip; the reference is every frame its T thinned frames never show.
  A clip of L frames thinned every k frames shows only one residue class mod gcd(L, k) (vtest.avi: L = 795 at 10
  frames/s, k = 10: every 5th frame), so the reference is the other frames of the same seconds. With gcd 1 the
  loop shows every frame and nothing is held out (no row).
* ``split in time``: the reference is a block of half the clip's consecutive frames, cut at a random place; the
  stream loops the rest of the clip (the frames before and after the block, in order).

Neither is exchangeable with the stream, which is one cycle of a few dozen to a few hundred distinct thinned frames
repeated in a fixed order; the reference's values come from consecutive, strongly correlated frames. Replicates
draw the start offset into the played clip, the cut (split in time) and the frames' tie keys.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from trustvlm.benchmarks.drift_data import Camera, crossings, decide_all, quantile
from trustvlm.pipelines.frame_sender import FrameEncoder
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame
from trustvlm.runtime.monitor.binomial import binomial_upper
from trustvlm.runtime.monitor.drift import MIN_REFERENCE, DriftConfig, DriftDetector

__all__ = ["DATA", "CLIPS", "INTERVALS", "SIZES", "read_clip", "score_clip", "thinned_positions", "clip_run",
           "clip_streams", "clip_markdown"]

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
#: File stem and what the clip shows.
CLIPS = (("vtest", "street"), ("Megamind", "cartoon"), ("tree", "tree"))
#: Thinning intervals: the service's default (one frame a second) and one frame per 5 s.
INTERVALS = (1.0, 5.0)
KINDS = ("interleaved", "split in time")
SIZES = {"full": {"replicates": 500, "limit": None}, "quick": {"replicates": 20, "limit": 60}}
SERVICE = DriftConfig()
STATS = ("score", "typicality")


def read_clip(path: Path, limit: int | None = None) -> tuple[list[ReceivedFrame], float, int]:
    """The clip's first `limit` frames (None: all OpenCV decodes) as the source sends them (JPEG quality 90),
    stamped ``g / fps``; its frame rate and the frame count its header claims.

    Raises:
        FileNotFoundError: No such clip (``apt-get install opencv-doc``).
        ValueError: No frame or no frame rate.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: apt-get install opencv-doc")
    capture, encoder, frames = cv2.VideoCapture(str(path)), FrameEncoder(Encoding.JPEG, 90), []
    fps, claimed = float(capture.get(cv2.CAP_PROP_FPS) or 0.0), int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    while fps > 0 and (limit is None or len(frames) < limit):
        ok, bgr = capture.read()
        if not ok:
            break
        ts = round(len(frames) * 1e9 / fps)
        frames.append(ReceivedFrame(FrameHeader(path.stem, len(frames), ts, Encoding.JPEG),
                                    encoder.encode(bgr).payload, ts))
    capture.release()
    if not frames:
        raise ValueError(f"OpenCV read no frame (or no frame rate) of {path}")
    return frames, fps, claimed


def score_clip(camera: Camera, path: Path, limit: int | None,
               progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Score and typicality of each of the clip's frames through the runtime scorer, its fps and claimed frame
    count (cached in the camera's folder).

    Raises:
        ValueError: A frame without a score or typicality (the tap would skip it; the thinning here does not).
    """
    key = hashlib.sha256(json.dumps({"clip": str(path), "bytes": path.stat().st_size if path.is_file() else None,
                                     "limit": limit, "bundle": camera.scorer.bundle_id}).encode()).hexdigest()[:12]
    cache = camera.folder / f"clip_{key}.npz"
    if cache.exists():
        with np.load(cache) as data:
            return {name: data[name] for name in data.files}
    frames, fps, claimed = read_clip(path, limit)
    decided = decide_all(camera.scorer, frames, None, progress=progress)
    scored = {name: decided[name].astype(np.float64) for name in STATS}
    if not all(np.isfinite(column).all() for column in scored.values()):
        raise ValueError(f"a frame of {path} has no score or typicality")
    scored.update(fps=np.float64(fps), claimed=np.int64(claimed))
    np.savez(cache, **scored)
    return scored


def thinned_positions(starts: np.ndarray, played: int, fps: float, interval_s: float, frames: int) -> np.ndarray:
    """Positions in a played clip of `played` frames, looped from position `starts` (one per replicate), of the
    first `frames` thinned frames: the first frame, then each first one whose capture time ``round(g * 1e9 / fps)``
    ns is at least ``int(interval_s * 1e9)`` after the last kept one. Returns ``[replicates, frames]``."""
    interval, step = int(interval_s * 1e9), 1e9 / fps

    def stamp(g: np.ndarray) -> np.ndarray:
        return np.rint(g * step).astype(np.int64)

    g, out = np.zeros(len(starts), dtype=np.int64), np.empty((len(starts), frames), dtype=np.int64)
    first_guess = max(1, int(interval_s * fps) - 1)
    for j in range(frames):
        out[:, j] = (starts + g) % played
        gap = np.full_like(g, first_guess)
        while (short := stamp(g + gap) - stamp(g) < interval).any():
            gap[short] += 1
        g = g + gap
    return out


def _rows(first: np.ndarray, levels: list[tuple[str, float]], frames: int) -> list[dict]:
    runs = np.where(first >= 0, first + 1, np.inf)
    rows = []
    for i, (name, level) in enumerate(levels):
        crossed, reps = int((first[i] >= 0).sum()), first.shape[1]
        rows.append({"level_name": name, "level": level, "crossed": crossed, "replicates": reps,
                     "rate": crossed / reps, "rate_upper95": binomial_upper(crossed, reps, 0.05),
                     "bound": min(1.0, frames / level + SERVICE.reference_delta),
                     "median_run": quantile(runs[i], 0.5), "min_run": float(runs[i].min()),
                     "median_crossed_run": quantile(runs[i][np.isfinite(runs[i])], 0.5),
                     "censored_mean_run": float(np.minimum(runs[i], frames).mean())})
    return rows


def clip_run(values: dict[str, np.ndarray], fps: float, kind: str, interval_s: float, frames: int, reps: int,
             levels: list[tuple[str, float]], rng: np.random.Generator) -> dict:
    """One row: replicates of the looped clip's thinned stream against a reference of its held-out frames."""
    length = len(values["score"])
    index, rows = np.arange(length), np.arange(reps)[:, None]
    if kind == "interleaved":
        played, starts = np.broadcast_to(index, (reps, length)), rng.integers(0, length, reps)
    else:
        half = length // 2
        cuts = rng.integers(0, length - half + 1, reps)
        played = np.stack([np.r_[index[:cut], index[cut + half:]] for cut in cuts])
        starts = rng.integers(0, length - half, reps)
    shown = np.take_along_axis(played, thinned_positions(starts, played.shape[1], fps, interval_s, frames), axis=1)
    seen = np.zeros((reps, length), dtype=bool)
    seen[rows, shown] = True
    held = ~seen if kind == "interleaved" else (index >= cuts[:, None]) & (index < cuts[:, None] + half)
    sizes, distinct = held.sum(axis=1), seen.sum(axis=1)
    out = {"kind": kind, "interval_s": interval_s, "played_frames": int(played.shape[1]),
           "reference_size": int(np.median(sizes)), "reference_sizes": sorted({int(s) for s in sizes}),
           "distinct_thinned": int(np.median(distinct)), "loops": frames * interval_s * fps / played.shape[1]}
    if sizes.min() < MIN_REFERENCE:
        return {**out, "skipped": f"{int(sizes.min())} frames held out (the monitor needs {MIN_REFERENCE}): the "
                                  "looped thinned stream shows (nearly) every frame"}
    first = np.full((len(levels), reps), -1, dtype=np.int64)
    below = {name: np.zeros(reps) for name in STATS}
    cache: dict[bytes, DriftDetector] = {}
    for size in np.unique(sizes):  # crossings() needs one reference size (the bets' buckets) per pass
        group = np.flatnonzero(sizes == size)
        detectors = [cache.setdefault(held[i].tobytes(), DriftDetector({n: values[n][held[i]] for n in STATS},
                                                                       SERVICE)) for i in group]
        base = detectors[0]
        thresholds = np.array([[bet.threshold for bet in d.bets] for d in detectors]).T
        keys = np.array([[bet.key for bet in d.bets] for d in detectors]).T
        for name in STATS:  # share of the stream below the reference's 10% point (the b = n/10 bet's threshold)
            j = min((j for j, b in enumerate(base.bets) if b.statistic == name),
                    key=lambda j: abs(base.bets[j].bucket - 0.1 * size))
            below[name][group] = (values[name][shown[group]] < thresholds[j][:, None]).mean(axis=1)
        first[:, group] = crossings(base, thresholds, keys,
                                    lambda a, b, group=group: {n: values[n][shown[group, a:b]] for n in STATS}, frames,
                                    np.array([level for _, level in levels]), rng)
    return {**out, "below_tenth": {name: float(share.mean()) for name, share in below.items()},
            "rows": _rows(first, levels, frames), "checked": _check(values, fps, interval_s, held[0], shown[0],
                                                                    starts[0], played[0], rng)}


def _check(values: dict[str, np.ndarray], fps: float, interval_s: float, held: np.ndarray, shown: np.ndarray,
           start: int, played: np.ndarray, rng: np.random.Generator, frames: int = 1500) -> bool:
    """Replicate 0 against the service's own rules: the thinning rule of GuaranteeWatch applied frame by frame to
    the played clip, and DriftDetector.update on its thinned frames (levels 10 and 100) against crossings()."""
    frames = min(frames, len(shown))
    interval, last, kept, g = int(interval_s * 1e9), None, [], 0
    while len(kept) < frames:
        ts = round(g * 1e9 / fps)
        if last is None or not 0 <= ts - last < interval:
            last = ts
            kept.append(int(played[(start + g) % len(played)]))
        g += 1
    reference = {n: values[n][held] for n in STATS}
    detector = DriftDetector(reference, DriftConfig(watch_level=10.0, alarm_level=100.0), seed=0)
    states = [detector.update({n: float(values[n][i]) for n in STATS}) for i in shown[:frames]]
    watch = next((t for t, state in enumerate(states) if state.value != "ok"), -1)
    alarm = -1 if detector.frames_to_alarm is None else detector.frames_to_alarm - 1
    base = DriftDetector(reference, SERVICE)
    bets = np.array([[bet.threshold] for bet in base.bets]), np.array([[bet.key] for bet in base.bets])
    first = crossings(base, *bets, lambda a, b: {n: values[n][shown[None, a:b]] for n in STATS}, frames,
                      np.array([10.0, 100.0]), rng)
    return kept == shown[:frames].tolist() and [watch, alarm] == first[:, 0].tolist()


def clip_streams(camera: Camera, frames: int, quick: bool, rng: np.random.Generator) -> dict:
    """The section: every clip, reference kind and thinning interval (JSON-ready)."""
    sizes = SIZES["quick" if quick else "full"]
    levels = [("", 100.0), ("", 1000.0), ("T / 0.5", frames / 0.5), ("T / 0.2", frames / 0.2),
              ("T / 0.05", frames / 0.05), ("service WATCH", SERVICE.watch_level),
              ("service ALARM", SERVICE.alarm_level)]
    out = {"frames": frames, "replicates": sizes["replicates"], "limit": sizes["limit"], "intervals_s": INTERVALS,
           "clips": [], "runs": []}
    with tqdm(desc="scoring clips (runtime scorer)", unit="frame", leave=False) as bar:
        scored = {stem: score_clip(camera, DATA / f"{stem}.avi", sizes["limit"], bar.update) for stem, _ in CLIPS}
    for stem, what in CLIPS:
        clip = scored[stem]
        values, fps = {name: clip[name] for name in STATS}, float(clip["fps"])
        second, score = max(1, round(fps)), values["score"]
        out["clips"].append({"clip": f"{stem}.avi", "what": what, "fps": fps, "frames": int(len(score)),
                             "claimed_frames": int(clip["claimed"]),
                             "score_corr_next": float(np.corrcoef(score[:-1], score[1:])[0, 1]),
                             "score_corr_1s": float(np.corrcoef(score[:-second], score[second:])[0, 1])})
        for kind in KINDS:
            for interval in INTERVALS:
                run = clip_run(values, fps, kind, interval, frames, sizes["replicates"], levels, rng)
                out["runs"].append({"clip": f"{stem}.avi", **run})
    out["checked"] = all(run["checked"] for run in out["runs"] if "checked" in run)
    return out


def _pct(value, digits: int = 1) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{100 * value:.{digits}f}%"


def _n(value, frames: int) -> str:
    return "—" if value is None or np.isnan(value) else f"> {frames:,}" if np.isinf(value) else f"{value:,.0f}"


def _clip_text(clip: dict, full: bool) -> str:
    more = full and clip["claimed_frames"] > clip["frames"]  # tree.avi: OpenCV decodes 68 of the 444 claimed
    claimed = f" of the {clip['claimed_frames']:,} its header claims" if more else ""
    return (f"{clip['clip']} ({clip['what']}, {clip['frames']:,} frames{claimed} at {clip['fps']:.4g} frames/s; "
            f"score correlation with the next frame {clip['score_corr_next']:.2f}, with the frame 1 s later "
            f"{clip['score_corr_1s']:.2f})")


def clip_markdown(section: dict) -> list[str]:
    """The Markdown subsection of :func:`clip_streams`' result."""
    T, reps, runs = section["frames"], section["replicates"], section["runs"]
    done = [run for run in runs if "rows" in run]
    levels = done[0]["rows"]
    lines = [f"#### Stationary streams from real clips looped through a camera: false crossings within T = {T:,} "
             "thinned frames", "",
             f"{reps:,} replicates per row (random start offsets into the played clip, random cuts, fresh tie keys). "
             f"Clips (OpenCV's samples): {'; '.join(_clip_text(c, section['limit'] is None) for c in section['clips'])}"
             ". Each frame is JPEG-encoded as the source sends it and scored by the runtime scorer (the bundle "
             "above; the monitor compares the camera only with its own reference); capture times are a steady "
             "clock's (frame g at g / fps), thinned as the service does (a frame at least the interval after the "
             "last kept one), the clip looped. The reference (the camera calibrated on the clip) is the score and "
             "typicality of clip frames the stream never shows, all of them, at the native rate. *Interleaved*: "
             "the stream loops the whole clip and shows only one residue class of frames mod gcd(clip frames, "
             "frames per interval); the reference is the other frames of the same seconds (none when the gcd is 1: "
             "no row). *Split in time*: the reference is a block of half the clip's consecutive frames, cut at a "
             "random place; the stream loops the rest of the clip. The replicate loop was checked against the "
             "service's own thinning rule and `DriftDetector.update` on one replicate per row "
             f"({'checked' if section['checked'] else 'MISMATCH'}).", "",
             "| clip | reference (values) | one frame per | distinct thinned frames (loops of the clip in T) | "
             "stream below the reference's 10% point: score / typicality | "
             + " | ".join(f"{r['level_name'] + ' = ' if r['level_name'] else ''}{r['level']:,.0f}" for r in levels)
             + " | to WATCH / ALARM where crossed: median (first) |",
             "|---|---|---:|---:|---:|" + "---:|" * len(levels) + "---:|",
             "| **bound on P(crossed within T)** if the stream were like the reference | | | | | "
             + " | ".join(_pct(r["bound"]) for r in levels) + " | |"]
    for run in runs:
        head = (f"| {run['clip']} | {run['kind']} ({run['reference_size']:,}) | {run['interval_s']:g} s | "
                f"{run['distinct_thinned']:,} ({run['loops']:,.0f}) | ")
        if "rows" not in run:
            lines.append(head + "— | " + " | ".join("—" for _ in levels) + " | — |")
            continue
        watch, alarm = run["rows"][-2], run["rows"][-1]
        lines.append(head + f"{_pct(run['below_tenth']['score'])} / {_pct(run['below_tenth']['typicality'])} | "
                     + " | ".join(_pct(row["rate"]) for row in run["rows"])
                     + f" | {_n(watch['median_crossed_run'], T)} ({_n(watch['min_run'], T)}) / "
                       f"{_n(alarm['median_crossed_run'], T)} ({_n(alarm['min_run'], T)}) |")
    return lines + [""] + _findings(section)


def _findings(section: dict) -> list[str]:
    """What the rows say, in words (every number from the run)."""
    done = [run for run in section["runs"] if "rows" in run]
    skipped = [f"{run['clip']} at {run['interval_s']:g} s" for run in section["runs"] if "rows" not in run]
    distinct = [run["distinct_thinned"] for run in done]
    fewest = min(done, key=lambda run: run["distinct_thinned"])
    alarm = {kind: [run for run in done if run["kind"] == kind] for kind in KINDS}
    crossed = [(run["rows"][-1]["median_crossed_run"], run["interval_s"]) for run in done if run["rows"][-1]["crossed"]]
    drop = max(run["rows"][2]["rate"] - run["rows"][-1]["rate"] for run in done)
    share = {interval: np.mean([run["rows"][-1]["rate"] for run in done if run["interval_s"] == interval])
             for interval in section["intervals_s"]}

    def rates(kind: str) -> str:
        return ", ".join(f"{run['clip']} {run['interval_s']:g} s: {_pct(run['rows'][-1]['rate'])}"
                         for run in alarm[kind]) or "no row"

    pairs = [(a, b) for a in done for b in done if a["clip"] == b["clip"] and a["kind"] == b["kind"]
             and a["interval_s"] < b["interval_s"]]
    low = max((p for p in pairs if p[0]["rows"][0]["rate"] > p[1]["rows"][0]["rate"] + 0.2),
              key=lambda p: p[0]["rows"][0]["rate"] - p[1]["rows"][0]["rate"], default=None)
    lines = [f"**What a looped clip is.** A periodic stream, not a stationary random one: the camera shows the same "
             f"{min(distinct):,}–{max(distinct):,} distinct thinned frames in the same order again and again "
             f"(fewest: {fewest['clip']}, {fewest['kind']}, one frame per {fewest['interval_s']:g} s: "
             f"{fewest['distinct_thinned']:,}), and the reference's values come from consecutive frames of the same "
             "short clip, far fewer independent looks than values. The stream is not exchangeable with the "
             "reference and not i.i.d., so the bound's assumption does not hold: the bound row is there for "
             "comparison, not as a promise. Over each cycle every bet's detector gains or loses by the same "
             "factor: where one gains, it grows without end and crosses every level; where none does, the monitor "
             "stays below a fixed height for ever. Which one happens is settled by the reference (the phase or the "
             f"cut) and the start offset, so a row's share falls by at most {100 * drop:.1f} points from T / 0.5 to "
             f"the ALARM line." + (f" No interleaved row for {', '.join(skipped)}: the loop's thinning shows every "
                                   "frame." if skipped else ""), "",
             f"**What the monitor does then.** Service ALARM within T, interleaved reference (the same seconds of "
             f"the scene): {rates('interleaved')}; split in time (the other half of the clip): "
             f"{rates('split in time')}."
             + (f" Where a replicate crosses, it crosses fast: a median of {min(crossed)[0]:,.0f}–"
                f"{max(crossed)[0]:,.0f} thinned frames to ALARM per row, at most "
                f"{max(m * i for m, i in crossed) / 3600:.1f} hours of capture time, not the week (at one frame a "
                "second) the ALARM line stands for." if crossed else " No replicate reaches it.")
             + f" One frame per {max(share):g} s: ALARM in {_pct(share[max(share)])} of the replicates over its rows, "
               f"against {_pct(share[min(share)])} at one per {min(share):g} s; thinning more changes which frames "
               "make the cycle and their order, but the stream is still a loop."]
    if low is not None:
        a, b = low
        same = (f"the same {a['distinct_thinned']:,} frames in a scattered order" if a["distinct_thinned"] ==
                b["distinct_thinned"] else f"{b['distinct_thinned']:,} frames in a scattered order")
        lines[-1] += (f" The order matters at the low levels: {a['clip']} ({a['kind']}) crosses 100 in "
                      f"{_pct(a['rows'][0]['rate'])} of the replicates at one frame per {a['interval_s']:g} s, where "
                      "the cycle runs through neighbouring moments of the scene so its low frames come in runs and "
                      f"push the detector up together, and in {_pct(b['rows'][0]['rate'])} at one per "
                      f"{b['interval_s']:g} s ({same}).")
    return lines
