"""End to end through the real service: source -> ZeroMQ -> ``trustvlm serve`` -> publisher -> subscriber.

One ``serve`` process (``python -m trustvlm serve`` on random loopback ports, started by
:class:`~trustvlm.pipelines.serve_process.ServeProcess`) runs three phases; this process is the
cameras and the subscriber (:class:`~trustvlm.benchmarks.e2e_link.Link`: one PUSH socket, 8 camera
ids, raw bgr8 frames at the model's input size, Fashion-MNIST test images upscaled; SUB on
``trust/``), on the same machine:

1. **Saturation** (closed loop): 16 cameras (2 x the batch of 8), each with one frame in flight,
   sending its next frame when the decision for the last one arrives. While one group of 8 is
   scored the other 8 frames wait, so every batch is full and no frame is superseded (with 2 in
   flight per camera, latest-frame-wins would drop frames). Decisions of one batch arrive
   together; the rate of a window is the frames of its batches after the first, divided by the
   time from the first batch to the last (exact per batch cycle, unlike counting frames per
   window). Compared with the raw encoder's images/s at the same batch (8), measured in this
   process just before and just after the phase while the service idles, so that load coming and
   going on the machine hits both alike: the overhead ratio (target >= 0.9).
2. **Latency at 70% load** (open loop): frames evenly spaced at 70% of the saturation rate,
   round-robin over the cameras; latency = subscriber receive time - ``capture_ts_ns`` (the send
   time). p50 / p95 / p99 over the phase, and their range over its windows (target p99 <= 2 x p50).
3. **Flood**: 10 x the saturation rate for 30 s, sends never blocking (a full ZeroMQ queue counts
   as refused). ``VmRSS`` of the serve process is sampled every 0.5 s from ``/proc/<pid>/status``;
   the queues are bounded, so it must stay flat. ``VmHWM`` at the end is the peak RSS.

The service runs with ``--staleness-ms 5000``: on a loaded 2-core machine a frame may wait more
than the default 1 s behind a batch, and would then be deferred ``stale`` instead of timed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustvlm.benchmarks.e2e_link import Link, make_frames
from trustvlm.benchmarks.stats import Figure, percentile
from trustvlm.pipelines.serve_process import ServeProcess, ServiceStartError

CAMERAS = 8
MAX_BATCH = 8
SATURATION_CAMERAS = 2 * MAX_BATCH
LOAD_FRACTION = 0.7
FLOOD_FACTOR = 10.0
BURST_GAP_S = 0.02
SCORED_REASONS = ("meets_threshold", "below_threshold", "no_threshold", "out_of_distribution")
STALENESS_MS = 5000


def start_serve(artifacts: Path, bundle: Path, workdir: Path, extra_args: tuple[str, ...] = (),
                timeout_s: float = 120.0) -> ServeProcess:
    """Start `trustvlm serve` in `workdir` on random loopback ports and wait until it listens.

    Raises:
        ServiceStartError: It exited or said nothing within `timeout_s`.
    """
    artifacts, bundle = Path(artifacts).resolve(), Path(bundle).resolve()  # serve runs in `workdir`
    return ServeProcess(artifacts, bundle, workdir, ("--heartbeat-ms", "500", "--staleness-ms", str(STALENESS_MS),
                                                     "--no-watch", "--log-level", "warning", *extra_args),
                        cwd=workdir, start_timeout_s=timeout_s).start()


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of process `pid` (default: this one) from /proc (NaN where unreadable)."""
    try:
        if pid is None:
            times = os.times()
            return times.user + times.system
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def read_rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MiB from /proc (NaN where unreadable: not Linux, or the process ended)."""
    values = {"VmRSS": float("nan"), "VmHWM": float("nan")}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return values["VmRSS"], values["VmHWM"]


def bursts_of(times: list[float], gap_s: float = BURST_GAP_S) -> list[tuple[float, int]]:
    """(start, count) of each burst: arrivals closer than `gap_s` to the previous one join its burst."""
    bursts: list[tuple[float, int]] = []
    previous = None
    for current in sorted(times):
        if previous is None or current - previous > gap_s:
            bursts.append((current, 1))
        else:
            bursts[-1] = (bursts[-1][0], bursts[-1][1] + 1)
        previous = current
    return bursts


def burst_sizes(times: list[float], gap_s: float = BURST_GAP_S) -> list[int]:
    """Frames per burst (per batch, when decisions come one burst per batch)."""
    return [count for _, count in bursts_of(times, gap_s)]


def burst_rate(times: list[float], gap_s: float = BURST_GAP_S) -> float:
    """Frames per second from decision arrival times that come in bursts (one burst per batch).

    The frames of every burst after the first, divided by the time from the first burst's start
    to the last burst's start; NaN with fewer than two bursts.
    """
    bursts = bursts_of(times, gap_s)
    if len(bursts) < 2 or bursts[-1][0] <= bursts[0][0]:
        return float("nan")
    return sum(count for _, count in bursts[1:]) / (bursts[-1][0] - bursts[0][0])


def window_rate(times: list[float], gap_s: float = BURST_GAP_S) -> float:
    """Frames per second of one window: :func:`burst_rate`, or the stream's rate when the bursts merge.

    A fast encoder's batches follow each other closer than `gap_s`, so their decisions form one
    stream: then the frames after the first over the time from the first to the last (NaN with
    fewer than two arrivals or no time between them).
    """
    rate = burst_rate(times, gap_s)
    if math.isfinite(rate) or len(times) < 2 or max(times) <= min(times):
        return rate
    return (len(times) - 1) / (max(times) - min(times))


@dataclass(frozen=True)
class SaturationResult:
    frames_per_s: Figure
    scored: int
    deferred_other: dict[str, int]
    mean_batch: float


@dataclass(frozen=True)
class LatencyResult:
    offered_per_s: float
    percentiles_ms: dict[str, float]
    window_ranges_ms: dict[str, tuple[float, float]]
    decisions: int
    scored: int
    outcomes: dict[str, int]
    publish_latency_p50_ms: float


@dataclass(frozen=True)
class FloodResult:
    offered_per_s: float
    duration_s: float
    sent: int
    refused: int
    decisions_by_reason: dict[str, int]
    scored_per_s: float
    rss_mib: list[tuple[float, float]]
    rss_start_mib: float
    rss_max_mib: float
    rss_end_mib: float
    growth_second_half_mib: float


@dataclass(frozen=True)
class ServiceResult:
    saturation: SaturationResult
    raw_encoder_b8: Figure | None
    latency: LatencyResult
    flood: FloodResult
    rss_idle_mib: float
    peak_rss_mib: float
    exit_code: int
    last_health: str

    def to_dict(self) -> dict:
        from dataclasses import asdict  # noqa: PLC0415

        data = asdict(self)
        data["saturation"]["frames_per_s"] = self.saturation.frames_per_s.to_dict()
        data["raw_encoder_b8"] = None if self.raw_encoder_b8 is None else self.raw_encoder_b8.to_dict()
        return data


def _cameras(count: int = CAMERAS) -> list[str]:
    return [f"cam{index}" for index in range(count)]


def measure_saturation(link: Link, warmup_s: float, windows: int, window_s: float, min_scored: int = 0,
                       max_extra_s: float = 60.0) -> SaturationResult:
    """Closed loop, one frame in flight for each of 2 x batch cameras (see the module docstring).

    The last window goes on until `min_scored` frames were scored after the warm-up (at most
    `max_extra_s` longer), so that a short run on a busy machine still measures batches.
    """
    for camera in _cameras(SATURATION_CAMERAS):
        link.send(camera)
    started = time.monotonic()
    measure_from = started + warmup_s
    end = measure_from + windows * window_s
    per_window: list[list[float]] = [[] for _ in range(windows)]
    scored, other = 0, {}
    while (now := time.monotonic()) < end or (scored < min_scored and now < end + max_extra_s):
        received = link.receive(max(0.01, min(0.5, end - now)))
        if received is None:
            continue
        message, _ = received
        arrived = time.monotonic()
        if arrived >= measure_from:
            if message.reason.value in SCORED_REASONS:
                scored += 1
                per_window[min(windows - 1, int((arrived - measure_from) // window_s))].append(arrived)
            else:
                other[message.reason.value] = other.get(message.reason.value, 0) + 1
        link.send(message.camera_id)
    rates = tuple(rate for rate in (window_rate(times) for times in per_window) if np.isfinite(rate))
    bursts = sum(len(burst_sizes(times)) for times in per_window)
    _drain(link, 10.0)
    return SaturationResult(Figure(rates or (float("nan"),), "frames/s"), scored, other,
                            scored / bursts if bursts else float("nan"))


def _drain(link: Link, timeout_s: float, quiet_s: float = 1.5) -> int:
    """Read decisions until none came for `quiet_s` (or `timeout_s` passed); how many were read."""
    count, deadline = 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline and link.receive(quiet_s) is not None:
        count += 1
    return count


def measure_latency(link: Link, rate_per_s: float, warmup_s: float, windows: int, window_s: float,
                    min_scored: int = 0, max_extra_s: float = 60.0) -> LatencyResult:
    """Open loop at `rate_per_s`, evenly spaced, round-robin cameras (see the module docstring).

    Frames are sent until `min_scored` of them were scored after the warm-up, at most `max_extra_s`
    past the planned end (the extra frames count in the last window).
    """
    cameras = _cameras()
    interval = 1.0 / rate_per_s
    started = time.monotonic()
    measure_from_ns = time.time_ns() + int(warmup_s * 1e9)
    send_until = planned_end = started + warmup_s + windows * window_s
    next_send, sent = started, 0
    latencies: list[tuple[int, float]] = []
    publish_latencies, counts, outcomes = [], {"decisions": 0, "scored": 0}, {}
    while True:
        now = time.monotonic()
        if now >= send_until and counts["scored"] < min_scored and send_until < planned_end + max_extra_s:
            send_until = min(now + 0.5, planned_end + max_extra_s)
        if now >= next_send and now < send_until:
            link.send(cameras[sent % len(cameras)])
            sent += 1
            next_send = started + sent * interval
            continue
        if now >= send_until + 10.0 or (now >= send_until and sent <= counts["decisions"]):
            break
        received = link.receive(max(0.0, min(next_send - now, 0.2)) if now < send_until else 0.5)
        if received is None:
            continue
        message, received_ns = received
        counts["decisions"] += 1
        if message.capture_ts_ns < measure_from_ns:
            continue
        outcomes[message.reason.value] = outcomes.get(message.reason.value, 0) + 1
        if message.reason.value in SCORED_REASONS:
            counts["scored"] += 1
            latencies.append((message.capture_ts_ns, (received_ns - message.capture_ts_ns) / 1e6))
            publish_latencies.append(message.latency_from_capture_ms)
    values = [latency for _, latency in latencies]
    pooled = {f"p{q}": percentile(values, q) for q in (50, 95, 99)}
    ranges = {}
    for q in (50, 95, 99):
        per_window = []
        for index in range(windows):
            low = measure_from_ns + int(index * window_s * 1e9)
            high = low + int(window_s * 1e9) if index < windows - 1 else float("inf")
            chunk = [lat for ts, lat in latencies if low <= ts < high]
            if chunk:
                per_window.append(percentile(chunk, q))
        ranges[f"p{q}"] = (min(per_window), max(per_window)) if per_window else (float("nan"), float("nan"))
    return LatencyResult(rate_per_s, pooled, ranges, counts["decisions"], counts["scored"], outcomes,
                         percentile([v for v in publish_latencies if v is not None], 50))


def measure_flood(link: Link, pid: int, rate_per_s: float, duration_s: float,
                  rss_period_s: float = 0.5) -> FloodResult:
    """Non-blocking sends at `rate_per_s` for `duration_s`, RSS sampled (see the module docstring)."""
    cameras = _cameras()
    interval = 1.0 / rate_per_s
    started = time.monotonic()
    end = started + duration_s
    next_send, next_rss, attempts, refused = started, started, 0, 0
    reasons: dict[str, int] = {}
    rss: list[tuple[float, float]] = []
    first_scored = last_scored = None
    scored = 0
    while (now := time.monotonic()) < end:
        if now >= next_rss:
            rss.append((round(now - started, 2), read_rss_mib(pid)[0]))
            next_rss += rss_period_s
        if now >= next_send:
            if not link.send(cameras[attempts % len(cameras)], block=False):
                refused += 1
            attempts += 1
            next_send = started + attempts * interval
            continue
        received = link.receive(max(0.0, min(next_send, next_rss) - now))
        if received is not None:
            reason = received[0].reason.value
            reasons[reason] = reasons.get(reason, 0) + 1
            if reason in SCORED_REASONS:
                scored += 1
                first_scored = first_scored or now
                last_scored = now
    rss.append((round(time.monotonic() - started, 2), read_rss_mib(pid)[0]))
    while (received := link.receive(1.5)) is not None:  # what was in flight
        reason = received[0].reason.value
        reasons[reason] = reasons.get(reason, 0) + 1
    values = [value for _, value in rss]
    half = [value for t, value in rss if t >= duration_s / 2]
    scored_rate = (scored - 1) / (last_scored - first_scored) if scored > 1 and last_scored > first_scored else 0.0
    return FloodResult(rate_per_s, duration_s, attempts - refused, refused, reasons, scored_rate, rss, values[0],
                       max(values), values[-1], (half[-1] - half[0]) if len(half) > 1 else float("nan"))


def run_service_benchmark(artifacts: Path, bundle: Path, workdir: Path, size: int, expected_fps: float,
                          saturation_windows: int = 4, window_s: float = 5.0, latency_windows: int = 3,
                          latency_window_s: float = 8.0, flood_s: float = 30.0, warmup_s: float = 5.0,
                          extra_args: tuple[str, ...] = (), log=print,
                          raw_reference: Callable[[], Figure] | None = None, min_scored: int = 0) -> ServiceResult:
    """All three phases on one serve process; `expected_fps` (raw encoder) only sizes the first guesses.

    The saturation and latency phases go on past their planned windows until `min_scored` frames
    were scored in each (0: as planned); the latency warm-up is the shorter of 3 s and `warmup_s`.

    `raw_reference` measures the raw encoder (images/s at batch 8); it is called just before and just
    after the saturation phase and its samples are pooled (None: not measured here).
    """
    import zmq  # noqa: PLC0415

    service = start_serve(artifacts, bundle, workdir, extra_args)
    try:
        with zmq.Context() as context, context.socket(zmq.PUSH) as push, context.socket(zmq.SUB) as sub:
            for sock in (push, sub):
                sock.setsockopt(zmq.LINGER, 0)
            push.setsockopt(zmq.SNDTIMEO, 5000)
            push.setsockopt(zmq.SNDHWM, 256)
            sub.setsockopt(zmq.RCVTIMEO, 5000)
            sub.setsockopt(zmq.RCVHWM, 100_000)
            sub.setsockopt(zmq.SUBSCRIBE, b"trust/")
            push.connect(service.ingest)
            sub.connect(service.publish)
            link = Link(push, sub, make_frames(size), size)
            deadline = time.monotonic() + 30
            while not link.health and time.monotonic() < deadline:
                link.receive(0.5)
            if not link.health:
                raise ServiceStartError(f"no heartbeat from {service.publish} within 30 s")
            rss_idle = read_rss_mib(service.pid)[0]
            log(f"  serve pid {service.pid} up, RSS {rss_idle:.0f} MiB; saturation ({saturation_windows} x "
                f"{window_s:.0f} s after {warmup_s:.0f} s warm-up)")
            before = raw_reference() if raw_reference else None
            saturation = measure_saturation(link, warmup_s, saturation_windows, window_s, min_scored)
            after = raw_reference() if raw_reference else None
            raw = Figure(before.samples + after.samples, before.unit) if before and after else None
            fps = saturation.frames_per_s.median if np.isfinite(saturation.frames_per_s.median) else expected_fps
            log(f"  saturation {saturation.frames_per_s.format()} frames/s; latency at {LOAD_FRACTION:.0%} "
                f"= {LOAD_FRACTION * fps:.1f} frames/s")
            latency = measure_latency(link, LOAD_FRACTION * fps, min(3.0, warmup_s), latency_windows,
                                      latency_window_s, min_scored)
            log(f"  latency p50/p95/p99 {latency.percentiles_ms['p50']:.0f}/{latency.percentiles_ms['p95']:.0f}/"
                f"{latency.percentiles_ms['p99']:.0f} ms; flood {FLOOD_FACTOR * fps:.0f} frames/s for {flood_s:.0f} s")
            flood = measure_flood(link, service.pid, FLOOD_FACTOR * fps, flood_s)
            peak = read_rss_mib(service.pid)[1]
            _drain(link, 5.0)
            link.health.clear()
            deadline = time.monotonic() + 3.0
            while not link.health and time.monotonic() < deadline:
                link.receive(0.5)
            last_health = link.health[-1].status.value if link.health else "none"
    finally:
        exit_code = service.stop()
    return ServiceResult(saturation, raw, latency, flood, rss_idle, peak, exit_code, last_health)


def default_workdir(root: Path) -> Path:
    """Where the serve process runs and writes its stderr."""
    return root / "serve" / str(os.getpid())
