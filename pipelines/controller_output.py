"""What the controller prints and logs: a console printer, a JSONL logger, and the summary as text.

Both are :class:`~trustvlm.pipelines.controller.ControllerObserver` implementations; combine them with
:class:`ObserverGroup`. The JSONL log holds one object per line: ``{"event": "decision", ...}`` for each
decision (the decision's fields, the controller's receipt time, its action and state) and
``{"event": "safe_enter" | "safe_exit" | "service_degraded", ...}`` for each state change.
"""

from __future__ import annotations

import json
import math
import os
import sys
from enum import Enum
from typing import TextIO

from trustvlm.contract.files import json_safe
from trustvlm.pipelines.controller import (EVENT_DEGRADED, EVENT_GUARANTEE, EVENT_SAFE_ENTER, Action,
                                           ControllerObserver, ControllerState, StateEvent)
from trustvlm.pipelines.scoreboard import DecisionRecord
from trustvlm.runtime.messages import DecisionMessage


class PrintMode(str, Enum):
    """How much the console printer says: every decision, or only state changes and progress."""

    DECISIONS = "decisions"
    EVENTS = "events"


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _ms(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f} ms"


def describe_event(event: StateEvent, timeout_ms: float) -> str:
    """One line for a state change."""
    if event.name == EVENT_SAFE_ENTER:
        why = (f"no heartbeat for {event.silent_ms:.0f} ms (timeout {timeout_ms:.0f} ms)"
               if math.isfinite(event.silent_ms) and event.silent_ms > 0 else event.reason)
        return f"SAFE: {why}: every camera is treated as deferred"
    if event.name == EVENT_DEGRADED:
        return f"WARNING: the service reports degraded: {event.reason}"
    if event.name == EVENT_GUARANTEE:
        return f"GUARANTEE: {event.reason}"
    return f"OK: {event.reason} ({event.safe_ms / 1e3:.1f} s in SAFE): acting on accepted decisions again"


def describe_decision(message: DecisionMessage, record: DecisionRecord, action: Action) -> str:
    kappa = "-" if message.kappa is None else f"{message.kappa:.3f}"
    return (f"{message.camera_id} #{message.seq}: {message.decision.value.upper()} {message.label or '-'} "
            f"({message.reason.value}, kappa {kappa}, threshold {message.threshold:.3f}) "
            f"{record.e2e_latency_ms:.1f} ms -> {action.value}")


def format_progress(summary: dict) -> str:
    labelled = summary["labelled"]
    line = (f"progress: {summary['decisions']} decisions, {summary['accepted']} accepted "
            f"({_pct(summary['coverage_all_frames'])}), state {summary['state'].upper()}")
    if labelled["frames"]:
        line += (f"; labelled {labelled['frames']}: accuracy accepted {_pct(labelled['accuracy_accepted'])} "
                 f"vs all {_pct(labelled['accuracy_all'])}")
    p50 = summary["latency_ms"]["e2e_from_capture"]["p50"]
    return line + f"; latency p50 {_ms(p50)}"


def format_summary(summary: dict) -> list[str]:
    """The final summary as lines of text (the same figures as the JSON)."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in summary["reasons"].items() if reason != "meets_threshold")
    lines = [f"controller summary (ended by {summary['ended_by']} after {summary['seconds']:.1f} s):",
             f"  decisions {summary['decisions']}: accepted {summary['accepted']}, deferred {summary['deferred']}"
             f"{f' ({reasons})' if reasons else ''}; duplicates {summary['duplicates']}"]
    guarantees = summary.get("guarantees", {})
    for camera, counts in summary["cameras"].items():
        guarantee = guarantees.get(camera, {})
        watched = f"; monitor {guarantee['monitor']}" if guarantee.get("monitor") else ""
        watched += f", audit {guarantee['audit']}" if guarantee.get("audit") else ""
        lines.append(f"  camera {camera}: {counts['decisions']} decisions, {counts['accepted']} accepted, "
                     f"{counts['deferred']} deferred, {counts['labelled']} labelled{watched}")
    labelled = summary["labelled"]
    if labelled["truth_rows"]:
        lines.append(f"  labelled frames {labelled['frames']}: accuracy on accepted "
                     f"{_pct(labelled['accuracy_accepted'])} ({labelled['accepted']} accepted, "
                     f"coverage {_pct(labelled['coverage'])}) vs "
                     f"{_pct(labelled['accuracy_all'])} on all {labelled['scored']} scored frames")
        unanswered = labelled["unanswered"]
        lines.append(f"  frames sent without a decision: {sum(unanswered.values())}"
                     f"{f' {unanswered}' if unanswered else ''}")
    e2e, publish = summary["latency_ms"]["e2e_from_capture"], summary["latency_ms"]["publish_from_capture"]
    lines.append(f"  latency from capture to the controller: p50 {_ms(e2e['p50'])}, p95 {_ms(e2e['p95'])}, "
                 f"p99 {_ms(e2e['p99'])} (to the service's publish: p50 {_ms(publish['p50'])}, "
                 f"p99 {_ms(publish['p99'])})")
    safe, service = summary["safe"], summary["service"]
    lines.append(f"  SAFE entered {safe['entries']} time(s) after the first heartbeat, {safe['seconds']:.1f} s in "
                 f"SAFE in all; state at the end {summary['state'].upper()}; service "
                 f"{service['status'] if service else 'never heard from'}")
    return lines


class ConsolePrinter(ControllerObserver):
    """Prints state changes always, decisions in DECISIONS mode, progress when asked."""

    def __init__(self, mode: PrintMode = PrintMode.DECISIONS, heartbeat_timeout_ms: float = 0.0,
                 stream: TextIO | None = None):
        self.mode, self.timeout_ms = PrintMode(mode), heartbeat_timeout_ms
        self.stream = stream or sys.stdout

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def on_decision(self, message, record, action, state) -> None:
        if self.mode is PrintMode.DECISIONS:
            self._print(describe_decision(message, record, action))

    def on_event(self, event: StateEvent) -> None:
        self._print(describe_event(event, self.timeout_ms))

    def on_progress(self, summary: dict) -> None:
        self._print(format_progress(summary))

    def on_summary(self, summary: dict) -> None:
        for line in format_summary(summary):
            self._print(line)


class JsonlLogger(ControllerObserver):
    """Writes decisions and state changes to a JSONL file (see the module docstring).

    Decisions are buffered; the file is flushed at each state change and at the end, so a controller that is
    killed (SIGKILL) may lose its last decisions from the log, never a state change.
    """

    def __init__(self, path: str | os.PathLike):
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(json_safe(record, non_finite="null"), separators=(",", ":")) + "\n")

    def on_decision(self, message: DecisionMessage, record: DecisionRecord, action: Action,
                    state: ControllerState) -> None:
        data = message.to_dict()
        del data["kind"]
        data.update(event="decision", e2e_latency_ms=record.e2e_latency_ms, action=action.value, state=state.value)
        self._write(data)

    def on_event(self, event: StateEvent) -> None:
        self._write({"event": event.name, "reason": event.reason, "ts_ns": event.ts_ns,
                     "silent_ms": event.silent_ms, "safe_ms": event.safe_ms})
        self._file.flush()

    def on_summary(self, summary: dict) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ObserverGroup(ControllerObserver):
    """Calls each observer in turn."""

    def __init__(self, *observers: ControllerObserver):
        self.observers = observers

    def on_decision(self, message, record, action, state) -> None:
        for observer in self.observers:
            observer.on_decision(message, record, action, state)

    def on_event(self, event) -> None:
        for observer in self.observers:
            observer.on_event(event)

    def on_progress(self, summary) -> None:
        for observer in self.observers:
            observer.on_progress(summary)

    def on_summary(self, summary) -> None:
        for observer in self.observers:
            observer.on_summary(summary)
