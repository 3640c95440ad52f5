"""What `trustvlm serve --record` writes, as the ``record`` section of the serve config (:class:`RecordConfig`).

Example (the section of a serve config file; every key optional, recording off without ``dir``)::

    "record": {"dir": "recordings", "cameras": ["cam1", "gripper*"], "interval": "1s",
               "max_bytes": 1073741824, "max_files": 100000, "queue_size": 16, "fsync": false}

Flags: ``--record DIR``, ``--record-cameras 'cam1,gripper*'`` and ``--record-interval 500ms``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: ``0`` or a number with a unit: ``1s``, ``500ms``, ``2.5s``, ``1min``.
_INTERVAL = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|min)?\s*", re.ASCII)
_UNIT_NS = {"ms": 1_000_000, "s": 1_000_000_000, "min": 60_000_000_000}


def parse_interval(text: str) -> int:
    """An interval as nanoseconds: ``"1s"`` -> 1_000_000_000, ``"500ms"``, ``"1.5min"``; ``"0"``: 0 (every frame).

    Raises:
        ValueError: Not ``0`` or a non-negative number followed by ``ms``, ``s`` or ``min``.
    """
    found = _INTERVAL.fullmatch(text) if isinstance(text, str) else None
    if found is None or (found.group(2) is None and float(found.group(1)) != 0):
        raise ValueError(f"record interval should be like '1s', '500ms', '2min' or '0' (every frame), but got {text!r}")
    return round(float(found.group(1)) * _UNIT_NS[found.group(2) or "s"])


def parse_camera_patterns(text: str) -> list[str]:
    """``"cam1, gripper*"`` -> ``["cam1", "gripper*"]`` (comma-separated fnmatch patterns, blanks dropped).

    Raises:
        ValueError: No pattern at all.
    """
    patterns = [part.strip() for part in text.split(",") if part.strip()]
    if not patterns:
        raise ValueError(f"record cameras should be comma-separated camera ids or glob patterns, but got {text!r}")
    return patterns


@dataclass(frozen=True)
class RecordConfig:
    """Recording of the frames the service scores, pre-sorted for review (:mod:`trustvlm.runtime.record`).

    Attributes:
        dir: Folder the recordings go to (``DIR/<camera>/...``); None: recording off (the default).
        cameras: fnmatch patterns (case-sensitive); a camera is recorded when its id matches one (default: all).
        interval: At most one frame per camera per this much capture time (``"1s"``, ``"500ms"``; ``"0"``: every
            frame), see :func:`parse_interval`.
        max_bytes: The recorded images of every camera together stay at or under this many bytes; the oldest
            are deleted first.
        max_files: ... and at or under this many files.
        queue_size: Frames waiting for the writer thread; more are dropped and counted (memory: up to this many
            frames' payloads).
        fsync: Flush each image to the disk before it gets its final name (slower; survives a power cut).
    """

    dir: Path | None = None
    cameras: tuple[str, ...] = ("*",)
    interval: str = "1s"
    max_bytes: int = 1 << 30
    max_files: int = 100_000
    queue_size: int = 16
    fsync: bool = False

    def __post_init__(self) -> None:
        parse_interval(self.interval)
        if not self.cameras or not all(isinstance(p, str) and p for p in self.cameras):
            raise ValueError(f"record.cameras should be a non-empty list of camera ids or glob patterns, but got "
                             f"{list(self.cameras)}")
        for name in ("max_bytes", "max_files", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"record.{name} should be >= 1, but got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        """True when frames are recorded (a folder is set)."""
        return self.dir is not None

    @property
    def interval_ns(self) -> int:
        """:attr:`interval` in nanoseconds."""
        return parse_interval(self.interval)
