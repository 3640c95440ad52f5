"""Many cameras, many bundles: one service with 8 bundles against the same service with 1, side by side.

    python -m trustvlm.benchmarks.cameras --artifacts artifacts/demo_fmnist --bundle artifacts/demo_fmnist/bundle \\
        [--artifacts artifacts/bench/clip_vitb32 --bundle artifacts/bench/clip_vitb32/bundle] --output BENCHMARKS.md

The cameras of :mod:`trustvlm.benchmarks.e2e` (8 in the latency and flood phases, 16 closed-loop in the
saturation phase) go through ``trustvlm serve`` three times, alternately, `--rounds` times each: with
``--bundle DIR`` (one bundle for every camera) and with ``--bundles`` a camera map that gives each of 8
cameras a bundle of its own (that bundle and 7 of its kind calibrated on other shots, :func:`bundle_variants`;
``cam0`` and ``cam8`` share the first, and so on), so every batch mixes frames of several bundles: the
encoder runs once per batch, then the bundles' trust heads and gates in one stacked graph
(:mod:`trustvlm.runtime.scoring.routing`, :mod:`trustvlm.runtime.scoring.stacked_heads`); a third service
runs the same map with stacking off (one head and gate call per bundle), the alternative measured beside it.
Reported: saturation frames/s, p50/p99 latency at 70% of it, idle and peak RSS of the service, and the bundle
files' size. Targets: frames/s with 8 bundles >= 0.95 x with 1; RSS
with 8 <= RSS with 1 + 8 x the bundle files + 10% (one encoder session, not eight). The section goes between
``<!-- cameras-bench -->`` markers of the output file (``make bench`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from trustvlm.benchmarks import e2e
from trustvlm.benchmarks.machine import describe_machine
from trustvlm.benchmarks.report import emit_section, markdown_table, num, verdict

MARK_BEGIN, MARK_END = "<!-- cameras-bench -->", "<!-- /cameras-bench -->"
BUNDLES = 8
GROUPED = f"{BUNDLES} bundles, a call each"
TARGET_SPEED, TARGET_RSS_SLACK = 0.95, 0.10


def bundle_variants(artifacts: Path, bundle: Path, root: Path, bundles: int = BUNDLES, others: list[Path] = (),
                    log=print) -> list[Path]:
    """`bundle` and `bundles` - 1 others of its kind, each of other shots (calibration seeds 1, 2, ...) under `root`.

    Different bundles, not copies: copies would share every constant, and the stacked heads would compute
    them once. A hand-set benchmark bundle gets hand-set siblings; a calibrated one is calibrated again with
    the same score and precision on another seed (about 10 s each with the demo model). `others`: bundles of
    the same encoder to take instead, in turn (a quick run).
    """
    from trustvlm.benchmarks.bench_artifacts import build_hand_set_bundle  # noqa: PLC0415
    from trustvlm.contract.bundle import read_bundle_info  # noqa: PLC0415

    info = read_bundle_info(bundle)
    folders = [root / "bundle0"]
    shutil.copytree(bundle, folders[0])
    for seed in range(1, bundles):
        folders.append(root / f"bundle{seed}")
        if others:
            shutil.copytree(others[(seed - 1) % len(others)], folders[-1])
            continue
        log(f"bundle {seed + 1}/{bundles}: seed {seed}")
        if "hand-set" in str(info.selection.get("note", "")):
            build_hand_set_bundle(artifacts, folders[-1], seed=seed)
            continue
        subprocess.run([sys.executable, "-m", "trustvlm", "calibrate", "--artifacts", str(artifacts), "--seed",
                        str(seed), "--score", info.score, "--precision", info.precision, "--out", str(folders[-1])],
                       check=True, stdout=subprocess.DEVNULL)
    return folders


def write_bundles_map(root: Path, folders: list[Path]) -> tuple[Path, int]:
    """A map of the e2e cameras onto `folders` (cam0 and cam8 share the first, ...); the map, the first's bytes."""
    from trustvlm.contract.camera_map import CameraMap, write_camera_map  # noqa: PLC0415

    cameras = {f"cam{index}": folders[index % len(folders)] for index in range(e2e.SATURATION_CAMERAS)}
    size = sum(path.stat().st_size for path in folders[0].iterdir() if path.is_file())
    return write_camera_map(root / "cameras.toml", CameraMap(cameras)), size


def run_one(artifacts: Path, bundle: Path, workdir: Path, windows: int, window_s: float, log,
            extra_args: tuple[str, ...] = ()) -> dict:
    service = e2e.run_service_benchmark(artifacts, bundle, workdir, _input_size(artifacts), 1000.0, windows, window_s,
                                        windows, window_s, flood_s=windows * window_s, warmup_s=min(2.0, window_s),
                                        extra_args=extra_args, log=log, min_scored=4 * e2e.SATURATION_CAMERAS)
    if service.exit_code != 0:
        raise RuntimeError(f"serve exited {service.exit_code}; its stderr is in {workdir}")
    data = service.to_dict()
    return {"frames_per_s": data["saturation"]["frames_per_s"]["median"],
            "p50_ms": data["latency"]["percentiles_ms"]["p50"], "p99_ms": data["latency"]["percentiles_ms"]["p99"],
            "rss_idle_mib": data["rss_idle_mib"], "peak_rss_mib": data["peak_rss_mib"]}


def _input_size(artifacts: Path) -> int:
    from trustvlm.contract.manifest import read_manifest  # noqa: PLC0415

    return int(read_manifest(artifacts)["preprocess"]["size"])


def run(artifacts: Path, bundle: Path, rounds: int = 2, windows: int = 3, window_s: float = 3.0, log=print,
        others: list[Path] = ()) -> dict:
    """The three services, alternately, `rounds` times each; the medians and the targets' verdicts.

    ``1 bundle``: every camera on `bundle`; ``8 bundles``: each camera its own, the trust heads stacked (the
    default); ``8 bundles, a call each``: the same with ``stack_heads`` off (one head and one gate call per
    bundle in a batch), the other way of running many heads, measured beside it.
    """
    runs: dict[str, list[dict]] = {"1 bundle": [], f"{BUNDLES} bundles": [], GROUPED: []}
    with tempfile.TemporaryDirectory() as scratch:
        folders = bundle_variants(artifacts, bundle, Path(scratch) / "bundles", others=others, log=log)
        camera_map, bundle_bytes = write_bundles_map(Path(scratch), folders)
        grouped = Path(scratch) / "grouped.json"
        grouped.write_text(json.dumps({"scorer": {"stack_heads": False}}))
        services = (("1 bundle", bundle, ()), (f"{BUNDLES} bundles", camera_map, ()),
                    (GROUPED, camera_map, ("--config", str(grouped))))
        for round_ in range(rounds):
            for index, (name, served, extra) in enumerate(services):
                log(f"round {round_ + 1}/{rounds}: {name}")
                runs[name].append(run_one(artifacts, served, Path(scratch) / f"serve{round_}-{index}", windows,
                                          window_s, log, extra))
    medians = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in runs.items()}
    one, many = medians["1 bundle"], medians[f"{BUNDLES} bundles"]
    speed = many["frames_per_s"] / one["frames_per_s"]
    grouped_speed = medians[GROUPED]["frames_per_s"] / one["frames_per_s"]
    limits = {key: (one[key] + BUNDLES * bundle_bytes / 2**20) * (1 + TARGET_RSS_SLACK)
              for key in ("rss_idle_mib", "peak_rss_mib")}
    return {"machine": describe_machine(Path(__file__).resolve().parents[1]).to_dict(), "artifacts": str(artifacts),
            "bundle_name": Path(bundle).name,
            "rounds": rounds, "window_s": window_s, "windows": windows, "bundle_bytes": bundle_bytes, "runs": runs,
            "medians": medians, "speed_ratio": speed, "speed_met": speed >= TARGET_SPEED,
            "grouped_speed_ratio": grouped_speed, "rss_limits_mib": limits,
            "rss_met": all(many[key] <= limit for key, limit in limits.items())}


def render(runs: list[dict]) -> str:
    """The section of BENCHMARKS.md: one table and its two verdicts per model."""
    machine, first = runs[0]["machine"], runs[0]
    lines = [MARK_BEGIN, "## 11. Many cameras, many bundles (`serve --bundles`), measured by its own command", "",
             f"`python -m trustvlm.benchmarks.cameras` ({machine['date_utc'][:16]} UTC, {machine['cpu_model']}, "
             f"{machine['logical_cpus']} logical CPUs; medians of {first['rounds']} alternating runs each, "
             f"{first['windows']} x {first['window_s']:g} s windows). The cameras and service of section 4 (16 "
             "closed-loop cameras for saturation, 8 at 70% of it for latency); with "
             f"{BUNDLES} bundles each camera has a bundle of its own (the bundle and {BUNDLES - 1} of its kind calibrated "
             "on other shots), so batches mix bundles: the encoder runs once per batch, then the bundles' trust heads and "
             "gates in one stacked graph: bundles of one structure (the same classes, score and gate) share one head "
             "and one gate whose rows each take their own bundle's constants. The third row turns stacking off "
             "(`stack_heads: false`): one head and one gate call per bundle in the batch."]
    for results in runs:
        rows = [[name, num(m["frames_per_s"], 1), num(m["p50_ms"], 1), num(m["p99_ms"], 1),
                 num(m["rss_idle_mib"], 1), num(m["peak_rss_mib"], 1)] for name, m in results["medians"].items()]
        limits = results["rss_limits_mib"]
        lines += ["", f"**{Path(results['artifacts']).name}**, bundle `{results['bundle_name']}` "
                      f"({results['bundle_bytes'] / 1024:.0f} KiB of files; measured "
                      f"{results['machine']['date_utc'][:16]} UTC):", "",
                  markdown_table(["service", "saturation frames/s", "p50 ms", "p99 ms", "RSS idle MiB",
                                  "RSS peak MiB"], rows), "",
                  f"- Frames/s with {BUNDLES} bundles / with 1: **{results['speed_ratio']:.3f}** (target >= "
                  f"{TARGET_SPEED}): {verdict(results['speed_met'])}; with one head and gate call per bundle "
                  f"instead of the stacked graph: {results['grouped_speed_ratio']:.3f}.",
                  f"- RSS with {BUNDLES} bundles <= 1 bundle + {BUNDLES} x the bundle files + {TARGET_RSS_SLACK:.0%} "
                  f"(idle {limits['rss_idle_mib']:.1f}, peak {limits['peak_rss_mib']:.1f} MiB): "
                  f"{verdict(results['rss_met'])}."]
    return "\n".join(lines + [MARK_END])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trustvlm.benchmarks.cameras", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--artifacts", type=Path, action="append", help="export folder (repeat for more models; "
                                                                        "default: artifacts/demo_fmnist)")
    parser.add_argument("--bundle", type=Path, action="append",
                        help="the first camera's bundle (and the one bundle of the baseline), one per --artifacts "
                             "(default: ARTIFACTS/bundle)")
    parser.add_argument("--other-bundles", type=Path, nargs="+", default=[], metavar="DIR",
                        help="bundles of the first model's encoder for the other cameras, in turn (a quick run; "
                             "default: calibrated on other seeds)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each service, alternating")
    parser.add_argument("--window-s", type=float, default=3.0, help="seconds per measured window (3 per phase)")
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write the section into")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    models = args.artifacts or [Path("artifacts/demo_fmnist")]
    bundles = args.bundle or [model / "bundle" for model in models]
    if len(bundles) != len(models):
        parser.error(f"give one --bundle per --artifacts, but got {len(bundles)} for {len(models)}")
    runs = [run(model, bundle, args.rounds, window_s=args.window_s, others=args.other_bundles if index == 0 else (),
                log=lambda line: print(line, file=sys.stderr, flush=True))
            for index, (model, bundle) in enumerate(zip(models, bundles))]
    section = render(runs)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2, default=str) + "\n")
    return emit_section(section, args.output, MARK_BEGIN, MARK_END)


if __name__ == "__main__":
    sys.exit(main())
