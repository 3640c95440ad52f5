"""Observability of the service: an observer interface with a do-nothing default.

* :class:`Observer` is what the service calls (frame received, rejection, decision published,
  batch scored, reload); its methods do nothing, so a service without metrics pays nothing.
* :class:`ServiceStats` counts in memory; the heartbeat on ``trust/_health`` and the final stats
  come from it. It is always on.
* :class:`PrometheusObserver` feeds prometheus_client metrics (an optional dependency, imported
  only when asked for) and :class:`MetricsServer` serves them on ``/metrics`` with a JSON
  ``/healthz`` beside (HTTP 200 while the status is ok, 503 otherwise).

Prometheus metrics (all prefixed ``trustvlm_``): ``frames_received_total{camera}`` (the first 256
cameras by name, later ones as ``camera="_other"``: label values are never freed),
``rejections_total{reason}`` (messages that named no camera), ``decisions_total{decision,reason}``
(dropped and stale frames are decisions with those reasons), ``camera_decisions_total{camera,decision,reason}``
(the same camera labels: each camera's accept rate), ``class_decisions_total{label,decision}``
(per-class defer rate = defer / all of a label), ``defer_ratio`` (cumulative), histograms
``latency_from_capture_seconds`` (without stale, duplicate or out-of-order frames and implausible capture
times, counted in ``latency_from_capture_excluded_total``), ``latency_from_receipt_seconds``, ``batch_size`` and
``batch_seconds``, ``notices_suppressed_total{reason}``, ``publish_overflow_total``, ``publish_errors_total``, ``bundle_reloads_total{result}``,
``auth_denied_total{socket}`` (CurveZMQ handshakes refused by the allow-list); per camera (the same camera labels)
``camera_latency_from_capture_seconds{camera}``, ``camera_last_decision_timestamp_seconds{camera}`` and
``camera_bundle_info{camera,bundle_id}`` (1 for the bundle that scored its latest scored frame; cameras under
``_other`` are left out of it).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from trustvlm.contract.files import json_safe
from trustvlm.runtime.messages import Decision, DecisionMessage, HealthMessage, HealthStatus, Reason
from trustvlm.runtime.status_page import CONTENT_SECURITY_POLICY, camera_status, status_file


class Observer:
    """Events of the service; every method is a no-op here (the null observer)."""

    def on_received(self, camera_id: str | None) -> None:
        """A message arrived (camera None when it named none)."""

    def on_rejected(self, reason: Reason, detail: str) -> None:
        """A message was dropped without an outcome message (it named no camera); counted."""

    def on_published(self, message: DecisionMessage) -> None:
        """A decision was sent."""

    def on_publish_overflow(self, message: DecisionMessage) -> None:
        """A decision was lost because the publish queue was full; counted."""

    def on_publish_error(self, detail: str) -> None:
        """A decision could not be serialized or sent; counted."""

    def on_suppressed(self, reason: Reason) -> None:
        """A frame's outcome was not queued (the buffer's per-camera notice bound); counted."""

    def on_auth_denied(self, domain: str, client_key: str) -> None:
        """A CurveZMQ client was refused (its public key is not allowed on that socket)."""

    def on_batch(self, size: int, seconds: float, error: str | None) -> None:
        """A batch went through encoder and trust head (error: the engine error, if any)."""

    def on_reload(self, ok: bool, detail: str) -> None:
        """A bundle reload was tried."""


NullObserver = Observer


class ObserverGroup(Observer):
    """Fan one event out to several observers."""

    def __init__(self, *observers: Observer):
        self.observers = observers

    def on_received(self, camera_id):
        for observer in self.observers:
            observer.on_received(camera_id)

    def on_rejected(self, reason, detail):
        for observer in self.observers:
            observer.on_rejected(reason, detail)

    def on_published(self, message):
        for observer in self.observers:
            observer.on_published(message)

    def on_publish_overflow(self, message):
        for observer in self.observers:
            observer.on_publish_overflow(message)

    def on_publish_error(self, detail):
        for observer in self.observers:
            observer.on_publish_error(detail)

    def on_suppressed(self, reason):
        for observer in self.observers:
            observer.on_suppressed(reason)

    def on_auth_denied(self, domain, client_key):
        for observer in self.observers:
            observer.on_auth_denied(domain, client_key)

    def on_batch(self, size, seconds, error):
        for observer in self.observers:
            observer.on_batch(size, seconds, error)

    def on_reload(self, ok, detail):
        for observer in self.observers:
            observer.on_reload(ok, detail)


class ServiceStats(Observer):
    """Thread-safe counters for the heartbeat; :meth:`snapshot` gives a flat dict of ints.

    Accounting, by name, in every snapshot (all terms are counted under one lock)::

        received = decisions + rejected + suppressed + pending
        decisions = decisions_accept + decisions_defer
        suppressed = notices_suppressed + publish_overflow + publish_errors

    ``pending`` is what is still in the service (buffer, scoring, publish queue). ``reason_<r>``
    split ``decisions``, ``rejected_<r>`` split ``rejected``, ``suppressed_<r>`` split
    ``notices_suppressed`` by the reason the lost outcome would have had.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self.last_error = ""

    def on_received(self, camera_id):
        with self._lock:
            self._counts["received"] += 1

    def on_rejected(self, reason, detail):
        with self._lock:
            self._counts["rejected"] += 1
            self._counts[f"rejected_{reason.value}"] += 1

    def on_published(self, message):
        frames = getattr(message, "frames", 1)  # a run of superseded frames is one message, several outcomes
        with self._lock:
            self._counts[f"decisions_{message.decision.value}"] += frames
            self._counts[f"reason_{message.reason.value}"] += frames

    def on_publish_overflow(self, message):
        with self._lock:
            self._counts["publish_overflow"] += getattr(message, "frames", 1)

    def on_publish_error(self, detail):
        with self._lock:
            self._counts["publish_errors"] += 1

    def on_suppressed(self, reason):
        with self._lock:
            self._counts["notices_suppressed"] += 1
            self._counts[f"suppressed_{reason.value}"] += 1

    def on_auth_denied(self, domain, client_key):
        with self._lock:
            self._counts[f"auth_denied_{domain.rsplit('-', 1)[-1]}"] += 1

    def on_batch(self, size, seconds, error):
        with self._lock:
            self._counts["batches"] += 1
            self._counts["frames_scored"] += size
            self._counts["scoring_busy_us"] += int(seconds * 1e6)  # encoders and trust head: their busy share
            if error:
                self._counts["engine_errors"] += 1
                self.last_error = error

    def on_reload(self, ok, detail):
        with self._lock:
            self._counts["reloads_ok" if ok else "reloads_refused"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._counts)
        for key in ("received", "decisions_accept", "decisions_defer", "rejected", "notices_suppressed",
                    "publish_overflow", "publish_errors"):
            counts.setdefault(key, 0)
        counts["decisions"] = counts["decisions_accept"] + counts["decisions_defer"]
        counts["suppressed"] = counts["notices_suppressed"] + counts["publish_overflow"] + counts["publish_errors"]
        counts["pending"] = counts["received"] - counts["decisions"] - counts["rejected"] - counts["suppressed"]
        return counts


#: Capture-to-publish latencies beyond this (or negative) say the capture time is wrong (0, seconds instead of
#: nanoseconds, another clock), not that the service was slow: they are left out of the latency histogram.
MAX_PLAUSIBLE_CAPTURE_LATENCY_MS = 3_600_000.0
_UNTIMED_REASONS = frozenset({Reason.STALE, Reason.DUPLICATE, Reason.OUT_OF_ORDER})


def capture_latency_is_plausible(message: DecisionMessage) -> bool:
    """Whether a decision's capture-to-publish latency belongs in the latency histogram.

    Stale, duplicate and out-of-order frames carry capture times that are not the camera's present
    (a zero, seconds instead of nanoseconds, a replay), and a latency that is negative beyond the
    clock tolerance or over an hour is a wrong clock, not a slow service.
    """
    latency = message.latency_from_capture_ms
    return (latency is not None and message.reason not in _UNTIMED_REASONS
            and -1_000.0 <= latency <= MAX_PLAUSIBLE_CAPTURE_LATENCY_MS)


#: Camera label values kept by /metrics; frames of further cameras count under OTHER_CAMERAS. Every label value
#: is a time series held forever, so a sender inventing camera ids must not be able to grow them without end.
MAX_CAMERA_LABELS = 256
OTHER_CAMERAS = "_other"


class PrometheusObserver(Observer):
    """prometheus_client metrics in their own registry (see the module docstring).

    At most `max_camera_labels` camera label values are created; later cameras are counted as
    ``camera="_other"``.
    """

    def __init__(self, max_camera_labels: int = MAX_CAMERA_LABELS) -> None:
        self.max_camera_labels = max_camera_labels
        self._cameras: set[str] = set()
        try:
            import prometheus_client as prom  # noqa: PLC0415 - optional dependency
        except ImportError as error:
            raise RuntimeError("metrics need prometheus_client: pip install prometheus_client "
                               "(or start without --metrics)") from error
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        latency_buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

        def metric(kind, name, doc, labels=(), **kwargs):
            return kind(f"trustvlm_{name}", doc, labelnames=labels, registry=self.registry, **kwargs)

        self.received = metric(prom.Counter, "frames_received", "messages received per camera", ("camera",))
        self.rejections = metric(prom.Counter, "rejections", "messages counted but not answered", ("reason",))
        self.decisions = metric(prom.Counter, "decisions", "published decisions", ("decision", "reason"))
        self.camera_decisions = metric(prom.Counter, "camera_decisions", "published decisions per camera (the "
                                       "camera labels of frames_received)", ("camera", "decision", "reason"))
        self.class_decisions = metric(prom.Counter, "class_decisions", "scored decisions per predicted class",
                                      ("label", "decision"))
        self.defer_ratio = metric(prom.Gauge, "defer_ratio", "share of published decisions that defer (cumulative)")
        self.suppressed = metric(prom.Counter, "notices_suppressed", "outcomes not queued (notice bound), by the "
                                 "reason they would have had", ("reason",))
        self.overflow = metric(prom.Counter, "publish_overflow", "decisions lost to a full publish queue")
        self.publish_errors = metric(prom.Counter, "publish_errors", "messages that could not be serialized or sent")
        self.auth_denied = metric(prom.Counter, "auth_denied", "CurveZMQ clients refused by the allow-list",
                                  ("socket",))
        self.capture_latency = metric(prom.Histogram, "latency_from_capture_seconds", "capture to publish",
                                      buckets=latency_buckets)
        self.capture_latency_excluded = metric(prom.Counter, "latency_from_capture_excluded",
                                               "decisions left out of latency_from_capture_seconds: stale, "
                                               "duplicate or out-of-order frames, or capture times over "
                                               "an hour off")
        self.receipt_latency = metric(prom.Histogram, "latency_from_receipt_seconds", "receipt to publish",
                                      buckets=latency_buckets)
        self.batch_size = metric(prom.Histogram, "batch_size", "frames per scored batch",
                                 buckets=(1, 2, 4, 8, 16, 32, 64))
        self.batch_seconds = metric(prom.Histogram, "batch_seconds", "decode + encoder + trust head per batch",
                                    buckets=latency_buckets)
        self.engine_errors = metric(prom.Counter, "engine_errors", "batches failed by an engine error")
        self.reloads = metric(prom.Counter, "bundle_reloads", "bundle reload attempts", ("result",))
        self.camera_latency = metric(prom.Histogram, "camera_latency_from_capture_seconds", "capture to publish per "
                                     "camera (the decisions latency_from_capture_seconds counts)", ("camera",),
                                     buckets=latency_buckets)
        self.camera_last_decision = metric(prom.Gauge, "camera_last_decision_timestamp_seconds",
                                           "when the camera's latest decision was published (Unix time)", ("camera",))
        self.camera_bundle = metric(prom.Gauge, "camera_bundle_info", "1 for the bundle that scored the camera's "
                                    "latest scored frame", ("camera", "bundle_id"))
        self._camera_bundles: dict[str, str] = {}
        self._lock = threading.Lock()
        self._published = self._deferred = 0

    def on_received(self, camera_id):
        camera = camera_id or ""
        with self._lock:
            if camera not in self._cameras:
                if len(self._cameras) < self.max_camera_labels:
                    self._cameras.add(camera)
                else:
                    camera = OTHER_CAMERAS
        self.received.labels(camera=camera).inc()

    def on_rejected(self, reason, detail):
        self.rejections.labels(reason=reason.value).inc()

    def on_published(self, message):
        self.decisions.labels(decision=message.decision.value, reason=message.reason.value).inc(
            getattr(message, "frames", 1))
        camera = message.camera_id if message.camera_id in self._cameras else OTHER_CAMERAS
        self.camera_decisions.labels(camera=camera, decision=message.decision.value,
                                     reason=message.reason.value).inc(getattr(message, "frames", 1))
        if message.label is not None:
            self.class_decisions.labels(label=message.label, decision=message.decision.value).inc()
        if message.latency_from_capture_ms is not None:
            if capture_latency_is_plausible(message):
                self.capture_latency.observe(max(message.latency_from_capture_ms, 0.0) / 1e3)
                self.camera_latency.labels(camera=camera).observe(max(message.latency_from_capture_ms, 0.0) / 1e3)
            else:
                self.capture_latency_excluded.inc()
        self.camera_last_decision.labels(camera=camera).set((message.publish_ts_ns or 0) / 1e9)
        if message.bundle_id and message.kappa is not None and camera != OTHER_CAMERAS:
            self._set_camera_bundle(camera, message.bundle_id)
        if message.latency_from_receipt_ms is not None:
            self.receipt_latency.observe(max(message.latency_from_receipt_ms, 0.0) / 1e3)
        with self._lock:
            self._published += 1
            self._deferred += message.decision is Decision.DEFER
            self.defer_ratio.set(self._deferred / self._published)

    def _set_camera_bundle(self, camera: str, bundle_id: str) -> None:
        with self._lock:
            previous, self._camera_bundles[camera] = self._camera_bundles.get(camera), bundle_id
        if previous != bundle_id:
            if previous is not None:
                self.camera_bundle.remove(camera, previous)
            self.camera_bundle.labels(camera=camera, bundle_id=bundle_id).set(1)

    def on_publish_overflow(self, message):
        self.overflow.inc()

    def on_publish_error(self, detail):
        self.publish_errors.inc()

    def on_suppressed(self, reason):
        self.suppressed.labels(reason=reason.value).inc()

    def on_auth_denied(self, domain, client_key):
        self.auth_denied.labels(socket=domain.rsplit("-", 1)[-1]).inc()

    def on_batch(self, size, seconds, error):
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        if error:
            self.engine_errors.inc()

    def on_reload(self, ok, detail):
        self.reloads.labels(result="ok" if ok else "refused").inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        return self._prom.generate_latest(self.registry)


class MetricsServer:
    """HTTP endpoint: GET /metrics (Prometheus text), /healthz (JSON heartbeat), / and /status.json (the status
    page, :mod:`trustvlm.runtime.status_page`)."""

    def __init__(self, host: str, port: int, metrics: PrometheusObserver,
                 health: Callable[[], HealthMessage]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                path = self.path.split("?")[0]
                page = status_file(path)
                if path == "/metrics":
                    body, status, kind = metrics.exposition(), 200, "text/plain; version=0.0.4; charset=utf-8"
                elif path == "/healthz":
                    message = health()
                    body = json.dumps(json_safe(message.to_dict(), non_finite="null"), allow_nan=False).encode()
                    status = 200 if message.status is HealthStatus.OK else 503
                    kind = "application/json"
                elif path == "/status.json":
                    status_json = camera_status(metrics.registry, health().to_dict())
                    body = json.dumps(json_safe(status_json, non_finite="null"), allow_nan=False).encode()
                    status, kind = 200, "application/json"
                elif path == "/favicon.ico":  # browsers ask for it: no icon, and no error in their console
                    body, status, kind = b"", 204, "image/x-icon"
                elif page is not None:
                    (body, kind), status = page, 200
                else:
                    body, status, kind = b"not found: try /, /metrics, /healthz or /status.json\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep stderr for the service's own log
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._server.timeout = 1.0
        self.address = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> str:
        self._thread.start()
        return self.address

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
