"""The steps of the recalibration demo that are not processes: waiting on the heartbeat, labelling the recording.

* :class:`Heartbeats` subscribes to a running service's heartbeat (``trust/_health``) and waits until one says
  what the caller waits for (the recorder has written every frame it was offered; a camera is scored by a new
  bundle). Heartbeats come every ``--heartbeat-ms``, so each wait ends on an event, not after a guessed delay.
* :func:`label_recorded_frames` takes what ``serve --record`` wrote for one camera (``frames.csv`` and the images
  under ``to_review/``), keeps the frames recorded while the camera's monitor said ``alarm``, copies them out of
  the recording (the recorder deletes its oldest frames past its caps) and labels them from the replay's truth
  file, as a ``path,label`` CSV that ``trustvlm calibrate --data`` reads (what an annotation tool exports). The
  replay's ground truth stands in for the person who, in the field, must check every label: the recorder sorts
  frames by the model's own guess, and calibrating on its guesses would certify its mistakes.
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import zmq

from trustvlm.pipelines.scoreboard import read_truth
from trustvlm.runtime.messages import HEALTH_TOPIC, HealthMessage, decode_body
from trustvlm.runtime.record.review_layout import CSV_NAME, CSV_PREVIOUS_NAME
from trustvlm.runtime.schema import MessageError

__all__ = ["Heartbeats", "LabelledFrames", "label_recorded_frames", "recorder_done", "bundle_changed"]

T = TypeVar("T")


class Heartbeats:
    """A subscription to a service's heartbeat; :meth:`wait` returns what a condition finds in one.

    Args:
        endpoint: The service's publish endpoint.
        context: ZeroMQ context (the caller's).
    """

    def __init__(self, endpoint: str, context: zmq.Context):
        self.endpoint = endpoint
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, HEALTH_TOPIC)
        self.socket.connect(endpoint)
        self.last: HealthMessage | None = None

    def wait(self, condition: Callable[[HealthMessage], T | None], what: str, timeout_s: float) -> T:
        """The first non-empty result of `condition` on a heartbeat received from now on.

        Raises:
            TimeoutError: No heartbeat met it within `timeout_s` (the message says `what` was awaited).
        """
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            if not self.socket.poll(int(min(remaining, 0.5) * 1000)):
                continue
            _, body = self.socket.recv_multipart()
            try:
                message = decode_body(body)
            except MessageError:
                continue
            if isinstance(message, HealthMessage):
                self.last = message
                found = condition(message)
                if found:
                    return found
        raise TimeoutError(f"no heartbeat from {self.endpoint} said {what} within {timeout_s:.0f} s")

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> "Heartbeats":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def recorder_done(frames: int) -> Callable[[HealthMessage], dict | None]:
    """Heartbeat condition: the recorder was offered at least `frames` frames and has written (or dropped) each;
    returns its counters."""
    def check(message: HealthMessage) -> dict | None:
        counts = {k.removeprefix("record_"): v for k, v in message.counters.items() if k.startswith("record_")}
        offered = counts.get("offered", 0)
        done = counts.get("written", 0) + counts.get("dropped_queue_full", 0) + counts.get("write_errors", 0)
        return counts if offered >= frames and done >= offered else None
    return check


def bundle_changed(camera: str, old_bundle_id: str) -> Callable[[HealthMessage], str | None]:
    """Heartbeat condition: the map entry named `camera` is scored by a bundle other than `old_bundle_id`;
    returns the new bundle id."""
    def check(message: HealthMessage) -> str | None:
        return next((entry["bundle_id"] for entry in message.bundles
                     if camera in entry.get("cameras", ()) and entry["bundle_id"] != old_bundle_id), None)
    return check


@dataclass(frozen=True)
class LabelledFrames:
    """The frames of a recording kept for calibration, labelled.

    Attributes:
        labels: The ``path,label`` CSV (paths relative to its folder) for ``trustvlm calibrate --data``.
        recorded: Frames of the camera the recording lists.
        kept: Frames recorded while the camera's monitor said ``alarm`` (the ones labelled).
        first_seq: Seq of the first kept frame (None: none kept).
        last_seq: Seq of the last kept frame.
        model_wrong: Kept frames the recorder sorted under a wrong label (the model's own guess).
        unlabelled: Kept frames without a truth row or an image on disk (left out).
    """

    labels: Path
    recorded: int
    kept: int
    first_seq: int | None
    last_seq: int | None
    model_wrong: int
    unlabelled: int


def label_recorded_frames(camera_dir: Path, camera: str, truth_path: Path, out: Path) -> LabelledFrames:
    """Copy the camera's frames recorded in ALARM to ``out/images/`` and label them in ``out/labels.csv``.

    Args:
        camera_dir: The camera's folder of the recording (``DIR/<camera>``: ``frames.csv``, ``to_review/``).
        camera: The camera id (the CSV's ``camera`` column).
        truth_path: The replay's truth file (``trustvlm source --truth``), joined on seq.
        out: Folder to write (replaced).

    Raises:
        FileNotFoundError: No ``frames.csv`` in `camera_dir`.
    """
    tables = [camera_dir / name for name in (CSV_PREVIOUS_NAME, CSV_NAME) if (camera_dir / name).exists()]
    if not tables:
        raise FileNotFoundError(f"{camera_dir / CSV_NAME} does not exist: did the service record camera {camera}?")
    rows = []
    for table in tables:
        with open(table, newline="", encoding="utf-8") as handle:
            rows += [row for row in csv.DictReader(handle) if row["camera"] == camera]
    truth = {row.seq: row.label for row in read_truth(truth_path) if row.camera_id == camera}
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    kept = [row for row in rows if row["monitor"] == "alarm"]
    labelled, wrong, unlabelled = [], 0, 0
    for row in kept:
        image, label = camera_dir / row["path"], truth.get(int(row["seq"]))
        if label is None or not image.is_file():
            unlabelled += 1
            continue
        shutil.copy2(image, out / "images" / image.name)
        labelled.append((f"images/{image.name}", label))
        wrong += row["predicted_label"] != label
    labels = out / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(labelled)
    seqs = [int(row["seq"]) for row in kept]
    return LabelledFrames(labels, len(rows), len(kept), min(seqs, default=None), max(seqs, default=None), wrong,
                          unlabelled)
