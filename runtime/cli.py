"""`trustvlm serve` (the long-running trust service) and `trustvlm keys` (CurveZMQ key files).

Thin layers over runtime.service and runtime.security. Wire them into the top-level parser with
``add_serve_parser(subparsers)`` and ``add_keys_parser(subparsers)`` (each sets ``handler``). On a
device without the rest of the CLI, run them as ``python -m trustvlm.runtime.cli serve|keys ...``.

The service prints one line saying where it listens, then runs until SIGINT or SIGTERM (graceful:
in-flight frames are answered, final stats published, exit 0). SIGHUP reloads the bundle.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from trustvlm.cli_common import CliError, help_formatter, run_handler
from trustvlm.runtime.config import LOG_LEVELS, ServiceConfig, load_config_file
from trustvlm.runtime.record.config import parse_camera_patterns, parse_interval
from trustvlm.runtime.scoring.engines import BACKENDS

_DEFAULTS = ServiceConfig(artifacts=Path("artifacts/<model>"), bundle=Path("<bundle>"))
#: flag dest -> path of the config key it sets.
_FLAG_KEYS = {
    "artifacts": ("artifacts",), "bundle": ("bundle",), "bundles": ("bundles",),
    "prototype_encoder": ("prototype_encoder",),
    "ingest": ("ingest", "address"), "ingest_socket": ("ingest", "socket_type"), "ingest_mode": ("ingest", "mode"),
    "publish": ("publish", "address"), "publish_format": ("publish", "wire_format"),
    "heartbeat_ms": ("publish", "heartbeat_ms"),
    "providers": ("scorer", "providers"), "allow_cpu_fallback": ("scorer", "allow_fallback"),
    "backend": ("scorer", "backend"), "threads": ("scorer", "threads"), "max_batch": ("scorer", "max_batch"),
    "max_wait_ms": ("scorer", "max_wait_ms"),
    "staleness_ms": ("buffer", "staleness_ms"), "max_cameras": ("buffer", "max_cameras"),
    "max_message_bytes": ("limits", "max_message_bytes"), "max_width": ("limits", "max_width"),
    "max_height": ("limits", "max_height"), "max_header_bytes": ("limits", "max_header_bytes"),
    "receive_hwm": ("ingest", "receive_hwm"), "max_notices_per_camera": ("buffer", "max_notices_per_camera"),
    "publish_queue_size": ("publish", "queue_size"), "send_hwm": ("publish", "send_hwm"),
    "curve_server_key": ("security", "server_key"), "curve_ingest_clients": ("security", "ingest_clients"),
    "curve_publish_clients": ("security", "publish_clients"),
    "decode_workers": ("decode", "workers"), "decode_scale": ("decode", "scale"),
    "decoder": ("decode", "decoder"), "dropped_runs": ("buffer", "dropped_runs"),
    "max_superseded_per_take": ("buffer", "max_superseded_per_take"),
    "watch": ("reload", "watch"), "metrics": ("metrics",), "log_level": ("log_level",),
    "record": ("record", "dir"), "record_cameras": ("record", "cameras"), "record_interval": ("record", "interval"),
    "record_max_bytes": ("record", "max_bytes"), "record_max_files": ("record", "max_files"),
    "monitor": ("monitor", "enabled"), "monitor_interval": ("monitor", "interval_s"),
    "on_drift": ("monitor", "on_drift"), "audit_rate": ("monitor", "audit_rate"), "feedback": ("monitor", "feedback"),
    "monitor_state": ("monitor", "state_file"),
}
#: Flags that name files: taken relative to the working directory, not to the --config file.
_PATH_FLAGS = ("artifacts", "bundle", "bundles", "prototype_encoder", "curve_server_key", "curve_ingest_clients",
               "curve_publish_clients", "monitor_state", "record")
EPILOG = """examples:
  trustvlm serve --artifacts artifacts/demo_fmnist --bundle artifacts/demo_fmnist/bundle \\
      --ingest tcp://*:5555 --publish tcp://*:5556
  trustvlm serve --config serve.json --ingest-socket rep          # imagezmq ImageSender() (REQ/REP)
  trustvlm serve --config serve.json --ingest tcp://rpi1:5555 --ingest-socket sub --ingest-mode connect
  trustvlm serve --config serve.json --prototype-encoder artifacts/dinov2_vitb14   # DINOv2 prototypes
  trustvlm serve --config serve.json --backend tensorrt-engine --providers cuda     # FORMAT=engine export
  trustvlm serve --artifacts artifacts/demo_fmnist --bundles cameras.toml   # each camera its own bundle
  kill -HUP <pid>                                                 # reload the bundle (or the camera map)
  trustvlm keys keys --name server && trustvlm keys keys/cameras --name cam0   # CurveZMQ key files
  trustvlm serve --config serve.json --curve-server-key keys/server.key_secret \
      --curve-ingest-clients keys/cameras --curve-publish-clients keys/controllers
"""


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _default(*path: str):
    value = _DEFAULTS
    for key in path:
        value = getattr(value, key)
    return getattr(value, "value", value)


def _record_cameras(text: str) -> list[str]:
    try:
        return parse_camera_patterns(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _record_interval(text: str) -> str:
    try:
        parse_interval(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.strip()


def add_serve_parser(subparsers) -> None:
    """Add `serve` to a subparsers object; flags override the values of --config."""
    parser = subparsers.add_parser(
        "serve", formatter_class=_formatter, epilog=EPILOG, argument_default=argparse.SUPPRESS,
        help="run the streaming trust service (ZeroMQ frames in, accept/defer decisions out)",
        description="Receive camera frames over ZeroMQ (schema 1 or imagezmq), score them with the exported image "
                    "encoder and a prototype bundle's trust head (ONNX Runtime, no torch), and publish one "
                    "accept/defer decision per frame on trust/<camera_id>, with a heartbeat on trust/_health. "
                    "Flags override --config.")
    add = parser.add_argument
    add("--config", type=Path, help="JSON config file (keys as printed by --dump-config)")
    add("--artifacts", type=Path, help="export folder of the model (manifest.json + encoders)")
    add("--bundle", type=Path, help="prototype bundle folder (bundle.json, prototypes.npz, trust_head.onnx), "
                                    "for every camera")
    add("--bundles", type=Path, metavar="CAMERA_MAP",
        help="instead of --bundle: a camera map (TOML or JSON: camera ids or glob patterns -> bundle folders, an "
             "optional default; the most specific entry wins): each camera scored against its own bundle, the "
             "image encoder shared; SIGHUP re-reads it. A camera with no entry and no default: no_bundle")
    add("--prototype-encoder", type=Path,
        help="export folder of the auxiliary image encoder (e.g. artifacts/dinov2_vitb14) for bundles calibrated "
             "with `--prototype-encoder`; bundles of the VLM's own prototypes ignore it")
    add("--ingest", help=f"ingest endpoint (default: {_default('ingest', 'address')}; "
                         "tcp://127.0.0.1:* binds a free port)")
    add("--ingest-socket", choices=["pull", "sub", "rep"],
        help=f"pull: PUSH cameras; sub: PUB cameras (imagezmq REQ_REP=False); rep: imagezmq REQ senders, "
             f"answered b'OK' (default: {_default('ingest', 'socket_type')})")
    add("--ingest-mode", choices=["bind", "connect"], help=f"(default: {_default('ingest', 'mode')})")
    add("--publish", help=f"PUB endpoint of the decisions (default: {_default('publish', 'address')})")
    add("--publish-format", choices=["msgpack", "json"],
        help=f"body encoding (default: {_default('publish', 'wire_format')})")
    add("--heartbeat-ms", type=int, help=f"trust/_health period (default: {_default('publish', 'heartbeat_ms')})")
    add("--providers", nargs="+", help="ONNX Runtime providers in order, e.g. cuda cpu (default: cpu)")
    add("--backend", choices=list(BACKENDS),
        help="how the image encoder runs; " + "; ".join(f"{name}: {spec.summary}" for name, spec in BACKENDS.items())
             + f" (default: {_default('scorer', 'backend')})")
    add("--allow-cpu-fallback", dest="allow_cpu_fallback", action="store_true",
        help="run on the CPU when a requested GPU provider is unavailable (default: refuse to start)")
    add("--threads", type=int, help="intra-op threads of each image encoder (default: ONNX Runtime's choice; the trust "
                               "head and the gate run on one)")
    add("--max-batch", type=int, help=f"frames per batch, one per camera (default: {_default('scorer', 'max_batch')})")
    add("--max-wait-ms", type=float,
        help="wait for other cameras to fill a batch (default: 0 with the decode pool, 2 when the scoring thread "
             "decodes)")
    add("--staleness-ms", type=float,
        help=f"defer frames older than this since capture, 0: never (default: {_default('buffer', 'staleness_ms')})")
    add("--max-cameras", type=int, help=f"cameras tracked (default: {_default('buffer', 'max_cameras')})")
    add("--max-message-bytes", type=int,
        help=f"largest payload (default: {_default('limits', 'max_message_bytes')})")
    add("--max-width", type=int, help=f"largest image width (default: {_default('limits', 'max_width')})")
    add("--max-height", type=int, help=f"largest image height (default: {_default('limits', 'max_height')})")
    add("--max-header-bytes", type=int,
        help=f"largest frame header (default: {_default('limits', 'max_header_bytes')})")
    add("--receive-hwm", type=int,
        help=f"messages ZeroMQ queues per sender before it blocks (default: {_default('ingest', 'receive_hwm')})")
    add("--max-notices-per-camera", type=int,
        help=f"decided frames waiting per camera; more are counted, not queued "
             f"(default: {_default('buffer', 'max_notices_per_camera')})")
    add("--publish-queue-size", type=int,
        help=f"decisions waiting for the publisher; more are counted as overflow "
             f"(default: {_default('publish', 'queue_size')})")
    add("--send-hwm", type=int, help=f"messages queued per subscriber (default: {_default('publish', 'send_hwm')})")
    add("--curve-server-key", type=Path,
        help="CurveZMQ: the service's secret key file (NAME.key_secret from `trustvlm keys`); needs an allow-list")
    add("--curve-ingest-clients", type=Path,
        help="CurveZMQ on the ingest: folder of the public keys (*.key) of the cameras allowed to send "
             "(default: ingest open)")
    add("--curve-publish-clients", type=Path,
        help="CurveZMQ on the publisher: folder of the public keys (*.key) of the subscribers allowed to read "
             "(default: publish open)")
    add("--decode-workers", type=int,
        help="threads decoding frames beside the encoder (default: one per core; 0: the scoring thread decodes "
             "each batch itself, not pipelined)")
    add("--decode-scale", choices=["auto", "full"],
        help="auto: decode JPEG at 1/2, 1/4 or 1/8 scale when still >= the model's input size, for a model that "
             "passed `trustvlm decode-gate` (else full, said in one log line); full: always full size "
             f"(default: {_default('decode', 'scale')})")
    add("--decoder", choices=["cpu", "nvimgcodec"],
        help="cpu: libjpeg-turbo, strict, on the decode threads; nvimgcodec: JPEG batches on the GPU "
             "(nvImageCodec, installed by the gpu extra; each JPEG validated by the strict CPU decoder first); "
             f"refused at start where it cannot run (default: {_default('decode', 'decoder')})")
    add("--dropped-runs", action="store_true",
        help="answer consecutive superseded frames of a camera with one 'dropped' message for the run (seq..seq_last, "
             "frames; decision schema 1.2) instead of one each: keeps scoring going under a flood; subscribers "
             "must count outcomes by 'frames' (default: one message per frame)")
    add("--max-superseded-per-take", type=int,
        help="frames of one camera superseded since its last batch after which, under a flood (buffer."
             "flood_superseded_per_s superseded frames/s or more, default 1000), the ingest waits for scoring, "
             "leaving the next frames in ZeroMQ's bounded queues (against receive livelock); 0: never wait "
             f"(default: {_default('buffer', 'max_superseded_per_take')})")
    add("--no-watch", dest="watch", action="store_false",
        help="reload the bundle on SIGHUP only, not when its files change")
    add("--no-monitor", dest="monitor", action="store_false",
        help="do not watch the cameras' guarantees (no drift monitor, no audits, nothing deferred guarantee_lost)")
    add("--monitor-interval", type=float, metavar="SECONDS",
        help="the guarantee monitor takes at most one frame per camera per this much capture time "
             f"(default: {_default('monitor', 'interval_s')})")
    add("--on-drift", choices=["defer", "warn"],
        help="a camera whose monitor is in alarm or whose audit found the risk above alpha: defer its frames "
             f"guarantee_lost until a new bundle or a reset, or only warn (default: {_default('monitor', 'on_drift')})")
    add("--audit-rate", type=float,
        help="share of accepted frames marked audit: true, whose labels the audit wants back "
             f"(default: {_default('monitor', 'audit_rate')}; 0: no audits)")
    add("--feedback", metavar="ADDRESS",
        help="bind the feedback socket (ZeroMQ REP) for audit labels and operator resets, e.g. tcp://127.0.0.1:5557 "
             "(`trustvlm audit` sends to it; loopback or ipc:// unless CurveZMQ is on; default: off)")
    add("--monitor-state", type=Path, metavar="FILE",
        help="keep each camera's monitor and audit state in FILE (msgpack, JSON mirror beside), read back at start, "
             "so a restart does not clear an alarm (default: in memory only)")
    add("--record", type=Path, metavar="DIR",
        help="record thinned frames for recalibration into DIR/<camera>/to_review/<predicted label>/ with "
             "DIR/<camera>/frames.csv, for a person to check before `trustvlm calibrate --data "
             "DIR/<camera>/to_review` (see DIR/README.txt; default: off)")
    add("--record-cameras", type=_record_cameras, metavar="PATTERNS",
        help="comma-separated camera ids or glob patterns to record, e.g. 'cam1,gripper*' (default: all)")
    add("--record-interval", type=_record_interval, metavar="INTERVAL",
        help="record at most one frame per camera per this much capture time: 1s, 500ms, 2min; 0: every frame "
             f"(default: {_default('record', 'interval')})")
    add("--record-max-bytes", type=int,
        help=f"the oldest recorded images are deleted to stay at or under this many bytes "
             f"(default: {_default('record', 'max_bytes')})")
    add("--record-max-files", type=int,
        help=f"... and at or under this many files (default: {_default('record', 'max_files')})")
    add("--metrics", help="host:port of the Prometheus /metrics and /healthz endpoint (default: off)")
    add("--log-level", choices=LOG_LEVELS, help="(default: info)")
    add("--dump-config", action="store_true", help="print the effective config as JSON and exit")
    parser.set_defaults(handler=run_serve)


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    """The config file (if any) with the given flags on top.

    Raises:
        ValueError: A config that is unreadable, incomplete or out of range.
    """
    given = vars(args)
    data, base_dir = {}, None
    if "config" in given:
        data, base_dir = load_config_file(args.config), Path(args.config).resolve().parent
    for dest, path in _FLAG_KEYS.items():
        if dest not in given:
            continue
        value = given[dest]
        if dest in _PATH_FLAGS and dest not in ("artifacts", "bundle", "bundles"):
            value = Path(value).absolute()  # relative to the working directory, whatever --config says
        value = str(value) if isinstance(value, Path) else value
        target = data
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    if "artifacts" not in data:
        raise ValueError("--artifacts is required (on the command line or in the --config file)")
    if "bundle" in given and "bundles" in given:
        raise ValueError("give --bundle DIR (one bundle for every camera) or --bundles FILE (a camera map), not both")
    if "bundle" in given or "bundles" in given:  # a flag replaces the file's choice of one bundle or a camera map
        data.pop("bundles" if "bundle" in given else "bundle", None)
    if "bundle" not in data and "bundles" not in data:
        raise ValueError("--bundle DIR (one bundle for every camera) or --bundles FILE (a camera map: each camera "
                         "its own bundle) is required (on the command line or in the --config file)")
    flag_paths = {key: Path(data[key]) for key in ("artifacts", "bundle", "bundles") if key in given}
    config = ServiceConfig.from_dict(data, base_dir)
    if config.record.dir is None and any(dest.startswith("record_") for dest in given):
        raise ValueError("--record-cameras, --record-interval and --record-max-* need --record DIR (or record.dir in "
                         "the --config file)")
    if flag_paths:  # flags are relative to the working directory, not to the config file
        config = replace(config, **flag_paths)
    return config


def run_serve(args: argparse.Namespace) -> int:
    """Handler of `trustvlm serve`: start, print where it listens, run until a signal."""
    import zmq  # noqa: PLC0415 - keep --help light

    from trustvlm.contract.bundle import BundleError  # noqa: PLC0415
    from trustvlm.contract.manifest import ArtifactError  # noqa: PLC0415
    from trustvlm.runtime.scoring.onnx_engine import EngineError  # noqa: PLC0415
    from trustvlm.contract.scores import AUX_HEAD_INPUT  # noqa: PLC0415
    from trustvlm.runtime.service import build_service  # noqa: PLC0415
    from trustvlm.runtime.ingest.transport import zmq_ingest_for  # noqa: PLC0415

    try:
        config = config_from_args(args)
    except ValueError as error:
        raise CliError(str(error)) from error
    if getattr(args, "dump_config", False):
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        service = build_service(config, zmq_ingest_for(config))
        endpoints = service.start()
    except (BundleError, ArtifactError, EngineError, RuntimeError, ValueError, OSError, zmq.ZMQError) as error:
        raise CliError(str(error)) from error
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: service.request_stop())
        signal.signal(signal.SIGTERM, lambda *_: service.request_stop())
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: service.request_reload())
    scorer = service.slot.current()
    metrics = f" metrics={endpoints.metrics}/metrics" if endpoints.metrics else ""
    metrics += f" feedback={endpoints.feedback}" if endpoints.feedback else ""
    curve = {"ingest": config.security.ingest_clients is not None,
             "publish": config.security.publish_clients is not None}
    print(f"trustvlm serve: listening ingest={endpoints.ingest} ({config.ingest.socket_type.value}, "
          f"{config.ingest.mode.value}{', curve' if curve['ingest'] else ''}) publish={endpoints.publish} "
          f"({config.publish.wire_format.value}{', curve' if curve['publish'] else ''}, "
          f"trust/<camera_id>, trust/_health every {config.publish.heartbeat_ms} ms){metrics} "
          f"model={scorer.model_id} {describe_bundles(scorer)} "
          f"providers={list(scorer.towers['embedding'].engine.providers)}"
          f"{' aux=' + scorer.towers[AUX_HEAD_INPUT].engine.path.name if AUX_HEAD_INPUT in scorer.towers else ''}",
          flush=True)
    while not service.wait(0.5):
        pass
    logging.getLogger("trustvlm.runtime.service").info("stopped: %s", json.dumps(service.health.counters()))
    return 1 if service.failed else 0


def describe_bundles(scorer) -> str:
    """``bundle=ID accept SCORE >= T``, or one such entry per bundle of a camera map."""
    return "; ".join(f"bundle={b['bundle_id']}{' cameras=' + ','.join(b['cameras']) if b['cameras'] else ''} "
                     f"accept {b['score_name']} >= {b['threshold']:.4g}" for b in scorer.bundles())


def add_keys_parser(subparsers) -> None:
    """Add `keys` to a subparsers object: write a CurveZMQ key pair."""
    parser = subparsers.add_parser(
        "keys", formatter_class=help_formatter,
        help="write a CurveZMQ key pair (NAME.key public, NAME.key_secret private) for serve or a client",
        description="Write a ZeroMQ certificate pair into FOLDER: NAME.key (public: copy it to the peers, or into "
                    "the service's allow-list folder) and NAME.key_secret (private, mode 600). Existing files are "
                    "never overwritten.",
        epilog="setup: `trustvlm keys keys --name server`; per camera `trustvlm keys keys/cameras --name cam0` (the "
               "camera keeps cam0.key_secret and server.key; keys/cameras is the --curve-ingest-clients folder); "
               "per controller the same into keys/controllers (--curve-publish-clients).")
    parser.add_argument("folder", type=Path, help="where to write the two files (created if missing)")
    parser.add_argument("--name", default="server", help="file name stem: letters, digits, '_', '.', '-'")
    parser.set_defaults(handler=run_keys)


def run_keys(args: argparse.Namespace) -> int:
    """Handler of `trustvlm keys`."""
    from trustvlm.runtime.ingest.security import SecurityError, create_keypair  # noqa: PLC0415

    try:
        public, secret = create_keypair(args.folder, args.name)
    except (SecurityError, OSError) as error:
        raise CliError(str(error)) from error
    print(f"wrote {public} (public) and {secret} (secret, mode 600)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m trustvlm.runtime.cli serve|keys ...``."""
    parser = argparse.ArgumentParser(prog="trustvlm")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_serve_parser(subparsers)
    add_keys_parser(subparsers)
    return run_handler(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
