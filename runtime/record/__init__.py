"""Recording of camera frames, pre-sorted by predicted label for a person to check, for recalibration.

`trustvlm serve --record DIR` (the ``record`` config section, :class:`~trustvlm.runtime.record.config.RecordConfig`)
adds a :class:`~trustvlm.runtime.record.recorder.Recorder` to the service's decision taps; `trustvlm source
--record DIR` records the frames it sends with the same writer, unscored. The folder layout and the CSV are
:mod:`~trustvlm.runtime.record.review_layout`.
"""

from __future__ import annotations

from trustvlm.runtime.record.config import RecordConfig, parse_camera_patterns, parse_interval
from trustvlm.runtime.record.recorder import COUNTERS, DiskOps, Recorder, image_bytes

__all__ = ["COUNTERS", "DiskOps", "RecordConfig", "Recorder", "image_bytes", "parse_camera_patterns",
           "parse_interval", "recorder_for"]


def recorder_for(config: RecordConfig) -> Recorder | None:
    """A recorder for `config`, or None when recording is off (the default)."""
    return Recorder(config) if config.enabled else None
