"""What a camera's drift did to its decisions, from the controller's decision log and the source's truth file.

A replay that drifts (``trustvlm source --drift SPEC --drift-after N``) sends frames ``seq >= N`` through a
changed camera. :func:`drift_outcome` reads one camera's decisions (``trustvlm controller --log``, decision
schema 1.5: ``monitor``, ``reason``, ``kappa``, ``threshold``) joined to its truth rows on ``(camera_id, seq)``
and measures:

* **time to ALARM**: the first decision after the drift whose ``monitor`` is ``alarm`` (the frame whose thinned
  score raised it), as frames after the drift and as thinned frames, i.e. the frames the monitor took. The
  thinning is replayed from the log as the service does it (one scored frame per ``interval_s`` of capture time,
  in seq order, which is the service's order when the source keeps one frame in flight);
* **what the monitor did**: frames deferred ``guarantee_lost`` (the service defers a camera in ALARM);
* **had nobody watched**: the frames the robot would have acted on after the drift without the monitor, i.e.
  the accepted ones plus the ``guarantee_lost`` ones whose score met the threshold (``kappa >= threshold``:
  the decision keeps both), and the risk (errors among them) from the truth file.

:func:`labelled_outcome` gives coverage and risk of a stretch of frames (e.g. after a bundle swap).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

from trustvlm.pipelines.scoreboard import read_truth

__all__ = ["FrameRow", "Acted", "DriftOutcome", "load_camera_frames", "thinned", "drift_outcome",
           "labelled_outcome", "first_alarms", "format_drift_lines", "pct", "thinning_words"]


def pct(value: float | None) -> str:
    """A share as ``12.3%``; ``n/a`` for None or NaN."""
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def thinning_words(interval_s: float) -> str:
    """What the monitor takes, in words: ``one frame per 0.05 s of capture time``, or ``every scored frame``."""
    return "every scored frame" if interval_s == 0 else f"one frame per {interval_s:g} s of capture time"


@dataclass(frozen=True)
class FrameRow:
    """One decision of the camera, with its ground truth (``correct`` None: no truth row or no label)."""

    seq: int
    capture_ts_ns: int
    bundle_id: str
    reason: str
    accepted: bool
    kappa: float | None
    threshold: float | None
    monitor: str
    correct: bool | None

    @property
    def would_accept(self) -> bool:
        """Accepted, or deferred ``guarantee_lost`` with a score that met the threshold (accepted unwatched)."""
        if self.accepted:
            return True
        return (self.reason == "guarantee_lost" and self.kappa is not None and self.threshold is not None
                and math.isfinite(self.kappa) and self.kappa >= self.threshold)


@dataclass(frozen=True)
class Acted:
    """Frames acted on among `frames` labelled frames: how many, how many wrong, coverage and risk (NaN: none)."""

    frames: int
    acted: int
    wrong: int

    @property
    def coverage(self) -> float:
        return self.acted / self.frames if self.frames else math.nan

    @property
    def risk(self) -> float:
        return self.wrong / self.acted if self.acted else math.nan

    def describe(self) -> str:
        return f"{self.acted} of {self.frames} frames ({pct(self.coverage)}) at risk {pct(self.risk)}"


def load_camera_frames(log_path: str | os.PathLike, truth_path: str | os.PathLike, camera_id: str) -> list[FrameRow]:
    """The camera's decisions in seq order (the first one of a seq kept), each joined to its truth row.

    Raises:
        FileNotFoundError: A missing log or truth file.
    """
    if not os.path.exists(truth_path):
        raise FileNotFoundError(f"truth file {truth_path} does not exist")
    truth = {row.seq: row.label for row in read_truth(truth_path) if row.camera_id == camera_id}
    rows: dict[int, FrameRow] = {}
    with open(log_path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("event") != "decision" or record.get("camera_id") != camera_id or record["seq"] in rows:
                continue
            label, seq = record.get("label"), record["seq"]
            correct = None if label is None or seq not in truth else label == truth[seq]
            rows[seq] = FrameRow(seq, int(record["capture_ts_ns"]), record.get("bundle_id") or "", record["reason"],
                                 record["decision"] == "accept",
                                 record.get("kappa"), record.get("threshold"), record.get("monitor") or "", correct)
    return [rows[seq] for seq in sorted(rows)]


def thinned(rows: list[FrameRow], interval_s: float) -> list[bool]:
    """Which frames the service's monitor took: scored ones (a kappa), at most one per `interval_s` of capture time."""
    interval_ns, last, taken = int(interval_s * 1e9), None, []
    for row in rows:
        take = row.kappa is not None and (last is None or not 0 <= row.capture_ts_ns - last < interval_ns)
        if take:
            last = row.capture_ts_ns
        taken.append(take)
    return taken


def labelled_outcome(rows: list[FrameRow], would: bool = False) -> Acted:
    """Frames acted on among the labelled, scored `rows` (`would`: as if nobody watched, see the module docstring)."""
    labelled = [row for row in rows if row.correct is not None]
    acted = [row for row in labelled if (row.would_accept if would else row.accepted)]
    return Acted(len(labelled), len(acted), sum(not row.correct for row in acted))


@dataclass(frozen=True)
class DriftOutcome:
    """One drifting camera's run (see the module docstring).

    Attributes:
        camera_id: The camera.
        drift_after: Frames before the drift (the first drifted frame's seq).
        frames_after: Decisions of drifted frames.
        alarm_seq: Seq of the first ALARM decision at or after the drift (None: no ALARM, or one before the drift).
        frames_to_alarm: Its position among the drifted frames, from 1 (None: no ALARM).
        thinned_to_alarm: Thinned frames from the drift to the ALARM, both ends included (None: no ALARM).
        thinned_at_alarm: Thinned frames from the first frame to the ALARM (what the service's log line counts).
        thinned_after: Thinned frames after the drift.
        alarm_before_drift: Seq of an ALARM before the drift (a false one), or None.
        guarantee_lost: Decisions deferred ``guarantee_lost``.
        before: Acted on before the drift.
        watched: Acted on after the drift (the monitor's deferrals included).
        unwatched: Would have been acted on after the drift without the monitor.
        watched_before_alarm: Acted on after the drift, before the ALARM.
    """

    camera_id: str
    drift_after: int
    frames_after: int
    alarm_seq: int | None
    frames_to_alarm: int | None
    thinned_to_alarm: int | None
    thinned_at_alarm: int | None
    thinned_after: int
    alarm_before_drift: int | None
    guarantee_lost: int
    before: Acted
    watched: Acted
    unwatched: Acted
    watched_before_alarm: Acted

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("before", "watched", "unwatched", "watched_before_alarm"):
            acted = getattr(self, name)
            data[name].update(coverage=acted.coverage, risk=acted.risk)
        return data


def drift_outcome(log_path: str | os.PathLike, truth_path: str | os.PathLike, camera_id: str, drift_after: int,
                  interval_s: float) -> DriftOutcome:
    """Measure a drift at frame `drift_after` of `camera_id` (monitor thinning `interval_s`), see the module docstring."""
    rows = load_camera_frames(log_path, truth_path, camera_id)
    taken = thinned(rows, interval_s)
    alarms = [i for i, row in enumerate(rows) if row.monitor == "alarm"]
    early = next((rows[i].seq for i in alarms if rows[i].seq < drift_after), None)
    # ALARM is latched: after a false one before the drift there is no time to ALARM to measure
    first = None if early is not None else next((i for i in alarms if rows[i].seq >= drift_after), None)
    start = next((i for i, row in enumerate(rows) if row.seq >= drift_after), len(rows))
    after = rows[start:]
    before_alarm = after if first is None else rows[start:first]
    return DriftOutcome(
        camera_id, drift_after, len(after),
        None if first is None else rows[first].seq, None if first is None else first - start + 1,
        None if first is None else sum(taken[start:first + 1]), None if first is None else sum(taken[:first + 1]),
        sum(taken[start:]), early, sum(row.reason == "guarantee_lost" for row in rows),
        labelled_outcome(rows[:start]), labelled_outcome(after), labelled_outcome(after, would=True),
        labelled_outcome(before_alarm))


def first_alarms(log_path: str | os.PathLike, cameras: list[str]) -> dict[str, int | None]:
    """Per camera, the seq of its first decision with ``monitor`` ``alarm`` in a decision log (None: none)."""
    found: dict[str, int | None] = dict.fromkeys(cameras)
    with open(log_path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            camera = record.get("camera_id")
            if record.get("event") == "decision" and camera in found and record.get("monitor") == "alarm":
                found[camera] = record["seq"] if found[camera] is None else min(found[camera], record["seq"])
    return found


def format_drift_lines(outcome: DriftOutcome, alpha: float) -> list[str]:
    """The drift's lines of a demo summary: time to ALARM, deferrals, and the risk had nobody watched."""
    o = outcome
    if o.alarm_before_drift is not None:
        alarm = (f"a false ALARM before the drift, on frame {o.alarm_before_drift} (its frames were still as "
                 f"calibrated); {o.guarantee_lost} frames deferred guarantee_lost from then on")
    elif o.alarm_seq is None:
        alarm = (f"no ALARM within the {o.frames_after} frames after the drift (thinned frames: {o.thinned_after}; "
                 "the monitor's evidence did not reach the alarm level)")
    else:
        alarm = (f"ALARM {o.frames_to_alarm} frames into the drift ({o.thinned_to_alarm} thinned frames; frame "
                 f"{o.alarm_seq}, thinned frame {o.thinned_at_alarm} of the run); {o.guarantee_lost} frames deferred "
                 "guarantee_lost from then on")
    unwatched, watched = o.unwatched, o.watched_before_alarm
    verdict = ("above" if unwatched.risk > alpha else "within") if math.isfinite(unwatched.risk) else "n/a against"
    return [
        f"  {alarm}",
        f"  after the drift, had nobody watched: the robot would have acted on {unwatched.describe()}: {verdict} "
        f"alpha {pct(alpha)} (before the drift: {o.before.describe()})",
        f"  after the drift, with the monitor: it acted on {watched.describe()}"
        + (f" before the ALARM, on {o.watched.acted - watched.acted} after it" if o.alarm_seq is not None
           else " (no ALARM came)" if o.alarm_before_drift is None else " (the camera was in ALARM already)"),
    ]
