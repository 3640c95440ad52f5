"""Benchmark (not a test) of scoring speed: the float64 reference against the fused ONNX trust head.

Scores N random embeddings against C classes (text and image prototypes, D dimensions) with
:func:`trustvlm.calibration.scores.compute_scores` (numpy, float64) and with the fused trust head
of :mod:`trustvlm.calibration.trust_head` (ONNX Runtime, CPU provider, float32), in one batch each.
Each is run once to warm up, then `repeats` times; the median and the min-max of the wall-clock
seconds are printed, with how closely the two agree.

    python -m trustvlm.calibration.bench_scores                     # 10,000 x 1,000 classes, D=512
    python -m trustvlm.calibration.bench_scores --threads 2 --repeats 9

Numbers depend on the machine, its load and the BLAS numpy uses (its threads are not set here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from trustvlm.calibration.numerics import l2_normalize
from trustvlm.calibration.scores import compute_scores
from trustvlm.calibration.trust_head import build_trust_head
from trustvlm.contract.scores import HEAD_INPUT

LOGIT_SCALE = 100.0
LAMBDA = 1.0


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated runs of one implementation."""

    name: str
    seconds: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    def line(self) -> str:
        return (f"{self.name:38s} median {self.median_s:.3f} s  (min {min(self.seconds):.3f}, "
                f"max {max(self.seconds):.3f}; {len(self.seconds)} runs)")


@dataclass(frozen=True)
class BenchResult:
    """Both timings and how the two implementations agree on the benchmark data."""

    reference: Timing
    trust_head: Timing
    session_setup_s: float
    pred_agreement: float
    kappa_max_abs_diff: float


def make_problem(n: int, classes: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random embeddings (float32, N x D) and unit text / image prototypes (C x D) near each other."""
    rng = np.random.default_rng(seed)
    text = l2_normalize(rng.normal(size=(classes, dim)), axis=1)
    image = l2_normalize(text + l2_normalize(rng.normal(size=(classes, dim)), axis=1), axis=1)
    labels = rng.integers(0, classes, n)
    embeddings = 0.3 * text[labels] + l2_normalize(rng.normal(size=(n, dim)), axis=1)
    return embeddings.astype(np.float32), text, image


def time_runs(name: str, run: Callable[[], object], repeats: int) -> tuple[Timing, object]:
    """One untimed warm-up call, then `repeats` timed calls; returns the timing and the last output."""
    output = run()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        output = run()
        seconds.append(time.perf_counter() - started)
    return Timing(name, tuple(seconds)), output


def run_benchmark(n: int = 10_000, classes: int = 1_000, dim: int = 512, repeats: int = 5,
                  threads: int | None = None) -> BenchResult:
    """Time both implementations on the same random problem (see the module docstring).

    Raises:
        ValueError: If a size or `repeats` is below 1.
    """
    for label, value in (("n", n), ("classes", classes), ("dim", dim), ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"{label} should be >= 1, but got {value}")
    embeddings, text, image = make_problem(n, classes, dim)
    embeddings64 = embeddings.astype(np.float64)
    started = time.perf_counter()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    head = build_trust_head(text, image, LOGIT_SCALE, LAMBDA).SerializeToString()
    session = ort.InferenceSession(head, sess_options=options, providers=["CPUExecutionProvider"])
    setup_s = time.perf_counter() - started
    reference, scores = time_runs("compute_scores (numpy float64)",
                                  lambda: compute_scores(embeddings64, text, image, LOGIT_SCALE, LAMBDA), repeats)
    fused, outputs = time_runs("trust head (ONNX Runtime CPU, float32)",
                               lambda: session.run(["pred", "kappa"], {HEAD_INPUT: embeddings}), repeats)
    pred, kappa = outputs
    return BenchResult(reference, fused, setup_s, float(np.mean(pred == scores.pred)),
                       float(np.max(np.abs(kappa - scores.trustvlm))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trustvlm.calibration.bench_scores",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="Time TrustVLM scoring: numpy float64 reference vs fused ONNX "
                                                 "trust head (CPU).")
    parser.add_argument("--embeddings", type=int, default=10_000, help="random embeddings scored per run (N)")
    parser.add_argument("--classes", type=int, default=1_000, help="classes (text and image prototypes)")
    parser.add_argument("--dim", type=int, default=512, help="embedding size D")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each implementation")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads (default: its own choice)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the timings."""
    args = build_parser().parse_args(argv)
    try:
        result = run_benchmark(args.embeddings, args.classes, args.dim, args.repeats, args.threads)
    except ValueError as error:
        print(f"bench_scores: error: {error}", file=sys.stderr)
        return 1
    print(f"scoring {args.embeddings} embeddings (D={args.dim}) against {args.classes} classes, one batch, "
          f"{args.repeats} timed runs after 1 warm-up; onnxruntime {ort.__version__}, "
          f"threads {args.threads or 'default'}")
    print(result.reference.line())
    print(result.trust_head.line())
    print(f"trust head build + session setup {result.session_setup_s:.3f} s (not in the runs); "
          f"pred agreement {100 * result.pred_agreement:.2f}%, max |kappa diff| {result.kappa_max_abs_diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
