"""Serialized TensorRT engines of the image encoder: uint8 pixels in, embeddings out (no torch).

Use this backend on NVIDIA GPUs and Jetson boards where TensorRT is installed and the engine was
built on that machine (`make export FORMAT=engine`); everywhere else use `OnnxEncoder` with the
ONNX Runtime providers (cpu, cuda, tensorrt).

`encode` returns float32 host embeddings, like `OnnxEncoder.encode`. `encode_to_ortvalue` leaves
the embedding on the device as an ONNX Runtime OrtValue, which the trust head (an ONNX Runtime
session on the same GPU) takes through IOBinding without a round trip through the host.

Device buffers are ONNX Runtime OrtValues rather than torch, pycuda or cuda-python tensors: the
trust head already needs onnxruntime-gpu, so TensorRT brings no second CUDA binding, and the head
reads memory that ONNX Runtime allocated itself. Runs are synchronous (`execute_v2`), so the
embedding is complete when the head reads it. TensorRT runs on the current CUDA device, which this
module cannot select without a CUDA binding: on CUDA only device 0 is accepted (pick the GPU with
CUDA_VISIBLE_DEVICES).

The engine's output must be float32 (the trust head takes float32 embeddings; the export keeps
float32 inputs and outputs on fp16 graphs, so fp16 engines have float32 I/O). Each run writes a
newly allocated output OrtValue (ONNX Runtime's arena makes that cheap), so an embedding handed
to the trust head can never be overwritten by a concurrent run, such as the self-check of a
bundle being reloaded beside the scoring thread; only the input buffers are reused, under the lock.
Input buffers come in power-of-two batch sizes up to the profile's maximum (a batch of n rows
goes into the smallest one that holds it, padded on the host), so less than twice one
maximum-size buffer is held (three times when the maximum is not a power of two), not one
buffer per batch size, and no copy exceeds 2n rows.

Written against the TensorRT 10 Python API (name-based I/O tensors, `set_input_shape`,
`get_tensor_profile_shape`, `execute_v2`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from trustvlm.contract.files import sha256_file
from trustvlm.runtime.scoring.gpu_info import check_tensorrt_version
from trustvlm.runtime.scoring.onnx_engine import EngineError

PROVIDER_NAME = "TensorRTEngine"
_LOGGER: tuple | None = None  # (tensorrt module, its logger): TensorRT keeps the first logger it is given
REBUILD = "rebuild it with `make export FORMAT=engine` on this machine"


def import_tensorrt():
    """Import tensorrt, or raise one clear EngineError line."""
    try:
        import tensorrt  # noqa: PLC0415 - optional, GPU machines only
    except (ImportError, OSError) as error:
        raise EngineError(
            "the TensorRT-engine backend needs the tensorrt package and an NVIDIA GPU (`pip install "
            "'trustvlm-edge[trt]'`, or JetPack's python3-libnvinfer on Jetson); use the ONNX Runtime "
            f"providers (cpu, cuda, tensorrt) otherwise ({error})") from error
    too_old = check_tensorrt_version(str(getattr(tensorrt, "__version__", "unknown")))
    if too_old:
        raise EngineError(too_old)
    return tensorrt


def check_engine_file(path: Path, expected_sha256: str | None) -> None:
    """Refuse a missing engine file or one whose sha256 is not the expected one."""
    if not path.is_file():
        raise EngineError(f"engine file {path} does not exist; build it with `make export FORMAT=engine`")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise EngineError(f"{path.name} has sha256 {actual}, but {expected_sha256} was expected: it is not "
                              "the engine that was recorded (rebuilt or damaged since)")


class TensorRTEncoder:
    """The image encoder as a TensorRT engine: uint8 N x S x S x 3 pixels in, N x D embeddings out."""

    def __init__(self, engine_path: str | os.PathLike, expected_sha256: str | None = None,
                 device_id: int = 0, device_type: str = "cuda"):
        """Load the engine and allocate the smallest batch's buffers (so a missing device fails here).

        Args:
            engine_path: Serialized engine from `make export FORMAT=engine`.
            expected_sha256: Refuse the file unless its sha256 is this (None: no check).
            device_id: Device of the buffers; on CUDA only 0 (see the module docstring).
            device_type: Where ONNX Runtime allocates the buffers: "cuda", or "cpu" for tests.

        Raises:
            EngineError: Missing file, wrong sha256, no tensorrt, an engine this TensorRT or GPU
                cannot load, an engine that is not uint8 pixels -> embedding, or no such device.
        """
        self.path = Path(engine_path)
        self.device_type, self.device_id = device_type, device_id
        self.providers = (PROVIDER_NAME,)
        check_engine_file(self.path, expected_sha256)
        if device_type == "cuda" and device_id != 0:
            raise EngineError(f"device_id {device_id}: TensorRT runs on the current CUDA device, so only 0 is "
                              "accepted; select the GPU with CUDA_VISIBLE_DEVICES")
        self._trt = import_tensorrt()
        self._engine = self._deserialize()
        # execute_v2 takes one device pointer per I/O tensor, in I/O tensor index order
        self._io_order = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.input_name, self.output_name = self._io_names()
        self._check_dtypes()
        pixel_shape = tuple(int(d) for d in self._engine.get_tensor_shape(self.input_name))
        self._pixel_shape = pixel_shape[1:]
        self.input_shape = ["batch", *self._pixel_shape]
        self._dim = int(tuple(self._engine.get_tensor_shape(self.output_name))[-1])
        low, _, high = self._engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"TensorRT could not create an execution context for {self.path.name} "
                              "(out of GPU memory? see its log above)")
        self._inputs: dict[int, ort.OrtValue] = {}  # by bucket size (see the module docstring)
        self._staging: np.ndarray | None = None  # host rows of the largest bucket, for padding
        self._lock = threading.Lock()
        self._prepare(self.min_batch)

    def _deserialize(self):
        trt = self._trt
        try:
            self._runtime = trt.Runtime(_logger(trt))
            engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        except Exception as error:  # TensorRT raises plain RuntimeError/TypeError without a GPU
            raise EngineError(f"TensorRT cannot load {self.path.name} (no usable CUDA GPU?): {error}") from error
        if engine is None:
            raise EngineError(f"TensorRT could not deserialize {self.path.name} (its log above says why); engines "
                              f"only load on the TensorRT version and GPU they were built with: {REBUILD}")
        return engine

    def _io_names(self) -> tuple[str, str]:
        inputs = [n for n in self._io_order if self._engine.get_tensor_mode(n) == self._trt.TensorIOMode.INPUT]
        outputs = [n for n in self._io_order if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"{self.path.name} has inputs {inputs} and outputs {outputs}; an image encoder "
                              "engine has exactly one of each (pixels -> embedding)")
        return inputs[0], outputs[0]

    def _check_dtypes(self) -> None:
        DataType = self._trt.DataType  # noqa: N806 - TensorRT's enum
        input_dtype = self._engine.get_tensor_dtype(self.input_name)
        if input_dtype != DataType.UINT8:
            raise EngineError(f"{self.path.name} takes {input_dtype} for '{self.input_name}', but the image encoder "
                              f"takes uint8 pixels: {REBUILD} from the image encoder ONNX")
        output_dtype = self._engine.get_tensor_dtype(self.output_name)
        if output_dtype != DataType.FLOAT:
            raise EngineError(f"{self.path.name} gives {output_dtype} for '{self.output_name}', but the trust head "
                              f"takes float32 embeddings: {REBUILD} (the export keeps float32 I/O)")

    def bucket(self, n: int) -> int:
        """Rows of the input buffer that a batch of n rows goes into: a power of two, at most max_batch."""
        return max(n, min(self.max_batch, 1 << (n - 1).bit_length()))

    def _prepare(self, n: int) -> tuple[ort.OrtValue, ort.OrtValue]:
        """Set the batch size on the context; return its (reused input, new output) device buffers."""
        if not self._context.set_input_shape(self.input_name, (n, *self._pixel_shape)):
            raise EngineError(f"{self.path.name} refused batch size {n}; its profile takes "
                              f"{self.min_batch}..{self.max_batch}")
        rows = self.bucket(n)
        if rows not in self._inputs:
            self._inputs[rows] = self._allocate([rows, *self._pixel_shape], np.uint8)
        output_shape = [int(d) for d in self._context.get_tensor_shape(self.output_name)]
        return self._inputs[rows], self._allocate(output_shape, np.float32)

    def _fill(self, inputs: ort.OrtValue, batch: np.ndarray) -> None:
        """Copy the batch into the first rows of `inputs` (padded on the host to the buffer's rows)."""
        rows = inputs.shape()[0]
        if rows == len(batch):
            inputs.update_inplace(np.ascontiguousarray(batch))
            return
        if self._staging is None:
            self._staging = np.zeros((self.bucket(self.max_batch), *self._pixel_shape), np.uint8)
        self._staging[:len(batch)] = batch
        inputs.update_inplace(self._staging[:rows])

    def _allocate(self, shape: list[int], dtype: type) -> ort.OrtValue:
        try:
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.device_type, self.device_id)
        except Exception as error:  # onnxruntime raises RuntimeError for a device it was built without
            raise EngineError(f"onnxruntime cannot allocate {self.device_type}:{self.device_id} memory for "
                              f"{self.path.name}: the TensorRT-engine backend needs onnxruntime-gpu with a "
                              f"matching CUDA ({error})") from error

    def _check_batch(self, batch: np.ndarray) -> None:
        if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.shape[1:] != self._pixel_shape:
            got = f"{batch.dtype} {batch.shape}" if isinstance(batch, np.ndarray) else type(batch).__name__
            expected = " x ".join(map(str, self._pixel_shape))
            raise EngineError(f"{self.path.name} takes uint8 pixels of shape N x {expected}, but got {got}")

    def _run(self, batch: np.ndarray) -> ort.OrtValue:
        """One batch of at most max_batch rows through the engine; the output stays on the device."""
        try:
            inputs, outputs = self._prepare(len(batch))
            self._fill(inputs, batch)
            pointers = {self.input_name: inputs.data_ptr(), self.output_name: outputs.data_ptr()}
            ok = self._context.execute_v2([pointers[name] for name in self._io_order])
        except Exception as error:
            raise EngineError(f"{self.path.name} failed on a batch of shape {batch.shape}: {error}") from error
        if not ok:
            raise EngineError(f"{self.path.name} failed on a batch of shape {batch.shape}: "
                              "TensorRT execute_v2 returned False (see its log above)")
        return outputs

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """Embed a batch of any size (split into max_batch chunks) as a float32 host array N x D.

        Raises:
            EngineError: A batch that is not uint8 N x S x S x 3, or a failed run.
        """
        self._check_batch(batch)
        chunks = []
        with self._lock:
            for start in range(0, len(batch), self.max_batch):
                chunks.append(self._run(batch[start:start + self.max_batch]).numpy().copy())
        if not chunks:
            return np.zeros((0, self._dim), np.float32)
        return np.concatenate(chunks)

    def encode_in_batches(self, inputs: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """As `OnnxEncoder.encode_in_batches`: here `encode` already splits by the engine's max batch."""
        return self.encode(inputs)

    def encode_to_ortvalue(self, batch: np.ndarray, device_type: str | None = None,
                           device_id: int | None = None) -> ort.OrtValue:
        """Embed up to max_batch images, leaving the N x D embedding on the device.

        The OrtValue is this call's own: later runs never write into it.

        Args:
            batch: uint8 pixels, N x S x S x 3 with 1 <= N <= max_batch.
            device_type, device_id: Optional, as `OnnxEncoder.encode_to_ortvalue` takes them; the
                buffers live where the constructor put them, so anything else is refused.

        Raises:
            EngineError: A bad batch, more than max_batch rows, another device, or a failed run.
        """
        wanted = (device_type or self.device_type, self.device_id if device_id is None else device_id)
        if wanted != (self.device_type, self.device_id):
            raise EngineError(f"{self.path.name} keeps its embeddings on {self.device_type}:{self.device_id}, "
                              f"but {wanted[0]}:{wanted[1]} was asked for")
        self._check_batch(batch)
        if not 1 <= len(batch) <= self.max_batch:
            raise EngineError(f"{self.path.name} takes 1..{self.max_batch} images per device batch, "
                              f"but got {len(batch)}; use encode() to split larger batches")
        with self._lock:
            return self._run(batch)


def _logger(trt):
    """The process's one TensorRT logger (warnings and errors)."""
    global _LOGGER  # noqa: PLW0603 - TensorRT keeps the first logger a process gives it
    if _LOGGER is None or _LOGGER[0] is not trt:
        _LOGGER = (trt, trt.Logger(trt.Logger.WARNING))
    return _LOGGER[1]
