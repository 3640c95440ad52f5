"""Configuration of `trustvlm serve` as typed data: one JSON file, or flags, or both.

A config file holds :meth:`ServiceConfig.to_dict` (``trustvlm serve --dump-config`` prints the
effective one); every key is optional except ``artifacts`` and one of ``bundle`` (one bundle for
every camera) and ``bundles`` (a camera map, :mod:`trustvlm.contract.camera_map`: each camera its
own bundle), and unknown keys are rejected with the valid ones listed. ``prototype_encoder`` is the auxiliary image encoder's export
folder, for bundles whose image prototypes come from one. Relative paths in a file are taken
relative to the file's folder. Flags given on the command line override the file.

Example::

    {"artifacts": "artifacts/demo_fmnist", "bundle": "artifacts/demo_fmnist/bundle",
     "prototype_encoder": null,
     "ingest": {"address": "tcp://*:5555", "socket_type": "rep"},
     "publish": {"address": "tcp://*:5556", "wire_format": "json", "heartbeat_ms": 500},
     "scorer": {"providers": ["cuda"], "max_batch": 8},
     "buffer": {"staleness_ms": 300}, "metrics": "127.0.0.1:9100",
     "monitor": {"feedback": "tcp://127.0.0.1:5557", "state_file": "state/monitor.msgpack"},
     "security": {"server_key": "keys/server.key_secret", "ingest_clients": "keys/cameras",
                  "publish_clients": "keys/controllers"}}

Limits that bound memory (all configurable): ``limits`` (header and payload bytes, image width
and height), ``ingest.receive_hwm`` (messages ZeroMQ queues per sender), ``buffer.max_cameras``
and ``buffer.max_notices_per_camera``, ``publish.queue_size`` and ``publish.send_hwm``.

``record`` (off by default) records thinned frames for recalibration, pre-sorted by predicted label:
:class:`~trustvlm.runtime.record.config.RecordConfig`.
"""

from __future__ import annotations

import json
import os
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from enum import Enum
from pathlib import Path

from trustvlm.runtime.decode.decode_pool import DecodeConfig
from trustvlm.runtime.ingest.frame_buffer import BufferConfig
from trustvlm.runtime.ingest.ingest import FrameLimits
from trustvlm.runtime.publisher import PublishConfig
from trustvlm.runtime.record.config import RecordConfig
from trustvlm.runtime.scoring.scorer_config import ScorerConfig
from trustvlm.runtime.ingest.security import SecurityConfig
from trustvlm.runtime.ingest.transport import IngestConfig
from trustvlm.runtime.monitor.config import MonitorConfig

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class ReloadConfig:
    """Hot reload of the bundle.

    Attributes:
        watch: Reload when the bundle's files change (besides SIGHUP).
        poll_ms: How often the files are checked.
    """

    watch: bool = True
    poll_ms: int = 1000


@dataclass(frozen=True)
class ServiceConfig:
    """Everything `trustvlm serve` needs (see the module docstring)."""

    artifacts: Path
    bundle: Path | None = None
    bundles: Path | None = None
    prototype_encoder: Path | None = None
    ingest: IngestConfig = field(default_factory=IngestConfig)
    limits: FrameLimits = field(default_factory=FrameLimits)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    metrics: str | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        if (self.bundle is None) == (self.bundles is None):
            raise ValueError("give one of bundle (one bundle for every camera) and bundles (a camera map file: each "
                             f"camera its own bundle), but got bundle={self.bundle} and bundles={self.bundles}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level should be one of {LOG_LEVELS}, but got {self.log_level!r}")
        if self.metrics is not None:
            parse_host_port(self.metrics)
        for name, folder, mode in (("ingest", self.security.ingest_clients, self.ingest.mode),
                                   ("publish", self.security.publish_clients, self.publish.mode)):
            if folder is not None and mode.value != "bind":
                raise ValueError(f"security.{name}_clients needs {name}.mode bind (CurveZMQ makes the service the "
                                 f"server of that socket), but got {mode.value}")

    def to_dict(self) -> dict:
        """JSON-ready dict; :meth:`from_dict` restores an equal object."""
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | os.PathLike | None = None) -> "ServiceConfig":
        """Build from a dict; relative paths are resolved against `base_dir` when given.

        Raises:
            ValueError: Unknown or missing keys, wrong types, values out of range.
        """
        config = dataclass_from_dict(cls, data, "config")
        if base_dir is not None:
            base = Path(base_dir)
            config = _replace_paths(config, lambda path: path if path.is_absolute() else base / path)
        return config


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); ValueError otherwise."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"metrics should be 'host:port' like '127.0.0.1:9100', but got {text!r}")
    return host, int(port)


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a JSON config file into a dict (paths not yet resolved)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"cannot read config file {path}: {error}") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"config file {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} should hold a JSON object, but holds {type(data).__name__}")
    return data


def _replace_paths(config, transform):
    security = config.security
    keys = {name: transform(getattr(security, name)) for name in ("server_key", "ingest_clients", "publish_clients")
            if getattr(security, name) is not None}
    paths = {name: transform(getattr(config, name)) for name in ("bundle", "bundles", "prototype_encoder")
             if getattr(config, name) is not None}
    monitor = config.monitor
    state = {} if monitor.state_file is None else {"state_file": transform(monitor.state_file)}
    record = config.record if config.record.dir is None else replace(config.record, dir=transform(config.record.dir))
    return replace(config, artifacts=transform(config.artifacts), **paths, security=replace(security, **keys),
                   monitor=replace(monitor, **state), record=record)


def _to_plain(value):
    if is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_to_plain(item) for item in value]
    return value


def dataclass_from_dict(cls, data, where: str):
    """Build dataclass `cls` from a dict, converting nested dataclasses, enums, paths and tuples.

    Raises:
        ValueError: Unknown keys (listing the known ones), missing required keys, wrong types.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where} should be an object, but got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {known}")
    values = {name: _convert(hints[name], data[name], f"{where}.{name}") for name in known if name in data}
    try:
        return cls(**values)
    except TypeError as error:
        raise ValueError(f"{where}: {error}") from error


def _convert(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(arg for arg in args if arg is not type(None)), value, where)
    if is_dataclass(hint):
        return dataclass_from_dict(hint, value, where)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise ValueError(f"{where} should be one of {[e.value for e in hint]}, but got {value!r}") from None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} should be a list, but got {value!r}")
        return tuple(_convert(args[0], item, f"{where}[]") for item in value)
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{where} should be a path string, but got {value!r}")
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} should be true or false, but got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} should be an integer, but got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} should be a number, but got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} should be a string, but got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config type {hint!r}")
