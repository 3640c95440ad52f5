"""The CPU benchmark run (``make bench``): measure every figure, write results.json and BENCHMARKS.md.

Steps, in order (each logged with its time):

1. exports: ``clip_vitb32`` (random-init; ``SuiteConfig.bench_model``) and ``demo_fmnist``, fp32 + int8,
   into the bench folder
   when absent (``trustvlm export``, every gate passed);
2. FLOPs of the ViT-B/32 image encoder, and the machine's measured fp32 peak;
3. image encoder throughput at batch 1, 8, 32: PyTorch eager, ONNX Runtime fp32 and int8, in step;
4. trust head cost per frame (1,000 and 10 classes) and decode/preprocess cost, against the encoder;
5. end to end through ``trustvlm serve`` (saturation, latency at 70%, flood and RSS);
6. text prototypes for 1,000 classes (ViT-B/32 text encoder); calibration of 16 shots x 100
   classes (demo model);
7. int8 gates (from the export manifests) and int8 speed against fp32.

``--quick`` is a short run on the same models (tiny repeat counts, short phases, fewer classes);
``--smoke`` runs every section at its smallest on the demo model alone (no ViT-B/32 export), and is
what the test suite runs so that a section that crashes cannot land. Neither measures figures worth
reporting, and the report says so at its top.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from trustvlm.benchmarks import bench_artifacts, build_times, e2e, encoder, flops, head_cost
from trustvlm.benchmarks.machine import cpu_share_of_others, describe_machine, read_cpu_times
from trustvlm.benchmarks.report_sections import render_benchmarks, with_kept_sections
from trustvlm.benchmarks.stats import Figure, time_calls
from trustvlm.contract.manifest import encoder_path

REPO = Path(__file__).resolve().parents[1]
TORCH, ORT_FP32, ORT_INT8 = "pytorch eager", "onnxruntime fp32", "onnxruntime int8"


@dataclass(frozen=True)
class SuiteConfig:
    """What the CPU run measures, and how often."""

    artifacts_root: Path = Path("artifacts/bench")
    output: Path = Path("BENCHMARKS.md")
    threads: int = os.cpu_count() or 1
    repeats: int = 5
    batch_sizes: tuple[int, ...] = encoder.BATCH_SIZES
    min_images_per_sample: int = encoder.MIN_IMAGES_PER_SAMPLE
    text_classes: int = 1000
    text_repeats: int = 3
    calibration_classes: int = 100
    calibration_shots: int = 16
    calibration_repeats: int = 3
    saturation_windows: int = 4
    saturation_window_s: float = 5.0
    latency_windows: int = 3
    latency_window_s: float = 8.0
    flood_s: float = 30.0
    service_warmup_s: float = 5.0
    peak_matrix_size: int = flops.PEAK_MATRIX_SIZE
    #: Saturation and latency phases last until this many frames were scored in each (0: their windows only).
    service_min_scored: int = 0
    #: The model of sections 1-5 (real architecture, random weights: the real cost).
    bench_model: str = bench_artifacts.BENCH_MODEL
    bench_weights: str | None = "random"
    #: Size of the frame path section: "full", "quick" or "smoke" (see frame_path.SECTION_PROFILES).
    frame_path: str = "full"
    quick: bool = False
    smoke: bool = False

    def quick_run(self) -> "SuiteConfig":
        """The same run with tiny counts: checks the harness, measures nothing worth reporting."""
        return replace(self, repeats=2, min_images_per_sample=8, text_classes=50, text_repeats=1,
                       calibration_classes=12, calibration_repeats=1, saturation_windows=2, saturation_window_s=4.0,
                       latency_windows=2, latency_window_s=4.0, flood_s=6.0, frame_path="quick", quick=True)

    def smoke_run(self) -> "SuiteConfig":
        """Every section at its smallest, on the demo model alone: does each section still produce its figures?"""
        return replace(self, repeats=1, batch_sizes=(1, 8), min_images_per_sample=8, text_classes=10,
                       text_repeats=1, calibration_classes=10, calibration_shots=4, calibration_repeats=1,
                       saturation_windows=1, saturation_window_s=1.0, latency_windows=1, latency_window_s=1.0,
                       flood_s=1.0, service_warmup_s=0.5, service_min_scored=4 * e2e.SATURATION_CAMERAS,
                       peak_matrix_size=1024,
                       bench_model=bench_artifacts.DEMO_MODEL,
                       bench_weights=None, frame_path="smoke", smoke=True)


class _Log:
    """Timestamped progress lines on stderr; the seconds of each step and the CPU others took meanwhile."""

    def __init__(self):
        self.started = time.perf_counter()
        self.steps: dict[str, float] = {}
        self.noise: dict[str, dict | None] = {}
        self.first_cpu = self._cpu = read_cpu_times()

    def __call__(self, message: str) -> None:
        print(f"[bench {time.perf_counter() - self.started:6.1f} s] {message}", file=sys.stderr, flush=True)

    def step(self, name: str, since: float) -> None:
        self.steps[name] = round(time.perf_counter() - since, 1)
        now = read_cpu_times()
        self.noise[name] = cpu_share_of_others(self._cpu, now)
        self._cpu = now
        if self.noise[name]:
            self(f"{name}: {self.steps[name]:.0f} s; other processes {self.noise[name]['others_percent']:.0f}% "
                 f"of the CPU, steal {self.noise[name]['steal_percent']:.0f}%")


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def run_suite(config: SuiteConfig) -> dict:
    """Measure everything (see the module docstring); return the results dict."""
    log = _Log()
    machine = describe_machine(REPO)
    log(f"{machine.cpu_model}, {machine.logical_cpus} CPUs, flags {' '.join(machine.cpu_flags)}, "
        f"load {machine.load_average[0]:.2f}; threads {config.threads}")
    results: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in config.__dict__.items()},
                     "machine": machine.to_dict()}
    root = config.artifacts_root

    tick = time.perf_counter()
    bench = bench_artifacts.ensure_export(root, config.bench_model, config.bench_weights, "int8", log)
    demo = bench_artifacts.ensure_export(root, bench_artifacts.DEMO_MODEL, None, "int8", log)
    log.step("exports", tick)
    manifest = _manifest(bench)
    size = results["input_size"] = int(manifest["preprocess"]["size"])

    tick = time.perf_counter()
    import torch  # noqa: PLC0415

    from trustvlm.export.model_loading import load_model  # noqa: PLC0415
    from trustvlm.export.torch_wrappers import ImageEncoderForExport  # noqa: PLC0415
    from trustvlm.models.registry import get_model_spec  # noqa: PLC0415

    spec = get_model_spec(config.bench_model)
    model = load_model(spec, config.bench_weights).model
    wrapper = ImageEncoderForExport(model, spec.preprocess.mean, spec.preprocess.std).eval()
    gflop_per_image = flops.count_flops(wrapper, torch.zeros(1, size, size, 3, dtype=torch.uint8)) / 1e9
    peak_before = flops.measure_peak_gflops(config.peak_matrix_size, config.repeats, config.threads)
    log(f"FLOPs {gflop_per_image:.2f} GFLOP/image; measured fp32 peak {peak_before.format()} GFLOP/s")
    log.step("flops and peak", tick)

    tick = time.perf_counter()
    backends = [encoder.torch_backend(model, spec.preprocess.mean, spec.preprocess.std, config.threads),
                encoder.onnx_backend(ORT_FP32, encoder_path(bench, manifest, "image", "fp32"), config.threads),
                encoder.onnx_backend(ORT_INT8, encoder_path(bench, manifest, "image", "int8"), config.threads, "int8")]
    log("encoder throughput (images/s, median (min-max))")
    throughput = encoder.measure_throughput(backends, size, config.batch_sizes, config.repeats,
                                            config.min_images_per_sample, log)
    del backends
    peak = Figure(peak_before.samples + flops.measure_peak_gflops(config.peak_matrix_size, config.repeats,
                                                                 config.threads).samples, "GFLOP/s")
    log(f"fp32 peak before and after: {peak.format()} GFLOP/s")
    log.step("encoder throughput", tick)
    tp = throughput.images_per_s
    results["flops"] = {"gflop_per_image": gflop_per_image, "peak_gflops": peak.to_dict(),
                        "achieved_gflops": {name: {str(b): tp[name][b].scaled(gflop_per_image, "GFLOP/s").to_dict()
                                                   for b in config.batch_sizes} for name in (TORCH, ORT_FP32)},
                        "int8_effective_gops": {str(b): tp[ORT_INT8][b].scaled(gflop_per_image, "GOP/s").to_dict()
                                                for b in config.batch_sizes}}
    results["throughput"] = throughput.to_dict()
    results["ratios"] = {f"{num}/{den}": {str(b): throughput.ratio(num, den, b).to_dict() for b in config.batch_sizes}
                         for num, den in ((ORT_FP32, TORCH), (ORT_INT8, ORT_FP32))}

    tick = time.perf_counter()
    dim = int(manifest["embedding"]["dim"])
    heads = []
    for batch in (1, 8):
        for cost in head_cost.measure_trust_head(dim, batch, repeats=config.repeats, threads=config.threads):
            encoder_us = 1e6 / tp[ORT_FP32][batch].median
            heads.append({"classes": cost.classes, "batch": batch, "us_per_frame": cost.us_per_frame.to_dict(),
                          "encoder_us_per_frame": encoder_us,
                          "percent_of_encoder": 100 * cost.us_per_frame.median / encoder_us})
    from trustvlm.runtime.decode.preprocess import PreprocessConfig  # noqa: PLC0415

    preprocessing = {name: {"us_per_frame": figure.to_dict(), "input": detail,
                            "percent_of_encoder_b8": 100 * figure.median / (1e6 / tp[ORT_FP32][8].median)}
                     for name, (figure, detail) in head_cost.measure_preprocessing(
                         PreprocessConfig.from_dict(manifest["preprocess"]), config.repeats).items()}
    results["trust_head"], results["preprocessing"] = heads, preprocessing
    log("trust head: " + ", ".join(f"{h['classes']} classes b{h['batch']} {h['percent_of_encoder']:.3f}%"
                                    for h in heads) + " of the encoder per frame")
    log.step("trust head and preprocessing", tick)

    tick = time.perf_counter()
    bundle = bench_artifacts.ensure_bundle(bench, threads=config.threads)
    log(f"end to end through trustvlm serve (bundle {bundle})")
    raw = encoder.onnx_backend(ORT_FP32, encoder_path(bench, manifest, "image", "fp32"), config.threads)
    raw_pixels = encoder.random_pixels(e2e.MAX_BATCH, size)
    raw.encode(raw_pixels)

    def raw_reference():
        time.sleep(encoder.PAUSE_BEFORE_SAMPLE_S)
        return time_calls(lambda: raw.encode(raw_pixels), 3, warmup=1).inverse(e2e.MAX_BATCH, "images/s")

    workdir = e2e.default_workdir(root)
    service = e2e.run_service_benchmark(
        bench, bundle, workdir, size, tp[ORT_FP32][8].median, config.saturation_windows,
        config.saturation_window_s, config.latency_windows, config.latency_window_s, config.flood_s,
        warmup_s=config.service_warmup_s, log=log, raw_reference=raw_reference, min_scored=config.service_min_scored)
    del raw
    if service.exit_code == 0:
        shutil.rmtree(workdir, ignore_errors=True)  # kept, with serve's stderr, only when serve failed
    results["service"] = service.to_dict()
    results["service"]["overhead_ratio"] = service.saturation.frames_per_s.median / service.raw_encoder_b8.median
    log.step("end to end", tick)

    tick = time.perf_counter()
    from trustvlm.benchmarks import frame_path  # noqa: PLC0415

    log(f"frame path: decode pool and reduced decode against the old path (demo model); {bench.name} encoder "
        "busy share")
    demo_bundle = bench_artifacts.ensure_bundle(demo, threads=config.threads)
    results["frame_path"] = frame_path.run_suite_section(demo, demo_bundle, bench, bundle, profile=config.frame_path,
                                                         log=log)
    log.step("frame path", tick)

    tick = time.perf_counter()
    log(f"text prototypes for {config.text_classes} classes ({config.text_repeats} runs)")
    text = build_times.measure_text_prototypes(bench, config.text_classes, config.text_repeats)
    log(f"calibration {config.calibration_shots} shots x {config.calibration_classes} classes on {demo.name} "
        f"({config.calibration_repeats} runs)")
    calibration, calibration_images = build_times.measure_calibration(
        demo, config.calibration_classes, config.calibration_shots, config.calibration_repeats, scratch=root)
    results["build_times"] = {"text_prototypes": {"model": bench.name, "classes": config.text_classes,
                                                  "seconds": text.to_dict()},
                              "calibration": {"model": demo.name, "classes": config.calibration_classes,
                                              "shots": config.calibration_shots, "images": calibration_images,
                                              "seconds": calibration.to_dict()}}
    log.step("build times", tick)

    results["int8"] = {folder.name: {key: _manifest(folder)["precisions"]["int8"].get(key)
                                     for key in ("parity", "trust_gate", "quantization")}
                       for folder in dict.fromkeys((bench, demo))}
    results["int8_export_seconds"] = {folder.name: _manifest(folder).get("export_seconds", {})
                                      for folder in dict.fromkeys((bench, demo))}
    results["steps_s"] = log.steps
    results["noise"] = {"steps": log.noise, "run": cpu_share_of_others(log.first_cpu, read_cpu_times())}
    results["machine_end"] = {"load_average": list(os.getloadavg())}
    results["total_s"] = round(time.perf_counter() - log.started, 1)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trustvlm.benchmarks", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="CPU benchmarks of trustvlm-edge (`make bench`): encoder throughput (PyTorch vs ONNX Runtime "
                    "fp32/int8), FLOPs against the measured peak, trust head cost, end to end through `trustvlm "
                    "serve`, build times, int8 gates. Writes results.json and BENCHMARKS.md.")
    parser.add_argument("--artifacts-root", type=Path, default=SuiteConfig.artifacts_root,
                        help="the benchmarks' own artifacts folder (exports are made there when absent)")
    parser.add_argument("--output", type=Path, default=SuiteConfig.output, help="Markdown report to write")
    parser.add_argument("--threads", type=int, default=SuiteConfig.threads,
                        help="threads for PyTorch and ONNX Runtime (intra-op)")
    parser.add_argument("--repeats", type=int, default=SuiteConfig.repeats, help="timed runs per figure")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="short run on the same models: tiny repeat counts and short phases; figures are not "
                           "benchmark results")
    size.add_argument("--smoke", action="store_true",
                      help="every section at its smallest, on the demo model alone (no ViT-B/32 export): checks that "
                           "each section runs and produces its figures (the test suite runs it); measures nothing")
    parser.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                        help="only re-render --output from a saved results.json (measures nothing)")
    return parser


def _write_report(output: Path, rendered: str) -> None:
    """Write BENCHMARKS.md, keeping the sections measured by their own commands (see ``KEPT_MARK``)."""
    output.write_text(with_kept_sections(rendered, output.read_text() if output.exists() else ""))


def main(argv: list[str] | None = None) -> int:
    """Run the CPU suite (or re-render a report) and write the files."""
    args = build_parser().parse_args(argv)
    if args.render is not None:
        _write_report(args.output, render_benchmarks(json.loads(args.render.read_text())))
        print(f"wrote {args.output} from {args.render}")
        return 0
    if args.repeats < 1 or args.threads < 1:
        print(f"bench: error: --repeats and --threads should be >= 1, but got {args.repeats} and {args.threads}",
              file=sys.stderr)
        return 2
    config = SuiteConfig(artifacts_root=args.artifacts_root, output=args.output, threads=args.threads,
                         repeats=args.repeats)
    if args.quick:
        config = config.quick_run()
    elif args.smoke:
        config = config.smoke_run()
    try:
        results = run_suite(config)
    except (bench_artifacts.BenchSetupError, e2e.ServiceStartError) as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 1
    config.artifacts_root.mkdir(parents=True, exist_ok=True)
    results_path = config.artifacts_root / ("results.smoke.json" if config.smoke else
                                            "results.quick.json" if config.quick else "results.json")
    results_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    _write_report(config.output, render_benchmarks(results))
    print(f"wrote {config.output} and {results_path} in {results['total_s']:.0f} s")
    return 0

