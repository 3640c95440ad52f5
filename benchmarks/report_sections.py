"""The sections of BENCHMARKS.md, one function each, from the results dict of a CPU run.

:func:`render_benchmarks` turns the results of a CPU run (the dict the suite writes to
``results.json``) into BENCHMARKS.md, so a report can be re-rendered from saved results without
measuring again.
"""

from __future__ import annotations

import math

from trustvlm.benchmarks.report import fig, markdown_table, num, verdict
from trustvlm.benchmarks.stats import Figure

TORCH, ORT_FP32, ORT_INT8 = "pytorch eager", "onnxruntime fp32", "onnxruntime int8"
QUIET_LOAD = 0.5
QUIET_OTHERS_PERCENT = 5.0
PEAK_SPREAD_WARNING = 1.3


def _median(data: dict | None) -> float:
    return float("nan") if data is None else Figure.from_dict(data).median


def _model(results: dict) -> str:
    """The model of sections 1-5 (results from before it was recorded: clip_vitb32)."""
    return results["config"].get("bench_model", "clip_vitb32")


def _batches(results: dict) -> list[str]:
    return [str(b) for b in results["config"]["batch_sizes"]]


def header(results: dict) -> str:
    machine, config = results["machine"], results["config"]
    load_start, load_end = machine["load_average"][0], results.get("machine_end", {}).get("load_average", [math.nan])[0]
    lines = ["# Benchmarks", ""]
    if config.get("smoke"):
        lines += [f"> **SMOKE RUN** (`--smoke`: every section at its smallest, on `{_model(results)}` alone). It "
                  "checks that each section runs; these figures are **not** benchmark results. Run `make bench` on a "
                  "quiet machine.", ""]
    elif config.get("quick"):
        lines += ["> **QUICK RUN** (`--quick`: tiny repeat counts, short phases, fewer classes). It checks that the "
                  "harness works; these figures are **not** benchmark results. Run `make bench` on a quiet machine.", ""]
    noise = results.get("noise", {}).get("run")
    noisy_steps = {name: n for name, n in results.get("noise", {}).get("steps", {}).items()
                   if n and (n["others_percent"] >= QUIET_OTHERS_PERCENT or n["steal_percent"] >= QUIET_OTHERS_PERCENT)}
    # The load average decays over minutes (it still counts what ran before); the measured share wins.
    if noisy_steps or (noise is None and load_start >= QUIET_LOAD):
        where = ", ".join(f"{name} {n['others_percent']:.0f}% + steal {n['steal_percent']:.0f}%"
                          for name, n in noisy_steps.items())
        lines += [f"> **Noisy machine**: 1-minute load average {load_start:.2f} at the start (quiet: under "
                  f"{QUIET_LOAD})" + (f"; CPU taken by other processes during: {where}" if where else "") +
                  ". Treat every figure as a lower bound on speed and the spreads as inflated.", ""]
    peak = Figure.from_dict(results["flops"]["peak_gflops"]) if "flops" in results else None
    if peak is not None and peak.min > 0 and peak.max / peak.min > PEAK_SPREAD_WARNING:
        lines += [f"> **The machine's speed changed during the run**: the same fp32 matmul ran at {peak.min:.0f} to "
                  f"{peak.max:.0f} GFLOP/s (measured before and after section 1). Figures of different sections "
                  "may have been taken at different speeds; ratios measured in step (sections 1, 4, 7) hold up "
                  "best.", ""]
    if noise is None:
        lines += ["> CPU time taken by other processes during the run was not recorded (results from before the "
                  "harness measured it); the load average at the end includes the benchmark itself.", ""]
    lines += ["Written by `make bench` (`python -m trustvlm.benchmarks`); re-render from the saved results with "
              "`python -m trustvlm.benchmarks --render artifacts/bench/results.json`. Every figure is the **median "
              "(min-max)** over repeated runs. Speed is measured here, never asserted in tests. " + (
                  "The model is **ViT-B/32 with random-init weights** (`clip_vitb32 --weights random`): the real "
                  "architecture, so the real cost; any figure about accuracy of that model is meaningless (the int8 "
                  "trust gate runs on the trained demo model instead)." if _model(results) == "clip_vitb32" else
                  f"The model of sections 1-5 is `{_model(results)}`."), "",
              "## Machine", "",
              markdown_table(["what", "value"], [
                  ["CPU", machine["cpu_model"]],
                  ["logical CPUs", str(machine["logical_cpus"])],
                  ["flags that matter", " ".join(machine["cpu_flags"]) or "none found"],
                  ["int8 dot products", _int8_note(machine["cpu_flags"])],
                  ["memory", f"{machine['memory_gib']:.1f} GiB"],
                  ["OS / Python", f"{machine['os']} / {machine['python']}"],
                  ["libraries", ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())],
                  ["date (UTC)", machine["date_utc"]],
                  ["commit", machine["git_commit"]],
                  ["load average (1 min) at the start / end (the end includes this run)",
                   f"{load_start:.2f} / {load_end:.2f}"],
                  ["CPU taken by other processes / hypervisor steal over the run",
                   "not recorded" if noise is None else
                   f"{noise['others_percent']:.1f}% / {noise['steal_percent']:.1f}% of the machine"],
                  ["threads (PyTorch, ONNX Runtime)", str(config["threads"])],
                  ["repeats per figure", str(config["repeats"])],
                  ["total run time", f"{results.get('total_s', math.nan):.0f} s "
                                     f"({', '.join(f'{k} {v:.0f} s' for k, v in results.get('steps_s', {}).items())})"],
              ], "ll")]
    return "\n".join(lines)


def _int8_note(flags: list[str]) -> str:
    if "amx_int8" in flags:
        return "AMX int8"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "VNNI"
    if "avx2" in flags:
        return ("no VNNI: uint8 x int8 products go through `vpmaddubsw` (int16 pair sums that saturate), "
                "hence 7-bit weights (reduce_range) in the int8 recipe")
    return "no AVX2"


def throughput(results: dict) -> str:
    tp, ratios = results["throughput"], results["ratios"]
    rows = []
    for b in _batches(results):
        rows.append([b, fig(tp[TORCH][b]), fig(tp[ORT_FP32][b]), fig(ratios[f"{ORT_FP32}/{TORCH}"][b], 2),
                     fig(tp[ORT_INT8][b]), fig(ratios[f"{ORT_INT8}/{ORT_FP32}"][b], 2)])
    never_slower = all(_median(ratios[f"{ORT_FP32}/{TORCH}"][b]) >= 1.0 for b in _batches(results))
    return "\n".join([
        f"## 1. Image encoder throughput ({_model(results)}, images/s)", "",
        f"uint8 pixels `[batch, {results.get('input_size', 224)}, {results.get('input_size', 224)}, 3]` in, "
        "embedding out, normalization inside the model (as exported). "
        "Backends interleaved within each repeat; ratios are paired per repeat. A sample covers at least "
        f"{results['config']['min_images_per_sample']} images.", "",
        markdown_table(["batch", "PyTorch eager", "ONNX Runtime fp32", "ORT fp32 / PyTorch", "ONNX Runtime int8",
                        "int8 / fp32"], rows),
        "", f"Target *ONNX Runtime fp32 never slower than PyTorch eager* (median ratio >= 1 at every batch): "
            f"{verdict(never_slower)}."])


def limit(results: dict) -> str:
    flops = results["flops"]
    peak = Figure.from_dict(flops["peak_gflops"]).max
    rows = []
    for name in (TORCH, ORT_FP32):
        for b in _batches(results):
            achieved = flops["achieved_gflops"][name][b]
            rows.append([name, b, fig(achieved), num(100 * _median(achieved) / peak, 0, "%")])
    for b in _batches(results):
        achieved = flops["int8_effective_gops"][b]
        rows.append([f"{ORT_INT8} (effective)", b, fig(achieved), num(100 * _median(achieved) / peak, 0, "%")])
    return "\n".join([
        "## 2. The limit: achieved GFLOP/s against the measured peak", "",
        f"FLOPs of one image through the encoder, counted by `torch.utils.flop_counter.FlopCounterMode` (2 x "
        f"multiply-adds of matmuls, convolutions, attention; counted with autograd on, see `benchmarks/flops.py`): "
        f"**{flops['gflop_per_image']:.2f} GFLOP/image**. Measured peak: fp32 4096 x 4096 matmul in PyTorch, "
        f"{results['config']['threads']} threads, before and after section 1: {fig(flops['peak_gflops'])} GFLOP/s; "
        f"the percentages divide by the best run, **{peak:.1f} GFLOP/s** (a peak is what the machine can do; "
        "other load only slows a run down).", "",
        markdown_table(["backend", "batch", "achieved GFLOP/s", "% of fp32 peak"], rows, "lrrr"),
        "", "int8 \"effective\" is the fp32 FLOP count divided by int8 time: the work done per second, not "
            "int8 arithmetic throughput."])


def head_cost(results: dict) -> str:
    rows = [[str(h["classes"]), str(h["batch"]), fig(h["us_per_frame"]), num(h["encoder_us_per_frame"], 0),
             num(h["percent_of_encoder"], 3, "%"), verdict(h["percent_of_encoder"] < 1.0)]
            for h in results["trust_head"]]
    pre_rows = [[name, fig(p["us_per_frame"], 0), num(p["percent_of_encoder_b8"], 2, "%"), p["input"]]
                for name, p in results["preprocessing"].items()]
    return "\n".join([
        "## 3. Trust head cost per frame against the encoder", "",
        "The fused trust head (`calibration/trust_head.py`, ONNX Runtime CPU) on random unit prototypes, "
        "embedding size 512; encoder cost per frame = 1 / (ONNX Runtime fp32 images/s) at the same batch. "
        "Target: under 1%.", "",
        markdown_table(["classes", "batch", "trust head µs/frame", "encoder µs/frame", "head / encoder",
                        "< 1%"], rows),
        "", "Decode and preprocess per frame, through the service's own functions (`decode_image`, "
            "`resize_and_crop`), against the encoder at batch 8:", "",
        markdown_table(["input", "µs/frame", "of encoder b8", "what"], pre_rows, "lrrl")])


def service(results: dict) -> str:
    s = results["service"]
    sat, lat, flood = s["saturation"], s["latency"], s["flood"]
    ratio = s["overhead_ratio"]
    p = lat["percentiles_ms"]
    ranges = lat["window_ranges_ms"]
    lat_rows = [[q, num(p[q], 0), f"{num(ranges[q][0], 0)}-{num(ranges[q][1], 0)}"] for q in ("p50", "p95", "p99")]
    return "\n".join([
        f"## 4. End to end through `trustvlm serve` ({_model(results)}, CPU provider)", "",
        f"source (this process: one PUSH socket, 8 cameras, raw bgr8 {results.get('input_size', 224)} x "
        f"{results.get('input_size', 224)} Fashion-MNIST frames) -> ZeroMQ -> "
        "`trustvlm serve` (separate process, default threads, `--max-batch 8`, `--staleness-ms 5000`) -> PUB -> "
        "subscriber (this process). Sender, service and subscriber share the machine's cores. See "
        "`benchmarks/e2e.py` for how each phase is measured.", "",
        markdown_table(["figure", "value"], [
            ["saturation (closed loop, 16 cameras, one frame in flight each), frames/s", fig(sat["frames_per_s"])],
            ["saturation: mean frames per batch", num(sat.get("mean_batch"), 1)],
            ["raw encoder, ONNX Runtime fp32 batch 8, measured just before and after the phase, images/s",
             fig(s["raw_encoder_b8"])],
            ["overhead ratio = saturation / raw encoder (medians; target >= 0.9)",
             f"{num(ratio, 3)} ({verdict(ratio >= 0.9)})"],
            ["saturation: frames scored / deferred otherwise", f"{sat['scored']} / "
             f"{', '.join(f'{k} {v}' for k, v in sat['deferred_other'].items()) or 'none'}"],
            ["latency phase: offered frames/s (70% of saturation)", num(lat["offered_per_s"], 2)],
            ["latency phase: frames measured (after warm-up) by outcome",
             ", ".join(f"{k} {v}" for k, v in sorted(lat.get("outcomes", {}).items())) or "none"],
            ["latency phase: p50 capture -> publish (service's own stamp), ms", num(lat["publish_latency_p50_ms"], 0)],
        ], "lr"),
        "", "Latency capture -> decision received by the subscriber, at 70% of the saturation rate (pooled over the "
            "phase; range of the same percentile over its windows):", "",
        markdown_table(["percentile", "ms (pooled)", "range over windows"], lat_rows),
        "", f"Target p99 <= 2 x p50: {num(p['p99'], 0)} vs {num(2 * p['p50'], 0)} ms: "
            f"{verdict(p['p99'] <= 2 * p['p50'])}."])


def memory(results: dict) -> str:
    s = results["service"]
    flood = s["flood"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(flood["decisions_by_reason"].items()))
    growth = flood["growth_second_half_mib"]
    flat = abs(growth) <= max(8.0, 0.05 * flood["rss_end_mib"])
    return "\n".join([
        "## 5. Memory of the serve process", "",
        markdown_table(["figure", "value"], [
            ["RSS after start-up (idle), MiB", num(s["rss_idle_mib"], 0)],
            ["peak RSS (VmHWM) over the whole run, MiB", num(s["peak_rss_mib"], 0)],
            [f"flood: offered frames/s for {flood['duration_s']:.0f} s (10 x saturation)", num(flood["offered_per_s"], 0)],
            ["flood: frames sent / refused by ZeroMQ (queue full, non-blocking send)",
             f"{flood['sent']} / {flood['refused']}"],
            ["flood: decisions by reason", reasons],
            ["flood: frames scored per second", num(flood["scored_per_s"], 1)],
            ["flood: RSS at start / max / end, MiB",
             f"{num(flood['rss_start_mib'], 0)} / {num(flood['rss_max_mib'], 0)} / {num(flood['rss_end_mib'], 0)}"],
            ["flood: RSS growth over the second half, MiB (flat: within max(8 MiB, 5%))",
             f"{num(growth, 1)} ({'flat' if flat else '**growing**'})"],
            ["serve exit code after SIGTERM / last heartbeat status", f"{s['exit_code']} / {s['last_health']}"],
        ], "lr")])


def build(results: dict) -> str:
    text, calib = results["build_times"]["text_prototypes"], results["build_times"]["calibration"]
    return "\n".join([
        "## 6. Build times", "",
        markdown_table(["what", "model", "seconds"], [
            [f"text prototypes, {text['classes']} classes (1 template, session creation included)", text["model"],
             fig(text["seconds"])],
            [f"calibration, {calib['shots']} shots x {calib['classes']} classes ({calib['images']} images from an "
             "image folder, lambda auto, SGR threshold, bundle written)", calib["model"], fig(calib["seconds"])],
        ], "llr"),
        "", "Calibration runs on the demo model so that the figure shows the calibration's own cost; with ViT-B/32 "
            f"it is dominated by encoding the {calib['images']} images (about images / ONNX Runtime fp32 images/s "
            "at batch 32 of section 1, plus the figure above). The class names are synthetic (`object 0000`, ...) "
            "and outside the demo model's ten-word vocabulary, so it calibrates with `--allow-unknown-words`: the "
            "names cost what any names cost; their prototypes mean nothing, and no figure here depends on them."])


def int8(results: dict) -> str:
    rows = []
    for model, data in results["int8"].items():
        parity, trust = data["parity"], data["trust_gate"]
        agreement = parity.get("top1_agreement")
        trust_text = ("not applicable: " + trust["reason"] if not trust["applicable"] else
                      f"AUROC {100 * trust['fp32_auroc']:.2f} -> {100 * trust['int8_auroc']:.2f} "
                      f"({trust['test_images']} test images)")
        gated = "" if parity.get("min_agreement_required") else " (not gated: random-init weights, see below)"
        rows.append([model, f"{parity['image_min_cosine']:.5f} (mean {parity['image_mean_cosine']:.5f})",
                     "n/a" if agreement is None else f"{100 * agreement:.2f}%{gated}", trust_text])
    ratios = results["ratios"][f"{ORT_INT8}/{ORT_FP32}"]
    speed = [[b, fig(results["throughput"][ORT_FP32][b]), fig(results["throughput"][ORT_INT8][b]), fig(ratios[b], 2)]
             for b in _batches(results)]
    b8 = _median(ratios.get("8"))
    recipe = next(iter(results["int8"].values()))["quantization"]
    return "\n".join([
        "## 7. int8 image encoder (ONNX Runtime static quantization)", "",
        f"`trustvlm export --model X --precision int8` writes `image_encoder.int8.onnx` (text encoder stays fp32): "
        f"`quantize_static`, {recipe['quant_format']}, per-channel {recipe['weight_type']} weights with reduce_range="
        f"{recipe['reduce_range']}, {recipe['activation_type']} activations ({recipe['calibrate_method']}), ops "
        f"{', '.join(recipe['op_types'])} with constant weights only, calibrated on {recipe['calibration_images']} "
        "Fashion-MNIST calibration-split images disjoint from the parity images (`export/quantize.py`). Gates: min "
        "cosine >= 0.99 on 200 parity images, zero-shot top-1 agreement >= 99% with fp32 torch, and the trust gate "
        "(TrustVLM AUROC within 0.5 points of fp32 on the demo evaluation) where it applies.", "",
        markdown_table(["model", "image cosine min", "top-1 agreement", "trust gate"], rows, "llrl"),
        "", "Why the agreement gate does not apply to random-init weights: their zero-shot predictions are near-ties "
            "that any rounding flips, so agreement measures tie-breaking noise, not the quantization. The fp16 export "
            "of the same random-init ViT-B/32 (min cosine 0.9999997, README) already flips 1 prediction in 200. "
            "The cosine gate applies to every export; agreement and trust gates to trained weights.",
        "", markdown_table(["batch", "ORT fp32 images/s", "ORT int8 images/s", "int8 / fp32"], speed),
        "", f"Target int8 >= 1.8 x fp32 at batch 8: {num(b8, 2)} x: {verdict(b8 >= 1.8)}."])


def targets(results: dict) -> str:
    ratios, s = results["ratios"], results["service"]
    b = _batches(results)
    worst_head = max(h["percent_of_encoder"] for h in results["trust_head"])
    p = s["latency"]["percentiles_ms"]
    fp32_vs_torch = min(_median(ratios[f"{ORT_FP32}/{TORCH}"][x]) for x in b)
    rows = [
        ["int8 >= 1.8 x fp32 (ONNX Runtime, batch 8)", f"{num(_median(ratios[f'{ORT_INT8}/{ORT_FP32}'].get('8')), 2)} x",
         verdict(_median(ratios[f"{ORT_INT8}/{ORT_FP32}"].get("8")) >= 1.8)],
        ["ONNX Runtime fp32 never slower than PyTorch eager", f"worst batch {num(fp32_vs_torch, 2)} x",
         verdict(fp32_vs_torch >= 1.0)],
        ["pipeline overhead ratio >= 0.9", num(s["overhead_ratio"], 3), verdict(s["overhead_ratio"] >= 0.9)],
        ["trust head < 1% of the encoder", f"worst {num(worst_head, 3)}%", verdict(worst_head < 1.0)],
        ["p99 <= 2 x p50 at 70% load", f"{num(p['p99'], 0)} / {num(p['p50'], 0)} ms",
         verdict(p["p99"] <= 2 * p["p50"])],
    ]
    return "\n".join(["## Targets", "", "Reported against, not asserted.", "",
                      markdown_table(["target", "measured (medians)", "verdict"], rows, "lrl")])


def gaps(results: dict) -> str:
    tp, flops = results["throughput"], results["flops"]
    peak = Figure.from_dict(flops["peak_gflops"]).max
    b = _batches(results)
    best = max(b, key=lambda x: _median(tp[ORT_FP32][x]))
    share = 100 * _median(flops["achieved_gflops"][ORT_FP32][best]) / peak
    b1_vs_b8 = _median(tp[ORT_FP32].get("1")) / _median(tp[ORT_FP32].get("8")) if "1" in b and "8" in b else math.nan
    pre = results["preprocessing"]
    jpeg = pre.get("jpeg: decode + resize/crop", pre.get("jpeg", {})).get("percent_of_encoder_b8", math.nan)
    jpeg_decode = pre.get("jpeg: decode only", {}).get("percent_of_encoder_b8", math.nan)
    p50 = results["service"]["latency"]["percentiles_ms"]["p50"]
    p99 = results["service"]["latency"]["percentiles_ms"]["p99"]
    b1_ms = 1e3 / _median(tp[ORT_FP32]["1"]) if "1" in b else math.nan
    measured = [
        f"- **fp32 runs at {share:.0f}% of the measured fp32 peak** (ONNX Runtime, batch {best}, section 2). What is "
        "left for graph work (fusions, I/O binding, fewer copies) on this CPU is the remaining "
        f"{100 - share:.0f}% at most; larger gains have to come from precision (int8 here; fp16/bf16 where the "
        "CPU or a GPU has them) or from a smaller model.",
        f"- **Batching is worth {1 / b1_vs_b8:.2f}x on this CPU** (ONNX Runtime fp32 batch 8 vs batch 1). At 70% of "
        f"the batch-8 saturation rate, frames arrive one at a time and are scored in small batches: p50 latency "
        f"{p50:.0f} ms against {b1_ms:.0f} ms for one batch-1 encoder call, p99 {p99:.0f} ms."
        + (" The load is past what small batches sustain: latency grows until batches fill. Proposal (runtime, "
           "not done here): an adaptive `max_wait_ms` that waits for a fuller batch while the encoder is busy."
           if p99 > 2 * p50 else ""),
        f"- **A 768 x 576 JPEG costs {jpeg:.1f}% of the encoder per frame** to decode, resize and crop "
        + (f"(decoding alone {jpeg_decode:.1f}%: the antialiased Pillow resize, as open_clip's transforms do it, "
           "is the larger part) " if jpeg_decode < jpeg / 2 else
           f"(decoding alone {jpeg_decode:.1f}%) " if not math.isnan(jpeg_decode) else "")
        + f"against {next(iter(pre.values())).get('percent_of_encoder_b8', math.nan):.2f}% for a raw frame at the "
        "model's size (section 3). By default the service decodes and resizes on a pool of threads beside the "
        "encoder, overlapping it (section 8); with `--decode-workers 0` the scoring thread does it, in series with "
        "the encoder" + (", and loses a share of that size of its frames/s. Cameras that can send frames at the "
                         "model's size avoid the cost." if jpeg >= 2.0 else "."),
    ]
    return "\n".join(["## Gaps and proposals", "", "From this run:", "", *measured, "",
                      "Measured once by hand, outside `make bench`:", "", GAPS_TEXT.strip()])


#: Written by hand from measurements outside `make bench` (each says how it was measured).
GAPS_TEXT = """
- **int8 weights on CPUs without VNNI.** ONNX Runtime multiplies uint8 activations by int8 weights with
  `vpmaddubsw` on AVX2 (and AVX-512 without VNNI): int16 pair sums saturate. Measured by hand on this machine
  (random-init ViT-B/32, 32 Fashion-MNIST images, MinMax, per-channel): min cosine to fp32 **0.929** with 8-bit
  weights, **0.9995** with `reduce_range` (7-bit weights), 0.9996 with uint8 weights (U8U8). The export uses
  `reduce_range`: it cannot saturate on any x86 CPU, at the price of one bit of weight resolution (its speed on
  a VNNI machine was not measured here).
- **ONNX Runtime's spinning workers stall other thread pools.** In one process, PyTorch batch-1 inference started
  right after an ONNX Runtime run measured 0.55 images/s, and 6.5 images/s after a 0.3 s pause (this harness
  now pauses 0.5 s before every sample). Inside the service the same spinning took a core from the decode
  threads: beside the decode pool its sessions now run with `session.intra_op.allow_spinning = 0` (the trust
  head and the gate on one thread), measured in section 8 (section 4's service runs with the defaults too).
"""

def frame_path(results: dict) -> str:
    from trustvlm.benchmarks.frame_path import render_section  # noqa: PLC0415

    return render_section(results)


SECTIONS = (header, targets, throughput, limit, head_cost, service, memory, build, int8, frame_path, gaps)


#: Everything after this line of BENCHMARKS.md was measured by separate commands (each section says which);
#: a `make bench` run rewrites what is above it and keeps what is below.
KEPT_MARK = "<!-- sections below are measured by their own commands; make bench keeps them as they are -->"


def with_kept_sections(rendered: str, previous: str) -> str:
    """`rendered` followed by the part of the previous BENCHMARKS.md from :data:`KEPT_MARK` on (if any)."""
    at = previous.find(KEPT_MARK)
    return rendered if at < 0 else rendered.rstrip() + "\n\n" + previous[at:].rstrip() + "\n"


def render_benchmarks(results: dict) -> str:
    """BENCHMARKS.md from the results of a CPU run (see :mod:`trustvlm.benchmarks.suite`)."""
    return "\n\n".join(text for text in (section(results) for section in SECTIONS) if text).rstrip() + "\n"
