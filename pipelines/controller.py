"""`trustvlm controller`: a reference subscriber for a robot, with a heartbeat watchdog and live scoring.

It subscribes to ``trust/`` on the service's publish endpoint and, for each decision, decides what the
robot does: **act** on the label only when the decision is ``accept`` and the service is known alive;
otherwise **hold** (treat the frame as deferred). Liveness comes from the heartbeat on ``trust/_health``:

* ``SAFE`` is the state at start (no heartbeat yet), after ``heartbeat_timeout_ms`` without one, and
  when the service says it has ``stopped``. In SAFE every camera is treated as deferred.
* ``OK`` after a heartbeat. Leaving and entering SAFE are events (:data:`EVENT_SAFE_ENTER`,
  :data:`EVENT_SAFE_EXIT`), printed and logged with the reason and how long it lasted.

With a truth file (written by ``trustvlm source`` for a labelled replay) it reports live accuracy of
accepted frames against all frames, coverage and latency percentiles (:mod:`trustvlm.pipelines.scoreboard`).
It ends after ``max_decisions`` decisions, after ``duration_s``, when the service stops (``exit_on_stop``),
or when :meth:`Controller.request_stop` is called (SIGINT/SIGTERM in the CLI), and returns a final summary.

What it prints and logs goes through a :class:`ControllerObserver` (do nothing by default): the CLI passes a
console printer and a JSONL logger (:mod:`trustvlm.pipelines.controller_output`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import zmq

from trustvlm.pipelines.scoreboard import DecisionRecord, Scoreboard, TruthTail
from trustvlm.runtime.messages import (HEALTH_TOPIC, TOPIC_PREFIX, Decision, DecisionMessage, HealthMessage,
                                       HealthStatus, decode_body, topic_for)
from trustvlm.runtime.schema import MessageError

log = logging.getLogger("trustvlm.pipelines.controller")

EVENT_SAFE_ENTER = "safe_enter"
EVENT_SAFE_EXIT = "safe_exit"
EVENT_DEGRADED = "service_degraded"
#: A camera's guarantee changed (its decisions' monitor or audit state): reported, the state is unchanged, but the
#: robot stops getting accepted frames from a camera in alarm or violated (the service defers them).
EVENT_GUARANTEE = "guarantee_changed"
REASON_NO_HEARTBEAT_YET = "no heartbeat yet"
REASON_HEARTBEAT_MISSING = "heartbeat missing"
REASON_SERVICE_STOPPED = "service stopped"
#: How often the truth file is read for new rows (decisions wait in the scoreboard for theirs).
TRUTH_POLL_S = 0.2


class ControllerState(str, Enum):
    """Whether the robot may act on accepted decisions."""

    OK = "ok"
    SAFE = "safe"


class Action(str, Enum):
    """What the robot does with one decision."""

    ACT = "act"
    HOLD = "hold"


@dataclass(frozen=True)
class StateEvent:
    """A change of the controller's state.

    Attributes:
        name: EVENT_SAFE_ENTER or EVENT_SAFE_EXIT (or EVENT_DEGRADED or EVENT_GUARANTEE, which do not change the
            state).
        reason: Why (REASON_* or the service's detail).
        ts_ns: When, Unix epoch ns.
        silent_ms: Time since the last heartbeat when SAFE was entered (NaN if none was ever seen).
        safe_ms: For EVENT_SAFE_EXIT: how long SAFE lasted.
    """

    name: str
    reason: str
    ts_ns: int
    silent_ms: float = float("nan")
    safe_ms: float = float("nan")


class HeartbeatWatch:
    """The SAFE/OK state machine of the module docstring, driven by heartbeats and the clock (monotonic s)."""

    def __init__(self, timeout_ms: float, now: float):
        if not timeout_ms > 0:
            raise ValueError(f"heartbeat timeout should be > 0 ms, but got {timeout_ms}")
        self.timeout_s = timeout_ms / 1e3
        self.state = ControllerState.SAFE
        self.reason = REASON_NO_HEARTBEAT_YET
        self.last_heartbeat: float | None = None
        self.safe_since = now
        self.safe_entries = 0  # entries after the first heartbeat: the start does not count
        self.safe_seconds = 0.0
        self.service_stopped = False

    def deadline(self) -> float | None:
        """When SAFE will be entered without another heartbeat (None while SAFE)."""
        return None if self.state is ControllerState.SAFE else self.last_heartbeat + self.timeout_s

    def on_health(self, message: HealthMessage, now: float) -> StateEvent | None:
        self.last_heartbeat = now
        if message.status is HealthStatus.STOPPED:
            self.service_stopped = True
            return self._enter(now, REASON_SERVICE_STOPPED)
        self.service_stopped = False
        if self.state is ControllerState.SAFE:
            safe_s = now - self.safe_since
            self.safe_seconds += safe_s
            why = "first heartbeat" if self.reason == REASON_NO_HEARTBEAT_YET else f"heartbeat back ({self.reason})"
            self.state, self.reason = ControllerState.OK, ""
            return StateEvent(EVENT_SAFE_EXIT, why, time.time_ns(), safe_ms=safe_s * 1e3)
        return None

    def check(self, now: float) -> StateEvent | None:
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            return self._enter(now, REASON_HEARTBEAT_MISSING)
        return None

    def _enter(self, now: float, reason: str) -> StateEvent | None:
        if self.state is ControllerState.SAFE:
            return None
        self.state, self.reason, self.safe_since = ControllerState.SAFE, reason, now
        self.safe_entries += 1
        silent_ms = (now - self.last_heartbeat) * 1e3 if reason == REASON_HEARTBEAT_MISSING else 0.0
        return StateEvent(EVENT_SAFE_ENTER, reason, time.time_ns(), silent_ms=silent_ms)

    def finish(self, now: float) -> None:
        """Close the open SAFE interval (at the end of a run) so safe_seconds is complete."""
        if self.state is ControllerState.SAFE:
            self.safe_seconds += now - self.safe_since
            self.safe_since = now


class ControllerObserver:
    """What the controller reports; every method does nothing here."""

    def on_decision(self, message: DecisionMessage, record: DecisionRecord, action: Action,
                    state: ControllerState) -> None:
        pass

    def on_event(self, event: StateEvent) -> None:
        pass

    def on_progress(self, summary: dict) -> None:
        pass

    def on_summary(self, summary: dict) -> None:
        pass


@dataclass(frozen=True)
class ControllerConfig:
    """How the controller runs.

    Attributes:
        endpoint: The service's publish endpoint, e.g. ``tcp://127.0.0.1:5556``.
        cameras: Cameras to follow (empty: all); matched exactly, not by topic prefix.
        heartbeat_timeout_ms: Silence on trust/_health after which the controller enters SAFE.
        truth: Ground-truth JSONL files of the labelled sources, one per source (empty: no accuracy).
        max_decisions: End after this many decisions (None: no limit).
        duration_s: End after this long (None: no limit).
        exit_on_stop: End when the service publishes its ``stopped`` heartbeat.
        progress_s: Period of progress reports (0: none).
        receive_hwm: RCVHWM of the SUB socket: decisions ZeroMQ queues while the controller is busy.
    """

    endpoint: str
    cameras: tuple[str, ...] = ()
    heartbeat_timeout_ms: float = 2500.0
    truth: tuple[Path, ...] = ()
    max_decisions: int | None = None
    duration_s: float | None = None
    exit_on_stop: bool = False
    progress_s: float = 0.0
    receive_hwm: int = 100000

    def __post_init__(self) -> None:
        if self.max_decisions is not None and self.max_decisions < 1:
            raise ValueError(f"max_decisions should be >= 1, but got {self.max_decisions}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s should be > 0, but got {self.duration_s}")
        if not self.heartbeat_timeout_ms > 0:
            raise ValueError(f"heartbeat_timeout_ms should be > 0, but got {self.heartbeat_timeout_ms}")


class Controller:
    """Runs the loop of the module docstring over a SUB socket it owns."""

    def __init__(self, config: ControllerConfig, context: zmq.Context,
                 observer: ControllerObserver | None = None):
        self.config = config
        self.observer = observer or ControllerObserver()
        self.scoreboard = Scoreboard()
        self.truths = [TruthTail(path) for path in config.truth]
        self.watch = HeartbeatWatch(config.heartbeat_timeout_ms, time.monotonic())
        self.actions = {Action.ACT: 0, Action.HOLD: 0}
        self.bad_messages = 0
        self.last_health: HealthMessage | None = None
        self.ended_by = ""
        self._stop = threading.Event()
        self._cameras = set(config.cameras)
        #: Each camera's guarantee as its latest decision said it: (monitor, audit_state).
        self.guarantees: dict[str, tuple[str, str]] = {}
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, config.receive_hwm)
        topics = [HEALTH_TOPIC] + [topic_for(c) for c in config.cameras] if config.cameras else [TOPIC_PREFIX.encode()]
        for topic in topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        try:
            self.socket.connect(config.endpoint)
        except zmq.ZMQError as error:
            self.socket.close()
            raise ValueError(f"cannot connect to {config.endpoint!r}: {error} "
                             "(expected an address like tcp://127.0.0.1:5556)") from error

    def request_stop(self) -> None:
        """End the run after the current message (safe from a signal handler)."""
        self._stop.set()

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> "Controller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self) -> dict:
        """Receive until an end condition holds; return (and report) the final summary."""
        config = self.config
        started = time.monotonic()
        end = None if config.duration_s is None else started + config.duration_s
        next_progress = started + config.progress_s if config.progress_s > 0 else None
        next_truth = started
        while True:
            now = time.monotonic()
            self._emit(self.watch.check(now))
            if self._stop.is_set():
                self.ended_by = "signal"
                break
            if config.max_decisions is not None and self.scoreboard.decisions >= config.max_decisions:
                self.ended_by = "max_decisions"
                break
            if config.exit_on_stop and self.watch.service_stopped:
                self.ended_by = "service_stopped"
                break
            if end is not None and now >= end:
                self.ended_by = "duration"
                break
            if now >= next_truth:
                self._poll_truth()
                next_truth = now + TRUTH_POLL_S
            if next_progress is not None and now >= next_progress:
                self.observer.on_progress(self.summary(now - started))
                next_progress = now + config.progress_s
            waits = [0.1] + [t - now for t in (self.watch.deadline(), end, next_progress) if t is not None]
            if self.socket.poll(max(1, int(min(waits) * 1000))):
                self._receive_all()
        self._poll_truth()
        now = time.monotonic()
        self.watch.finish(now)
        summary = self.summary(now - started)
        self.observer.on_summary(summary)
        return summary

    def _receive_all(self) -> None:
        """Read what is queued (bounded, so the watchdog and end conditions are checked in between)."""
        for _ in range(1000):
            try:
                _, body = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(body, time.time_ns(), time.monotonic())
            if self.config.max_decisions is not None and self.scoreboard.decisions >= self.config.max_decisions:
                return

    def _handle(self, body: bytes, received_ts_ns: int, now: float) -> None:
        try:
            message = decode_body(body)
        except MessageError as error:
            self.bad_messages += 1
            log.warning("ignoring a message that does not follow the schema: %s", error)
            return
        if isinstance(message, HealthMessage):
            self.last_health = message
            if message.status is HealthStatus.DEGRADED and (self.watch.state is ControllerState.OK):
                self.observer.on_event(StateEvent(EVENT_DEGRADED, message.detail, time.time_ns()))
            self._emit(self.watch.on_health(message, now))
            return
        if self._cameras and message.camera_id not in self._cameras:  # topics match by prefix
            return
        self._emit(self.watch.check(now))
        self._check_guarantee(message)
        record = DecisionRecord.from_message(message, received_ts_ns)
        action = (Action.ACT if message.decision is Decision.ACCEPT and self.watch.state is ControllerState.OK
                  else Action.HOLD)
        self.actions[action] += message.frames
        if message.seq_last is not None:  # schema 1.2: one message for a run of superseded frames
            self.scoreboard.add_run(record, message.seq_last, message.frames)
        else:
            self.scoreboard.add_decision(record)
        self.observer.on_decision(message, record, action, self.watch.state)

    def _check_guarantee(self, message: DecisionMessage) -> None:
        state = (message.monitor, message.audit_state)
        before = self.guarantees.get(message.camera_id)
        if before is not None and state == ("", ""):  # a frame decided before scoring (dropped, stale): no news
            return
        if state != before and len(self.guarantees) < 4096:  # a bounded table, like the service's camera labels
            self.guarantees[message.camera_id] = state
            if before is not None or state[0] not in ("", "ok"):
                was = "monitor {} / audit {}".format(*(v or "off" for v in before)) if before else "new camera"
                self._emit(StateEvent(EVENT_GUARANTEE, f"{message.camera_id}: monitor {state[0] or 'off'} / audit "
                                                       f"{state[1] or 'off'} (was {was})", time.time_ns()))

    def _poll_truth(self) -> None:
        for truth in self.truths:
            for row in truth.poll():
                self.scoreboard.add_truth(row)

    def _emit(self, event: StateEvent | None) -> None:
        if event is not None:
            self.observer.on_event(event)

    def summary(self, seconds: float) -> dict:
        """The scoreboard's summary plus the controller's own state and the service's last counters."""
        summary = self.scoreboard.summary()
        watch = self.watch
        summary.update(
            seconds=seconds, ended_by=self.ended_by, state=watch.state.value,
            actions={a.value: n for a, n in self.actions.items()},
            safe={"entries": watch.safe_entries, "seconds": watch.safe_seconds,
                  "heartbeat_timeout_ms": self.config.heartbeat_timeout_ms, "service_stopped": watch.service_stopped,
                  "heartbeat_seen": watch.last_heartbeat is not None},
            bad_messages=self.bad_messages,
            guarantees={camera: {"monitor": m, "audit": a} for camera, (m, a) in sorted(self.guarantees.items())},
            truth_bad_rows=sum(truth.bad_rows for truth in self.truths),
            service={"status": self.last_health.status.value, "counters": dict(self.last_health.counters),
                     "model_id": self.last_health.model_id, "bundle_id": self.last_health.bundle_id,
                     "threshold": self.last_health.threshold} if self.last_health else None)
        return summary
