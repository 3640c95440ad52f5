"""Is each camera's promise still kept? The service's guarantee watch: monitor, audit, act.

A bundle promises that among accepted frames the error rate is at most alpha (with probability at least
1 - delta over its calibration draw). That holds while the camera's frames are exchangeable with the
calibration images. :class:`GuaranteeWatch` is a decision tap (:class:`~trustvlm.runtime.scoring_loop.DecisionTap`)
that watches it per camera, on the camera's own bundle:

* **Monitor, without labels.** At most one scored frame per camera per ``monitor.interval_s`` of capture time
  (thinning: consecutive video frames are not independent) goes to the camera's
  :class:`~trustvlm.runtime.monitor.drift.DriftDetector`, which ranks its served score and gate typicality
  among the bundle's reference sample (:mod:`trustvlm.contract.monitor_reference`) and turns the ranks into a
  state: ``ok``, ``watch`` (evidence of a change: reported only) or ``alarm`` (the frames no longer look like
  the calibration; a false ALARM within T thinned frames has probability at most ``T / alarm_level`` plus the
  reference draw's share). A bundle without a reference sample is not watched (``monitor`` "").
* **Audit, with labels.** Each accepted frame is marked ``audit: true`` with probability ``monitor.audit_rate``;
  the labels sent back for those frames (:mod:`trustvlm.runtime.monitor.feedback`) are an unbiased sample of
  the accepted frames, and :class:`~trustvlm.runtime.monitor.audit.RiskAudit` tests the risk among them:
  ``unverified``, ``verified`` (risk <= alpha) or ``violated`` (risk > alpha), anytime-valid at
  ``monitor.audit_delta``. Labels of frames that were not drawn are ignored: they would bias the sample.
  Consecutive audited frames of one camera are seconds apart at the default rate; the test assumes their
  errors are no more alike than that (say so to whoever labels).
* **Act.** A camera in ``alarm`` or ``violated`` has every scored frame that would have been accepted or
  deferred below the threshold deferred ``guarantee_lost`` (``monitor.on_drift`` ``defer``, the default;
  ``warn`` only reports). Frames deferred for a reason of their own (out of distribution, non-finite) keep it.
  The camera leaves that state when it gets a new bundle (its monitor and audit start afresh on it) or when an
  operator resets it (:meth:`GuaranteeWatch.reset`, logged). Every decision carries the camera's ``monitor``
  and ``audit_state``; each change of state is one log line; the heartbeat, ``/healthz`` and Prometheus show
  them (:meth:`GuaranteeWatch.snapshot`).

With ``monitor.state_file`` the state is written at every change of state, every ``persist_every_s`` while
something changed, and at shutdown, and read back at start: a camera that was in ALARM is still in ALARM
after a restart, as long as it comes back on the same bundle.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from trustvlm.runtime.frames import ReceivedFrame
from trustvlm.runtime.messages import Decision, DecisionMessage, Reason
from trustvlm.runtime.monitor.audit import AuditState, RiskAudit
from trustvlm.runtime.monitor.config import MonitorConfig
from trustvlm.runtime.monitor.drift import DriftConfig, DriftDetector, MonitorState
from trustvlm.runtime.monitor.state_file import read_state, write_state

__all__ = ["CameraWatch", "GuaranteeWatch", "FEEDBACK_OUTCOMES"]

log = logging.getLogger("trustvlm.runtime.monitor")

#: Decisions a lost guarantee turns into ``guarantee_lost`` (the others already defer for a reason of their own).
REPLACED = (Reason.MEETS_THRESHOLD, Reason.BELOW_THRESHOLD, Reason.NO_THRESHOLD)
#: What became of a feedback label.
FEEDBACK_OUTCOMES = ("matched", "unmatched", "unknown_label", "unwatched_camera")


@dataclass
class CameraWatch:
    """One camera on one bundle: its detector and audit (None: not watched), thinning, audited decisions waiting."""

    camera_id: str
    bundle_id: str
    class_names: tuple[str, ...]
    drift: DriftDetector | None
    audit: RiskAudit | None
    last_capture_ns: int | None = None
    pending: OrderedDict = field(default_factory=OrderedDict)

    @property
    def monitor(self) -> str:
        return "" if self.drift is None else self.drift.state.value

    @property
    def audit_state(self) -> str:
        return "" if self.audit is None else self.audit.state.value

    @property
    def lost(self) -> bool:
        return ((self.drift is not None and self.drift.state is MonitorState.ALARM)
                or (self.audit is not None and self.audit.state is AuditState.VIOLATED))

    def why_lost(self) -> str:
        reasons = []
        if self.drift is not None and self.drift.state is MonitorState.ALARM:
            reasons.append(f"monitor alarm after {self.drift.frames_to_alarm} thinned frames")
        if self.audit is not None and self.audit.state is AuditState.VIOLATED:
            reasons.append(f"audit: risk among accepted frames >= {self.audit.lower:.3f} > alpha {self.audit.alpha:g} "
                           f"({self.audit.labels} labels)")
        return "guarantee lost (" + "; ".join(reasons) + "): recalibrate this camera or reset it"

    def state(self) -> dict:
        return {"bundle_id": self.bundle_id, "last_capture_ns": self.last_capture_ns,
                "drift": None if self.drift is None else self.drift.to_dict(),
                "audit": None if self.audit is None else self.audit.to_dict()}

    def summary(self) -> dict:
        drift, audit = self.drift, self.audit
        return {"camera_id": self.camera_id, "bundle_id": self.bundle_id, "monitor": self.monitor,
                "evidence": float(drift.evidence) if drift is not None else None,
                "frames": int(drift.frames) if drift is not None else 0, "audit_state": self.audit_state,
                "labels": int(audit.labels) if audit is not None else 0,
                "risk_lower": float(audit.lower) if audit is not None else 0.0,
                "risk_upper": float(audit.upper) if audit is not None else 1.0}


class GuaranteeWatch:
    """The decision tap of the module docstring.

    Args:
        config: The ``monitor`` section of the serve config.
        slot: The service's scorer slot (each camera's bundle is found through the current scorer).
        seed: Seed of the audit draws and the detectors' tie-breaking (None: from the OS).
    """

    def __init__(self, config: MonitorConfig, slot, seed: int | None = None):
        self.config, self.slot = config, slot
        self.drift_config = DriftConfig(alarm_level=config.alarm_level, watch_level=config.watch_level)
        self._random = random.Random(seed)
        self._seed = seed
        self._lock = threading.Lock()
        self.cameras: dict[str, CameraWatch] = {}
        self._saved = read_state(config.state_file) if config.state_file is not None else {}
        #: Said once, with the first decisions (not at construction: a service that fails to start says one line)
        self._memory_only_note = config.state_file is None and config.enabled
        self._dirty, self._persisted = False, time.monotonic()
        self._interval_ns = int(config.interval_s * 1e9)
        self._counts = {"monitor_frames": 0, "audit_marked": 0, "audit_forgotten": 0,
                        **{f"feedback_{outcome}": 0 for outcome in FEEDBACK_OUTCOMES}, "monitor_resets": 0}

    # -- the tap ---------------------------------------------------------------------------------------------------
    def __call__(self, frames: list[ReceivedFrame], decisions: list[DecisionMessage]) -> list[DecisionMessage]:
        if self._memory_only_note:
            self._memory_only_note = False
            log.info("guarantee monitor state is kept in memory only: a restart clears every camera's alarm "
                     "(--monitor-state FILE keeps it)")
        with self._lock:
            changed = False
            out = []
            for decision in decisions:
                decision, moved = self._watch(decision)
                changed |= moved
                out.append(decision)
            self._maybe_persist(force=changed)
        return out

    def _watch(self, decision: DecisionMessage) -> tuple[DecisionMessage, bool]:
        entry = self._entry(decision)
        if entry is None:
            return decision, False
        moved = False
        if entry.drift is not None and decision.kappa is not None and self._thinned(entry, decision.capture_ts_ns):
            before = entry.drift.state
            entry.drift.update({"score": decision.kappa, "typicality": decision.typicality})
            self._counts["monitor_frames"] += 1
            self._dirty = True
            if entry.drift.state is not before:
                moved = True
                self._log_change(entry, "monitor", before.value, entry.drift.state.value,
                                 f"after {entry.drift.frames} thinned frames (evidence {entry.drift.evidence:+.2f})")
        reused = decision.seq in entry.pending
        if reused:  # the camera restarted its count: a label for this seq could be for either frame, so neither
            del entry.pending[decision.seq]  # is audited (which frames are dropped depends on the seq only: no bias)
            self._counts["audit_forgotten"] += 1
        changes = {"monitor": entry.monitor, "audit_state": entry.audit_state}  # one copy of the message at most
        if entry.lost and self.config.on_drift == "defer" and decision.reason in REPLACED:
            changes.update(decision=Decision.DEFER, reason=Reason.GUARANTEE_LOST, detail=entry.why_lost())
        elif (decision.decision is Decision.ACCEPT and entry.audit is not None
              and self._random.random() < self.config.audit_rate and not reused):
            changes["audit"] = True
            entry.pending[decision.seq] = decision.label
            self._counts["audit_marked"] += 1
            if len(entry.pending) > self.config.max_pending_audits:
                entry.pending.popitem(last=False)
                self._counts["audit_forgotten"] += 1
        if all(getattr(decision, key) == value for key, value in changes.items()):
            return decision, moved
        return decision.changed(**changes), moved

    def _thinned(self, entry: CameraWatch, capture_ns: int) -> bool:
        last = entry.last_capture_ns
        if last is not None and 0 <= capture_ns - last < self._interval_ns:
            return False
        entry.last_capture_ns = capture_ns
        return True

    def _entry(self, decision: DecisionMessage) -> CameraWatch | None:
        """The camera's watch on the decision's bundle: started (or restored) when the camera or its bundle is new."""
        camera, bundle_id = decision.camera_id, decision.bundle_id
        entry = self.cameras.get(camera)
        if entry is not None and entry.bundle_id == bundle_id:
            return entry
        if not bundle_id or (entry is None and len(self.cameras) >= self.config.max_cameras
                             and camera not in self._saved):  # a saved camera (maybe in ALARM) is let in: no
            return None  # more memory than it already holds, and a full table must not turn its frames into accepts
        bundle = self._bundle_of(camera, bundle_id)
        if bundle is None:
            return None
        new = self._start(camera, bundle_id, bundle)
        if entry is not None:
            log.info("camera %s: new bundle %s (was %s): its guarantee monitor and audit start afresh", camera,
                     bundle_id, entry.bundle_id)
            self._dirty = True
        self.cameras[camera] = new
        return new

    def _bundle_of(self, camera: str, bundle_id: str):
        scorer = self.slot.current()
        scorer = scorer.scorer_for(camera) if hasattr(scorer, "scorer_for") else scorer
        bundle = getattr(scorer, "bundle", None)
        return bundle if bundle is not None and getattr(scorer, "bundle_id", None) == bundle_id else None

    def _start(self, camera: str, bundle_id: str, bundle) -> CameraWatch:
        info = bundle.info
        seed = None if self._seed is None else self._random.randrange(2**32)
        reference = info.monitor_reference
        drift = None
        if self.config.enabled and reference is not None:
            drift = DriftDetector({name: np.asarray(values) for name, values in reference.statistics.items()},
                                  self.drift_config, seed=seed)
        choice = info.threshold
        audit = (RiskAudit(choice.alpha, self.config.audit_delta)
                 if self.config.enabled and self.config.audit_rate > 0 and choice.feasible else None)
        entry = CameraWatch(camera, bundle_id, tuple(info.class_names), drift, audit)
        saved = self._saved.pop(camera, None)
        if saved is not None:
            self._restore(entry, saved, reference)
        return entry

    def _restore(self, entry: CameraWatch, saved: dict, reference) -> None:
        if saved.get("bundle_id") != entry.bundle_id:
            log.info("camera %s: saved monitor state was for bundle %s, not %s: starting afresh", entry.camera_id,
                     saved.get("bundle_id"), entry.bundle_id)
            return
        # Each part on its own: a monitor saved under other levels must not take a VIOLATED audit with it.
        restored = []
        if entry.drift is not None and saved.get("drift") is not None:
            try:
                entry.drift = DriftDetector.from_dict(saved["drift"], {name: np.asarray(values) for name, values
                                                                       in reference.statistics.items()},
                                                      self.drift_config)
                last = saved.get("last_capture_ns")
                entry.last_capture_ns = last if isinstance(last, int) and not isinstance(last, bool) else None
                restored.append(f"monitor {entry.monitor}")
            except (ValueError, TypeError, KeyError) as error:
                log.error("camera %s: saved monitor state cannot be used (%s): the monitor starts afresh",
                          entry.camera_id, error)
        if entry.audit is not None and saved.get("audit") is not None:
            try:
                entry.audit = RiskAudit.from_dict(saved["audit"], entry.audit.alpha, self.config.audit_delta)
                restored.append(f"audit {entry.audit_state}")
            except (ValueError, TypeError, KeyError) as error:
                log.error("camera %s: saved audit state cannot be used (%s): the audit starts afresh",
                          entry.camera_id, error)
        if restored:
            log.info("camera %s: state restored (%s)", entry.camera_id, ", ".join(restored))

    # -- feedback and operators ------------------------------------------------------------------------------------
    def feedback(self, camera_id: str, seq: int, label: str) -> str:
        """One audit label: the true label of the camera's frame `seq`; returns one of :data:`FEEDBACK_OUTCOMES`."""
        return self.feedback_many([(camera_id, seq, label)])[0]

    def feedback_many(self, items: list[tuple[str, int, str]]) -> list[str]:
        """Audit labels ``(camera_id, seq, label)``, each matched to an audited decision; the outcome of each.

        A camera's matched labels update its audit in one step (the audit's bounds cost milliseconds, and the
        scoring thread waits for this lock).
        """
        with self._lock:
            outcomes, errors = [], {}
            for camera_id, seq, label in items:
                entry = self.cameras.get(camera_id)
                if entry is None or entry.audit is None:
                    outcome = "unwatched_camera"
                elif label not in entry.class_names:
                    outcome = "unknown_label"
                elif seq not in entry.pending:
                    outcome = "unmatched"  # not drawn for audit, already labelled, or forgotten
                else:
                    errors.setdefault(camera_id, []).append(label != entry.pending.pop(seq))
                    outcome = "matched"
                self._counts[f"feedback_{outcome}"] += 1
                outcomes.append(outcome)
            for camera_id, wrong in errors.items():
                entry = self.cameras[camera_id]
                before = entry.audit.state
                entry.audit.update_many(wrong)
                self._dirty = True
                if entry.audit.state is not before:
                    self._log_change(entry, "audit", before.value, entry.audit.state.value,
                                     f"after {entry.audit.labels} labels (risk in [{entry.audit.lower:.3f}, "
                                     f"{entry.audit.upper:.3f}], alpha {entry.audit.alpha:g})")
                    self._maybe_persist(force=True)
            return outcomes

    def reset(self, camera_id: str, who: str = "operator") -> bool:
        """Clear a camera's monitor and audit (an operator's decision, logged); False for a camera not watched."""
        with self._lock:
            entry = self.cameras.get(camera_id)
            if entry is None:
                return False
            before = (entry.monitor, entry.audit_state)
            if entry.drift is not None:
                entry.drift.reset()
            if entry.audit is not None:
                entry.audit.reset()
            entry.pending.clear()
            self._counts["monitor_resets"] += 1
            log.warning("camera %s: guarantee monitor and audit reset by %s (were %s / %s)", camera_id, who,
                        before[0] or "off", before[1] or "off")
            self._dirty = True
            self._maybe_persist(force=True)
            return True

    # -- reporting and state -----------------------------------------------------------------------------------------
    def snapshot(self) -> list[dict]:
        """Per watched camera: bundle, monitor state and evidence, thinned frames, audit state, labels, risk bounds."""
        with self._lock:
            return [entry.summary() for entry in self.cameras.values()]

    def counters(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._counts)
            for state in ("watch", "alarm"):
                counts[f"cameras_{state}"] = sum(entry.monitor == state for entry in self.cameras.values())
            counts["cameras_violated"] = sum(e.audit_state == "violated" for e in self.cameras.values())
            return counts

    def close(self) -> None:
        """Write the state a last time (with a state file)."""
        with self._lock:
            self._maybe_persist(force=True)

    def _maybe_persist(self, force: bool = False) -> None:
        path = self.config.state_file
        if path is None or not (self._dirty or force):
            return
        now = time.monotonic()
        if not force and now - self._persisted < self.config.persist_every_s:
            return
        cameras = {**self._saved, **{camera: entry.state() for camera, entry in self.cameras.items()}}
        try:
            write_state(path, cameras)
        except OSError as error:
            log.error("monitor state %s cannot be written (%s); a restart would start every camera afresh", path,
                      error)
        self._dirty, self._persisted = False, now

    def _log_change(self, entry: CameraWatch, what: str, before: str, after: str, how: str) -> None:
        acting = entry.lost and self.config.on_drift == "defer"
        consequence = (f"; its frames are deferred {Reason.GUARANTEE_LOST.value} until it gets a new bundle or an "
                       f"operator resets it" if acting else "")
        level = logging.WARNING if after in ("watch", "alarm", "violated") else logging.INFO
        log.log(level, "camera %s (bundle %s): %s %s -> %s %s%s", entry.camera_id, entry.bundle_id, what,
                before.upper(), after.upper(), how, consequence)
