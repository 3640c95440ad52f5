"""Where a recorded frame goes and what its CSV row says: the review layout of :mod:`trustvlm.runtime.record`.

::

    DIR/README.txt                      how to review, then calibrate
    DIR/<camera>/frames.csv             one row per recorded frame (frames.1.csv: the rows before)
    DIR/<camera>/to_review/<label>/<camera>_<seq>_<capture_ts_ns>.<ext>

``<label>`` is the frame's predicted label made safe for file systems (:func:`label_folder`), or ``_unscored``
(:data:`UNSCORED`) for a frame without one. ``to_review`` is an image folder of one sub-folder per class, the
layout ``trustvlm calibrate --data`` reads; it skips folders whose name starts with ``_``, so ``_unscored`` never
becomes a class. ``<ext>`` is ``jpg`` or ``png`` (the payload as sent; raw frames are saved as PNG).

The CSV's label column is ``predicted_label``, not ``label``: the file records the model's guesses, and a
label CSV of them (:mod:`trustvlm.data.label_csv`) would calibrate the model on its own mistakes.
"""

from __future__ import annotations

import re
from pathlib import Path

from trustvlm.runtime.frames import Encoding, FrameHeader
from trustvlm.runtime.messages import DecisionMessage

#: The folder of frames that have no predicted label (not scored, or no finite scores).
UNSCORED = "_unscored"
REVIEW_FOLDER = "to_review"
CSV_NAME = "frames.csv"
#: The rows before the current ``frames.csv``, kept once it reached the file cap (see :class:`CsvRows`).
CSV_PREVIOUS_NAME = "frames.1.csv"
README_NAME = "README.txt"
CSV_COLUMNS = ("path", "camera", "seq", "capture_ts_ns", "predicted_label", "score", "decision", "reason",
               "typicality", "monitor")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]", re.ASCII)
_MAX_NAME = 100
_EXTENSIONS = {Encoding.JPEG: "jpg", Encoding.PNG: "png", Encoding.RAW: "png"}

README_TEXT = """\
Frames recorded by trustvlm, pre-sorted by the model's predicted label, for a person to check.

  <camera>/to_review/<label>/   the frames the model labelled <label> (_unscored: no label)
  <camera>/frames.csv           one row per frame: path, seq, capture time, predicted label, score,
                                decision, reason, typicality, monitor

Stop the recording (or copy a camera's folder) before you sort: the recorder deletes the oldest
frames to stay under its size and file caps.

1. Look at every image. Move each wrongly sorted one into the folder of its right class (create the
   folder if the class has none; underscores in folder names read as spaces), or delete it. Sort or
   delete the images in _unscored too: folders starting with "_" are not classes. Delete class
   folders left empty.
2. The labels must be checked by a person: calibration trusts them, and the model's own guesses
   would certify the model's own mistakes.
3. Calibrate the camera's bundle on the checked folder:

     trustvlm calibrate --artifacts <export folder> --data {root}/<camera>/to_review --out <bundle folder>
"""


def readme_text(root: Path) -> str:
    """The README.txt of a recording folder `root`: how to review its frames, then calibrate on them."""
    return README_TEXT.format(root=root)


def safe_name(text: str) -> str:
    """`text` as one file or folder name: letters, digits, ``-``, ``_`` and ``.`` kept, anything else ``_``.

    A leading ``.`` or ``_`` becomes ``-`` (hidden folders, and folders the image folder reader skips), and the
    name is cut to 100 characters. The CSV keeps the original (``predicted_label``, ``camera``).
    """
    name = _UNSAFE.sub("_", text)[:_MAX_NAME]
    return "-" + name[1:] if name[:1] in (".", "_") else name


def label_folder(label: str | None) -> str:
    """The review folder of a predicted label: :func:`safe_name` of it, :data:`UNSCORED` for none (or "")."""
    return safe_name(label) if label else UNSCORED


def frame_extension(header: FrameHeader) -> str:
    """``jpg`` or ``png``: JPEG and PNG payloads are written as sent, raw frames as PNG."""
    return _EXTENSIONS[header.encoding]


def camera_folder(root: Path, camera_id: str) -> Path:
    """``root/<camera>`` (the camera id as a :func:`safe_name`: only ``:`` changes, to ``_``)."""
    return root / safe_name(camera_id)


def frame_path(header: FrameHeader, label: str | None) -> Path:
    """``to_review/<label folder>/<camera>_<seq>_<capture_ts_ns>.<ext>``, relative to the camera's folder."""
    name = f"{safe_name(header.camera_id)}_{header.seq}_{header.capture_ts_ns}.{frame_extension(header)}"
    return Path(REVIEW_FOLDER) / label_folder(label) / name


def capture_ts_of(name: str) -> int | None:
    """The capture time in a recorded file's name (``..._<capture_ts_ns>.<ext>``); None when it has none."""
    stem = name.rsplit(".", 1)[0]
    parts = stem.rsplit("_", 2)
    return int(parts[2]) if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() else None


def _number(value: float | None) -> str:
    return "" if value is None else format(float(value), ".6g")


def csv_row(path: Path, header: FrameHeader, decision: DecisionMessage | None) -> list[str]:
    """One row of :data:`CSV_COLUMNS` for a recorded frame; without a decision (``trustvlm source --record``)
    the columns only a service knows are empty."""
    row = [path.as_posix(), header.camera_id, str(header.seq), str(header.capture_ts_ns)]
    if decision is None:
        return row + [""] * (len(CSV_COLUMNS) - len(row))
    return row + [decision.label or "", _number(decision.kappa), decision.decision.value, decision.reason.value,
                  _number(decision.typicality), decision.monitor]
