"""What `trustvlm serve` does to watch each camera's guarantee: the ``monitor`` section of the serve config.

Example (the defaults, with feedback and a state file set)::

    "monitor": {"enabled": true, "interval_s": 1.0, "on_drift": "defer", "audit_rate": 0.02,
                "feedback": "tcp://127.0.0.1:5557", "state_file": "/var/lib/trustvlm/monitor.msgpack",
                "alarm_level": 12096000.0, "watch_level": 86400.0}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ON_DRIFT", "MonitorConfig"]

#: What the service does with a camera in ALARM or VIOLATED: defer its frames ``guarantee_lost``, or only report.
ON_DRIFT = ("defer", "warn")
#: One thinned frame per second for a week: the horizon of the default false-alarm bound.
WEEK_OF_FRAMES = 7 * 24 * 3600


@dataclass(frozen=True)
class MonitorConfig:
    """The guarantee monitor and audits of the service (see :mod:`trustvlm.runtime.monitor.watch`).

    Attributes:
        enabled: Watch cameras whose bundle records a reference sample, and audit accepted frames.
        interval_s: Thinning: the monitor takes at most one frame per camera per `interval_s` of capture time
            (consecutive video frames are not independent; the false-alarm bound counts thinned frames).
        on_drift: ``defer``: a camera in ALARM (monitor) or VIOLATED (audit) has its frames deferred
            ``guarantee_lost`` until it gets a new bundle or an operator resets it; ``warn``: only report.
        audit_rate: Probability that an accepted frame is marked ``audit: true`` (0: no audits).
        audit_delta: The audit's level: a camera whose risk among accepted frames stays at most alpha is found
            VIOLATED with probability at most `audit_delta`, however long it runs (and VERIFIED wrongly likewise).
        feedback: ZeroMQ address the service binds a REP socket on for audit labels and operator resets
            (:mod:`trustvlm.runtime.monitor.feedback`); None: no feedback socket.
        state_file: Where each camera's monitor and audit state is written (msgpack, with a JSON mirror beside) and
            read back at start, so that a restart does not clear an ALARM; None: kept in memory only.
        alarm_level: ALARM when the detector's evidence reaches this level: a camera like its calibration raises a
            false ALARM within T thinned frames with probability at most ``T / alarm_level`` (plus the reference
            draw's share, see :mod:`trustvlm.runtime.monitor.drift`). Default: 5% in a week at one frame a second.
        watch_level: WATCH (reported only) at this level: more eager, about one false WATCH a day at one frame a second.
        max_cameras: Cameras watched at most (later ones are not, and their decisions say so with monitor ""),
            besides the cameras whose state the state file holds (a camera saved in ALARM is always watched).
        max_pending_audits: Audited decisions per camera waiting for their label (the oldest are forgotten first).
        persist_every_s: How often the state file is rewritten while something changed (and at every change of
            state, and at shutdown).
    """

    enabled: bool = True
    interval_s: float = 1.0
    on_drift: str = "defer"
    audit_rate: float = 0.02
    audit_delta: float = 0.05
    feedback: str | None = None
    state_file: Path | None = None
    alarm_level: float = WEEK_OF_FRAMES / 0.05
    watch_level: float = 86400.0
    max_cameras: int = 256
    max_pending_audits: int = 4096
    persist_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.on_drift not in ON_DRIFT:
            raise ValueError(f"monitor.on_drift should be one of {ON_DRIFT}, but got {self.on_drift!r}")
        if not (math.isfinite(self.interval_s) and self.interval_s >= 0):
            raise ValueError(f"monitor.interval_s should be >= 0 seconds, but got {self.interval_s!r}")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ValueError(f"monitor.audit_rate should be in [0, 1], but got {self.audit_rate!r}")
        if not 0.0 < self.audit_delta < 1.0:
            raise ValueError(f"monitor.audit_delta should be in (0, 1), but got {self.audit_delta!r}")
        if not 1.0 < self.watch_level <= self.alarm_level:
            raise ValueError(f"monitor levels should satisfy 1 < watch_level <= alarm_level, but got "
                             f"{self.watch_level!r} and {self.alarm_level!r}")
        for name in ("max_cameras", "max_pending_audits"):
            if getattr(self, name) < 1:
                raise ValueError(f"monitor.{name} should be >= 1, but got {getattr(self, name)!r}")
        if not self.persist_every_s > 0:
            raise ValueError(f"monitor.persist_every_s should be > 0, but got {self.persist_every_s!r}")
