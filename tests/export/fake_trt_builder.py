"""A stand-in for the builder half of the TensorRT Python API that export/tensorrt_engine.py uses.

It records the calls and writes the ONNX file's bytes as the "engine". By default it has the
enums of TensorRT 11 (``BuilderFlag`` without ``FP16``, ``NetworkDefinitionCreationFlag`` without
``EXPLICIT_BATCH``), so code that needs what 11 removed fails here as it would on a fresh install.
"""

from __future__ import annotations

import enum
import types
from dataclasses import dataclass, field
from pathlib import Path


class BuilderFlag(enum.IntEnum):  # TensorRT 11: FP16 is gone
    TF32 = 1
    DEBUG = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):  # TensorRT 11: EXPLICIT_BATCH is gone
    STRONGLY_TYPED = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


@dataclass
class Record:
    """What the fake builder saw."""

    network_flags: list[int] = field(default_factory=list)
    set_flags: list = field(default_factory=list)
    cleared_flags: list = field(default_factory=list)
    timing_caches: list[bytes] = field(default_factory=list)
    refuse_timing_cache: bool = False  # set_timing_cache returns False for a non-empty cache
    builds: int = 0
    parsed: list[str] = field(default_factory=list)


class Logger:
    WARNING = 2

    def __init__(self, severity: int = WARNING):
        self.severity = severity


class TimingCache:
    def __init__(self, data: bytes):
        self.data = bytes(data) or b"timing"

    def serialize(self) -> bytes:
        return self.data


class Config:
    def __init__(self, record: Record):
        self.record, self._timing = record, None

    def set_memory_pool_limit(self, pool, size) -> None:
        assert pool == MemoryPoolType.WORKSPACE and size > 0

    def set_flag(self, flag) -> None:
        self.record.set_flags.append(flag)

    def clear_flag(self, flag) -> None:
        self.record.cleared_flags.append(flag)

    def add_optimization_profile(self, profile) -> int:
        return 0

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache(data)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.record.timing_caches.append(cache.data)
        if self.record.refuse_timing_cache and cache.data != b"timing":
            return False
        self._timing = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        return self._timing


class Tensor:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class Network:
    def __init__(self, flags: int):
        self.flags, self.path = flags, None

    @property
    def num_inputs(self) -> int:
        return 1

    def get_input(self, index: int) -> Tensor:
        return Tensor("pixels", (-1, 32, 32, 3))


class Profile:
    def set_shape(self, name, low, opt, high) -> None:
        assert low[0] <= opt[0] <= high[0]


class OnnxParser:
    def __init__(self, network: Network, logger: Logger):
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path: str) -> bool:
        self.network.path = path
        return True


class Builder:
    def __init__(self, logger: Logger, record: Record):
        self.record = record

    def create_network(self, flags: int) -> Network:
        self.record.network_flags.append(flags)
        return Network(flags)

    def create_builder_config(self) -> Config:
        return Config(self.record)

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network: Network, config: Config) -> bytes:
        self.record.builds += 1
        self.record.parsed.append(network.path)
        return Path(network.path).read_bytes()


def make_module(record: Record, version: str = "11.4.0.106") -> types.ModuleType:
    """A module object to install as sys.modules['tensorrt']."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.Logger, module.BuilderFlag, module.MemoryPoolType = Logger, BuilderFlag, MemoryPoolType
    module.NetworkDefinitionCreationFlag, module.OnnxParser = NetworkDefinitionCreationFlag, OnnxParser
    module.Builder = lambda logger: Builder(logger, record)
    return module
