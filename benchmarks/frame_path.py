"""The frame path in front of the encoder, through the real service: the decode pool against the old path.

``python -m trustvlm.benchmarks.frame_path --artifacts artifacts/demo_fmnist`` (also part of
``make bench``) runs, side by side in one run, for 768x576 and 1920x1080 JPEG frames (OpenCV's
vtest.avi, resized, quality 90) from 4 and 8 cameras:

* **paced**: every camera at :data:`PACED_FPS_PER_CAMERA` frames/s (above what the service scores);
* **flood**: one PUSH socket sending as fast as ZeroMQ takes frames (non-blocking; a full queue
  is counted as refused and the sender waits 1 ms on the subscriber);

each through a fresh ``trustvlm serve`` on loopback with the old path (``--decode-workers 0
--decode-scale full``: the scoring thread decodes every frame at full size) and the new default
(a decode pool of one worker per core, pipelined with the encoder; reduced decode when the export
passed ``trustvlm decode-gate``, which this command runs first unless ``--no-gate``), and the new
default with ``--dropped-runs`` (one message per run of superseded frames), and without the ingest's
wait for scoring under a flood (``--max-superseded-per-take 0``, as the old path); on a GPU machine,
``--paths old new gpu`` adds the service with nvImageCodec decoding and the encoder on CUDA (``make
gpu-check`` runs that; it has not run yet). Reported:
scored frames/s over the measured window (decisions received, by receive time), p50/p99 latency
from capture (the send time) to the decision's arrival, outcomes, and the ``decode_calls`` counter
of the last heartbeat, and the cores the service and the benchmark's own cameras used (CPU time over
wall time). Beside them, the machine's decode ceiling: decode-only frames/s of one thread x the
cores, full and reduced, and measured with one thread per core; and the frame path's ceiling without
sockets: the pool decoding batches of 4 frames while the real scorer scores the batch before, in
this process.

The cameras and the subscriber run in this process, on the same cores as the service: figures
are relative (old against new, same run); re-run it on a quiet machine for absolute ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SIZES = {"768x576": (768, 576), "1920x1080": (1920, 1080)}
CAMERA_COUNTS = (4, 8)
MODES = ("paced", "flood")
PATHS = {"old": ("--decode-workers", "0", "--decode-scale", "full", "--max-superseded-per-take", "0"), "new": (),
         "new+runs": ("--dropped-runs",), "new-nowait": ("--max-superseded-per-take", "0"),
         "gpu": ("--decoder", "nvimgcodec", "--providers", "cuda")}
#: The paths run unless asked: every one that runs on a CPU machine (``gpu`` needs nvImageCodec and CUDA).
DEFAULT_PATHS = ("old", "new", "new+runs", "new-nowait")
#: Messages the cameras' PUSH socket queues: a camera that keeps only its newest few frames, as latest-frame-wins wants.
SEND_HWM = 16
PACED_FPS_PER_CAMERA = 200.0
SCORED = ("meets_threshold", "below_threshold", "no_threshold", "out_of_distribution")
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def make_jpegs(width: int, height: int, count: int = 8) -> list[bytes]:
    """`count` vtest.avi frames resized to width x height, JPEG quality 90 (random pixels without opencv-doc)."""
    import cv2  # noqa: PLC0415
    import simplejpeg  # noqa: PLC0415

    frames = []
    capture = cv2.VideoCapture(str(VTEST))
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (576, 768, 3), dtype=np.uint8) for _ in range(count)]
    return [simplejpeg.encode_jpeg(np.ascontiguousarray(cv2.resize(f, (width, height))[..., ::-1]), quality=90,
                                   colorspace="RGB") for f in frames]


@dataclass(frozen=True)
class CaseResult:
    size: str
    cameras: int
    mode: str
    path: str
    offered_per_s: float
    refused: int
    scored_per_s: float
    p50_ms: float
    p99_ms: float
    outcomes: dict
    decode_calls: int | None
    rss_mib: tuple[float, ...]
    encoder_busy: float
    service_cores: float = float("nan")
    camera_cores: float = float("nan")


def run_case(artifacts: Path, bundle: Path, workdir: Path, jpegs: list[bytes], size: str, cameras: int, mode: str,
             path: str, warmup_s: float, measure_s: float, extra_serve_args: tuple[str, ...] = ()) -> CaseResult:
    """One fresh service, one traffic pattern (see the module docstring)."""
    import zmq  # noqa: PLC0415

    from trustvlm.benchmarks.e2e import cpu_seconds, read_rss_mib, start_serve  # noqa: PLC0415
    from trustvlm.benchmarks.stats import percentile  # noqa: PLC0415
    from trustvlm.runtime.frames import Encoding, FrameHeader, pack_frame_header  # noqa: PLC0415
    from trustvlm.runtime.messages import DecisionMessage, decode_body  # noqa: PLC0415

    service = start_serve(artifacts, bundle, workdir, (*PATHS[path], *extra_serve_args))
    context = zmq.Context()
    push, sub = context.socket(zmq.PUSH), context.socket(zmq.SUB)
    try:
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, SEND_HWM)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"trust/")
        sub.connect(service.publish)
        push.connect(service.ingest)
        deadline = time.monotonic() + 30
        while not sub.poll(200) and time.monotonic() < deadline:
            pass  # the first heartbeat: the subscription is live
        names = [f"cam{i}" for i in range(cameras)]
        seqs = [0] * cameras
        started = time.monotonic()
        measure_from, end = started + warmup_s, started + warmup_s + measure_s
        interval = 1.0 / (PACED_FPS_PER_CAMERA * cameras)
        sent = refused = scored = 0
        latencies, outcomes, health, rss, beats = [], {}, None, [], []
        next_rss, cpu = started, None
        while (now := time.monotonic()) < end:
            if mode == "paced":
                due = int((now - started) / interval) + 1 - sent
                burst = max(0, due)
            else:
                burst = 64
            for _ in range(burst):
                index = sent % cameras
                header = FrameHeader(names[index], seqs[index], time.time_ns(), Encoding.JPEG)
                try:
                    push.send(pack_frame_header(header), zmq.SNDMORE | zmq.NOBLOCK)
                    push.send(jpegs[sent % len(jpegs)], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    refused += 1
                    if mode == "paced":
                        sent += 1  # a paced camera does not wait: that frame is lost
                    break
                seqs[index] += 1
                sent += 1
            wait_ms = 1 if mode == "flood" else max(0, int((started + (sent + 1) * interval - now) * 1000))
            while sub.poll(wait_ms):
                wait_ms = 0
                _, body = sub.recv_multipart()
                arrived_ns, arrived = time.time_ns(), time.monotonic()
                message = decode_body(body)
                if not isinstance(message, DecisionMessage):
                    health = message
                    if arrived >= measure_from:
                        beats.append((message.ts_ns, message.counters.get("scoring_busy_us", 0)))
                    continue
                if arrived < measure_from:
                    continue
                outcomes[message.reason.value] = outcomes.get(message.reason.value, 0) + message.frames
                if message.reason.value in SCORED:
                    scored += 1
                    latencies.append((arrived_ns - message.capture_ts_ns) / 1e6)
            if now >= next_rss:
                rss.append(round(read_rss_mib(service.pid)[0], 1))
                next_rss += 1.0
            if cpu is None and now >= measure_from:
                cpu = (now, cpu_seconds(service.pid), cpu_seconds())
        wall = time.monotonic() - cpu[0] if cpu else float("nan")
        service_cores = (cpu_seconds(service.pid) - cpu[1]) / wall if cpu else float("nan")
        camera_cores = (cpu_seconds() - cpu[2]) / wall if cpu else float("nan")
        offered = sent / (time.monotonic() - started)
        decode_calls = None if health is None else health.counters.get("decode_calls")
        busy = ((beats[-1][1] - beats[0][1]) / 1e6 / ((beats[-1][0] - beats[0][0]) / 1e9)
                if len(beats) > 1 and beats[-1][0] > beats[0][0] else float("nan"))
        return CaseResult(size, cameras, mode, path, round(offered, 1), refused, round(scored / measure_s, 1),
                          round(percentile(latencies, 50), 1), round(percentile(latencies, 99), 1), outcomes,
                          decode_calls, tuple(rss), round(busy, 3), round(service_cores, 2), round(camera_cores, 2))
    finally:
        push.close()
        sub.close()
        context.term()
        service.stop()


def decode_ceiling(jpegs: list[bytes], min_side: int, workers: int, seconds: float = 2.0) -> dict:
    """Decode-only frames/s: one thread, x `workers`, and measured with `workers` threads (full and reduced)."""
    import simplejpeg  # noqa: PLC0415

    from trustvlm.runtime.decode.image_codec import decode_jpeg  # noqa: PLC0415

    width, height = simplejpeg.decode_jpeg_header(jpegs[0])[1::-1]

    def rate(threads: int, side: int) -> float:
        count, end = 0, time.monotonic() + seconds
        started = time.monotonic()

        def work(_):
            done = 0
            while time.monotonic() < end:
                decode_jpeg(None, jpegs[done % len(jpegs)], side)
                done += 1
            return done
        with ThreadPoolExecutor(threads) as pool:
            count = sum(pool.map(work, range(threads)))
        return count / (time.monotonic() - started)

    result = {"frame": f"{width}x{height}", "workers": workers}
    for name, side in (("full", 0), ("reduced", min_side)):
        one = rate(1, side)
        result[name] = {"one_thread": round(one, 1), "one_thread_x_cores": round(one * workers, 1),
                        "all_threads": round(rate(workers, side), 1)}
    return result


def scoring_ceiling(artifacts: Path, bundle: Path, jpegs: list[bytes], seconds: float = 3.0, batch: int = 4) -> dict:
    """Frames/s of decode + resize + scoring without sockets: the pool (default size) prepares batch n+1 while the
    real scorer (configured as the service runs it beside the pool) scores batch n, in this process."""
    from trustvlm.runtime.decode.decode_pool import DecodeConfig, DecodePool  # noqa: PLC0415
    from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame  # noqa: PLC0415
    from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer  # noqa: PLC0415

    pool = DecodePool(DecodeConfig())
    scorer = load_scorer(artifacts, bundle, ScorerConfig().beside_decode_pool(pool.pipelined))
    frames = [ReceivedFrame(FrameHeader(f"cam{i}", 0, time.time_ns(), Encoding.JPEG), jpegs[i % len(jpegs)],
                            time.time_ns()) for i in range(batch)]
    try:
        pending, done = pool.submit(frames, scorer), 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            following = pool.submit(frames, scorer)
            scorer.decide(frames, pending.result())
            pending, done = following, done + batch
        return {"frames_per_s": round(done / (time.monotonic() - started), 1), "batch": batch,
                "workers": pool.workers}
    finally:
        pool.close()


def reduced_min_side(artifacts: Path) -> int:
    """The short side the service decodes to for this export's fp32 encoder (0: full, gate not passed)."""
    from trustvlm.contract.bundle import engine_sha256  # noqa: PLC0415
    from trustvlm.contract.decode_gate import check_decode_gate  # noqa: PLC0415
    from trustvlm.contract.manifest import read_manifest  # noqa: PLC0415

    manifest = read_manifest(artifacts)
    sha = engine_sha256(manifest, "fp32", towers=("image",))["image_encoder"]
    verdict = check_decode_gate(artifacts, "fp32", sha, dict(manifest["preprocess"]))
    return verdict.headroom * int(manifest["preprocess"]["size"])


def run_frame_path(artifacts: Path, bundle: Path, sizes=tuple(SIZES), cameras=CAMERA_COUNTS, modes=MODES,
                   warmup_s: float = 3.0, measure_s: float = 8.0, gate: bool = True, log=print,
                   paths=DEFAULT_PATHS, extra_serve_args: tuple[str, ...] = (), gate_frames_per_video: int = 20,
                   gate_labelled: int = 600, ceiling_s: float = 2.0) -> dict:
    """Every case, old and new path side by side (see the module docstring); returns the results as data.

    `extra_serve_args` go to every service after the path's own; the gate measures `gate_labelled`
    labelled images and `gate_frames_per_video` frames of each video; each ceiling runs `ceiling_s`.
    """
    from trustvlm.runtime.decode.decode_pool import default_workers  # noqa: PLC0415

    if gate:
        from trustvlm.pipelines.decode_gate import run_decode_gate  # noqa: PLC0415
        log("decode gate ...")
        run_decode_gate(artifacts, ("fp32",), frames_per_video=gate_frames_per_video, labelled_count=gate_labelled)
    min_side = reduced_min_side(artifacts)
    workers = default_workers()
    results = {"cores": workers, "reduced_min_side": min_side, "paced_fps_per_camera": PACED_FPS_PER_CAMERA,
               "ceiling": {}, "cases": []}
    with tempfile.TemporaryDirectory() as workdir:
        for size in sizes:
            jpegs = make_jpegs(*SIZES[size])
            results["ceiling"][size] = decode_ceiling(jpegs, min_side, workers, seconds=ceiling_s)
            results["ceiling"][size]["scoring"] = scoring_ceiling(artifacts, bundle, jpegs, seconds=ceiling_s)
            log(f"decode ceiling {size}: {results['ceiling'][size]}")
            for count in cameras:
                for mode in modes:
                    for path in paths:
                        case = run_case(artifacts, bundle, Path(workdir), jpegs, size, count, mode, path, warmup_s,
                                        measure_s, extra_serve_args)
                        log(f"{size} {count} cameras {mode} {path}: {case.scored_per_s} scored/s, p50 "
                            f"{case.p50_ms} ms, p99 {case.p99_ms} ms, {case.outcomes}")
                        results["cases"].append(asdict(case))
    return results


def markdown(results: dict) -> str:
    """The side-by-side table of a run."""
    lines = [f"Cores: {results['cores']} (decode pool default); reduced decode to a short side >= "
             f"{results['reduced_min_side']} px (0: gate not passed, full decode); paced: "
             f"{results['paced_fps_per_camera']:g} frames/s per camera.", "",
             "| frames | cameras | traffic | path | offered/s | scored/s | x old | p50 ms | p99 ms | encoder busy | "
             "cores: service / cameras | RSS MiB (min-max) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    old = {(c["size"], c["cameras"], c["mode"]): c["scored_per_s"] for c in results["cases"] if c["path"] == "old"}
    for c in results["cases"]:
        reference = old.get((c["size"], c["cameras"], c["mode"]))
        ratio = c["scored_per_s"] / reference if reference else float("nan")
        rss = f"{min(c['rss_mib']):.0f}-{max(c['rss_mib']):.0f}" if c["rss_mib"] else "-"
        lines.append(f"| {c['size']} | {c['cameras']} | {c['mode']} | {c['path']} | {c['offered_per_s']:.0f} | "
                     f"{c['scored_per_s']:.0f} | {ratio:.2f}x | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} | "
                     f"{c['encoder_busy']:.0%} | {c.get('service_cores', float('nan')):.2f} / "
                     f"{c.get('camera_cores', float('nan')):.2f} | {rss} |")
    lines += ["", "| frames | decode | 1 thread /s | x cores /s | all cores measured /s | "
              "decode + score, no sockets /s |",
              "|---|---|---|---|---|---|"]
    for size, ceiling in results["ceiling"].items():
        for name in ("full", "reduced"):
            row = ceiling[name]
            scoring = ceiling.get("scoring", {}).get("frames_per_s") if name == "reduced" else None
            lines.append(f"| {size} | {name} | {row['one_thread']:.0f} | {row['one_thread_x_cores']:.0f} | "
                         f"{row['all_threads']:.0f} | {'-' if scoring is None else f'{scoring:.0f}'} |")
    return "\n".join(lines)


#: Sizes of the ``make bench`` section: every case (full), one size and camera count (quick), and the
#: smallest run that still goes through every step (smoke: the test suite's ``--smoke``).
SECTION_PROFILES = {
    "full": {"demo": {}, "busy": dict(measure_s=8.0, warmup_s=3.0)},
    "quick": {"demo": dict(sizes=("768x576",), cameras=(4,), measure_s=2.0, warmup_s=1.0),
              "busy": dict(measure_s=2.0, warmup_s=1.0)},
    "smoke": {"demo": dict(sizes=("768x576",), cameras=(2,), modes=("paced",), paths=("old", "new"), measure_s=0.5,
                           warmup_s=0.5, gate_frames_per_video=2, gate_labelled=40, ceiling_s=0.2),
              "busy": dict(modes=("paced",), paths=("new",), measure_s=0.5, warmup_s=0.5, ceiling_s=0.2)},
}
#: The ViT-B/32 rows decode at full size, stated to the service: the decode gate (reduced against full
#: decode, top-1 agreement) is not run for random weights, whose predictions mean nothing.
BUSY_SERVE_ARGS = ("--decode-scale", "full")


def run_suite_section(demo: Path, demo_bundle: Path, bench: Path, bench_bundle: Path, profile: str = "full",
                      log=print) -> dict:
    """The frame path part of ``make bench`` at a size of :data:`SECTION_PROFILES`: every case on the demo
    model, and the bench model's encoder busy share. Raises ValueError for an unknown `profile`."""
    if profile not in SECTION_PROFILES:
        raise ValueError(f"frame path profile should be one of {sorted(SECTION_PROFILES)}, but got {profile!r}")
    sizes = SECTION_PROFILES[profile]
    results = run_frame_path(demo, demo_bundle, log=log, **sizes["demo"])
    busy = run_frame_path(bench, bench_bundle, **{"sizes": ("768x576",), "cameras": (4,), "paths": ("old", "new"),
                                                  "gate": False, "extra_serve_args": BUSY_SERVE_ARGS, "log": log,
                                                  **sizes["busy"]})
    results.update(vitb32_busy=busy["cases"], busy_model=bench.name,
                   busy_decode="full size (--decode-scale full): no decode gate for random weights")
    return results


def render_section(results: dict) -> str:
    """Section 8 of BENCHMARKS.md (empty when the run has no frame path results)."""
    data = results.get("frame_path")
    if not data:
        return ""
    busy = ", ".join(f"{c['mode']} {c['path']}: {c['encoder_busy']:.0%} busy at {c['scored_per_s']:.1f} scored/s "
                     f"(p50 {c['p50_ms']:.0f} ms)" for c in data.get("vitb32_busy", []))
    return ("## 8. Frame path: decode pool, reduced decode, goodput under a flood (demo model)\n\n"
            "Through the real service, side by side in one run (`python -m trustvlm.benchmarks.frame_path`, see its "
            "docstring): `old` is `--decode-workers 0 --decode-scale full --max-superseded-per-take 0` (the scoring "
            "thread decodes every frame at full size; the ingest never waits), `new` the defaults, `new+runs` with "
            "`--dropped-runs`, `new-nowait` with `--max-superseded-per-take 0`. Paced: every "
            "camera above what the service scores; flood: as fast as ZeroMQ takes frames. Latency: capture to the "
            "decision's arrival. The cameras run in the benchmark's process, on the same cores.\n\n"
            + markdown(data) + (f"\n\n{data.get('busy_model', 'clip_vitb32')} (random-init) image encoder, 4 cameras "
                                f"768x576, decoded {data.get('busy_decode', 'as the export allows')}: {busy} (time in "
                                "encoder and trust head / wall time)." if busy else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trustvlm.benchmarks.frame_path",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/demo_fmnist"), help="export folder")
    parser.add_argument("--bundle", type=Path, default=None, help="prototype bundle (default: ARTIFACTS/bundle)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), help="frame sizes")
    parser.add_argument("--cameras", nargs="+", type=int, default=list(CAMERA_COUNTS), help="camera counts")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="traffic patterns")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(DEFAULT_PATHS),
                        help="service variants: old (--decode-workers 0, full decode, the ingest never waits), "
                             "new (defaults), new+runs (--dropped-runs), new-nowait (--max-superseded-per-take 0), "
                             "gpu (--decoder nvimgcodec --providers cuda: a GPU machine only)")
    parser.add_argument("--measure-s", type=float, default=8.0, help="measured seconds per case")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="unmeasured seconds before each case")
    parser.add_argument("--ceiling-s", type=float, default=2.0,
                        help="seconds each decode and scoring ceiling is measured")
    parser.add_argument("--no-gate", dest="gate", action="store_false",
                        help="use the export's decode_gate.json as it is (default: run the gate first)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = run_frame_path(args.artifacts, args.bundle or args.artifacts / "bundle", tuple(args.sizes),
                             tuple(args.cameras), tuple(args.modes), warmup_s=args.warmup_s, measure_s=args.measure_s,
                             gate=args.gate, ceiling_s=args.ceiling_s,
                             log=lambda line: print(line, file=sys.stderr, flush=True), paths=tuple(args.paths))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
