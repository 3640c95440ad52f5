"""Data of the guarantee-monitor benchmark (:mod:`trustvlm.benchmarks.drift`): a calibrated camera, its frames
scored through the runtime scorer, and the vectorised replicate streams.

The camera is the demo's low-light camera (Fashion-MNIST through ``low_light``, gain 0.5). Its calibration set is
written as the demo writes it (:func:`~trustvlm.pipelines.calibration_set.write_camera_calibration_set`), but only
the first ``held_out`` non-shot images go to ``trustvlm calibrate``: the rest of the calibration split is never
seen by calibration, so together with the bundle's reference rows (held-out images that fitted nothing the
monitored statistics depend on) it is a pool of frames exchangeable with the reference. Every frame (the pool,
the test split through each camera, the street video) is scored by :meth:`BundleScorer.decide
<trustvlm.runtime.scoring.scorer.BundleScorer.decide>` on raw (Fashion-MNIST) or JPEG (video) frames: its
``kappa``, ``typicality`` and decision are the ones the service would publish.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from trustvlm.calibration.calibrate import calibrate, split_held_out
from trustvlm.calibration.monitor_reference import reference_rows
from trustvlm.calibration.pools import load_pool
from trustvlm.calibration.shifts import gaussian_blur, gaussian_noise, jpeg_artifacts, low_light
from trustvlm.calibration.small_data import draw_checked_shots
from trustvlm.data.fashion_mnist import load_split
from trustvlm.pipelines.calibration_set import CALIBRATION_SEED_OFFSET, write_camera_calibration_set
from trustvlm.pipelines.frame_sender import FrameEncoder
from trustvlm.runtime.frames import Encoding, FrameHeader, PixelFormat, ReceivedFrame
from trustvlm.runtime.messages import Decision
from trustvlm.runtime.monitor.config import MonitorConfig
from trustvlm.runtime.monitor.drift import DriftConfig, DriftDetector, first_crossings

__all__ = ["VTEST", "CALIBRATED_GAIN", "Condition", "CALIBRATED", "CONDITIONS", "QUICK_CONDITIONS", "Camera",
           "open_camera", "score_condition", "quantile", "stream_values", "fresh_reference_crossings", "crossings",
           "crossing_check", "costs"]

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
CALIBRATED_GAIN = 0.5
#: Seeds of the extra sensor noise of the ``noise`` cameras (apart from the low-light read-out noise's).
EXTRA_NOISE_SEED = 2_000_000


@dataclass(frozen=True)
class Condition:
    """One camera the test split (or the street video) is seen through.

    Attributes:
        name: Short key (JSON).
        title: What it is, for the tables.
        kind: ``gain`` (low light at `value`), ``blur`` (optics blur of sigma `value` px, then the calibrated low
            light), ``noise`` (the calibrated low light, then sensor noise of std `value`), ``jpeg`` (the
            calibrated low light, then JPEG at quality `value`) or ``street`` (OpenCV's vtest.avi).
        value: The severity.
        severe: One of the severe shifts the detection target is about.
    """

    name: str
    title: str
    kind: str
    value: float = 0.0
    severe: bool = False

    def images(self, images: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """The camera's view of grey Fashion-MNIST images (image i gets seed ``seeds[i]``, as the stream's)."""
        out = np.empty_like(images)
        for i, (image, seed) in enumerate(zip(images, seeds)):
            scene, seed = image[None], int(seed)
            if self.kind == "blur":
                scene = gaussian_blur(scene, sigma=self.value)
            seen = low_light(scene, seed, gain=self.value if self.kind == "gain" else CALIBRATED_GAIN)
            if self.kind == "noise":
                seen = gaussian_noise(seen, EXTRA_NOISE_SEED + seed, std=self.value)
            elif self.kind == "jpeg":
                seen = jpeg_artifacts(seen, quality=int(self.value))
            out[i] = seen[0]
        return out


CALIBRATED = Condition("gain_0.5", f"calibrated camera (low light, gain {CALIBRATED_GAIN}), test split", "gain",
                       CALIBRATED_GAIN)
STREET = Condition("street", "switch to the street video (vtest.avi)", "street", severe=True)
CONDITIONS: tuple[Condition, ...] = (
    CALIBRATED,
    *(Condition(f"gain_{g}", f"darker: gain {g}", "gain", g, severe=g == 0.15) for g in (0.35, 0.25, 0.15)),
    *(Condition(f"blur_{s}", f"blur sigma {s} px", "blur", s) for s in (0.7, 1.2, 1.6, 2.0)),
    *(Condition(f"noise_{s}", f"sensor noise std {s}", "noise", s, severe=s == 0.25) for s in (0.05, 0.12, 0.25)),
    *(Condition(f"jpeg_{q}", f"JPEG quality {q}", "jpeg", q) for q in (30, 12, 5)),
    STREET,
)
QUICK_CONDITIONS = tuple(c for c in CONDITIONS if c.name in ("gain_0.5", "gain_0.15", "noise_0.25", "street"))


@dataclass
class Camera:
    """The calibrated camera: its bundle, scorer, and which calibration-split images form the pool.

    Attributes:
        bundle_dir: The bundle (cached under the work folder).
        scorer: Its runtime scorer.
        reference: Positions in the calibration split of the bundle's reference rows.
        unused: Positions of the calibration-split images calibration never saw.
        held_out: Non-shot images calibration saw (lambda, threshold, gate).
        folder: The cache folder of this calibration.
    """

    bundle_dir: Path
    scorer: object
    reference: np.ndarray
    unused: np.ndarray
    held_out: int
    folder: Path

    @property
    def detector(self) -> DriftDetector:
        """The service's detector on the bundle's own reference sample (default levels)."""
        ref = self.scorer.bundle.info.monitor_reference
        return DriftDetector({name: np.asarray(values) for name, values in ref.statistics.items()}, DriftConfig())


def _key(**values) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def open_camera(artifacts: Path, work: Path, held_out: int, shots: int = 16, seed: int = 0, alpha: float = 0.05,
                delta: float = 0.1) -> Camera:
    """Calibrate the low-light camera (or reuse the cached bundle) and open its scorer.

    Raises:
        ValueError: A bundle without a monitor reference (too few held-out images) or a calibration refusal.
    """
    from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer  # noqa: PLC0415

    manifest = hashlib.sha256((artifacts / "manifest.json").read_bytes()).hexdigest()
    key = _key(manifest=manifest, held_out=held_out, shots=shots, seed=seed, alpha=alpha, delta=delta)
    folder = work / f"low_light_{key}"
    calset_dir, bundle_dir, done = folder / "calibration_low_light", folder / "bundle", folder / "calibrated.json"
    if not done.exists():
        calset = write_camera_calibration_set(calset_dir, "low_light", shots, seed, held_out_limit=held_out)
        calibrate(artifacts, calset.split_file, bundle_dir, k=shots, seed=seed, alpha=alpha, delta=delta,
                  image_root=calset.image_root)
        done.write_text(json.dumps({"split_file": str(calset.split_file), "image_root": str(calset.image_root)}))
    paths = json.loads(done.read_text())
    scorer = load_scorer(artifacts, bundle_dir, ScorerConfig(threads=1, max_batch=256))
    if scorer.bundle.info.monitor_reference is None:
        raise ValueError(f"{bundle_dir} records no monitor reference: {scorer.bundle.info.selection.get('monitor')}")
    pool = load_pool(paths["split_file"], paths["image_root"])
    shot_rows, rest = draw_checked_shots(pool, shots, seed, "auto", "auto")
    rows = reference_rows(split_held_out(rest, seed)[1], shot_rows, rest, seed, scorer.gate is not None)
    calib = load_split("calib")
    position = {f"{int(index)}.png": p for p, index in enumerate(calib.indices)}
    seen = {position[name] for name in pool.ids}
    reference = np.array([position[pool.ids[int(r)]] for r in rows])
    unused = np.array([p for p in range(len(calib)) if p not in seen])
    return Camera(bundle_dir, scorer, reference, unused, len(rest), folder)


def raw_frames(images: np.ndarray, camera: str) -> list[ReceivedFrame]:
    """Grey images as the source sends them with ``--encoding raw`` (mono8), one second apart."""
    return [ReceivedFrame(FrameHeader(camera, i, i * 10**9, Encoding.RAW, image.shape, "uint8", PixelFormat.MONO8),
                          image.tobytes(), i * 10**9) for i, image in enumerate(images)]


def street_frames(limit: int | None, camera: str = "street") -> list[ReceivedFrame]:
    """vtest.avi's frames as the source sends them (JPEG quality 90, ``--encoding jpeg``)."""
    if not VTEST.is_file():
        raise FileNotFoundError(f"{VTEST} is missing: apt-get install opencv-doc")
    capture, encoder, frames = cv2.VideoCapture(str(VTEST)), FrameEncoder(Encoding.JPEG, 90), []
    while limit is None or len(frames) < limit:
        ok, bgr = capture.read()
        if not ok:
            break
        ts = len(frames) * 10**9
        header = FrameHeader(camera, len(frames), ts, Encoding.JPEG)
        frames.append(ReceivedFrame(header, encoder.encode(bgr).payload, ts))
    capture.release()
    return frames


def decide_all(scorer, frames: list[ReceivedFrame], labels: np.ndarray | None, batch: int = 256,
               progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Each frame's served score, typicality, acceptance and correctness (no labels: every acceptance is wrong)."""
    columns = {"score": [], "typicality": [], "accepted": [], "class_id": []}
    for start in range(0, len(frames), batch):
        for decision in scorer.decide(frames[start:start + batch]):
            columns["score"].append(np.nan if decision.kappa is None else decision.kappa)
            columns["typicality"].append(np.nan if decision.typicality is None else decision.typicality)
            columns["accepted"].append(decision.decision is Decision.ACCEPT)
            columns["class_id"].append(-1 if decision.class_id is None else decision.class_id)
        if progress is not None:
            progress(len(frames[start:start + batch]))
    out = {name: np.asarray(values) for name, values in columns.items()}
    out["correct"] = (out["class_id"] == labels) if labels is not None else np.zeros(len(frames), bool)
    return out


def score_condition(camera: Camera, condition: Condition | None, limit: int | None,
                    progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Score the frames of `condition`: its first `limit` test images (None: all), or the street video's first
    `limit` frames; None: the pool, i.e. the bundle's reference rows and the first `limit` calibration images that
    calibration never saw, through the calibrated camera with the calibration set's noise seeds (``reference``
    marks the reference rows). Cached in the camera's folder."""
    name = "calibration" if condition is None else condition.name
    key = _key(name=name, condition=condition, limit=limit, bundle=camera.scorer.bundle_id)
    cache = camera.folder / f"scored_{key}.npz"
    if cache.exists():
        with np.load(cache) as data:
            return {key: data[key] for key in data.files}
    if condition is not None and condition.kind == "street":
        scored = decide_all(camera.scorer, street_frames(limit), None, progress=progress)
    elif condition is None:  # the pool: the reference rows, then the images calibration never saw
        split, at = load_split("calib"), np.concatenate([camera.reference, camera.unused[:limit]])
        images = CALIBRATED.images(split.images[at], at + CALIBRATION_SEED_OFFSET)
        scored = {**decide_all(camera.scorer, raw_frames(images, name), split.labels[at], progress=progress),
                  "reference": np.arange(len(at)) < len(camera.reference)}
    else:
        split = load_split("test")
        count = len(split) if limit is None else min(limit, len(split))
        images = condition.images(split.images[:count], np.arange(count))
        scored = decide_all(camera.scorer, raw_frames(images, name), split.labels[:count], progress=progress)
    np.savez(cache, **scored)
    return scored


def _bets(detector: DriftDetector) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([bet.threshold for bet in detector.bets]), np.array([bet.key for bet in detector.bets]))


def crossings(base: DriftDetector, thresholds: np.ndarray, keys: np.ndarray,
              chunk_values: Callable[[int, int], dict[str, np.ndarray]], frames: int, levels: np.ndarray,
              rng: np.random.Generator, chunk: int = 256, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """First crossings of several levels by the mean detector of replicates with their own references.

    `base` gives the bets' statistics, gains and cap (they depend on the reference size and the config only);
    `thresholds` and `keys` are ``[J, replicates]`` (each replicate's own ``X_(b)`` and tie key, as its
    :class:`DriftDetector` holds them); `chunk_values(start, stop)` gives each statistic's values
    ``[replicates, stop - start]``. A level is the line of the mean detector, as ``alarm_level`` or
    ``watch_level``: the bets and the sum do not depend on the config's levels (the cap, ``10**6`` times the
    alarm level, is never reached before a crossing), so one pass answers every level. Returns ``[levels,
    replicates]`` frame indices (-1: not crossed), as :func:`~trustvlm.runtime.monitor.drift.first_crossings` gives.
    """
    bets, (count, reps) = base.bets, thresholds.shape
    stats = sorted({bet.statistic for bet in bets})
    rows = {name: [j for j, bet in enumerate(bets) if bet.statistic == name] for name in stats}
    gains = np.array([bet.gain for bet in bets])[:, None]
    lines = count * np.asarray(levels, dtype=np.float64)[None, :]
    r, first = np.zeros((count, reps)), np.full((reps, len(levels)), -1, dtype=np.int64)
    for start in range(0, frames, chunk):
        stop = min(frames, start + chunk)
        values, factor = chunk_values(start, stop), np.empty((stop - start, count, reps))
        for name in stats:
            y = np.asarray(values[name], dtype=np.float64).T[:, None, :]
            y = np.where(np.isfinite(y), y, -np.inf)
            x, key = thresholds[rows[name]][None], keys[rows[name]][None]
            hit = (y < x) | ((y == x) & (rng.random(y.shape) < key))
            factor[:, rows[name], :] = np.where(hit, gains[rows[name]][None], base._miss)
        for t in range(stop - start):
            r = np.minimum((1.0 + r) * factor[t], base._cap)
            total = r[0].copy()
            for j in range(1, count):  # in order, as update() sums
                total += r[j]
            first[(first < 0) & (total[:, None] >= lines)] = start + t
        if progress is not None:
            progress(stop - start)
    return first.T


def fresh_reference_crossings(pool: dict[str, np.ndarray], size: int, replicates: int, frames: int,
                              levels: np.ndarray, rng: np.random.Generator, stream: dict[str, np.ndarray] | None = None,
                              config: DriftConfig = DriftConfig(), progress: Callable[[int], None] | None = None,
                              ) -> np.ndarray:
    """Stationary replicates: each draws a fresh reference of `size` from `pool` (statistic -> values per image) and
    a stream of `frames` frames resampled from the rest of the pool (or from `stream`'s images); first crossings
    ``[levels, replicates]`` (:func:`crossings`)."""
    names = sorted(pool)
    count = len(pool[names[0]])
    order = np.argsort(rng.random((replicates, count)), axis=1)
    reference, rest = order[:, :size], order[:, size:]
    detectors = [DriftDetector({name: pool[name][reference[i]] for name in names}, config) for i in range(replicates)]
    thresholds, keys = (np.stack(columns, axis=1) for columns in zip(*(_bets(d) for d in detectors)))

    def chunk_values(start: int, stop: int) -> dict[str, np.ndarray]:
        if stream is None:
            picks = np.take_along_axis(rest, rng.integers(0, rest.shape[1], (replicates, stop - start)), axis=1)
            return {name: pool[name][picks] for name in names}
        picks = rng.integers(0, len(stream[names[0]]), (replicates, stop - start))
        return {name: stream[name][picks] for name in names}

    return crossings(detectors[0], thresholds, keys, chunk_values, frames, levels, rng, progress=progress)


def quantile(values: np.ndarray, q: float) -> float:
    """A quantile that keeps censored values (inf) as they are."""
    return float(np.quantile(values, q, method="inverted_cdf")) if len(values) else float("nan")


def stream_values(scored: dict, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The monitored statistics of the frames the tap feeds the detector (those with a score; `rows` of them)."""
    keep = np.isfinite(scored["score"]) & (True if rows is None else rows)
    return {name: scored[name][keep] for name in ("score", "typicality")}


def _summary(times_ns: np.ndarray) -> dict:
    return {"p50_us": float(np.percentile(times_ns, 50)) / 1e3, "p99_us": float(np.percentile(times_ns, 99)) / 1e3,
            "mean_us": float(times_ns.mean()) / 1e3, "calls": int(len(times_ns))}


def _timed(call: Callable[[int], object], count: int, raw: bool = False):
    times = np.empty(count, dtype=np.int64)
    for i in range(count):
        start = time.perf_counter_ns()
        call(i)
        times[i] = time.perf_counter_ns() - start
    return times if raw else _summary(times)


def costs(camera: Camera, pool: dict, calls: int) -> dict:
    """The monitor's time per thinned frame (:meth:`DriftDetector.update`) and the service tap's per decision
    (:class:`~trustvlm.runtime.monitor.watch.GuaranteeWatch`, a 1-frame/s camera: every decision thinned; a 30
    frame/s camera: one in 30), against the image encoder's time per frame at batch 1 and 8 (the service's
    ``max_batch``), in µs."""
    from trustvlm.runtime.decode.preprocess import preprocess_batch  # noqa: PLC0415
    from trustvlm.runtime.monitor.watch import GuaranteeWatch  # noqa: PLC0415

    scorer, detector, values = camera.scorer, camera.detector, stream_values(pool)
    frames = [{name: float(column[i % len(column)]) for name, column in values.items()} for i in range(calls)]
    out = {"update": _timed(lambda i: detector.update(frames[i]), calls)}
    rows = camera.reference[:64]
    images = CALIBRATED.images(load_split("calib").images[rows], rows + CALIBRATION_SEED_OFFSET)
    decisions = scorer.decide(raw_frames(images, "cam"))
    slot = type("Slot", (), {"current": lambda self: scorer})()
    for name, step_ns in (("tap_1fps", 10**9), ("tap_30fps", 10**9 // 30)):
        watch = GuaranteeWatch(MonitorConfig(audit_rate=0.02), slot, seed=0)
        watch([None], [decisions[0]])  # the camera's watch starts on its first decision: not timed
        feed = [replace(decisions[i % len(decisions)], seq=i + 1, capture_ts_ns=(i + 1) * step_ns)
                for i in range(calls)]
        out[name] = _timed(lambda i: watch([None], [feed[i]]), calls)
    pixels = preprocess_batch(list(images[:8]), scorer.preprocess)
    batches = (1, 8, 1, 8)  # interleaved, so a busy machine slows both alike
    scorer.encoder.encode(pixels)
    times = _timed(lambda i: scorer.encoder.encode(pixels[:batches[i % 4]]), 4 * max(50, calls // 100), raw=True)
    for batch in (1, 8):
        picked = np.concatenate([times[i::4] for i in range(4) if batches[i] == batch]) / batch
        out[f"encoder_batch_{batch}"] = {**_summary(picked), "batch": batch}
    return out


def crossing_check(camera: Camera, pool: dict, rng: np.random.Generator, reps: int = 40, frames: int = 1500) -> bool:
    """The benchmark's replicate loop gives exactly first_crossings' frames on the bundle's own reference."""
    detector, stream = camera.detector, stream_values(pool, ~pool["reference"])
    picks = rng.integers(0, len(stream["score"]), (reps, frames))
    streams = {name: column[picks] for name, column in stream.items()}
    thresholds = np.repeat(np.array([[b.threshold] for b in detector.bets]), reps, axis=1)
    keys = np.repeat(np.array([[b.key] for b in detector.bets]), reps, axis=1)
    levels = np.array([30.0, 300.0])
    mine = crossings(detector, thresholds, keys, lambda a, b: {n: v[:, a:b] for n, v in streams.items()}, frames,
                     levels, rng)
    theirs = np.stack([first_crossings(detector, streams, level, seed=0) for level in levels])
    return bool(np.array_equal(mine, theirs))
