"""Live scoring of decisions against ground truth: counts, accuracy of accepted vs all frames, coverage, latency.

A labelled source writes one truth row per frame it sends (see :mod:`trustvlm.pipelines.source`); a
:class:`TruthTail` reads the rows as the file grows, and a :class:`Scoreboard` joins them to decisions on
``(camera_id, seq)`` in whichever order the two arrive.

Definitions (every figure is over labelled frames, i.e. decisions with a truth row, unless said otherwise):

* ``coverage`` = accepted / labelled frames (a robot acts on that share of frames).
* ``accuracy_accepted`` = correct / accepted: what the robot acts on.
* ``accuracy_all`` = correct / scored frames: the model's accuracy if every prediction were trusted
  (frames deferred before scoring, e.g. ``dropped`` or ``stale``, have no prediction and are left out).
* latencies are from the frame's capture time: ``e2e`` to the controller's receipt, ``publish`` to the
  service's publish time (the decision's ``latency_from_capture_ms``); over every decision.

A ratio with a zero denominator, and a percentile of no samples, is NaN.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trustvlm.runtime.messages import Decision, DecisionMessage

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Truth:
    """The ground truth of one sent frame."""

    camera_id: str
    seq: int
    label: str
    class_id: int | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "Truth":
        """Raises: ValueError: A row without camera_id, an integer seq >= 0 and a label string."""
        seq = data.get("seq") if isinstance(data, dict) else None
        if (not isinstance(data, dict) or not isinstance(data.get("camera_id"), str) or isinstance(seq, bool)
                or not isinstance(seq, int) or seq < 0 or not isinstance(data.get("label"), str)):
            raise ValueError(f"truth row should be {{camera_id: str, seq: int >= 0, label: str, ...}}, "
                             f"but got {data!r}")
        class_id = data.get("class_id")
        return cls(data["camera_id"], seq, data["label"], class_id if isinstance(class_id, int) else None)

    def to_dict(self) -> dict:
        return {"camera_id": self.camera_id, "seq": self.seq, "label": self.label, "class_id": self.class_id}


class TruthTail:
    """Reads the rows a source appends to a truth JSONL file, a whole line at a time.

    The file may not exist yet (the source has not started): :meth:`poll` then returns nothing.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        self.bad_rows = 0

    def poll(self) -> list[Truth]:
        """The complete rows added since the last call."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        rows = []
        for line in lines:
            if not line.strip():
                continue
            try:
                rows.append(Truth.from_dict(json.loads(line)))
            except ValueError:
                self.bad_rows += 1
        return rows


def read_truth(path: str | os.PathLike) -> list[Truth]:
    """Every complete row of a truth file."""
    return TruthTail(path).poll()


def percentile(values, q: float) -> float:
    """The q-th percentile (linear interpolation); NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


@dataclass(frozen=True)
class DecisionRecord:
    """What the controller keeps of one decision."""

    camera_id: str
    seq: int
    decision: Decision
    reason: str
    label: str | None
    kappa: float | None
    threshold: float
    publish_latency_ms: float | None
    e2e_latency_ms: float

    @classmethod
    def from_message(cls, message: DecisionMessage, received_ts_ns: int) -> "DecisionRecord":
        return cls(message.camera_id, message.seq, message.decision, message.reason.value, message.label,
                   message.kappa, message.threshold, message.latency_from_capture_ms,
                   (received_ts_ns - message.capture_ts_ns) / 1e6)


class Scoreboard:
    """Counts decisions, joins them to ground truth, and summarizes (see the module docstring)."""

    def __init__(self) -> None:
        self.decisions = 0
        self.by_camera: dict[str, Counter] = defaultdict(Counter)
        self.reasons: Counter = Counter()
        self.duplicates = 0
        self.e2e_ms: list[float] = []
        self.publish_ms: list[float] = []
        self._seen: dict[tuple[str, int], DecisionRecord] = {}
        self._truth: dict[tuple[str, int], Truth] = {}
        self._unmatched: set[tuple[str, int]] = set()  # decisions still waiting for their truth row
        self.labelled = Counter()  # frames, scored, correct, accepted, accepted_correct

    def add_decision(self, record: DecisionRecord) -> None:
        key = (record.camera_id, record.seq)
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen[key] = record
        self.decisions += 1
        camera = self.by_camera[record.camera_id]
        camera["decisions"] += 1
        camera[record.decision.value] += 1
        self.reasons[record.reason] += 1
        self.e2e_ms.append(record.e2e_latency_ms)
        if record.publish_latency_ms is not None:
            self.publish_ms.append(record.publish_latency_ms)
        if key in self._truth:
            self._score(record, self._truth[key])
        else:
            self._unmatched.add(key)

    def add_run(self, record: DecisionRecord, seq_last: int, frames: int) -> None:
        """One message for a run of `frames` superseded frames, seq `record.seq`..`seq_last` (decision schema 1.2).

        Every seq of the range is decided when the run has no gap; otherwise (frames lost before the
        service) only its two ends are known by seq, and the other outcomes are counted without one.
        """
        span = range(record.seq, seq_last + 1)
        seqs = list(span) if len(span) == frames else sorted({record.seq, seq_last})[:frames]
        for seq in seqs:
            self.add_decision(replace(record, seq=seq))
        unnamed = frames - len(seqs)
        self.decisions += unnamed
        self.by_camera[record.camera_id]["decisions"] += unnamed
        self.by_camera[record.camera_id][record.decision.value] += unnamed
        self.reasons[record.reason] += unnamed

    def add_truth(self, truth: Truth) -> None:
        key = (truth.camera_id, truth.seq)
        self._truth[key] = truth
        if key in self._unmatched:
            self._unmatched.discard(key)
            self._score(self._seen[key], truth)

    def _score(self, record: DecisionRecord, truth: Truth) -> None:
        counts = self.labelled
        counts["frames"] += 1
        accepted = record.decision is Decision.ACCEPT
        counts["accepted"] += accepted
        if record.label is not None:
            correct = record.label == truth.label
            counts["scored"] += 1
            counts["correct"] += correct
            counts["accepted_correct"] += accepted and correct
        self.by_camera[record.camera_id]["labelled"] += 1

    def scored_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kappa, correct, accepted) of every labelled, scored decision: what a risk-coverage curve needs."""
        rows = [(r.kappa, r.label == self._truth[k].label, r.decision is Decision.ACCEPT)
                for k, r in self._seen.items() if k in self._truth and r.label is not None and r.kappa is not None
                and math.isfinite(r.kappa)]
        kappa, correct, accepted = (np.asarray(column) for column in zip(*rows)) if rows else (np.zeros(0),) * 3
        return kappa.astype(np.float64), correct.astype(bool), accepted.astype(bool)

    def unanswered(self) -> dict[str, int]:
        """Per camera, truth rows (frames sent) that have no decision."""
        missing = Counter(camera for camera, seq in self._truth if (camera, seq) not in self._seen)
        return dict(missing)

    def summary(self) -> dict:
        """JSON-ready summary (NaN where undefined; see the module docstring)."""
        counts = self.labelled
        accepted = sum(c["accept"] for c in self.by_camera.values())
        return {
            "decisions": self.decisions,
            "accepted": accepted,
            "deferred": self.decisions - accepted,
            "coverage_all_frames": _ratio(accepted, self.decisions),
            "reasons": dict(sorted(self.reasons.items())),
            "duplicates": self.duplicates,
            "cameras": {camera: {"decisions": c["decisions"], "accepted": c["accept"], "deferred": c["defer"],
                                 "labelled": c["labelled"]}
                        for camera, c in sorted(self.by_camera.items())},
            "labelled": {
                "frames": counts["frames"], "scored": counts["scored"], "accepted": counts["accepted"],
                "correct": counts["correct"], "accepted_correct": counts["accepted_correct"],
                "coverage": _ratio(counts["accepted"], counts["frames"]),
                "accuracy_all": _ratio(counts["correct"], counts["scored"]),
                "accuracy_accepted": _ratio(counts["accepted_correct"], counts["accepted"]),
                "truth_rows": len(self._truth), "unanswered": self.unanswered(),
                "decisions_without_truth": len(self._unmatched),
            },
            "latency_ms": {
                "e2e_from_capture": {f"p{q}": percentile(self.e2e_ms, q) for q in PERCENTILES},
                "publish_from_capture": {f"p{q}": percentile(self.publish_ms, q) for q in PERCENTILES},
            },
        }
