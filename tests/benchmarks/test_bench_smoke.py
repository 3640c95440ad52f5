"""`make bench` in its smallest form: every section of the CPU suite runs and produces its figures.

``python -m trustvlm.benchmarks --smoke`` runs each section at its smallest on the demo model alone
(the session's int8 export, copied: no ViT-B/32 export). The test checks that every section wrote
its figures into results.smoke.json and its heading into the report, never what the figures are:
speed is measured by ``make bench``, not asserted here.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Every heading the CPU suite writes (sections measured by their own commands are kept, not written).
SECTION_HEADINGS = ("## Machine", "## Targets", "## 1. Image encoder throughput", "## 2. The limit",
                    "## 3. Trust head cost", "## 4. End to end through `trustvlm serve`", "## 5. Memory of the serve",
                    "## 6. Build times", "## 7. int8 image encoder", "## 8. Frame path", "## Gaps and proposals")
BACKENDS = ("pytorch eager", "onnxruntime fp32", "onnxruntime int8")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def measured(figure: dict) -> bool:
    """A Figure dict with at least one finite sample."""
    return bool(figure["samples"]) and all(is_number(s) and math.isfinite(s) for s in figure["samples"])


@pytest.fixture(scope="module")
def smoke_run(int8_demo_artifacts, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-smoke")
    shutil.copytree(int8_demo_artifacts, root / "demo_fmnist")
    report = root / "BENCHMARKS.md"
    done = subprocess.run([sys.executable, "-m", "trustvlm.benchmarks", "--smoke", "--artifacts-root", str(root),
                           "--output", str(report)], capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / "results.smoke.json").read_text()), report.read_text(), done.stderr


def test_the_smoke_run_exports_nothing_and_says_it_measured_nothing(smoke_run):
    results, report, log = smoke_run
    assert "exporting" not in log, "the smoke run should reuse the copied demo export"
    assert results["config"]["smoke"] is True and results["config"]["bench_model"] == "demo_fmnist"
    assert report.startswith("# Benchmarks\n\n> **SMOKE RUN**")


def test_every_section_writes_its_heading(smoke_run):
    _, report, _ = smoke_run
    missing = [heading for heading in SECTION_HEADINGS if heading not in report]
    assert not missing, missing


def test_encoder_flops_and_trust_head_sections_produce_figures(smoke_run):
    results, _, _ = smoke_run
    batches = [str(b) for b in results["config"]["batch_sizes"]]
    assert all(measured(results["throughput"][backend][b]) for backend in BACKENDS for b in batches)
    assert all(measured(ratio[b]) for ratio in results["ratios"].values() for b in batches)
    assert is_number(results["flops"]["gflop_per_image"]) and measured(results["flops"]["peak_gflops"])
    assert results["trust_head"] and all(measured(h["us_per_frame"]) for h in results["trust_head"])
    assert results["preprocessing"] and all(measured(p["us_per_frame"]) for p in results["preprocessing"].values())


def test_the_service_section_produces_figures(smoke_run):
    results, _, _ = smoke_run
    service = results["service"]
    assert service["exit_code"] == 0
    assert measured(service["saturation"]["frames_per_s"]) and measured(service["raw_encoder_b8"])
    assert service["latency"]["scored"] > 0
    assert all(is_number(v) and math.isfinite(v) for v in service["latency"]["percentiles_ms"].values())
    flood = service["flood"]
    assert flood["sent"] > 0 and all(is_number(flood[k]) for k in ("rss_start_mib", "rss_max_mib", "rss_end_mib"))


def test_the_frame_path_section_produces_figures(smoke_run):
    results, _, _ = smoke_run
    data = results["frame_path"]
    assert data["cases"] and data["vitb32_busy"] and data["ceiling"]
    for case in data["cases"] + data["vitb32_busy"]:
        assert all(is_number(case[k]) for k in ("offered_per_s", "scored_per_s", "p50_ms", "p99_ms")), case
    for ceiling in data["ceiling"].values():
        assert all(is_number(ceiling[name]["all_threads"]) for name in ("full", "reduced"))
        assert is_number(ceiling["scoring"]["frames_per_s"])


def test_build_times_and_int8_sections_produce_figures(smoke_run):
    results, _, _ = smoke_run
    build = results["build_times"]
    assert measured(build["text_prototypes"]["seconds"]) and measured(build["calibration"]["seconds"])
    assert build["calibration"]["images"] > 0
    assert results["int8"]["demo_fmnist"]["parity"]["image_min_cosine"] > 0
