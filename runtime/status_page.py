"""A live status page on the metrics port: one row per camera, read from the service's own Prometheus registry.

``GET /`` serves the page (``runtime/status/``: HTML, a small script and a style sheet, no external URL,
``Content-Security-Policy: default-src 'self'``); the script polls ``GET /status.json`` about once a
second. :func:`camera_status` builds that JSON from the registry behind ``/metrics``, so its counts are
the very counters Prometheus scrapes: per camera (the metrics' bounded camera labels, ``_other``
beyond them) frames received, decisions by outcome and reason, the p95 latency from capture (from the
histogram's buckets, as ``histogram_quantile`` interpolates them, over the service's life), when its
latest decision was published, the bundle that scored its latest frame, and its guarantee (the monitor's
state and the audit's, from :mod:`trustvlm.runtime.monitor.prometheus`'s gauges). The page turns a camera red
when it has had no decision for 5 s, deferred most of its frames since the previous poll, or its guarantee
monitor is in alarm or its audit violated; frames per second are the change of the counts between polls.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from importlib import resources

from trustvlm.runtime.monitor.prometheus import AUDIT_CODES, MONITOR_CODES

__all__ = ["STATUS_FILES", "CONTENT_SECURITY_POLICY", "camera_status", "status_file"]

#: Served paths -> (file of runtime/status/, content type).
STATUS_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/status.js": ("status.js", "text/javascript; charset=utf-8"),
                "/status.css": ("status.css", "text/css; charset=utf-8")}
CONTENT_SECURITY_POLICY = "default-src 'self'"


def status_file(path: str) -> tuple[bytes, str] | None:
    """The bytes and content type of a page file, None for another path."""
    if path not in STATUS_FILES:
        return None
    name, kind = STATUS_FILES[path]
    return resources.files("trustvlm.runtime").joinpath("status", name).read_bytes(), kind


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """``histogram_quantile`` of cumulative (upper bound, count) buckets (linear within a bucket); None when empty."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def camera_status(registry, health: dict | None = None) -> dict:
    """``/status.json``: the server's time, each camera's counts and state, and the heartbeat (module docstring)."""
    cameras: dict[str, dict] = defaultdict(lambda: {"received": 0, "decisions": 0, "accepted": 0, "deferred": 0,
                                                    "reasons": {}, "last_decision_ts": None, "bundle_id": "",
                                                    "p95_latency_ms": None, "guarantee": "", "audit": ""})
    monitor_states = {code: name for name, code in MONITOR_CODES.items()}
    audit_states = {code: name for name, code in AUDIT_CODES.items()}
    buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for metric in registry.collect():
        for sample in metric.samples:
            camera = sample.labels.get("camera")
            if camera is None:
                continue
            entry = cameras[camera]
            if sample.name == "trustvlm_frames_received_total":
                entry["received"] = int(sample.value)
            elif sample.name == "trustvlm_camera_decisions_total":
                count = int(sample.value)
                entry["decisions"] += count
                entry["accepted" if sample.labels["decision"] == "accept" else "deferred"] += count
                if sample.labels["decision"] != "accept":
                    reason = sample.labels["reason"]
                    entry["reasons"][reason] = entry["reasons"].get(reason, 0) + count
            elif sample.name == "trustvlm_camera_last_decision_timestamp_seconds":
                entry["last_decision_ts"] = sample.value
            elif sample.name == "trustvlm_camera_bundle_info" and sample.value == 1:
                entry["bundle_id"] = sample.labels["bundle_id"]
            elif sample.name == "trustvlm_camera_guarantee_state":
                entry["guarantee"] = monitor_states.get(int(sample.value), "")
            elif sample.name == "trustvlm_camera_audit_state":
                entry["audit"] = audit_states.get(int(sample.value), "")
            elif sample.name == "trustvlm_camera_latency_from_capture_seconds_bucket":
                buckets[camera].append((float(sample.labels["le"]), sample.value))
    for camera, entries in buckets.items():
        p95 = _quantile(entries, 0.95)
        cameras[camera]["p95_latency_ms"] = None if p95 is None else round(1e3 * p95, 3)
    rows = [{"camera": camera, **entry} for camera, entry in sorted(cameras.items())]
    return {"time": time.time(), "cameras": rows, "health": health or {}}
