"""The gateway side of cluster mode: the service's scorer, with its sessions in a Ray Serve deployment.

``trustvlm serve --cluster ADDRESS --replicas N`` runs the ordinary service (ZeroMQ ingest, frame
buffer, sequence guard, publisher and heartbeat, unchanged for cameras and robots) and passes
:meth:`ClusterBackend.load` as its scorer loader: each frame the scoring loop takes is sent, as
the bytes the camera sent, to the deployment's replicas (:mod:`trustvlm.cluster.replica`), which
decode and score it; the answers come back in the loop's order, so every camera's decisions keep
their order and every frame gets exactly one.

Faults never become accepts. A frame whose replica died, whose node vanished or that got no
answer within ``answer_timeout_ms`` is sent again (at most :data:`MAX_RESENDS` times) while its
staleness deadline allows (Ray Serve routes it to a live replica), and is otherwise deferred
``engine_error``; a replica that refused
the bundle defers its frames ``engine_error`` with the replica's reason. The heartbeat reports
``degraded`` while fewer replicas run than asked for (:meth:`ClusterBackend.capacity`), and ``ok``
again once Ray has restored them.

Bundles: the gateway verifies the bundle (:func:`trustvlm.contract.bundle.load_bundle`), puts its
files into Ray's object store once, and every replica verifies and self-checks them before use. A
reload is swapped in only after every running replica has loaded the new bundle; one refusal
refuses the reload, and the old bundle stays on all of them. A camera map (``--bundles``) goes the
same way (:mod:`trustvlm.cluster.routed`, :mod:`trustvlm.cluster.map_payload`): :meth:`ClusterBackend.ship`
and :meth:`ClusterBackend.decide` serve any scorer that names what the replicas load (``replica_key``,
``payload_ref``) and stamps its own deferrals (``defer``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass, field

from trustvlm.cluster.map_payload import payload_name
from trustvlm.cluster.payload import collect_payload
from trustvlm.contract.bundle import load_bundle
from trustvlm.contract.manifest import read_manifest
from trustvlm.runtime.frames import Notice, ReceivedFrame
from trustvlm.runtime.messages import Decision, DecisionMessage, Reason, bundle_entry
from trustvlm.runtime.scoring.onnx_engine import EngineError
from trustvlm.runtime.scoring.scorer import ScorerConfig, bundle_id_of, model_id_of

__all__ = ["ClusterConfig", "ClusterBackend", "ClusterScorer"]

log = logging.getLogger("trustvlm.cluster")
DEPLOYMENT = "scorer"
#: How often a lost frame is sent again (each time only while its staleness deadline allows).
MAX_RESENDS = 2


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how the scoring replicas run.

    Attributes:
        address: The Ray cluster's address (``host:port`` of the head's GCS, or ``auto``).
        replicas: Scoring replicas (each its own ONNX Runtime sessions).
        replica_cpus: Ray CPUs each replica takes (also its ONNX Runtime threads unless ``threads`` is set).
        replica_gpus: Ray GPUs each replica takes (a fraction shares one GPU between replicas).
        replica_resources: Custom Ray resources each replica takes (e.g. to pin one replica per node).
        batch_wait_ms: How long a replica's batch waits for more frames (``@serve.batch``).
        answer_timeout_ms: Longest wait for one frame's answer before it counts as lost.
        start_timeout_s: Longest wait for the replicas to start (missing resources, a refused bundle).
        app_name: The Serve application's name on the cluster.
    """

    address: str
    replicas: int = 1
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    replica_resources: dict[str, float] = field(default_factory=dict)
    batch_wait_ms: float = 2.0
    answer_timeout_ms: float = 10_000.0
    start_timeout_s: float = 300.0
    app_name: str = "trustvlm"

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas should be >= 1, but got {self.replicas}")
        for name in ("replica_cpus", "replica_gpus", "batch_wait_ms"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} should be >= 0, but got {getattr(self, name)}")
        for name in ("answer_timeout_ms", "start_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} should be > 0, but got {getattr(self, name)}")


class ClusterScorer:
    """One verified bundle served by the cluster: a :class:`~trustvlm.runtime.scoring.scorer.Scorer` whose replicas
    decode the frames they score."""

    decodes_own_frames = True

    def __init__(self, backend: "ClusterBackend", bundle, manifest: dict, payload_ref: list):
        info = bundle.info
        self.backend, self.payload_ref = backend, payload_ref
        self.bundle, self.class_names, self.score_name = bundle, info.class_names, info.score
        threshold = float(info.threshold.threshold)
        self.threshold = threshold if info.threshold.feasible and math.isfinite(threshold) else float("inf")
        self.model_id, self.bundle_id = model_id_of(manifest), bundle_id_of(bundle)
        self.replica_key = self.bundle_id  # what the replicas load and cache it under

    def defer(self, notice: Notice) -> DecisionMessage:
        """The decision message of a frame that was decided before scoring."""
        return DecisionMessage(notice.camera_id, notice.seq, notice.capture_ts_ns, notice.receipt_ts_ns,
                               Decision.DEFER, notice.reason, self.threshold, self.score_name, self.model_id,
                               self.bundle_id, detail=notice.detail, seq_last=notice.seq_last, frames=notice.frames)

    def decide(self, frames: list[ReceivedFrame], prepared: list | None = None) -> list[DecisionMessage]:
        """Score `frames` on the replicas, all in flight at once; one decision per frame, in order."""
        return self.backend.decide(self, frames)

    def bundles(self) -> list[dict]:
        """The bundle in use, as the heartbeat lists it."""
        return [bundle_entry(self)]

    def tower_preprocess(self) -> dict:
        """Nothing: the replicas decode and resize the frames they score."""
        return {}


class ClusterBackend:
    """Connects to the cluster, deploys the replicas, sends them frames and watches their number.

    Args:
        config: The cluster settings.
        staleness_ms: The service's staleness deadline (0: none); a lost frame is sent again only before it.
    """

    def __init__(self, config: ClusterConfig, staleness_ms: float):
        self.config, self.staleness_ms = config, staleness_ms
        self.handle = None
        self._initial_payload: list = []
        self._capacity = ""
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # -- setup -----------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Join the Ray cluster as a driver and start Serve without its HTTP proxy (frames come over ZeroMQ)."""
        import ray  # noqa: PLC0415 - cluster mode only
        from ray import serve  # noqa: PLC0415

        ray.init(address=self.config.address, namespace="trustvlm", logging_level=logging.WARNING,
                 log_to_driver=False, configure_logging=False)
        serve.start(proxy_location="Disabled")

    def load(self, artifacts_dir, bundle_dir, scorer_config: ScorerConfig, previous: ClusterScorer | None = None,
             aux_artifacts_dir=None) -> ClusterScorer:
        """The service's scorer loader: verify here, ship, and have every replica verify and load it.

        Raises:
            trustvlm.contract.bundle.BundleError, ArtifactError: A bundle or export that does not verify here.
            EngineError: Replicas that cannot start, or one that refused the bundle (the reason is theirs).
        """
        import ray  # noqa: PLC0415

        bundle = load_bundle(bundle_dir, artifacts_dir)
        bundle_id = bundle_id_of(bundle)
        payload = collect_payload(artifacts_dir, bundle_dir, bundle_id)
        payload_ref = [ray.put(payload)]
        self.ship(bundle_id, payload_ref, scorer_config)
        log.info("bundle %s (%.1f MB) verified on the replicas", bundle_id, payload.size_bytes / 1e6)
        return ClusterScorer(self, bundle, read_manifest(artifacts_dir), payload_ref)

    def ship(self, key: str, payload_ref: list, scorer_config: ScorerConfig) -> None:
        """Deploy the replicas on the payload `key` (a bundle id or a camera map's key), or have every running
        replica load it.

        Raises:
            EngineError: Replicas that cannot start, or one that refused it (the reason is theirs).
        """
        if self.handle is None:
            self._initial_payload = payload_ref  # replicas Ray restarts later start from it: keep it alive
            self._deploy(scorer_config, key, payload_ref)
        else:
            self._prepare_everywhere(key, payload_ref)

    def _deploy(self, scorer_config: ScorerConfig, bundle_id: str, payload_ref: list) -> None:
        from ray import serve  # noqa: PLC0415

        from trustvlm.cluster.replica import ScorerReplica  # noqa: PLC0415 - imports ray

        config = self.config
        threads = scorer_config.threads or max(1, int(config.replica_cpus))
        values = dataclasses.asdict(dataclasses.replace(scorer_config, threads=threads))
        options = {"num_cpus": config.replica_cpus, "resources": dict(config.replica_resources)}
        if config.replica_gpus:
            options["num_gpus"] = config.replica_gpus
        deployment = serve.deployment(ScorerReplica, name=DEPLOYMENT, num_replicas=config.replicas,
                                      ray_actor_options=options, max_ongoing_requests=4 * scorer_config.max_batch,
                                      health_check_period_s=1.0, health_check_timeout_s=10.0,
                                      # a stopping replica checks for requests still running every 0.2 s, not 2 s:
                                      # the gateway stops the replicas only once every frame was answered
                                      graceful_shutdown_wait_loop_s=0.2)
        app = deployment.bind(values, bundle_id, payload_ref, scorer_config.max_batch, config.batch_wait_ms)
        self.handle = serve._run(app, name=config.app_name, route_prefix=None, _blocking=False)
        deadline = time.monotonic() + config.start_timeout_s
        while True:
            status = self._status()
            if status is not None and status.status == "RUNNING":
                break
            if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                self.close()
                raise EngineError(f"the scoring replicas did not start: {_last_line(self._message(status))}")
            if time.monotonic() > deadline:
                detail = self._message(status) if status is not None else "no status"
                self.close()
                raise EngineError(f"{config.replicas} scoring replicas did not start within "
                                  f"{config.start_timeout_s:g} s (does the cluster have {options} free per replica?): "
                                  f"{_last_line(detail)}")
            time.sleep(0.2)
        self._monitor = threading.Thread(target=self._watch, name="cluster-capacity", daemon=True)
        self._monitor.start()

    def _prepare_everywhere(self, bundle_id: str, payload_ref: list) -> None:
        """Have every running replica load the bundle (or camera map), or raise EngineError (then the reload is
        refused)."""
        running = max(1, self._running()[0])
        ready: set[str] = set()
        for _ in range(10):  # Ray Serve routes each request to one replica; ask until every one has answered
            responses = [self.handle.prepare.remote(bundle_id, payload_ref) for _ in range(2 * running)]
            for response in responses:
                try:
                    answer = response.result(timeout_s=self.config.start_timeout_s)
                except Exception as error:  # a replica that died or hung while loading: not everywhere, so none
                    raise EngineError(f"a replica did not load {payload_name(bundle_id)}: {type(error).__name__}: "
                                      f"{_last_line(str(error))}") from error
                if answer["error"]:
                    raise EngineError(answer["error"])
                ready.add(answer["replica"])
            if len(ready) >= running:
                return
        raise EngineError(f"{payload_name(bundle_id)} reached {len(ready)} of {running} running replicas; not "
                          "swapped in")

    # -- scoring ---------------------------------------------------------------------------------------------
    def decide(self, scorer, frames: list[ReceivedFrame]) -> list[DecisionMessage]:
        """One decision per frame of `scorer` (a :class:`ClusterScorer`, or a camera map's scorer), in order; see the
        module docstring for the fault rules.

        The frames go out as one request per replica (contiguous chunks), all in flight at once.
        """
        from trustvlm.cluster.replica import REFUSED, frame_to_wire  # noqa: PLC0415

        wires = [frame_to_wire(frame) for frame in frames]
        chunks = min(len(frames), self.config.replicas)
        bounds = [len(frames) * part // chunks for part in range(chunks + 1)]
        pending = [self._send(scorer, wires, list(range(low, high))) for low, high in zip(bounds, bounds[1:])]
        decisions: list[DecisionMessage | None] = [None] * len(frames)
        for attempt in range(1 + MAX_RESENDS):
            retry = []
            for indices, response in pending:
                try:
                    answers = response.result(timeout_s=self.config.answer_timeout_ms / 1e3)
                except Exception as error:  # a dead replica or node, a timeout: these frames were not scored
                    response.cancel()
                    again = [index for index in indices
                             if attempt < MAX_RESENDS and self._within_deadline(frames[index])]
                    if again:
                        log.warning("%d frames lost on the cluster (%s); sending them again", len(again),
                                    type(error).__name__)
                        retry.append(self._send(scorer, wires, again))
                    for index in sorted(set(indices) - set(again)):
                        decisions[index] = scorer.defer(Notice.for_frame(
                            frames[index], Reason.ENGINE_ERROR, f"not scored on the cluster: {type(error).__name__}: "
                                                                f"{_last_line(str(error))}"[:500]))
                    continue
                if len(answers) != len(indices):  # never expected; still, no frame may go unanswered
                    answers = [{REFUSED: f"a replica answered {len(answers)} frames for {len(indices)}"}] * len(indices)
                for index, answer in zip(indices, answers):
                    decisions[index] = (scorer.defer(Notice.for_frame(frames[index], Reason.ENGINE_ERROR,
                                                                      answer[REFUSED]))
                                        if REFUSED in answer else DecisionMessage.from_dict(answer))
            pending = retry
            if not pending:
                break
        return decisions

    def _send(self, scorer, wires: list[dict], indices: list[int]) -> tuple[list[int], object]:
        return indices, self.handle.score.remote((scorer.replica_key, scorer.payload_ref, [wires[i] for i in indices]))

    def _within_deadline(self, frame: ReceivedFrame) -> bool:
        if not self.staleness_ms:
            return True
        return time.time_ns() - frame.header.capture_ts_ns < self.staleness_ms * 1e6

    # -- capacity --------------------------------------------------------------------------------------------
    def capacity(self) -> str:
        """What capacity is missing ("" when every replica runs), for the heartbeat's ``degraded``."""
        return self._capacity

    def _status(self):
        from ray import serve  # noqa: PLC0415

        return serve.status().applications.get(self.config.app_name)

    def _running(self) -> tuple[int, dict]:
        status = self._status()
        deployment = status.deployments.get(DEPLOYMENT) if status is not None else None
        states = {str(getattr(key, "value", key)): count
                  for key, count in (deployment.replica_states.items() if deployment else ())}
        return states.get("RUNNING", 0), states

    @staticmethod
    def _message(status) -> str:
        deployment = status.deployments.get(DEPLOYMENT)
        return (deployment.message if deployment is not None and deployment.message else "") or status.message

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            try:
                running, states = self._running()
            except Exception as error:  # the head is unreachable: that is missing capacity too
                detail = f"cluster status unavailable: {type(error).__name__}: {_last_line(str(error))}"
            else:
                detail = "" if running >= self.config.replicas else (
                    f"{running} of {self.config.replicas} scoring replicas running (replicas {states})")
            if detail != self._capacity:
                (log.warning if detail else log.info)("cluster capacity: %s", detail or "every replica runs again")
            self._capacity = detail

    def close(self) -> None:
        """Stop watching, delete the application from the cluster and leave it."""
        import ray  # noqa: PLC0415
        from ray import serve  # noqa: PLC0415

        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(2.0)
        if not ray.is_initialized():
            return
        try:
            serve.delete(self.config.app_name)
        except Exception as error:  # already gone with the cluster: nothing left to delete
            log.warning("could not delete the Serve application %s: %s", self.config.app_name, error)
        self.handle = None
        ray.shutdown()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
