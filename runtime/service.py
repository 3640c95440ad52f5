"""The streaming trust service: ingest -> frame buffer -> scorer -> publisher, each passed in.

:func:`build_service` wires the parts from a :class:`~trustvlm.runtime.config.ServiceConfig` and
an ingest factory (any :class:`~trustvlm.runtime.ingest.ingest.Ingest`; ``trustvlm serve`` passes the
ZeroMQ one); :class:`TrustService` only runs them, on three threads (ingest, scoring, bundle
reload) beside the publisher's own:

* ingest: receive, check, put into the latest-frame-wins buffer (or count a rejection);
* scoring: take a micro-batch across cameras, hand its frames to the decode pool
  (:mod:`~trustvlm.runtime.decode.decode_pool`), and while they decode, score the batch before it; decide
  every item (scored frames, and notices of dropped / stale / bad frames) and submit the decisions
  in arrival order. Once a batch is decoded, the next one is taken (what arrived while it decoded)
  and decodes while the encoder scores the first. One batch is in flight beside the one being
  scored, unless the encoder takes 4x
  the decode time or more (then the next batch is taken after it, as the freshest frames: see
  :meth:`~trustvlm.runtime.decode.decode_pool.DecodePool.prefetch_pays`); with ``decode.workers`` 0 the
  scoring thread decodes itself, one batch at a time;
* reload: on :meth:`TrustService.request_reload` (SIGHUP) or when the bundle's files change and
  have stayed unchanged for one poll, load and self-check the new bundle, then swap it in; a bad
  bundle is refused with one log line and the old one stays.

Replays: each frame that passed the ingest checks goes through a
:class:`~trustvlm.runtime.ingest.sequence.SequenceGuard` before the buffer; a repeated or older ``seq`` of a
camera is deferred ``duplicate`` / ``out_of_order``, a restart (seq 0, newer capture time) passes.

Shutdown (:meth:`TrustService.request_stop`, SIGINT/SIGTERM in the CLI): the ingest stops taking
frames and closes the buffer; the scoring thread decides everything already received; the
publisher sends those decisions and a final ``stopped`` heartbeat with the counters, then closes.
Failures inside the loop become ``defer`` decisions with a reason; the service keeps running.

With CurveZMQ (``security`` in the config), a :class:`~trustvlm.runtime.ingest.security.CurveGate` runs
the ZAP handler; it starts before the sockets are bound, and if it ever dies the service stops
(the sockets enforce ZAP, so no client gets in unchecked meanwhile).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import zmq

from trustvlm.runtime.config import ServiceConfig, parse_host_port
from trustvlm.runtime.decode.decode_pool import DecodePool
from trustvlm.runtime.frames import ReceivedFrame
from trustvlm.runtime.ingest.frame_buffer import FrameBuffer
from trustvlm.runtime.ingest.ingest import Ingest, IngestFactory, Rejection
from trustvlm.runtime.ingest.security import INGEST_DOMAIN, PUBLISH_DOMAIN, CurveGate
from trustvlm.runtime.ingest.sequence import SequenceGuard
from trustvlm.runtime.messages import HealthMessage, HealthStatus
from trustvlm.runtime.metrics import MetricsServer, Observer, ObserverGroup, PrometheusObserver, ServiceStats
from trustvlm.runtime.monitor.feedback import FeedbackServer
from trustvlm.runtime.monitor.prometheus import WatchCollector
from trustvlm.runtime.monitor.watch import GuaranteeWatch
from trustvlm.runtime.publisher import Publisher
from trustvlm.runtime.record import recorder_for
from trustvlm.runtime.reload import BundleReloader, ScorerLoader
from trustvlm.runtime.scoring.routing import RoutedLoader
from trustvlm.runtime.scoring.scorer import ScorerConfig, ScorerSlot, load_scorer
from trustvlm.runtime.scoring_loop import DecisionTap, ScoringLoop

log = logging.getLogger("trustvlm.runtime.service")



@dataclass(frozen=True)
class ServiceEndpoints:
    """Where a started service listens."""

    ingest: str
    publish: str
    metrics: str | None
    feedback: str | None = None


class HealthReporter:
    """Builds heartbeats from the counters, the buffer and the current bundle."""

    def __init__(self, stats: ServiceStats, buffer: FrameBuffer, slot: ScorerSlot,
                 sequence: SequenceGuard | None = None, decode: DecodePool | None = None):
        self.stats, self.buffer, self.slot, self.decode = stats, buffer, slot, decode
        self.sequence = sequence or SequenceGuard()
        self.started = time.monotonic()
        self.stopping = False
        self.degraded = ""
        #: What scoring capacity is missing ("" when none), asked on every heartbeat; a scoring backend spread
        #: over several machines sets it (a single-machine service has nothing to ask).
        self.capacity: Callable[[], str] | None = None
        #: The guarantee watch (None: off) and the feedback socket (None: off), reported in every heartbeat.
        self.watch: GuaranteeWatch | None = None
        self.feedback: FeedbackServer | None = None
        #: The recorder's counters (:meth:`~trustvlm.runtime.record.recorder.Recorder.stats`) when recording.
        self.record_stats: Callable[[], dict[str, int]] | None = None

    def counters(self) -> dict[str, int]:
        counters = self.stats.snapshot()
        buffer = self.buffer.stats()
        # Buffer events overlap the outcomes above (a superseded frame is a 'dropped' decision or a suppressed
        # one): prefixed, so that no buffer counter reads as a term of the accounting identity.
        counters.update(buffer_superseded=buffer.dropped, buffer_stale=buffer.stale,
                        buffer_camera_limit=buffer.camera_limit, buffer_pending_frames=buffer.pending_frames,
                        buffer_ingest_waits=buffer.ingest_waits)
        counters.update(self.sequence.stats())
        if self.decode is not None:  # decode calls, not outcomes: prefixed like the buffer's counters
            counters["decode_calls"] = self.decode.preparer.decoded
        if self.record_stats is not None:
            counters.update({f"record_{name}": value for name, value in self.record_stats().items()})
        if self.watch is not None:  # monitor and audit events, not outcomes (guarantee_lost is a decision reason)
            counters.update(self.watch.counters())
        if self.feedback is not None:
            counters["feedback_rejected"] = self.feedback.rejected
        return counters

    def __call__(self, requested: HealthStatus = HealthStatus.OK) -> HealthMessage:
        status = requested
        degraded = self.degraded or (self.capacity() if self.capacity is not None else "")
        if requested is HealthStatus.OK:
            status = HealthStatus.STOPPING if self.stopping else (HealthStatus.DEGRADED if degraded
                                                                  else HealthStatus.OK)
        scorer = self.slot.current()
        bundles = scorer.bundles()
        return HealthMessage(status, time.time_ns(), time.monotonic() - self.started, scorer.model_id,
                             scorer.bundle_id, scorer.threshold, self.buffer.stats().cameras, self.counters(),
                             detail=degraded, bundles=tuple(bundles),
                             monitors=tuple(self.watch.snapshot()) if self.watch is not None else ())


class TrustService:
    """Runs the threads of the service over parts built elsewhere (see :func:`build_service`)."""

    def __init__(self, ingest: Ingest, buffer: FrameBuffer, slot: ScorerSlot, publisher: Publisher,
                 health: HealthReporter, observer: Observer, scorer_config: ScorerConfig,
                 reloader: BundleReloader | None = None, watch_bundle: bool = False, reload_poll_ms: int = 1000,
                 metrics_server: MetricsServer | None = None, gate: CurveGate | None = None,
                 sequence: SequenceGuard | None = None, decode: DecodePool | None = None,
                 taps: Sequence[DecisionTap] = ()):
        self.ingest, self.buffer, self.slot, self.publisher = ingest, buffer, slot, publisher
        self.decode = decode or health.decode or DecodePool()
        self.sequence = sequence or health.sequence
        self.health, self.observer, self.scorer_config = health, observer, scorer_config
        self.reloader, self.watch_bundle, self.reload_poll_s = reloader, watch_bundle, reload_poll_ms / 1e3
        self.metrics_server, self.gate = metrics_server, gate
        self.scoring = ScoringLoop(buffer, slot, self.decode, publisher, observer, health, scorer_config.max_batch,
                                   scorer_config.batch_wait_s, watchdog=self._check_parts, taps=taps)
        self.failed = False
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._threads = [threading.Thread(target=self._ingest_loop, name="ingest", daemon=True),
                         threading.Thread(target=self._score_loop, name="scoring", daemon=True)]
        if reloader is not None:
            self._threads.append(threading.Thread(target=self._reload_loop, name="reload", daemon=True))

    def start(self) -> ServiceEndpoints:
        """Start the ZAP handler (with CurveZMQ), open the ingest and the publisher, and start the threads."""
        if self.gate is not None:
            self.gate.start()
        feedback, feedback_at = self.health.feedback, None
        try:
            if feedback is not None:
                feedback_at = feedback.open()
            ingest = self.ingest.open()
        except Exception:
            if feedback is not None:
                feedback.stop()
            self._stop_gate()
            raise
        try:
            publish = self.publisher.open()
        except Exception:
            self.ingest.close()
            if feedback is not None:
                feedback.stop()
            self._stop_gate()
            raise
        if feedback is not None:
            feedback.start()
        metrics = self.metrics_server.start() if self.metrics_server else None
        self.publisher.start()
        for thread in self._threads:
            thread.start()
        return ServiceEndpoints(ingest, publish, metrics, feedback_at)

    def request_stop(self) -> None:
        """Begin a graceful shutdown (safe from a signal handler)."""
        self.health.stopping = True
        self._stop.set()
        self._reload.set()  # wakes the reload thread, which then sees the stop

    def request_reload(self) -> None:
        """Reload the bundle soon (safe from a signal handler)."""
        self._reload.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until every thread has ended (True) or `timeout_s` passed (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not any(thread.is_alive() for thread in self._threads) and not self.publisher.alive
        if done and self.metrics_server:
            self.metrics_server.close()
            self.metrics_server = None
        if done:
            self._stop_gate()
        return done

    def _stop_gate(self) -> None:
        if self.gate is not None:
            self.gate.stop()
            self.gate = None

    def _ingest_loop(self) -> None:
        try:
            while not self._stop.is_set():
                result = self.ingest.receive()
                if result is None:
                    continue
                if isinstance(result, Rejection):
                    self.observer.on_received(None)
                    self.observer.on_rejected(result.reason, result.detail)
                    log.debug("rejected a message (%s): %s", result.reason.value, result.detail)
                    continue
                camera = result.header.camera_id if isinstance(result, ReceivedFrame) else result.camera_id
                self.observer.on_received(camera)
                if isinstance(result, ReceivedFrame):
                    result = self.sequence.check(result)  # a repeated or older seq: deferred before the buffer
                self.buffer.put(result)
        except Exception:
            self.failed = True
            log.exception("ingest thread failed; shutting down")
            self.request_stop()
        finally:
            self.ingest.close()
            self.buffer.close()  # the sentinel: scoring drains what is left, then ends

    def _score_loop(self) -> None:
        try:
            self.scoring.run()
        except Exception:
            self.failed = True
            log.exception("scoring thread failed; shutting down")
            self.request_stop()
        finally:
            self.decode.close()
            if self.health.feedback is not None:  # first: no label or reset may land after the watch's last write
                self.health.feedback.stop()
            self._close_taps()  # the watch writes its state as it ends
            self.publisher.stop()

    def _close_taps(self) -> None:
        """Close each decision tap that has a close() (the recorder writes what is queued), before the final
        heartbeat so that it counts them."""
        for tap in self.scoring.taps:
            try:
                getattr(tap, "close", lambda: None)()
            except Exception:
                log.exception("closing a decision tap failed")

    def _check_parts(self) -> None:
        """Begin a shutdown once the publisher thread or the CurveZMQ authenticator has died (the stop closes
        the ingest and the buffer; the scoring loop ends once it has drained it)."""
        gate = self.gate
        if self.failed:
            return
        if not self.publisher.alive:
            log.error("the publisher thread has died; shutting down")
        elif gate is not None and not gate.alive:
            log.error("the CurveZMQ authenticator has died; shutting down")
        else:
            return
        self.failed = True
        self.request_stop()

    def _reload_loop(self) -> None:
        while not self._stop.is_set():
            triggered = self._reload.wait(self.reload_poll_s)
            if self._stop.is_set():
                break
            try:
                if triggered:
                    self._reload.clear()
                    self.reloader.reload("SIGHUP")
                elif self.watch_bundle and self.reloader.changed():
                    self.reloader.reload("file change")
            except Exception:
                log.exception("bundle reload crashed; keeping the current bundle")


def build_service(config: ServiceConfig, make_ingest: IngestFactory,
                  context: zmq.Context | None = None, load: ScorerLoader = load_scorer,
                  route_loader: Callable[..., RoutedLoader] | None = None) -> TrustService:
    """Load the bundle and build every part of the service (sockets are opened by start()).

    Args:
        config: The service's configuration.
        make_ingest: Builds the ingest on `context`, with the ingest's CurveZMQ server when the
            config asks for one (e.g. :func:`trustvlm.runtime.ingest.transport.zmq_ingest_for`).
        context: ZeroMQ context of the publisher, the ZAP handler and a ZeroMQ ingest.
        load: Builds the scorer from the bundle, at start and on every reload (default: sessions on this
            machine; ``trustvlm serve --cluster`` passes one whose sessions run on a Ray cluster).
        route_loader: Builds the loader of a camera map (``--bundles``) from (artifacts, map file, scorer
            config, auxiliary artifacts): an object with RoutedLoader's ``load_all``, ``changed``,
            ``reload``, ``slot`` and ``observer`` (default: a RoutedLoader over `load`; ``trustvlm serve
            --cluster`` passes one that loads the whole map on every replica).

    Raises:
        BundleError, ArtifactError, EngineError: A bundle, artifacts or sessions that cannot be
            used; the service refuses to start rather than run without a verified bundle.
        RuntimeError: Metrics asked for without prometheus_client, or a --decoder that cannot run here.
        trustvlm.runtime.ingest.security.SecurityError: Unreadable key files or allow-list folders.
    """
    decode = DecodePool(config.decode)  # a decoder that cannot run here is refused before the model loads
    scorer_config = config.scorer.beside_decode_pool(decode.pipelined)
    if config.bundles is not None:  # each camera its own bundle, one encoder (runtime/scoring/routing.py)
        make = route_loader or (lambda *paths: RoutedLoader(*paths, load=load))
        reloader = make(Path(config.artifacts), Path(config.bundles), scorer_config, config.prototype_encoder)
        slot = ScorerSlot(reloader.load_all()[0])
    else:
        slot = ScorerSlot(load(config.artifacts, config.bundle, scorer_config,
                               aux_artifacts_dir=config.prototype_encoder))
    context = context or zmq.Context.instance()
    stats = ServiceStats()
    observers: list[Observer] = [stats]
    metrics_server = None
    buffer = FrameBuffer(config.buffer, on_suppressed=stats.on_suppressed)
    health = HealthReporter(stats, buffer, slot, decode=decode)
    watch = GuaranteeWatch(config.monitor, slot) if config.monitor.enabled else None
    if config.metrics:
        prometheus = PrometheusObserver()
        observers.append(prometheus)
        if watch is not None:
            prometheus.registry.register(WatchCollector(watch))
        host, port = parse_host_port(config.metrics)
        metrics_server = MetricsServer(host, port, prometheus, health)
    observer = ObserverGroup(*observers)
    gate = CurveGate(config.security, context, observer.on_auth_denied) if config.security.enabled else None
    ingest = make_ingest(context, gate.server_for(INGEST_DOMAIN) if gate else None)
    publisher = Publisher(config.publish, health, observer, context,
                          curve=gate.server_for(PUBLISH_DOMAIN) if gate else None)
    if config.bundles is not None:
        reloader.slot, reloader.observer = slot, observer
    else:
        reloader = BundleReloader(slot, Path(config.artifacts), Path(config.bundle), scorer_config, observer,
                                  config.prototype_encoder, load)
    health.watch = watch
    if watch is not None and config.monitor.feedback:
        health.feedback = FeedbackServer(config.monitor.feedback, watch, context,
                                         curve=gate.server_for(PUBLISH_DOMAIN) if gate else None)
    taps: list[DecisionTap] = [watch] if watch is not None else []  # in order: each sees what the one before returned
    if (recorder := recorder_for(config.record)) is not None:  # last: it records the decisions as published
        taps.append(recorder)
        health.record_stats = recorder.stats
    return TrustService(ingest, buffer, slot, publisher, health, observer, scorer_config, reloader,
                        config.reload.watch, config.reload.poll_ms, metrics_server, gate, decode=decode, taps=taps)
