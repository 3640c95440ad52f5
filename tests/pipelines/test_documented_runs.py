"""The documented commands that no other test runs, each in its smallest form (tests/test_documented_commands.py
names them): `zeroshot`, `decode-gate`, `soak`, the frame path benchmark, the data folder writers, the
threshold table of every camera and the open-set table of the out-of-distribution gate. Each goes through the command's own entry point, as a user types it.
"""

from __future__ import annotations

import json
import shutil

import pytest

from trustvlm.cli import main as trustvlm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_zeroshot_prints_the_accuracy_of_the_export(demo_export, capsys):
    assert trustvlm(["zeroshot", "--artifacts", str(demo_export), "--limit", "200", "--templates", "paper"]) == 0
    out = capsys.readouterr().out
    assert "200" in out and "%" in out, out


def test_decode_gate_writes_its_record(demo_export, tmp_path, capsys):
    artifacts = tmp_path / "demo_fmnist"
    shutil.copytree(demo_export, artifacts)
    code = trustvlm(["decode-gate", "--artifacts", str(artifacts), "--frames-per-video", "2", "--labelled", "40"])
    record = json.loads((artifacts / "decode_gate.json").read_text())
    assert code == (0 if record["passed"] else 1)
    assert "decode_gate.json" in capsys.readouterr().out


def test_soak_accounts_for_every_frame(demo_export, camera_bundle, tmp_path, capsys):
    output = tmp_path / "soak.json"
    code = trustvlm(["soak", "--artifacts", str(demo_export), "--bundle", str(camera_bundle), "--seconds", "2",
                     "--rate", "20", "--cameras", "2", "--sender-restart-s", "1", "--output", str(output)])
    report = json.loads(output.read_text())
    assert report["sent"] > 0 and report["unaccounted"] == 0 and report["order_ok"], report
    assert code == (0 if report["passed"] else 1)
    assert capsys.readouterr().out.strip()


def test_the_frame_path_benchmark_prints_its_table(demo_export, camera_bundle, tmp_path, capsys):
    from trustvlm.benchmarks.frame_path import main  # noqa: PLC0415

    output = tmp_path / "frame_path.json"
    assert main(["--artifacts", str(demo_export), "--bundle", str(camera_bundle), "--sizes", "768x576", "--cameras",
                 "1", "--modes", "paced", "--paths", "old", "new", "--measure-s", "0.5", "--warmup-s", "0.5",
                 "--ceiling-s", "0.2", "--no-gate", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert [case["path"] for case in results["cases"]] == ["old", "new"]
    assert "| 768x576 | 1 | paced | new |" in capsys.readouterr().out


def test_train_folders_writes_the_three_folders(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from trustvlm.benchmarks.train_folders import main  # noqa: PLC0415

    assert main([str(tmp_path), "--per-class", "2"]) == 0
    for name in ("fmnist", "digits", "fmnist-random-labels"):
        assert len([p for p in (tmp_path / name).iterdir() if p.is_dir()]) == 10, name
    assert capsys.readouterr().out.count("wrote ") == 3


def test_sklearn_digits_writes_the_folders_and_the_split(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from trustvlm.data.sklearn_digits import SPLIT_FILE, main  # noqa: PLC0415

    assert main([str(tmp_path / "digits")]) == 0
    assert (tmp_path / "digits" / SPLIT_FILE).exists()
    assert {p.name for p in (tmp_path / "digits").iterdir() if p.is_dir()} == {"train", "calib", "test"}


def test_threshold_cameras_prints_a_row_per_method(demo_export, capsys):
    from trustvlm.benchmarks.threshold_cameras import main  # noqa: PLC0415

    assert main(["--artifacts", str(demo_export), "--cameras", "clean", "--shots", "4", "--test-limit", "200"]) == 0
    out = capsys.readouterr().out
    assert "| clean | LTT |" in out and "| clean | SGR |" in out, out


def test_the_camera_map_benchmark_writes_its_section(demo_export, camera_bundle, tmp_path, capsys):
    from trustvlm.benchmarks.bench_artifacts import build_hand_set_bundle  # noqa: PLC0415
    from trustvlm.benchmarks.cameras import MARK_BEGIN, MARK_END, main  # noqa: PLC0415

    other = build_hand_set_bundle(demo_export, tmp_path / "other", threads=1, seed=1)  # 20 images: a second bundle
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n")
    assert main(["--artifacts", str(demo_export), "--bundle", str(camera_bundle), "--rounds", "1", "--window-s", "0.2",
                 "--other-bundles", str(other), "--output", str(report),
                 "--json", str(tmp_path / "cameras.json")]) == 0
    text = report.read_text()
    assert text.startswith("# Benchmarks\n") and MARK_BEGIN in text and MARK_END in text
    (result,) = json.loads((tmp_path / "cameras.json").read_text())
    assert set(result["medians"]) == {"1 bundle", "8 bundles", "8 bundles, a call each"}
    assert result["speed_ratio"] > 0 and result["grouped_speed_ratio"] > 0


def test_the_open_set_benchmark_prints_the_gate_before_and_after(demo_export, tmp_path, capsys):
    from trustvlm.benchmarks.open_set import main  # noqa: PLC0415

    assert main(["--artifacts", str(demo_export), "--splits", "1", "--calib-limit", "1500", "--test-limit", "400",
                 "--video-frames", "4", "--digits", "40", "--rate", "0.05", "--alpha", "0.3",
                 "--json", str(tmp_path / "open_set.json")]) == 0
    out = capsys.readouterr().out
    assert "| before: max of median-scaled distances, one threshold |" in out, out
    assert "| after: per-component conformal cuts, Bonferroni |" in out, out
    closed, open_set = json.loads((tmp_path / "open_set.json").read_text())["splits"]
    assert closed["unknown"] == [] and len(open_set["unknown"]) == 3
    for split in (closed, open_set):
        assert split["gates"]["none"]["false_reject"] == 0.0
        assert all(0.0 < split["gates"][gate]["false_reject"] < 0.2 for gate in ("before", "after")), split["gates"]
