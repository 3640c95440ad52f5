"""Label-free drift monitor of one camera: do its frames still look like the calibration frames?

The served guarantee (among accepted frames the error rate is at most ``alpha`` with probability
``>= 1 - delta``) holds for frames like the calibration frames. This monitor tells, per camera and
without labels, when that stops being plausible. Calibration records a *reference sample* per
monitored statistic: ``n_k`` held-out in-distribution values of, e.g., ``typicality`` (the
out-of-distribution gate's, higher = more typical) and ``score`` (the served trust score, higher =
more confident). The service feeds a thinned stream (at most one frame per second per camera) to
:meth:`DriftDetector.update`. Low values are the suspicious ones for every statistic (one-sided).

**Bets.** For a statistic with sorted reference ``X_(1) <= ... <= X_(n)`` and a bucket size ``b``
(from :attr:`DriftConfig.bucket_fractions` of ``n``: rounded, at least 1, deduplicated) a frame's value
``y`` *hits* when it falls below ``X_(b)``. Ties are broken at random: every reference value carries
a uniform key (drawn once, from a generator seeded with the reference's digest, so a restored detector
bets on the same events) and every frame value a fresh one, and values are compared as
(value, key). For i.i.d. draws of a law ``F`` the hit probability given the reference is then
``Beta(b, n + 1 - b)`` distributed over the reference draw (values and keys), so it is at most
``q_b = binomial_upper(b - 1, n, d)`` with probability ``>= 1 - d``; with
``d = reference_delta / J`` (``J`` bets over all statistics, Bonferroni) all ``J`` bounds hold at once
with probability ``>= 1 - reference_delta``. A bet pays ``e = 1 - w + w * hit / q_b``, whose conditional
mean is at most 1 then. A missing value (absent or None) skips the statistic's bets for that frame; a
non-finite one hits every bet (fail safe).

**Detector.** Each bet runs a Shiryaev-Roberts e-detector ``R_j <- (1 + R_j) * e_j`` (from 0), and the
monitor follows their mean ``M = (1/J) sum_j R_j``. ``M_t - t`` is a supermartingale, so
``M_t + (T - t)`` is a nonnegative supermartingale started at ``T`` and Ville's inequality gives
``P(max_{t <= T} M_t >= c) <= T / c``; optional stopping gives a mean time to ``M >= c`` of at least
``c`` frames. Following the mean rather than ``max_j R_j >= J * level`` keeps that bound and is never
later (the mean is at least ``max_j R_j / J``). The states (:class:`MonitorState`):

* ``alarm``: ``M >= alarm_level``; latched (only :meth:`DriftDetector.reset` or a new detector, i.e. a
  new bundle, clears it).
* ``watch``: ``M >= watch_level``; reported only, cleared when ``M`` falls back below.
* ``ok``: otherwise.

**Guarantee.** If the reference values of each statistic are i.i.d. draws of a law ``F`` and each
thinned frame's value, given the reference and the frames before it, falls below every level ``x`` with
probability at most ``F(x)`` (``F`` itself, or a law stochastically higher), then a false ALARM within
``T`` thinned frames has probability at most ``T / alarm_level + reference_delta``, and a false WATCH
comes after ``watch_level`` thinned frames on average or later (given the good reference event). The
defaults (``alarm_level = 604,800 / 0.05``, ``watch_level = 86,400``) make that 5% + 1% within a week of
1-per-second frames and at most about one false WATCH per day. Frames that are correlated in time break
the assumption; the thinning to one per second is there to make them nearly independent.

**Choices.** One weight ``w = 1/2`` for every bet: a hit multiplies a detector by ``(1 + 1/q_b) / 2``,
close to the best growth for a severe shift (every frame hits: the log-optimal weight tends to 1), and a
miss halves it. A bet gains on average when the share of frames below its threshold exceeds
``log 2 / log(1 + 1/q_b)``: about 0.63 for the median bucket, 0.29 for ``b = n/10``, 0.18 for ``b = n/50``.
For a normal statistic and 1,000 reference values per statistic (two statistics, default config), a
severe drop of one statistic raises ALARM after 6 thinned frames (9 with 100 values, 5 with 5,000), a
drop of one standard deviation after a median of about 65, half a standard deviation about 650; below
about a third of a standard deviation no bet gains and the monitor stays quiet. Each ``R_j`` is capped
at ``10**6 * J * alarm_level`` (no ALARM changes: the mean crossed the line before any ``R_j`` can reach
the cap), so the state stays finite and a camera back to normal falls below the WATCH line again after
about 125 thinned frames even after the longest spell.

The state is O(1) per camera (``J`` floats, two counters); :meth:`DriftDetector.to_dict` carries it with a
digest of the reference and the config. The frames' tie keys are fresh draws, so their generator is not kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Mapping, NamedTuple

import numpy as np

from trustvlm.runtime.monitor.binomial import binomial_upper

__all__ = ["MIN_REFERENCE", "MonitorState", "DriftConfig", "Bet", "DriftDetector", "first_crossings"]

#: The fewest reference values a statistic may have.
MIN_REFERENCE = 20
#: One week of thinned frames at one per second.
WEEK = 604_800
_CAP = 1e6


class MonitorState(str, Enum):
    """What the drift monitor says of a camera."""

    OK = "ok"
    WATCH = "watch"
    ALARM = "alarm"


@dataclass(frozen=True)
class DriftConfig:
    """How eager the drift monitor is.

    Attributes:
        alarm_level: ALARM when the mean detector reaches it; a false ALARM within ``T`` thinned frames has
            probability at most ``T / alarm_level`` (plus ``reference_delta``).
        watch_level: WATCH while the mean detector is at or above it (a false one comes on average after
            at least this many thinned frames); at most ``alarm_level``.
        bucket_fractions: Bucket sizes as fractions of each statistic's reference size, in ``(0, 1]``.
        weight: Every bet's weight ``w`` in ``(0, 1)``.
        reference_delta: The probability, over the reference draw, that some bet's bound fails.
    """

    alarm_level: float = WEEK / 0.05
    watch_level: float = 86_400.0
    bucket_fractions: tuple[float, ...] = (0.005, 0.02, 0.1, 0.3, 0.5)
    weight: float = 0.5
    reference_delta: float = 0.01

    def __post_init__(self) -> None:
        rules = {"alarm_level": (0 < self.alarm_level < math.inf, "a positive number"),
                 "watch_level": (0 < self.watch_level <= self.alarm_level, "in (0, alarm_level]"),
                 "bucket_fractions": (len(self.bucket_fractions) > 0 and all(0 < f <= 1 for f in self.bucket_fractions),
                                      "fractions in (0, 1]"),
                 "weight": (0 < self.weight < 1, "in (0, 1)"),
                 "reference_delta": (0 < self.reference_delta < 1, "in (0, 1)")}
        for name, (ok, rule) in rules.items():
            if not ok:
                raise ValueError(f"drift monitor {name} should be {rule}, but got {getattr(self, name)!r}")


class Bet(NamedTuple):
    """One bet: a frame's `statistic` hits when it falls below the reference's `bucket`-th smallest value.

    Attributes:
        statistic: The statistic's name.
        bucket: ``b``, the rank of the threshold in the sorted reference (1 = the smallest).
        threshold: ``X_(b)``.
        key: The tie key of ``X_(b)`` (a frame value equal to the threshold hits iff its own key is lower).
        bound: ``q_b``, the bound on the hit probability.
        gain: The factor of a hit, ``1 - w + w / q_b`` (a miss multiplies by ``1 - w``).
    """

    statistic: str
    bucket: int
    threshold: float
    key: float
    bound: float
    gain: float


def _digest(reference: Mapping[str, np.ndarray], config: DriftConfig | None) -> str:
    h = hashlib.sha256()
    for name in sorted(reference):
        values = np.sort(reference[name])
        h.update(f"{name}\0{values.size}\0".encode())
        h.update(values.astype("<f8").tobytes())
    if config is not None:
        h.update(json.dumps(asdict(config), sort_keys=True).encode())
    return h.hexdigest()


def _checked_reference(reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(reference, Mapping) or not reference:
        raise ValueError("a drift reference should map at least one statistic's name to its values")
    checked = {}
    for name, values in reference.items():
        array = np.asarray(values, dtype=np.float64)
        if not isinstance(name, str) or array.ndim != 1 or array.size < MIN_REFERENCE:
            raise ValueError(f"drift reference {name!r} should be a 1-D array of at least {MIN_REFERENCE} values, "
                             f"but has shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"drift reference {name!r} has non-finite values")
        checked[name] = array
    return checked


def _column(raw) -> tuple[np.ndarray, np.ndarray]:
    """A batch's values of one statistic as floats (non-finite -> -inf) and where they are present (not None)."""
    if isinstance(raw, list) or np.asarray(raw).dtype == object:
        present = np.array([v is not None for v in raw], dtype=bool)
        y = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
    else:
        y = np.array(raw, dtype=np.float64).reshape(-1)
        present = np.ones(y.size, dtype=bool)
    y[~np.isfinite(y)] = -np.inf
    return y, present


def _span(frames: int) -> str:
    for unit, size in (("week", WEEK), ("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if frames >= size and frames % size == 0:
            count = frames // size
            return f"{'a' if count == 1 else f'{count:,}'} {unit}{'' if count == 1 else 's'} at 1 per second"
    return f"{frames:,} seconds at 1 per second"


class DriftDetector:
    """The drift monitor of one camera (see the module docstring).

    Args:
        reference: Per statistic, its calibration values (at least :data:`MIN_REFERENCE`, finite, any order).
        config: The levels and bets.
        seed: Seeds the frames' tie keys (None: fresh entropy).

    Raises:
        ValueError: An empty reference, a statistic with too few or non-finite values (one line).
    """

    def __init__(self, reference: Mapping[str, np.ndarray], config: DriftConfig = DriftConfig(),
                 seed: int | None = None):
        self.reference = _checked_reference(reference)
        self.config = config
        self.digest = _digest(self.reference, config)
        self._rng = random.Random(seed)
        sizes = {name: sorted({min(v.size, max(1, round(f * v.size))) for f in config.bucket_fractions})
                 for name, v in self.reference.items()}
        count = sum(len(buckets) for buckets in sizes.values())
        d = config.reference_delta / count
        key_rng = np.random.default_rng(int(_digest(self.reference, None)[:16], 16))
        bets: list[Bet] = []
        for name in sorted(self.reference):
            values = self.reference[name]
            keys = key_rng.random(values.size)
            order = np.lexsort((keys, values))
            for b in sizes[name]:
                q = binomial_upper(b - 1, values.size, d)
                bets.append(Bet(name, b, float(values[order[b - 1]]), float(keys[order[b - 1]]), q,
                                1.0 - config.weight + config.weight / q))
        self.bets: tuple[Bet, ...] = tuple(bets)
        self._miss = 1.0 - config.weight
        self._cap = _CAP * len(bets) * config.alarm_level
        self._alarm_total = len(bets) * config.alarm_level
        self._watch_total = len(bets) * config.watch_level
        self._by_stat = [(name, [(j, bet.threshold, bet.key, bet.gain) for j, bet in enumerate(bets)
                                 if bet.statistic == name]) for name in sorted(self.reference)]
        self.reset()

    def reset(self) -> None:
        """Back to the start: every detector at 0, no frames seen, state ``ok``."""
        self._r = [0.0] * len(self.bets)
        self.frames = 0
        self.frames_to_alarm: int | None = None
        self.state = MonitorState.OK

    @property
    def evidence(self) -> float:
        """``log10(max(M, 1) / alarm_level)`` for the mean detector ``M``: 0 at the ALARM line, negative below
        (at least ``-log10(alarm_level)``), positive above."""
        return math.log10(max(sum(self._r), len(self._r)) / self._alarm_total)

    def guarantee(self, frames: int = WEEK) -> str:
        """One line: the chance of a false ALARM within `frames` thinned frames for a camera like its calibration."""
        return (f"a camera like its calibration raises a false ALARM within {frames:,} thinned frames "
                f"({_span(frames)}) with probability <= {100 * frames / self.config.alarm_level:.3g}% + "
                f"{100 * self.config.reference_delta:.3g}% (the reference draw)")

    def update(self, values: Mapping[str, float | None]) -> MonitorState:
        """Take one thinned frame.

        Args:
            values: Statistic name -> its value for the frame. A name the reference lacks is ignored; a
                missing or None value skips that statistic; a non-finite one hits every bet of it.

        Returns:
            The state after the frame.
        """
        r, miss, cap = self._r, self._miss, self._cap
        for name, bets in self._by_stat:
            y = values.get(name)
            if y is None:
                continue
            y = float(y)
            if not math.isfinite(y):
                y = -math.inf
            u = None
            for j, x, key, gain in bets:
                if y == x and u is None:
                    u = self._rng.random()
                v = (1.0 + r[j]) * (gain if y < x or (y == x and u < key) else miss)
                r[j] = cap if v > cap else v
        return self._after_frame(sum(r))

    def _state_of(self, total: float) -> MonitorState:
        return (MonitorState.ALARM if self.frames_to_alarm is not None else
                MonitorState.WATCH if total >= self._watch_total else MonitorState.OK)

    def _after_frame(self, total: float) -> MonitorState:
        self.frames += 1
        if self.frames_to_alarm is None and total >= self._alarm_total:
            self.frames_to_alarm = self.frames
        self.state = self._state_of(total)
        return self.state

    def update_many(self, rows: Mapping[str, np.ndarray | list]) -> MonitorState:
        """Take a batch of thinned frames, in order: the same states and draws as :meth:`update` row by row.

        Args:
            rows: Statistic name -> its values for each frame of the batch (equal lengths); a float array, or a
                list / object array where None marks a missing value. An absent name is missing in every row.

        Returns:
            The state after the last frame.
        """
        columns = {name: _column(rows[name]) for name, _ in self._by_stat if name in rows}
        lengths = {y.size for y, _ in columns.values()} or {max((len(v) for v in rows.values()), default=0)}
        if len(lengths) > 1:
            raise ValueError(f"update_many rows should have equal lengths, but got {sorted(lengths)}")
        stats = [(name, bets) for name, bets in self._by_stat if name in columns]
        hits, ties = {}, []
        for s, (name, bets) in enumerate(stats):
            y, present = columns[name]
            x = np.array([bet[1] for bet in bets])
            hits[name] = y[:, None] < x[None, :]
            ties += [(int(t), s) for t in np.flatnonzero((y[:, None] == x[None, :]).any(axis=1) & present)]
        for t, s in sorted(ties):  # one draw per frame and tied statistic, in the order update() makes them
            name, bets = stats[s]
            u, y = self._rng.random(), columns[name][0][t]
            for i, (_, x, key, _) in enumerate(bets):
                if y == x:
                    hits[name][t, i] = u < key
        r, cap = self._r, self._cap
        plan = [(columns[name][1].tolist(), [j for j, *_ in bets],
                 np.where(hits[name], [bet[3] for bet in bets], self._miss).tolist()) for name, bets in stats]
        for t in range(lengths.pop()):
            for present, js, factors in plan:
                if present[t]:
                    for j, f in zip(js, factors[t]):
                        v = (1.0 + r[j]) * f
                        r[j] = cap if v > cap else v
            self._after_frame(sum(r))
        return self.state

    def to_dict(self) -> dict:
        """Plain JSON/msgpack-safe data of the state, with the digest of the reference and the config."""
        return {"digest": self.digest, "r": list(self._r), "frames": self.frames,
                "frames_to_alarm": self.frames_to_alarm}

    @classmethod
    def from_dict(cls, data: Mapping, reference: Mapping[str, np.ndarray], config: DriftConfig = DriftConfig(),
                  seed: int | None = None) -> "DriftDetector":
        """A detector for `reference` and `config` in the state `data` records.

        Raises:
            ValueError: `data` is malformed, or was made for another reference or config (start afresh then).
        """
        detector = cls(reference, config, seed)
        if not isinstance(data, Mapping) or set(data) != {"digest", "r", "frames", "frames_to_alarm"}:
            raise ValueError("a drift monitor state should have the keys digest, r, frames, frames_to_alarm")
        if data["digest"] != detector.digest:
            raise ValueError("the drift monitor state was made for another reference or config")
        r = [float(v) for v in data["r"]]
        alarm_at = data["frames_to_alarm"]
        if (len(r) != len(detector.bets) or not all(0.0 <= v <= detector._cap for v in r)
                or not isinstance(data["frames"], int) or data["frames"] < 0
                or not (alarm_at is None or (isinstance(alarm_at, int) and 0 < alarm_at <= data["frames"]))):
            raise ValueError("the drift monitor state has out-of-range values")
        detector._r, detector.frames, detector.frames_to_alarm = r, data["frames"], alarm_at
        detector.state = detector._state_of(sum(r))
        return detector


def first_crossings(detector: DriftDetector, streams: Mapping[str, np.ndarray], level: float | None = None,
                    seed: int | None = None, chunk: int = 256) -> np.ndarray:
    """Many independent streams at once, each from a fresh copy of `detector`'s bets (for benchmarks).

    Args:
        detector: Gives the reference's bets and the config (its own state is not used or changed).
        streams: Statistic name -> values ``[replicates, T]`` (all of one shape); non-finite values hit every
            bet of the statistic; an absent name is missing in every frame.
        level: The line of the mean detector (default ``alarm_level``; ``watch_level`` gives the first WATCH).
        seed, chunk: Seed the stream values' tie keys; frames compared at once (memory ``8 * replicates * chunk * J``).

    Returns:
        Per replicate, the index of the frame at which the mean detector first reached `level` (so
        ``frames_to_alarm - 1``), or -1. Equal to running :meth:`DriftDetector.update` on each replicate
        wherever no stream value equals a threshold (with ties the draws differ, their law does not).
    """
    level = detector.config.alarm_level if level is None else level
    shapes = {np.shape(streams[name]) for name, _ in detector._by_stat if name in streams}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"streams should be arrays of one shape [replicates, T], but got {sorted(shapes)}")
    (reps, frames), rng, bets = next(iter(shapes)), np.random.default_rng(seed), detector.bets
    stats = [(name, [j for j, bet in enumerate(bets) if bet.statistic == name]) for name in sorted(streams)
             if name in detector.reference]
    idx = np.array(sorted(j for _, js in stats for j in js))
    idx = slice(None) if len(idx) == len(bets) else idx
    r, first = np.zeros((len(bets), reps)), np.full(reps, -1, dtype=np.int64)
    for start in range(0, frames, chunk):
        stop = min(frames, start + chunk)
        factor = np.ones((stop - start, len(bets), reps))
        for name, js in stats:
            y = np.asarray(streams[name][:, start:stop], dtype=np.float64).T[:, None, :]
            y = np.where(np.isfinite(y), y, -np.inf)
            x, key = (np.array([[getattr(bets[j], f)] for j in js]) for f in ("threshold", "key"))
            hit = (y < x) | ((y == x) & (rng.random(y.shape) < key))
            factor[:, js, :] = np.where(hit, np.array([[bets[j].gain] for j in js]), detector._miss)
        for t in range(stop - start):
            v = r[idx]
            v += 1.0
            v *= factor[t, idx]
            r[idx] = np.minimum(v, detector._cap, out=v)
            total = r[0].copy()
            for j in range(1, len(r)):  # in order, as update() sums
                total += r[j]
            first[(first < 0) & (total >= len(bets) * level)] = start + t
    return first
