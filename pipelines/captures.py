"""Frame captures: where a camera stream's images come from, before they are encoded and sent.

Use :class:`VideoCapture` for a video file, a camera index or an RTSP/HTTP URL (OpenCV), :class:`ImageFolderCapture`
for a folder of image files, and :class:`DatasetCapture` to replay a labelled dataset as if a camera saw it
(Fashion-MNIST; the frames carry their labels, so a controller can score accuracy). :func:`degrade` passes a
frame through one of the degraded cameras of :mod:`trustvlm.calibration.shifts`, the same function the demo
uses to build its calibration images: calibrate on the camera you deploy.

Every capture yields :class:`CapturedFrame` objects from :meth:`frames` and is closed by :meth:`close` (or
``with``). A capture that cannot be opened raises :class:`SourceConnectionError` at construction, so a bad
path or camera index fails at start with one line, not on the first frame.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from trustvlm.calibration.shifts import SHIFTS, ShiftSpec, apply_shift, parse_shift
from trustvlm.data.fashion_mnist import SPLITS, DatasetMissingError, load_split
from trustvlm.data.image_folder import IMAGE_SUFFIXES

log = logging.getLogger("trustvlm.pipelines.captures")

FASHION_MNIST = "fashion-mnist"
DATASETS = (FASHION_MNIST,)
#: Live streams (cameras, URLs) are reopened this many times in a row before the capture gives up.
RECONNECT_ATTEMPTS = 5
RECONNECT_BACKOFF_S = 0.5


class CaptureError(Exception):
    """A frame source that cannot deliver frames."""


class SourceConnectionError(CaptureError):
    """A video file, camera, URL, folder or dataset that cannot be opened (or was lost)."""


@dataclass(frozen=True)
class CapturedFrame:
    """One image as the camera delivered it.

    Attributes:
        image: uint8 BGR ``H x W x 3`` or grey ``H x W``.
        index: Position in the source: frame number, file number or dataset index.
        label: Ground-truth class name (labelled sources only).
        class_id: Ground-truth class index in the source's own class list (labelled sources only).
        origin: What the frame is, for logs: file name, dataset index, video frame number.
    """

    image: np.ndarray
    index: int
    label: str | None = None
    class_id: int | None = None
    origin: str = ""


def degrade(image: np.ndarray, shift: str | ShiftSpec, seed: int) -> np.ndarray:
    """Pass one frame through the degraded camera `shift`: a name of calibration.shifts.SHIFTS, the same with
    changed parameters (``"low_light:gain=0.25"``, see :func:`~trustvlm.calibration.shifts.parse_shift`), or a
    parsed :class:`~trustvlm.calibration.shifts.ShiftSpec`.

    BGR frames are shifted in RGB order (the JPEG shift's colour conversion assumes it) and come back BGR.

    Raises:
        ValueError: An unknown shift (listing the known ones), an unknown or bad parameter, or an image that is
            not uint8 grey/3-channel.
    """
    if not isinstance(shift, ShiftSpec):
        if str(shift).partition(":")[0].strip() not in SHIFTS:
            raise ValueError(f"unknown camera shift {shift!r}; expected one of {list(SHIFTS)}")
        shift = parse_shift(shift)
    if image.ndim == 3:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return cv2.cvtColor(apply_shift(shift.name, rgb[None], seed, **shift.kwargs)[0], cv2.COLOR_RGB2BGR)
    return apply_shift(shift.name, image[None], seed, **shift.kwargs)[0]


def _quiet_opencv() -> None:
    """OpenCV logs its own warnings for a missing camera; our error says it in one line instead."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # builds without the logging utilities
        pass


class VideoCapture:
    """A video file, camera index or stream URL read with OpenCV.

    A file ends (or, with `loop`, starts over); a camera or URL that stops delivering is reopened up to
    ``RECONNECT_ATTEMPTS`` times with a back-off, then :class:`SourceConnectionError` is raised.
    """

    def __init__(self, target: str | int, loop: bool = False):
        """Open `target`: an int camera index, a file path, or a URL (rtsp://, http://, ...).

        Raises:
            SourceConnectionError: A missing file, a camera index or URL that OpenCV cannot open.
        """
        self.target, self.loop = target, loop
        self.is_file = isinstance(target, str) and "://" not in target
        if isinstance(target, int) and target < 0:
            raise SourceConnectionError(f"camera index should be >= 0, but got {target}")
        if self.is_file and not Path(target).is_file():
            raise SourceConnectionError(f"video file {target} does not exist")
        _quiet_opencv()
        self._capture = self._open()
        if self._capture is None:
            raise SourceConnectionError(self._open_error())
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.description = self._describe()

    def _describe(self) -> str:
        if isinstance(self.target, int):
            return f"camera {self.target}"
        return f"video {self.target}" if self.is_file else f"stream {self.target}"

    def _open_error(self) -> str:
        if isinstance(self.target, int):
            devices = sorted(str(p) for p in Path("/dev").glob("video*"))
            return (f"cannot open camera index {self.target}: OpenCV found no such device "
                    f"(video devices here: {devices or 'none'})")
        if self.is_file:
            return f"cannot open video file {self.target}: OpenCV has no decoder for it or it is corrupt"
        return f"cannot open stream {self.target}: unreachable, refused, or not a video stream"

    def _open(self):
        capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            capture.release()
            return None
        return capture

    def frames(self) -> Iterator[CapturedFrame]:
        index, failures = 0, 0  # index: frame number in the clip (from 0 again when a file loops)
        while True:
            ok, image = self._capture.read()
            if ok and image is not None:
                failures = 0
                yield CapturedFrame(image, index, origin=f"frame {index}")
                index += 1
                continue
            if self.is_file:
                if not self.loop or index == 0:
                    return
                index = 0
                self._capture.release()
                self._capture = self._open()
                if self._capture is None:
                    raise SourceConnectionError(f"cannot reopen video file {self.target} to loop it")
                continue
            failures += 1
            if failures > RECONNECT_ATTEMPTS:
                raise SourceConnectionError(f"{self.description} stopped delivering frames; "
                                            f"{RECONNECT_ATTEMPTS} reconnects failed")
            log.warning("%s delivered no frame; reconnecting (%d of %d)", self.description, failures,
                        RECONNECT_ATTEMPTS)
            self._capture.release()
            time.sleep(RECONNECT_BACKOFF_S * failures)
            self._capture = self._open() or cv2.VideoCapture()

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> "VideoCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under `root` (recursively), sorted by path."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolderCapture:
    """The image files of a folder, in sorted path order.

    In an ImageFolder tree (one sub-folder per class), a file's label is its sub-folder's name with
    underscores read as spaces, as in :mod:`trustvlm.data.image_folder`. Files OpenCV cannot decode are
    skipped with a warning (counted in :attr:`unreadable`); the stream goes on.
    """

    def __init__(self, root: str | os.PathLike, loop: bool = False):
        """Raises: SourceConnectionError: A missing folder or one without image files."""
        self.root, self.loop = Path(root), loop
        if not self.root.is_dir():
            raise SourceConnectionError(f"image folder {self.root} does not exist")
        self.files = list_images(self.root)
        if not self.files:
            raise SourceConnectionError(f"image folder {self.root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        class_dirs = sorted({p.parent for p in self.files if p.parent != self.root})
        self.class_names = tuple(d.name.replace("_", " ") for d in class_dirs)
        self._class_ids = {d: i for i, d in enumerate(class_dirs)}
        self.unreadable = 0
        self.description = f"image folder {self.root} ({len(self.files)} images)"

    def frames(self) -> Iterator[CapturedFrame]:
        while True:
            delivered = 0
            for index, path in enumerate(self.files):
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    self.unreadable += 1
                    log.warning("skipping %s: OpenCV cannot decode it", path)
                    continue
                class_id = self._class_ids.get(path.parent)
                label = None if class_id is None else self.class_names[class_id]
                delivered += 1
                yield CapturedFrame(image, index, label, class_id, str(path.relative_to(self.root)))
            if not self.loop or delivered == 0:
                return

    def close(self) -> None:
        pass

    def __enter__(self) -> "ImageFolderCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DatasetCapture:
    """A labelled dataset replayed as a grey camera (Fashion-MNIST: 28 x 28 frames with their labels)."""

    def __init__(self, name: str = FASHION_MNIST, split: str = "test", loop: bool = False, start: int = 0):
        """Raises: SourceConnectionError: An unknown dataset or split, or a dataset that is not installed."""
        if name not in DATASETS:
            raise SourceConnectionError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
        if split not in SPLITS:
            raise SourceConnectionError(f"unknown split {split!r} of {name}; expected one of {list(SPLITS)}")
        try:
            data = load_split(split)
        except DatasetMissingError as error:
            raise SourceConnectionError(str(error)) from error
        if not 0 <= start < len(data):
            raise SourceConnectionError(f"start index should be in [0, {len(data)}) for {name}/{split}, "
                                        f"but got {start}")
        self.images, self.labels, self.class_names = data.images, data.labels, data.class_names
        self.source_indices = data.indices
        self.loop, self.start = loop, start
        self.description = f"{name}/{split} ({len(data)} labelled images)"

    def frames(self) -> Iterator[CapturedFrame]:
        start = self.start
        while True:
            for i in range(start, len(self.labels)):
                class_id = int(self.labels[i])
                yield CapturedFrame(self.images[i], i, self.class_names[class_id], class_id,
                                    f"index {int(self.source_indices[i])}")
            if not self.loop:
                return
            start = 0

    def close(self) -> None:
        pass

    def __enter__(self) -> "DatasetCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


Capture = VideoCapture | ImageFolderCapture | DatasetCapture
