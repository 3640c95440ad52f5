"""A stand-in for the part of the TensorRT 10 Python API that runtime/scoring/tensorrt_engine.py uses.

Only the edge that this machine cannot have (TensorRT and a GPU) is replaced. The "engine file" is
an ONNX graph's bytes: ``Runtime.deserialize_cuda_engine`` opens it in an ONNX Runtime CPU session
(returning None for bytes it cannot parse, as TensorRT does), and ``execute_v2`` reads each input
from the raw address it is given, runs the real graph and writes each output to its address. With
the backend on ``device_type="cpu"`` those addresses are real OrtValue buffers, so the pointer and
buffer handling of the backend is exercised as it is.

Mimicked API: ``Logger`` (``WARNING``), ``Runtime(logger).deserialize_cuda_engine(bytes)``,
``TensorIOMode``, ``DataType``, and on the engine ``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``get_tensor_dtype``, ``get_tensor_shape``, ``get_tensor_profile_shape``,
``create_execution_context``; on the context ``set_input_shape``, ``get_tensor_shape`` and
``execute_v2``.
"""

from __future__ import annotations

import ctypes
import enum
import types
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


ONNX_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(uint8)": DataType.UINT8,
              "tensor(int64)": DataType.INT64}
NUMPY_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.UINT8: np.uint8,
               DataType.INT64: np.int64}


@dataclass
class FakeOptions:
    """How the fake engine behaves, and what it saw."""

    max_batch: int = 8
    opt_batch: int = 4
    outputs_first: bool = False  # I/O tensor order: the backend must follow it, not assume inputs first
    execute_result: bool = True
    execute_error: str | None = None
    runs: list[tuple[int, ...]] = field(default_factory=list)  # input shapes that execute_v2 ran


class Logger:
    WARNING = 2

    def __init__(self, min_severity: int = WARNING):
        self.min_severity = min_severity


class ICudaEngine:
    def __init__(self, session: ort.InferenceSession, options: FakeOptions):
        self.session, self.options = session, options
        self._modes = {i.name: TensorIOMode.INPUT for i in session.get_inputs()}
        self._modes.update({o.name: TensorIOMode.OUTPUT for o in session.get_outputs()})
        self._args = {a.name: a for a in session.get_inputs() + session.get_outputs()}
        names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        self._order = names[1] + names[0] if options.outputs_first else names[0] + names[1]

    @property
    def num_io_tensors(self) -> int:
        return len(self._order)

    def get_tensor_name(self, index: int) -> str:
        return self._order[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._modes.get(name, TensorIOMode.NONE)

    def get_tensor_dtype(self, name: str) -> DataType:
        return ONNX_TYPES[self._args[name].type]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        """-1 for each dynamic dimension, as TensorRT reports it."""
        return tuple(d if isinstance(d, int) else -1 for d in self._args[name].shape)

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        if profile_index != 0 or self.get_tensor_mode(name) != TensorIOMode.INPUT:
            raise RuntimeError(f"no profile {profile_index} for {name}")
        tail = self.get_tensor_shape(name)[1:]
        return [(1, *tail), (self.options.opt_batch, *tail), (self.options.max_batch, *tail)]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine = engine
        self._shapes: dict[str, tuple[int, ...]] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(low) or not all(a <= d <= b for a, d, b in zip(low, shape, high)):
            return False
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self._shapes.get(name, self.engine.get_tensor_shape(name))
        batch = next(iter(self._shapes.values()), (-1,))[0]
        return (batch, *self.engine.get_tensor_shape(name)[1:])

    def execute_v2(self, bindings: list[int]) -> bool:
        engine = self.engine
        if len(bindings) != engine.num_io_tensors or len(self._shapes) != len(engine.session.get_inputs()):
            return False
        feeds = {}
        for name, address in zip(engine._order, bindings):
            if engine.get_tensor_mode(name) == TensorIOMode.INPUT:
                dtype = np.dtype(NUMPY_TYPES[engine.get_tensor_dtype(name)])
                nbytes = int(np.prod(self._shapes[name])) * dtype.itemsize
                raw = (ctypes.c_uint8 * nbytes).from_address(address)
                feeds[name] = np.frombuffer(raw, dtype).reshape(self._shapes[name]).copy()
        engine.options.runs.append(next(iter(self._shapes.values())))
        if engine.options.execute_error:
            raise RuntimeError(engine.options.execute_error)
        if not engine.options.execute_result:
            return False
        results = dict(zip([o.name for o in engine.session.get_outputs()], engine.session.run(None, feeds)))
        for name, address in zip(engine._order, bindings):
            if name in results:
                array = np.ascontiguousarray(results[name], NUMPY_TYPES[engine.get_tensor_dtype(name)])
                ctypes.memmove(address, array.ctypes.data, array.nbytes)
        return True


class Runtime:
    def __init__(self, logger: Logger, options: FakeOptions):
        self.logger, self.options = logger, options

    def deserialize_cuda_engine(self, serialized: bytes) -> ICudaEngine | None:
        try:
            options = ort.SessionOptions()
            if _has_fp16_weights(bytes(serialized)):
                # fp16 graphs crash onnxruntime's CPU layout optimizations (see runtime/scoring/onnx_engine.py)
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            session = ort.InferenceSession(bytes(serialized), sess_options=options,
                                           providers=["CPUExecutionProvider"])
        except Exception:  # TensorRT logs the reason and returns None
            return None
        return ICudaEngine(session, self.options)


def make_module(options: FakeOptions) -> types.ModuleType:
    """A module object to install as sys.modules['tensorrt']."""
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.0.0-fake"
    module.Logger, module.TensorIOMode, module.DataType = Logger, TensorIOMode, DataType
    module.Runtime = lambda logger: Runtime(logger, options)
    return module


def _has_fp16_weights(serialized: bytes) -> bool:
    import onnx  # noqa: PLC0415 - tests only

    try:
        model = onnx.load_from_string(serialized)
    except Exception:  # not an ONNX file: deserialization fails later, as TensorRT's would
        return False
    return any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
