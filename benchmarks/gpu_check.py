"""``make gpu-check``: everything the GPU path needs, in one run, on a machine with an NVIDIA GPU.

Steps (each a subprocess with its own time limit; the first failure stops the run):

1. the GPU and TensorRT tests (a skip counts as a failure here: a GPU machine must run them);
2. ``make export FORMAT=engine`` for the demo model and for ViT-B/32 (random-init), fp16: the
   engine build and its parity gate against the torch model;
3. calibration of the demo export, then the scorer that ``serve`` runs, on the same 500
   Fashion-MNIST test frames, three ways: CPU provider, CUDA provider, ``--backend
   tensorrt-engine``; the GPU decisions must match the CPU ones;
4. the service itself, ``trustvlm soak`` (20 s, 4 cameras) on ``--backend tensorrt-engine`` and on
   ``--providers cuda``: every frame decided or counted, nothing lost, memory steady;
5. ``make bench-gpu``;
6. the frame path (:mod:`trustvlm.benchmarks.frame_path`, 768x576 JPEG, 4 cameras): the old
   path, the CPU decode pool and nvImageCodec decoding with the encoder on CUDA, side by side (its
   table is printed last).

Before any step, a preflight checks the pieces (exactly one ONNX Runtime, the CUDA provider,
tensorrt 10.x, nvImageCodec, a GPU seen by the CUDA driver, torch for the export) and, when one is missing,
prints one line that says which and exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FRAMES = 500


@dataclass(frozen=True)
class Step:
    """One command of the check."""

    name: str
    command: tuple[str, ...]
    timeout_s: int


def preflight() -> str | None:
    """None when the GPU path can run here, else one line naming what is missing."""
    from trustvlm.runtime.scoring.gpu_info import (GpuUnavailableError, check_onnxruntime_install,  # noqa: PLC0415
                                           check_tensorrt_version, describe_cuda_device)

    missing = []
    try:
        name, capability = describe_cuda_device()
    except GpuUnavailableError as error:
        return f"gpu-check: no GPU here ({error}); run it on an NVIDIA GPU machine (nothing was run)"
    install = check_onnxruntime_install()
    if install:
        missing.append(install)
    else:
        import onnxruntime as ort  # noqa: PLC0415

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            missing.append(f"onnxruntime offers {ort.get_available_providers()}, no CUDAExecutionProvider "
                           "(make setup ORT=gpu, or JetPack's onnxruntime-gpu wheel)")
    try:
        import tensorrt  # noqa: PLC0415

        too_old = check_tensorrt_version(str(tensorrt.__version__))
        if too_old:
            missing.append(too_old)
    except (ImportError, OSError) as error:
        missing.append(f"tensorrt is not importable ({error}; make setup ORT=gpu installs it)")
    try:
        has_nvimgcodec = importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except ImportError:  # no nvidia namespace package at all
        has_nvimgcodec = False
    if not has_nvimgcodec:
        missing.append("nvImageCodec is not installed (for --decoder nvimgcodec; make setup ORT=gpu installs it)")
    if importlib.util.find_spec("torch") is None:
        missing.append("torch is not installed (the engine export needs the export extra)")
    if missing:
        return f"gpu-check: {name} ({capability}) found, but: " + "; ".join(missing)
    return None


def plan(root: Path, python: str = sys.executable) -> list[Step]:
    """The steps, in order, writing under `root`."""
    trustvlm = (python, "-m", "trustvlm")
    demo, vitb32 = root / "demo_fmnist", root / "clip_vitb32"
    tests = ("tests/runtime/test_gpu_scorer.py",
             "tests/export/test_tensorrt.py::test_engine_builds_and_matches_onnx_runtime",
             "tests/runtime/test_tensorrt_engine.py::test_a_real_engine_matches_onnx_runtime_on_fashion_mnist",
             "tests/runtime/test_gpu_decode.py::test_gpu_decode_matches_the_cpu_and_stays_strict")
    soak = (*trustvlm, "soak", "--artifacts", str(demo), "--bundle", str(demo / "bundle"), "--seconds", "20",
            "--rate", "40", "--cameras", "4", "--sender-restart-s", "0")
    return [
        Step("GPU and TensorRT tests", (python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests), 600),
        Step("engine export + parity: demo_fmnist fp16",
             (*trustvlm, "export", "--model", "demo_fmnist", "--precision", "fp16", "--format", "engine",
              "--output", str(root)), 600),
        Step("engine export + parity: clip_vitb32 random-init fp16",
             (*trustvlm, "export", "--model", "clip_vitb32", "--weights", "random", "--precision", "fp16",
              "--format", "engine", "--parity-images", "32", "--output", str(root)), 900),
        Step("calibrate demo_fmnist fp16", (*trustvlm, "calibrate", "--artifacts", str(demo), "--precision", "fp16"),
             600),
        Step("scorer: CPU vs CUDA provider vs tensorrt-engine on the same frames",
             (python, "-m", "trustvlm.benchmarks.gpu_check", "--compare", str(demo)), 600),
        Step("service: soak on --backend tensorrt-engine",
             (*soak, "--serve-arg=--backend=tensorrt-engine", "--serve-arg=--providers=cuda"), 300),
        Step("service: soak on the CUDA provider", (*soak, "--serve-arg=--providers=cuda"), 300),
        Step("bench-gpu", (python, "-m", "trustvlm.benchmarks.gpu", "--artifacts-root", str(root / "bench-gpu"),
                           "--budget-s", "240"), 420),
        Step("frame path: old, CPU decode pool, nvImageCodec + CUDA",
             (python, "-m", "trustvlm.benchmarks.frame_path", "--artifacts", str(demo), "--sizes", "768x576",
              "--cameras", "4", "--paths", "old", "new", "gpu", "--measure-s", "4", "--output",
              str(root / "frame_path.json")), 180),
    ]


def compare(artifacts: Path, frames: int = FRAMES) -> int:
    """The scorer on CPU, CUDA and the TensorRT engine, on the same Fashion-MNIST frames; 0 when they agree."""
    import numpy as np  # noqa: PLC0415

    from trustvlm.data.fashion_mnist import load_split, to_rgb  # noqa: PLC0415
    from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame  # noqa: PLC0415
    from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer  # noqa: PLC0415

    images = to_rgb(load_split("test").images[:frames])
    batch = [ReceivedFrame(FrameHeader("cam", seq, 1, Encoding.RAW, image.shape, "uint8"),
                           np.ascontiguousarray(image).tobytes(), 2) for seq, image in enumerate(images)]
    bundle = artifacts / "bundle"
    configs = {"cpu": ScorerConfig(), "cuda": ScorerConfig(providers=("cuda",)),
               "tensorrt-engine": ScorerConfig(providers=("cuda",), backend="tensorrt-engine")}
    decided = {}
    for name, config in configs.items():
        scorer = load_scorer(artifacts, bundle, config)
        decided[name] = [d for start in range(0, len(batch), config.max_batch)
                         for d in scorer.decide(batch[start:start + config.max_batch])]
    failures = []
    for name, kappa_atol, min_agreement in (("cuda", 1e-3, 0.99), ("tensorrt-engine", 1e-2, 0.95)):
        got, want = decided[name], decided["cpu"]
        same = [(g, w) for g, w in zip(got, want) if g.class_id == w.class_id]
        agreement = len(same) / len(want)
        worst = max((abs(g.kappa - w.kappa) for g, w in same), default=0.0)
        clear = [(g, w) for g, w in same if abs(w.kappa - w.threshold) > kappa_atol]
        flipped = sum(g.decision is not w.decision for g, w in clear)
        print(f"{name} vs cpu: class agreement {agreement:.4f}, max |kappa diff| {worst:.2e}, "
              f"decisions flipped away from the threshold {flipped}/{len(clear)}")
        if agreement < min_agreement or worst > kappa_atol or flipped:
            failures.append(name)
    if failures:
        print(f"gpu-check: {', '.join(failures)} disagree with the CPU scorer beyond the tolerances above")
        return 1
    return 0


def run(steps: list[Step], log_dir: Path) -> int:
    """Run the steps in order; stop at the first failure; 0 when all pass."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for index, step in enumerate(steps, 1):
        log = log_dir / f"{index:02d}.log"
        started = time.monotonic()
        print(f"[{index}/{len(steps)}] {step.name} ...", flush=True)
        try:
            result = subprocess.run(step.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    timeout=step.timeout_s)
            output, code = result.stdout, result.returncode
        except subprocess.TimeoutExpired as error:
            partial = error.stdout or ""
            output, code = partial.decode(errors="replace") if isinstance(partial, bytes) else partial, 124
        log.write_text(output)
        lines = output.strip().splitlines()
        tail, seconds = "\n".join(lines[-15:]), time.monotonic() - started
        skipped = step.command[2:3] == ("pytest",) and bool(lines) and "skipped" in lines[-1]
        if code != 0 or skipped:
            why = "timed out" if code == 124 else "skipped tests (a GPU machine must run them)" if skipped \
                else f"exit {code}"
            print(f"{tail}\ngpu-check: FAILED at [{index}] {step.name} ({why}, {seconds:.0f} s; log {log})")
            return 1
        print(f"{tail}\n[{index}/{len(steps)}] ok in {seconds:.0f} s", flush=True)
    print("gpu-check: all steps passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trustvlm.benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("artifacts/gpu-check"), help="exports and logs go here")
    parser.add_argument("--plan", action="store_true", help="print the steps and exit (no GPU needed)")
    parser.add_argument("--compare", type=Path, help=argparse.SUPPRESS)  # step 5, run in its own process
    args = parser.parse_args(argv)
    if args.compare is not None:
        return compare(args.compare)
    steps = plan(args.root)
    if args.plan:
        for index, step in enumerate(steps, 1):
            print(f"[{index}] {step.name} (<= {step.timeout_s} s): {' '.join(step.command)}")
        return 0
    problem = preflight()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return run(steps, args.root / "logs")


if __name__ == "__main__":
    sys.exit(main())
