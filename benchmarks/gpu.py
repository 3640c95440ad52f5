"""``make bench-gpu``: image encoder throughput on a CUDA machine, one compact table printed last.

Rows (clip_vitb32, random-init weights, uint8 pixels from host memory as the service sends them):

* torch CUDA eager, fp32 and fp16 (autocast): the reference;
* ONNX Runtime CUDA provider, fp32 (``image_encoder.onnx``) and fp16 (``image_encoder.fp16.onnx``);
* ONNX Runtime TensorRT provider on the fp32 graph, TensorRT fp32 and fp16 (``trt_fp16_enable``),
  its engine cache under the artifacts folder (batch profile 1 / 8 / 32);
* the TensorRT engine that the export's manifest lists (from ``--format engine``), when present,
  run through TensorRT's Python API on torch CUDA buffers (one stream for copy and run).

Each row needs something this machine may not have; a missing provider, package or GPU turns the
row into ``missing: <why>`` and the script goes on (exit 0). Without any GPU it prints that every
GPU provider is missing and exits 0. The fp16 export it needs (``artifacts/bench-gpu``) is made
only when some GPU row can run. A time budget (default 270 s, under ``make bench-gpu``'s 5
minutes) skips the rows it would not finish.

A sample is the time of enough calls to cover 64 images, synchronized (``torch.cuda.synchronize``
for torch and TensorRT; ONNX Runtime's ``run`` returns host outputs).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustvlm.benchmarks.report import text_table
from trustvlm.benchmarks.stats import Figure

MODEL = "clip_vitb32"
BATCH_SIZES = (1, 8, 32)
MIN_IMAGES_PER_SAMPLE = 64
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class Unavailable(Exception):
    """A row that cannot run here (the message says why)."""


@dataclass
class Row:
    """One backend x precision, its images/s per batch size, or why it did not run."""

    backend: str
    precision: str
    images_per_s: dict[int, Figure]
    status: str = "ok"


@dataclass(frozen=True)
class Probe:
    """What this machine offers."""

    ort_providers: tuple[str, ...]
    torch_cuda: str | None       # device name, None without CUDA
    torch_missing: str
    tensorrt: str | None         # version, None without the package
    tensorrt_missing: str

    def missing_lines(self) -> list[str]:
        lines = [f"onnxruntime {name}: missing (this onnxruntime offers {list(self.ort_providers)}; install "
                 "onnxruntime-gpu with a matching CUDA)" for name in GPU_PROVIDERS if name not in self.ort_providers]
        if self.torch_cuda is None:
            lines.append(f"torch CUDA: missing ({self.torch_missing})")
        if self.tensorrt is None:
            lines.append(f"tensorrt: missing ({self.tensorrt_missing})")
        return lines

    @property
    def any_gpu(self) -> bool:
        return self.torch_cuda is not None or any(p in self.ort_providers for p in GPU_PROVIDERS)


def probe() -> Probe:
    """Providers, torch CUDA and TensorRT as importable here (never raises)."""
    import onnxruntime as ort  # noqa: PLC0415

    providers = tuple(ort.get_available_providers())
    cuda, torch_missing = None, ""
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            cuda = torch.cuda.get_device_name(0)
        else:
            torch_missing = "torch.cuda.is_available() is False: no CUDA GPU visible"
    except ImportError as error:
        torch_missing = f"torch is not installed: {error}"
    trt_version, trt_missing = None, ""
    try:
        import tensorrt  # noqa: PLC0415

        trt_version = tensorrt.__version__
    except ImportError:
        trt_missing = "the tensorrt package is not installed (pip install 'trustvlm-edge[trt]')"
    return Probe(providers, cuda, torch_missing, trt_version, trt_missing)


def time_backend(encode: Callable[[np.ndarray], object], size: int, batches, repeats: int,
                 deadline: float, sync: Callable[[], None] = lambda: None) -> dict[int, Figure]:
    """images/s per batch size (one warm-up call each); stops at `deadline` (later batches left out)."""
    results = {}
    for batch in batches:
        if time.monotonic() > deadline:
            break
        pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        calls = max(1, math.ceil(MIN_IMAGES_PER_SAMPLE / batch))
        encode(pixels)
        sync()
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(calls):
                encode(pixels)
            sync()
            samples.append(batch * calls / (time.perf_counter() - started))
        results[batch] = Figure(tuple(samples), "images/s")
    return results


def _torch_encoder(precision: str) -> tuple[Callable, Callable]:
    import torch  # noqa: PLC0415

    from trustvlm.export.model_loading import load_model  # noqa: PLC0415
    from trustvlm.export.torch_wrappers import ImageEncoderForExport  # noqa: PLC0415
    from trustvlm.models.registry import get_model_spec  # noqa: PLC0415

    spec = get_model_spec(MODEL)
    wrapper = ImageEncoderForExport(load_model(spec, "random").model, spec.preprocess.mean, spec.preprocess.std)
    wrapper = wrapper.eval().cuda()

    def encode(pixels: np.ndarray):
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=precision == "fp16"):
            return wrapper(torch.from_numpy(pixels).cuda(non_blocking=True))

    return encode, torch.cuda.synchronize


def _ort_encoder(path: Path, provider: str, options: dict | None = None) -> Callable:
    import onnxruntime as ort  # noqa: PLC0415

    session = ort.InferenceSession(str(path), providers=[(provider, options or {})])
    if session.get_providers()[0] != provider:
        raise Unavailable(f"onnxruntime gave {session.get_providers()} instead of {provider}")
    name = session.get_inputs()[0].name
    return lambda pixels: session.run(None, {name: pixels})


def _trt_options(path: Path, cache: Path, size: int, fp16: bool) -> dict:
    """The runtime's TensorRT provider options (engine cache, profile 1 / 8 / 32), as the service sets them."""
    from trustvlm.runtime.scoring.ort_providers import TensorRTProviderSettings, tensorrt_options  # noqa: PLC0415

    settings = TensorRTProviderSettings(max_batch=max(BATCH_SIZES), opt_batch=8, cache_root=cache, fp16=fp16)
    return tensorrt_options(path, [("pixels", ["batch", size, size, 3])], settings)


def manifest_engine(artifacts: Path, precision: str) -> Path:
    """The image encoder engine that the export's manifest lists for `precision` (what the service would run)."""
    from trustvlm.contract.manifest import read_manifest  # noqa: PLC0415

    record = read_manifest(artifacts).get("engines", {}).get("image_encoder")
    if not record or record.get("precision") != precision:
        listed = record.get("precision") if record else "none"
        raise Unavailable(f"the manifest lists no {precision} image engine (it lists: {listed}); make export "
                          f"MODEL={MODEL} WEIGHTS=random PRECISION={precision} FORMAT=engine "
                          f"ARTIFACTS={artifacts.parent}")
    return artifacts / record["file"]


def _engine_encoder(engine_path: Path) -> tuple[Callable, Callable]:
    """A serialized TensorRT engine run through TensorRT 10's Python API on torch CUDA buffers.

    One input buffer at the profile's maximum batch; the host-to-device copy, the engine and the
    caller's synchronization all use one stream, so TensorRT never reads a half-copied batch.
    """
    import tensorrt as trt  # noqa: PLC0415
    import torch  # noqa: PLC0415

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise Unavailable(f"TensorRT could not load {engine_path.name} (built for another GPU or TensorRT?)")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    largest = tuple(engine.get_tensor_profile_shape(inputs[0], 0)[2])
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        device_in = torch.empty(largest, dtype=torch.uint8, device="cuda")
        device_out = torch.empty((largest[0], *tuple(engine.get_tensor_shape(outputs[0]))[1:]), dtype=torch.float32,
                                 device="cuda")

    def encode(pixels: np.ndarray):
        n = len(pixels)
        with torch.cuda.stream(stream):
            device_in[:n].copy_(torch.from_numpy(pixels), non_blocking=True)
        if not context.set_input_shape(inputs[0], tuple(pixels.shape)):
            raise RuntimeError(f"{engine_path.name} refused input shape {pixels.shape}")
        context.set_tensor_address(inputs[0], device_in.data_ptr())
        context.set_tensor_address(outputs[0], device_out.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {engine_path.name} (see its log)")
        return device_out[:n]

    return encode, stream.synchronize


def ensure_fp16_export(root: Path, log) -> Path:
    """``root/clip_vitb32`` with fp32 + fp16 ONNX (exported, random-init weights, when absent)."""
    from trustvlm.benchmarks.bench_artifacts import ensure_export  # noqa: PLC0415

    return ensure_export(root, MODEL, "random", "fp16", log)


def run(root: Path, repeats: int, budget_s: float, batches=BATCH_SIZES, log=None) -> tuple[Probe, list[Row]]:
    """Probe, export if some GPU row can run, time every row that can; never raises for a missing piece."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    deadline = time.monotonic() + budget_s
    found = probe()
    rows: list[Row] = []
    if not found.any_gpu:
        for backend, precision in PLAN:
            rows.append(Row(backend, precision, {}, "missing: no GPU provider, no torch CUDA"))
        return found, rows
    artifacts = ensure_fp16_export(root, log)
    size = 224
    for backend, precision in PLAN:
        if time.monotonic() > deadline:
            rows.append(Row(backend, precision, {}, "skipped: time budget spent"))
            continue
        log(f"{backend} {precision}")
        try:
            encode, sync = _make(backend, precision, artifacts, found, size)
            timed = time_backend(encode, size, batches, repeats, deadline, sync)
            rows.append(Row(backend, precision, timed, "ok" if len(timed) == len(batches) else "partial: time budget"))
        except Unavailable as error:
            rows.append(Row(backend, precision, {}, f"missing: {error}"))
        except Exception as error:  # a provider failing on this graph is a result, not a crash
            rows.append(Row(backend, precision, {}, f"failed: {type(error).__name__}: {str(error)[:120]}"))
    return found, rows


PLAN = (("torch CUDA", "fp32"), ("torch CUDA", "fp16"), ("ORT CUDA EP", "fp32"), ("ORT CUDA EP", "fp16"),
        ("ORT TensorRT EP", "fp32"), ("ORT TensorRT EP", "fp16"), ("TensorRT engine", "fp16"),
        ("TensorRT engine", "fp32"))


def _make(backend: str, precision: str, artifacts: Path, found: Probe, size: int) -> tuple[Callable, Callable]:
    nothing = lambda: None  # noqa: E731
    if backend == "torch CUDA":
        if found.torch_cuda is None:
            raise Unavailable(found.torch_missing)
        return _torch_encoder(precision)
    if backend == "ORT CUDA EP":
        if "CUDAExecutionProvider" not in found.ort_providers:
            raise Unavailable("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        file = "image_encoder.onnx" if precision == "fp32" else "image_encoder.fp16.onnx"
        return _ort_encoder(artifacts / file, "CUDAExecutionProvider"), nothing
    if backend == "ORT TensorRT EP":
        if "TensorrtExecutionProvider" not in found.ort_providers:
            raise Unavailable("onnxruntime has no TensorrtExecutionProvider (onnxruntime-gpu built with TensorRT)")
        path = artifacts / "image_encoder.onnx"
        options = _trt_options(path, artifacts / "ort_trt_cache", size, precision == "fp16")
        return _ort_encoder(path, "TensorrtExecutionProvider", options), nothing
    if found.tensorrt is None or found.torch_cuda is None:
        raise Unavailable(found.tensorrt_missing or found.torch_missing)
    return _engine_encoder(manifest_engine(artifacts, precision))


def format_rows(rows: list[Row], batches=BATCH_SIZES) -> str:
    """The compact table: images/s median (min-max) per batch size, and each row's status."""
    body = [[row.backend, row.precision, *(row.images_per_s[b].format(0) if b in row.images_per_s else "-"
                                           for b in batches), row.status] for row in rows]
    return text_table(["backend", "precision", *(f"b{b} images/s" for b in batches), "status"], body)


def main(argv: list[str] | None = None) -> int:
    """Run the GPU rows that can run here, print the missing pieces, then the table; exit 0 unless misused."""
    parser = argparse.ArgumentParser(prog="python -m trustvlm.benchmarks.gpu",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-root", type=Path, default=Path("artifacts/bench-gpu"),
                        help="where the fp32 + fp16 export lives (made when absent and a GPU row can run)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure")
    parser.add_argument("--budget-s", type=float, default=270.0, help="rows that would start later are skipped")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.budget_s <= 0:
        print(f"bench-gpu: error: --repeats should be >= 1 and --budget-s > 0, but got {args.repeats} and "
              f"{args.budget_s}", file=sys.stderr)
        return 2
    started = time.monotonic()
    found, rows = run(args.artifacts_root, args.repeats, args.budget_s)
    for line in found.missing_lines():
        print(line)
    if not found.any_gpu:
        print("every GPU provider is missing here: nothing to measure (run `make bench-gpu` on a CUDA machine)")
    print(f"\nclip_vitb32 (random-init) image encoder, uint8 pixels from host memory, median (min-max) of "
          f"{args.repeats} runs; GPU: {found.torch_cuda or 'none'}; {time.monotonic() - started:.0f} s")
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
