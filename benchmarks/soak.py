"""A bounded soak of `trustvlm serve`: a fixed frame rate for a fixed time, then the accounts.

Run it on the device the service will run on (``make soak``, or)::

    trustvlm soak --artifacts artifacts/demo_fmnist --bundle artifacts/demo_fmnist/bundle \\
        --seconds 180 --rate 40 --cameras 4 --output soak.json

It starts ``serve`` as a child process on free loopback ports
(:class:`~trustvlm.pipelines.serve_process.ServeProcess`), sends frames from ``--cameras``
cameras at ``--rate`` frames/s in total (Fashion-MNIST test images when Debian's
dataset-fashion-mnist is installed, else synthetic images; JPEG, PNG and raw in turn), restarts
its sender socket every ``--sender-restart-s``, reads every decision and heartbeat, samples the
service's resident memory every second, then stops the service with SIGTERM and reports:

* frames sent, received by the service, decided (accept / defer by reason), counted drops
  (rejections, suppressed notices, publish overflow and errors) and **unaccounted** frames (sent,
  but neither decided nor counted: must be 0);
* per-camera order (each camera's decisions in the order its frames were sent);
* latency from capture to publish (p50 / p95 / p99);
* RSS at start, after warm-up, at the end, and its maximum.

Exit status 0 when nothing is unaccounted, the order holds, the service exits 0 and RSS grew by
less than ``--max-rss-growth-mb`` after warm-up; 1 otherwise. It is not part of the test suite.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import zmq

from trustvlm.pipelines.serve_process import ServeProcess
from trustvlm.runtime.frames import Encoding, FrameHeader, send_frame
from trustvlm.runtime.messages import DecisionMessage, HealthMessage, HealthStatus, decode_body

WARMUP_S = 10.0
COUNTED_LOSSES = ("rejected", "notices_suppressed", "publish_overflow", "publish_errors")


@dataclass
class SoakReport:
    """What a soak run measured (see the module docstring)."""

    seconds: float
    rate: float
    cameras: int
    sent: int = 0
    received: int = 0
    decisions: dict = field(default_factory=dict)
    counted_losses: dict = field(default_factory=dict)
    unaccounted: int = 0
    order_ok: bool = True
    latency_ms: dict = field(default_factory=dict)
    rss_mb: dict = field(default_factory=dict)
    service_exit: int | None = None
    final_counters: dict = field(default_factory=dict)
    service_log_tail: str = ""
    passed: bool = False

    def to_dict(self) -> dict:
        """Every field, JSON-ready."""
        return asdict(self)

    def summary(self) -> str:
        losses = ", ".join(f"{k} {v}" for k, v in self.counted_losses.items()) or "none"
        rss = self.rss_mb
        return (f"soak {self.seconds:.0f} s at {self.rate:g} frames/s from {self.cameras} cameras: sent {self.sent}, "
                f"received {self.received}, decided {sum(self.decisions.values())} {self.decisions}; counted drops: "
                f"{losses}; unaccounted {self.unaccounted}; camera order {'ok' if self.order_ok else 'BROKEN'}; "
                f"latency p50/p95/p99 {self.latency_ms.get('p50', float('nan')):.1f}/"
                f"{self.latency_ms.get('p95', float('nan')):.1f}/{self.latency_ms.get('p99', float('nan')):.1f} ms; "
                f"RSS start {rss.get('start', 0):.0f} MiB, after warm-up {rss.get('after_warmup', 0):.0f}, "
                f"end {rss.get('end', 0):.0f}, max {rss.get('max', 0):.0f}; service exit {self.service_exit}; "
                f"{'PASS' if self.passed else 'FAIL'}")


def rss_mb(pid: int) -> float | None:
    """Resident set size of `pid` in MiB (Linux /proc), None where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def load_images(count: int = 256) -> list[np.ndarray]:
    """BGR images: Fashion-MNIST test images when installed, else seeded synthetic ones."""
    try:
        from trustvlm.data.fashion_mnist import load_split  # noqa: PLC0415 - optional data

        images = load_split("test").images[:count]
        return [np.repeat(image[:, :, None], 3, axis=-1) for image in images]
    except (ImportError, OSError, ValueError):
        rng = np.random.default_rng(0)
        return [cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (9, 9), 0) for _ in range(32)]


class Collector:
    """Reads every message on trust/ in a thread: decisions per camera, heartbeats."""

    def __init__(self, context: zmq.Context, endpoint: str):
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)  # keep everything: this is the accounting side
        self.socket.setsockopt(zmq.SUBSCRIBE, b"trust/")
        self.socket.connect(endpoint)
        self.decisions: list[DecisionMessage] = []
        self.health: HealthMessage | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-collector", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while self.health is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no heartbeat within {timeout_s} s")
            time.sleep(0.05)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.socket.poll(100):
                continue
            message = decode_body(self.socket.recv_multipart()[1])
            if isinstance(message, DecisionMessage):
                self.decisions.append(message)
            else:
                self.health = message

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.socket.close(0)


def run_soak(artifacts: Path, bundle: Path, seconds: float, rate: float, cameras: int,
             sender_restart_s: float, max_rss_growth_mb: float, serve_args: list[str]) -> SoakReport:
    """Run one soak (see the module docstring) and return its report."""
    report = SoakReport(seconds, rate, cameras)
    images = load_images()
    encodings = [Encoding.JPEG, Encoding.PNG, Encoding.RAW]
    payloads = {enc: [cv2.imencode(".jpg" if enc is Encoding.JPEG else ".png", image)[1].tobytes()
                      if enc is not Encoding.RAW else np.ascontiguousarray(image).tobytes() for image in images]
                for enc in encodings}
    samples: list[tuple[float, float]] = []
    # The service's stderr goes to a file: a pipe could fill up and stall the service.
    with tempfile.TemporaryDirectory(prefix="soak-") as log_dir, zmq.Context() as context:
        serve = ServeProcess(artifacts, bundle, Path(log_dir), ("--heartbeat-ms", "200", *serve_args)).start()
        collector = Collector(context, serve.publish)
        try:
            collector.start()
            sender = _push(context, serve.ingest)
            started = next_restart = time.monotonic()
            next_restart += sender_restart_s
            seqs = [0] * cameras
            next_sample = started
            while (now := time.monotonic()) - started < seconds:
                if now >= next_sample:
                    samples.append((now - started, rss_mb(serve.pid) or float("nan")))
                    next_sample += 1.0
                if sender_restart_s and now >= next_restart:  # a camera process restarting
                    sender.close(linger=1000)
                    sender = _push(context, serve.ingest)
                    next_restart += sender_restart_s
                due = int((now - started) * rate)
                while report.sent < due:
                    camera = report.sent % cameras
                    encoding = encodings[camera % len(encodings)]
                    index = report.sent % len(images)
                    shape = images[index].shape if encoding is Encoding.RAW else None
                    header = FrameHeader(f"soak{camera}", seqs[camera], time.time_ns(), encoding, shape,
                                         "uint8" if shape else None)
                    send_frame(sender, header, payloads[encoding][index])
                    seqs[camera] += 1
                    report.sent += 1
                time.sleep(min(0.01, 1.0 / max(rate, 1.0)))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _outcomes(collector) < report.sent:
                time.sleep(0.2)
            sender.close(linger=0)
            samples.append((time.monotonic() - started, rss_mb(serve.pid) or float("nan")))
            serve.request_stop()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (collector.health is None
                                                   or collector.health.status is not HealthStatus.STOPPED):
                time.sleep(0.1)
        finally:
            report.service_exit = serve.stop(30)
            collector.stop()
            report.service_log_tail = serve.child.stderr_path.read_text(errors="replace")[-2000:]
    _account(report, collector, samples, max_rss_growth_mb)
    return report


def _push(context: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 5000)
    sock.connect(endpoint)
    return sock


def _outcomes(collector: Collector) -> int:
    counters = collector.health.counters if collector.health else {}
    return len(collector.decisions) + sum(counters.get(key, 0) for key in COUNTED_LOSSES)


def _account(report: SoakReport, collector: Collector, samples: list[tuple[float, float]],
             max_rss_growth_mb: float) -> None:
    counters = dict(collector.health.counters) if collector.health else {}
    report.final_counters = counters
    report.received = counters.get("received", 0)
    report.decisions = dict(Counter(f"{d.decision.value}:{d.reason.value}" for d in collector.decisions))
    report.counted_losses = {key: counters[key] for key in COUNTED_LOSSES if counters.get(key)}
    report.unaccounted = report.sent - _outcomes(collector)
    per_camera = defaultdict(list)
    for decision in collector.decisions:
        per_camera[decision.camera_id].append(decision.seq)
    report.order_ok = all(seqs == sorted(seqs) and len(seqs) == len(set(seqs)) for seqs in per_camera.values())
    latencies = np.array([d.latency_from_capture_ms for d in collector.decisions
                          if d.latency_from_capture_ms is not None])
    if latencies.size:
        report.latency_ms = {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 95, 99)}
    values = [mb for _, mb in samples if mb == mb]
    if values:
        after = [mb for t, mb in samples if t >= min(WARMUP_S, report.seconds / 4) and mb == mb] or values
        report.rss_mb = {"start": values[0], "after_warmup": after[0], "end": values[-1], "max": max(values),
                         "growth_after_warmup": values[-1] - after[0]}
    rss_ok = not values or report.rss_mb["growth_after_warmup"] < max_rss_growth_mb
    report.passed = report.unaccounted == 0 and report.order_ok and report.service_exit == 0 and rss_ok
