"""``trustvlm serve --cluster ADDRESS --replicas N``: the service with its scoring on a Ray cluster.

:func:`add_cluster_options` adds the cluster flags to the ``serve`` parser and routes ``serve`` to
:func:`run_serve_or_cluster`: without ``--cluster`` that is the single-machine service, and Ray
is never imported (it is an optional extra, ``pip install 'trustvlm-edge[cluster]'``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from trustvlm.cli_common import CliError
from trustvlm.runtime.cli import config_from_args, describe_bundles, run_serve
from trustvlm.runtime.scoring.engines import ONNXRUNTIME

__all__ = ["add_cluster_options", "run_serve_or_cluster", "cluster_config_from_args"]

EPILOG = """
cluster mode (pip install 'trustvlm-edge[cluster]'; cameras and robots see the same sockets and messages):
  ray start --head --port=6379                              # on the first machine
  ray start --address=<head>:6379                           # on every other machine
  trustvlm serve --config serve.json --cluster <head>:6379 --replicas 4
  trustvlm serve --config serve.json --cluster auto --replicas 8 --replica-gpus 0.25   # 4 replicas per GPU
  trustvlm serve --artifacts artifacts/demo_fmnist --bundles cameras.toml --cluster auto --replicas 2   # camera map
"""


def _resource(text: str) -> tuple[str, float]:
    name, _, amount = text.partition("=")
    try:
        value = float(amount) if amount else 1.0
    except ValueError:
        value = -1.0
    if not name or not value > 0:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME=AMOUNT with AMOUNT > 0, but got {text!r}")
    return name, value


def add_cluster_options(subparsers) -> None:
    """Add the cluster flags to the ``serve`` parser already in `subparsers`."""
    parser = subparsers.choices["serve"]
    parser.epilog = (parser.epilog or "") + EPILOG
    group = parser.add_argument_group(
        "cluster mode", "score on the replicas of a Ray Serve deployment (needs the [cluster] extra: ray[serve]); "
                        "decoding and scoring run on the replicas, ingest and publishing here")
    add = group.add_argument
    add("--cluster", metavar="ADDRESS",
        help="Ray cluster to score on: the head's host:port (`ray start --head` prints it) or auto (default: score "
             "on this machine, without Ray)")
    add("--replicas", type=int, help="scoring replicas, each with its own ONNX Runtime sessions (default: 1)")
    add("--replica-cpus", type=float, help="Ray CPUs per replica, also its ONNX Runtime threads (default: 1)")
    add("--replica-gpus", type=float, help="Ray GPUs per replica; 0.25 puts 4 replicas on one GPU (default: 0)")
    add("--replica-resource", type=_resource, action="append", metavar="NAME[=AMOUNT]",
        help="custom Ray resource each replica takes, e.g. one per node started with "
             "`ray start --resources '{\"trustvlm_replica\": 1}'` (repeatable)")
    add("--answer-timeout-ms", type=float,
        help="longest wait for a frame's answer before it is sent again or deferred engine_error (default: 10000)")
    parser.set_defaults(handler=run_serve_or_cluster)


def cluster_config_from_args(args: argparse.Namespace):
    """The :class:`~trustvlm.cluster.gateway.ClusterConfig` of the flags.

    Raises:
        ValueError: Out-of-range values.
    """
    from trustvlm.cluster.gateway import ClusterConfig  # noqa: PLC0415

    given = vars(args)
    values = {key: given[key] for key in ("replicas", "replica_cpus", "replica_gpus", "answer_timeout_ms")
              if key in given}
    return ClusterConfig(address=args.cluster, replica_resources=dict(given.get("replica_resource", [])), **values)


def run_serve_or_cluster(args: argparse.Namespace) -> int:
    """Handler of ``serve``: the single-machine service, or with ``--cluster`` the cluster gateway."""
    if "cluster" not in vars(args):
        return run_serve(args)
    return run_cluster(args)


def run_cluster(args: argparse.Namespace) -> int:
    """Start the gateway, print where it listens, run until SIGINT/SIGTERM (SIGHUP reloads the bundle or the camera
    map)."""
    import zmq  # noqa: PLC0415

    try:
        config = config_from_args(args)
        cluster = cluster_config_from_args(args)
    except ValueError as error:
        raise CliError(str(error)) from error
    if config.scorer.backend != ONNXRUNTIME:
        raise CliError(f"--cluster runs the replicas on --backend {ONNXRUNTIME} (each replica opens the exported "
                       f"ONNX encoder on --providers), but got --backend {config.scorer.backend}")
    if getattr(args, "dump_config", False):
        print(json.dumps({**config.to_dict(), "cluster": cluster.__dict__}, indent=2))
        return 0
    if config.bundles is not None:  # an unreadable camera map is refused before the cluster is joined
        from trustvlm.contract.camera_map import CameraMapError, read_camera_map  # noqa: PLC0415

        try:
            read_camera_map(config.bundles)
        except CameraMapError as error:
            raise CliError(str(error)) from error
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from trustvlm.cluster.gateway import ClusterBackend  # noqa: PLC0415
        from trustvlm.cluster.routed import ClusterMapLoader  # noqa: PLC0415
        import ray  # noqa: F401, PLC0415
    except ImportError as error:
        raise CliError(f"--cluster needs Ray Serve ({error}): pip install 'trustvlm-edge[cluster]'") from error
    from trustvlm.contract.bundle import BundleError  # noqa: PLC0415
    from trustvlm.contract.manifest import ArtifactError  # noqa: PLC0415
    from trustvlm.runtime.scoring.onnx_engine import EngineError  # noqa: PLC0415
    from trustvlm.runtime.service import build_service  # noqa: PLC0415
    from trustvlm.runtime.ingest.transport import zmq_ingest_for  # noqa: PLC0415

    backend = ClusterBackend(cluster, config.buffer.staleness_ms)
    try:
        backend.connect()
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise CliError(f"cannot join the Ray cluster at {cluster.address}: {error} (is `ray start --head` "
                       "running there?)") from error
    try:
        service = build_service(config, zmq_ingest_for(config), load=backend.load,
                                route_loader=lambda *paths: ClusterMapLoader(backend, *paths))
        service.health.capacity = backend.capacity
        endpoints = service.start()
    except (BundleError, ArtifactError, EngineError, RuntimeError, ValueError, OSError, zmq.ZMQError) as error:
        backend.close()
        raise CliError(str(error)) from error
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: service.request_stop())
        signal.signal(signal.SIGTERM, lambda *_: service.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: service.request_reload())
    scorer = service.slot.current()
    print(f"trustvlm serve: listening ingest={endpoints.ingest} ({config.ingest.socket_type.value}, "
          f"{config.ingest.mode.value}) publish={endpoints.publish} ({config.publish.wire_format.value}, "
          f"trust/<camera_id>, trust/_health every {config.publish.heartbeat_ms} ms) "
          f"model={scorer.model_id} {describe_bundles(scorer)} cluster={cluster.address} replicas={cluster.replicas}",
          flush=True)
    try:
        while not service.wait(0.5):
            pass
    finally:
        backend.close()
    logging.getLogger("trustvlm.runtime.service").info("stopped: %s", json.dumps(service.health.counters()))
    return 1 if service.failed else 0
