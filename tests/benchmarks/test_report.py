"""The table writers and the BENCHMARKS.md renderer."""

from __future__ import annotations

import copy

import pytest

from trustvlm.benchmarks.report import markdown_table, text_table
from trustvlm.benchmarks.report_sections import render_benchmarks
from trustvlm.benchmarks.stats import Figure

pytestmark = pytest.mark.timeout(30)


def test_markdown_table_matches_hand_written_markdown():
    table = markdown_table(["batch", "images/s"], [["1", "10.5"], ["8", "a|b"]])
    assert table == ("| batch | images/s |\n"
                     "| --- | ---: |\n"
                     "| 1 | 10.5 |\n"
                     "| 8 | a\\|b |"), "pipes in cells must be escaped, numbers right-aligned"


def test_markdown_table_takes_explicit_alignment():
    assert markdown_table(["a", "b", "c"], [], "lcr").splitlines()[1] == "| --- | :---: | ---: |"


def test_markdown_table_rejects_ragged_rows_and_bad_alignment():
    with pytest.raises(ValueError, match="row 0 has 1 cells, but there are 2 headers"):
        markdown_table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="align should have one of"):
        markdown_table(["a", "b"], [], "lx")


def test_text_table_pads_columns_to_the_widest_cell():
    assert text_table(["name", "n"], [["torch", "12"], ["ort", "3"]]) == ("name   n\n"
                                                                        "-----  --\n"
                                                                        "torch  12\n"
                                                                        "ort    3")


def _fig(*values, unit="images/s"):
    return Figure(tuple(values), unit).to_dict()


@pytest.fixture
def results() -> dict:
    """A results dict shaped like the suite's, with made-up numbers."""
    tp = {"pytorch eager": {"1": _fig(10, 11), "8": _fig(11, 12)},
          "onnxruntime fp32": {"1": _fig(12, 13), "8": _fig(13, 14)},
          "onnxruntime int8": {"1": _fig(20, 22), "8": _fig(26, 28)}}
    ratio = {"1": _fig(1.2, 1.2, unit="x"), "8": _fig(1.9, 2.0, unit="x")}
    parity = {"image_min_cosine": 0.9994, "image_mean_cosine": 0.9996, "top1_agreement": 0.95}
    return {
        "config": {"batch_sizes": [1, 8], "threads": 2, "repeats": 2, "min_images_per_sample": 8, "quick": True},
        "machine": {"cpu_model": "Test CPU", "logical_cpus": 2, "cpu_flags": ["avx2", "fma"], "memory_gib": 8.0,
                    "os": "Linux", "python": "3.11", "libraries": {"onnxruntime": "1.32.0"},
                    "date_utc": "2025-01-01T00:00:00+00:00", "git_commit": "abc1234", "load_average": [0.1, 0, 0]},
        "machine_end": {"load_average": [0.2, 0, 0]}, "total_s": 100.0, "steps_s": {"exports": 1.0},
        "throughput": tp,
        "ratios": {"onnxruntime fp32/pytorch eager": {"1": _fig(1.2, 1.2, unit="x"), "8": _fig(1.1, 1.2, unit="x")},
                   "onnxruntime int8/onnxruntime fp32": ratio},
        "flops": {"gflop_per_image": 8.8, "peak_gflops": _fig(150, 160, unit="GFLOP/s"),
                  "achieved_gflops": {name: {b: _fig(100, 110, unit="GFLOP/s") for b in ("1", "8")}
                                      for name in ("pytorch eager", "onnxruntime fp32")},
                  "int8_effective_gops": {b: _fig(200, 210, unit="GOP/s") for b in ("1", "8")}},
        "trust_head": [{"classes": 1000, "batch": 8, "us_per_frame": _fig(50, 60, unit="µs/frame"),
                        "encoder_us_per_frame": 75000.0, "percent_of_encoder": 0.07}],
        "preprocessing": {"jpeg": {"us_per_frame": _fig(900, 950, unit="µs/frame"), "input": "vtest",
                                   "percent_of_encoder_b8": 1.2}},
        "service": {"saturation": {"frames_per_s": _fig(12, 12.5, unit="frames/s"), "scored": 300,
                                   "deferred_other": {}, "mean_batch": 8.0},
                    "latency": {"offered_per_s": 8.4, "percentiles_ms": {"p50": 100.0, "p95": 150.0, "p99": 180.0},
                                "window_ranges_ms": {"p50": [95, 105], "p95": [140, 160], "p99": [170, 190]},
                                "decisions": 250, "scored": 250, "outcomes": {"below_threshold": 250},
                                "publish_latency_p50_ms": 98.0},
                    "flood": {"offered_per_s": 120.0, "duration_s": 30.0, "sent": 3600, "refused": 0,
                              "decisions_by_reason": {"dropped": 3240, "below_threshold": 360},
                              "scored_per_s": 12.0, "rss_mib": [[0, 500.0], [30, 501.0]], "rss_start_mib": 500.0,
                              "rss_max_mib": 502.0, "rss_end_mib": 501.0, "growth_second_half_mib": 1.0},
                    "rss_idle_mib": 480.0, "peak_rss_mib": 510.0, "exit_code": 0, "last_health": "ok",
                    "raw_encoder_b8": _fig(13, 14), "overhead_ratio": 0.93},
        "build_times": {"text_prototypes": {"model": "clip_vitb32", "classes": 1000, "seconds": _fig(40, 42, unit="s")},
                        "calibration": {"model": "demo_fmnist", "classes": 100, "shots": 16, "images": 2400,
                                        "seconds": _fig(9, 10, unit="s")}},
        "int8": {"clip_vitb32": {"parity": parity, "trust_gate": {"applicable": False, "reason": "random-init"},
                                 "quantization": {"quant_format": "QDQ", "weight_type": "QInt8", "reduce_range": True,
                                                  "activation_type": "QUInt8", "calibrate_method": "MinMax",
                                                  "op_types": ["MatMul"], "calibration_images": 160}}},
    }


def test_render_benchmarks_has_every_section_and_the_figures(results):
    text = render_benchmarks(results)
    for heading in ("# Benchmarks", "## Machine", "## Targets", "## 1. Image encoder throughput",
                    "## 2. The limit", "## 3. Trust head cost", "## 4. End to end", "## 5. Memory",
                    "## 6. Build times", "## 7. int8", "## Gaps and proposals"):
        assert heading in text, f"missing section {heading!r}"
    assert "| 8 | 11.5 (11.0-12.0) | 13.5 (13.0-14.0) | 1.15 (1.10-1.20) | 27.0 (26.0-28.0) | 1.95 (1.90-2.00) |" \
        in text, "the batch-8 throughput row should hold medians with min-max"
    assert "QUICK RUN" in text, "a --quick run must be labelled as one"
    assert "SMOKE RUN" in render_benchmarks({**results, "config": {**results["config"], "smoke": True}})
    assert "not applicable: random-init" in text
    assert "Target int8 >= 1.8 x fp32 at batch 8: 1.95 x: met." in text


def test_render_benchmarks_flags_a_missed_target_and_a_noisy_machine(results):
    slow = copy.deepcopy(results)
    slow["service"]["overhead_ratio"] = 0.5
    slow["machine"]["load_average"] = [2.0, 2.0, 2.0]
    slow["config"]["quick"] = False
    text = render_benchmarks(slow)
    assert "0.500 (**not met**)" in text
    assert "**Noisy machine**" in text and "SMOKE RUN" not in text


def test_render_benchmarks_names_the_steps_other_processes_slowed(results):
    noisy = copy.deepcopy(results)
    noisy["noise"] = {"run": {"others_percent": 8.0, "steal_percent": 0.5},
                      "steps": {"exports": {"others_percent": 0.1, "steal_percent": 0.0},
                                "end to end": {"others_percent": 21.0, "steal_percent": 1.0}}}
    text = render_benchmarks(noisy)
    assert "CPU taken by other processes during: end to end 21% + steal 1%" in text
    assert "exports 0%" not in text, "quiet steps are not listed"
    assert "| CPU taken by other processes / hypervisor steal over the run | 8.0% / 0.5% of the machine |" in text


def test_a_rewrite_keeps_the_sections_measured_by_their_own_commands(results):
    from trustvlm.benchmarks.report_sections import KEPT_MARK, with_kept_sections

    previous = "old figures\n\n" + KEPT_MARK + "\n\n## 9. Measured by hand\n\n| a | 1 |\n"
    text = with_kept_sections(render_benchmarks(results), previous)
    assert "old figures" not in text
    assert text.endswith(KEPT_MARK + "\n\n## 9. Measured by hand\n\n| a | 1 |\n")
    assert text.startswith(render_benchmarks(results).rstrip())
    assert with_kept_sections("new\n", "no mark here\n") == "new\n"
