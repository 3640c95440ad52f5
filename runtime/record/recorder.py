"""The recorder: thinned frames to disk on a writer thread of its own, bounded in memory and on disk.

:class:`Recorder` is a decision tap (:class:`~trustvlm.runtime.scoring_loop.DecisionTap`): the scoring thread
calls it with each scored batch and gets the decisions back unchanged. For each frame it only checks the
camera (:attr:`RecordConfig.cameras <trustvlm.runtime.record.config.RecordConfig.cameras>`) and the thinning
(at most one frame per camera per ``interval`` of capture time), then offers the frame and its decision to a
bounded queue without waiting: a full queue drops the frame and counts it. The writer thread takes frames from
the queue and writes each into the review layout (:mod:`~trustvlm.runtime.record.review_layout`):

* the image as received (JPEG or PNG payload bytes as sent; a raw frame encoded as PNG), atomically: written to
  a hidden temporary name in the same folder (flushed to the disk first with ``fsync``), then renamed over the
  final name, so no partial image ever has a final name; a failed write removes its temporary file;
* then one row of the camera's ``frames.csv``.

Caps: before each image is written, the oldest recorded images (every camera's, by capture time) are deleted
until the new one fits under ``max_bytes`` and ``max_files``; images already in the folder when the writer
starts count too (leftover temporary files of a crash are removed then), images a person added do not. A
camera's ``frames.csv`` starts over once it holds ``max_files`` rows, its rows moved to ``frames.1.csv``
(replacing the one before), so the two always list every image of the camera still on disk.

Counters (:meth:`Recorder.stats`): ``offered`` (frames that passed the camera filter and the thinning),
``written``, ``dropped_queue_full``, ``deleted_for_space`` and ``write_errors`` (an image that could not be
encoded or written, a CSV row that could not be appended, an image the caps could not delete); ``offered`` =
``written`` + ``dropped_queue_full`` + image write errors + frames still queued. Each error is logged once per
kind (what failed, and how), then only counted; nothing is ever raised into the caller's thread.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import io
import logging
import os
import queue
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from trustvlm.runtime.frames import Encoding, PixelFormat, ReceivedFrame
from trustvlm.runtime.messages import DecisionMessage
from trustvlm.runtime.record.config import RecordConfig
from trustvlm.runtime.record.review_layout import (CSV_COLUMNS, CSV_NAME, CSV_PREVIOUS_NAME, README_NAME,
                                                   REVIEW_FOLDER, camera_folder, capture_ts_of, csv_row, frame_path,
                                                   readme_text)

__all__ = ["COUNTERS", "DiskOps", "Recorder", "image_bytes"]

log = logging.getLogger("trustvlm.runtime.record")

COUNTERS = ("offered", "written", "dropped_queue_full", "deleted_for_space", "write_errors")
_IMAGE_SUFFIXES = (".jpg", ".png")
_TEMP_SUFFIX = ".tmp"
_STOP = object()
#: Cameras remembered by the filter and the thinning; past this many both start over (ids that come and go).
_MAX_CAMERAS = 4096


class DiskOps:
    """The writer thread's file operations (a test replaces one to pause or fail it)."""

    def write_atomic(self, path: Path, data: bytes, fsync: bool) -> None:
        """Write `data` to a hidden temporary file beside `path`, then rename it to `path`.

        Raises:
            OSError: The write or the rename failed; the temporary file is removed.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                self.write(file, data)
                if fsync:
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temp)
            raise

    def write(self, file: BinaryIO, data: bytes) -> None:
        """Write the bytes of one image into its open temporary file."""
        file.write(data)

    def append_text(self, path: Path, text: str) -> None:
        """Append `text` to a text file (created if missing)."""
        with open(path, "a", encoding="utf-8", newline="") as file:
            file.write(text)

    def remove(self, path: Path) -> None:
        """Delete one file."""
        os.remove(path)


def image_bytes(frame: ReceivedFrame) -> bytes:
    """What is written for `frame`: a JPEG or PNG payload as sent; a raw frame encoded as PNG (BGR or grey).

    Raises:
        ValueError: A raw payload that does not fit its header's shape, or OpenCV cannot encode it.
    """
    header = frame.header
    if header.encoding is not Encoding.RAW:
        return bytes(frame.payload)
    pixels = np.frombuffer(frame.payload, np.uint8).reshape(header.shape)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    elif pixels.ndim == 3 and header.pixel_format is PixelFormat.RGB8:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"OpenCV could not encode a raw {header.shape} frame as PNG")
    return buffer.tobytes()


@dataclass(frozen=True)
class _Item:
    frame: ReceivedFrame
    decision: DecisionMessage | None


class _DiskIndex:
    """The recorded images on disk, oldest first, with their total size."""

    def __init__(self):
        self.files: deque[tuple[Path, int]] = deque()
        self.bytes = 0

    def add(self, path: Path, size: int) -> None:
        self.files.append((path, size))
        self.bytes += size

    def pop_oldest(self) -> Path:
        path, size = self.files.popleft()
        self.bytes -= size
        return path


class Recorder:
    """Records thinned frames into the review layout on its own writer thread (see the module docstring).

    Args:
        config: What to record and where; recording must be on (``config.dir`` set).
        disk: The file operations of the writer thread (default: the real ones).

    The writer thread starts with the first frame offered; :meth:`close` writes what is queued and ends it.
    Each counter has one writing thread (the caller's: ``offered``, ``dropped_queue_full``; the writer's: the
    rest), so :meth:`stats` may be read from any thread.
    """

    def __init__(self, config: RecordConfig, disk: DiskOps | None = None):
        if not config.enabled:
            raise ValueError("recording is off (record.dir is not set)")
        self.config, self.root, self.disk = config, Path(config.dir), disk or DiskOps()
        self.interval_ns = config.interval_ns
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._queue: queue.Queue = queue.Queue(config.queue_size)
        self._wanted: dict[str, bool] = {}
        self._last_ts: dict[str, int] = {}
        self._index = _DiskIndex()
        self._csv_rows: dict[Path, int] = {}
        self._logged: set[str] = set()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __call__(self, frames: list[ReceivedFrame], decisions: list[DecisionMessage]) -> list[DecisionMessage]:
        """The decision tap: offer each frame with its decision; return the decisions unchanged."""
        for frame, decision in zip(frames, decisions):
            self.offer(frame, decision)
        return decisions

    def stats(self) -> dict[str, int]:
        """The counters (see the module docstring), by name."""
        return dict(self._counts)

    def offer(self, frame: ReceivedFrame, decision: DecisionMessage | None = None) -> bool:
        """Queue `frame` for the writer if its camera is recorded and its thinning slot is due; never waits.

        A frame is due when it is its camera's first, or was captured `interval` or more after the camera's
        last queued frame (or before it: a camera clock set back starts over). A frame dropped because the
        queue is full leaves the slot due.

        Returns:
            True when the frame was queued.
        """
        try:
            header = frame.header
            if self._closed or not self._due(header.camera_id, header.capture_ts_ns):
                return False
            self._counts["offered"] += 1
            if self._thread is None:
                self._start()
            try:
                self._queue.put_nowait(_Item(frame, decision))
            except queue.Full:
                self._counts["dropped_queue_full"] += 1
                return False
            self._last_ts[header.camera_id] = header.capture_ts_ns
            return True
        except Exception as error:  # the caller is the scoring thread: log, never raise
            self._failed("queue a frame", error, count=False)
            return False

    def close(self, timeout_s: float = 10.0) -> bool:
        """Write what is queued and end the writer thread; later offers are ignored.

        Returns:
            False when the writer did not finish within `timeout_s` (a hung disk; it is a daemon thread).
        """
        self._closed = True
        if self._thread is None:
            return True
        try:
            self._queue.put(_STOP, timeout=timeout_s)
            self._thread.join(timeout_s)
        except queue.Full:
            pass
        if self._thread.is_alive():
            log.warning("recording: the writer did not finish within %.0f s; %d frame(s) not written", timeout_s,
                        self._queue.qsize())
            return False
        return True

    def _due(self, camera_id: str, capture_ts_ns: int) -> bool:
        wanted = self._wanted.get(camera_id)
        if wanted is None:
            if len(self._wanted) >= _MAX_CAMERAS:
                self._wanted.clear()
            wanted = self._wanted[camera_id] = any(fnmatch.fnmatchcase(camera_id, pattern)
                                                   for pattern in self.config.cameras)
        if not wanted:
            return False
        last = self._last_ts.get(camera_id)
        if last is None and len(self._last_ts) >= _MAX_CAMERAS:
            self._last_ts.clear()
        return last is None or capture_ts_ns - last >= self.interval_ns or capture_ts_ns < last

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="record-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._prepare()
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._write(item)
            except Exception as error:  # a bug: the writer goes on with the next frame
                self._failed("record a frame", error)

    def _prepare(self) -> None:
        """The folder and its README.txt; the images already there into the index (crash leftovers removed)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            readme = self.root / README_NAME
            if not readme.exists():
                DiskOps().write_atomic(readme, readme_text(self.root).encode(), fsync=False)
            found = []
            for review in self.root.glob(f"*/{REVIEW_FOLDER}"):
                for path in review.glob("*/*"):
                    if path.name.startswith(".") and path.name.endswith(_TEMP_SUFFIX):
                        path.unlink(missing_ok=True)
                    elif path.suffix in _IMAGE_SUFFIXES and (ts := capture_ts_of(path.name)) is not None:
                        found.append((ts, str(path), path.stat().st_size))
            for _, path, size in sorted(found):
                self._index.add(Path(path), size)
        except OSError as error:
            self._failed("read the recording folder", error)
        log.info("recording to %s: cameras %s, at most one frame per %s each, caps %d bytes and %d files "
                 "(%d file(s), %d bytes there)", self.root, ",".join(self.config.cameras), self.config.interval,
                 self.config.max_bytes, self.config.max_files, len(self._index.files), self._index.bytes)

    def _write(self, item: _Item) -> None:
        header = item.frame.header
        label = item.decision.label if item.decision is not None else None
        folder = camera_folder(self.root, header.camera_id)
        relative = frame_path(header, label)
        try:
            data = image_bytes(item.frame)
            if len(data) > self.config.max_bytes:
                raise ValueError(f"a {len(data)}-byte image is over record.max_bytes ({self.config.max_bytes})")
            self._make_room(len(data))
            self.disk.write_atomic(folder / relative, data, self.config.fsync)
        except (OSError, ValueError, cv2.error) as error:
            self._failed("write an image", error)
            return
        self._index.add(folder / relative, len(data))
        self._counts["written"] += 1
        try:
            self._append_row(folder, csv_row(relative, header, item.decision))
        except OSError as error:
            self._failed("append to frames.csv", error)

    def _make_room(self, size: int) -> None:
        """Delete the oldest images until one of `size` bytes fits under both caps."""
        index = self._index
        while index.files and (index.bytes + size > self.config.max_bytes
                               or len(index.files) + 1 > self.config.max_files):
            path = index.pop_oldest()
            try:
                self.disk.remove(path)
            except FileNotFoundError:  # moved or deleted by a person meanwhile
                continue
            except OSError as error:
                self._failed("delete an old image", error)
                continue
            self._counts["deleted_for_space"] += 1
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # a label folder left empty (calibration refuses empty class folders)

    def _append_row(self, folder: Path, row: list[str]) -> None:
        """One row of the camera's frames.csv (with the header row when the file is new; see the caps)."""
        path = folder / CSV_NAME
        rows = self._csv_rows.get(path)
        if rows is None or not path.exists():
            rows = _data_rows(path)
        if rows >= self.config.max_files:
            os.replace(path, folder / CSV_PREVIOUS_NAME)
            rows = 0
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        if not path.exists():
            writer.writerow(CSV_COLUMNS)
        writer.writerow(row)
        self.disk.append_text(path, text.getvalue())
        self._csv_rows[path] = rows + 1

    def _failed(self, what: str, error: Exception, count: bool = True) -> None:
        if count:
            self._counts["write_errors"] += 1
        errno = getattr(error, "errno", None)
        kind = f"{what}: {type(error).__name__} {errno or ''}"
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("recording: could not %s: %s (further errors of this kind are only counted, in "
                        "record_write_errors)", what, error)


def _data_rows(path: Path) -> int:
    """The rows of a CSV file below its header (0 when there is no file)."""
    try:
        with open(path, encoding="utf-8", newline="") as file:
            return max(0, sum(1 for _ in csv.reader(file)) - 1)
    except FileNotFoundError:
        return 0
