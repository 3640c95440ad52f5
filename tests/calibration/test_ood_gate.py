"""The out-of-distribution gate: its false-reject rate, its ONNX graph against the float64 reference, the bundle."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from scipy import stats

from trustvlm.calibration.bundle import write_bundle
from trustvlm.calibration.ood_gate import (conformal_threshold, fit_calibration_gate, fit_ood_gate, frame_features)
from trustvlm.calibration.ood_gate_graph import build_ood_gate_graph
from trustvlm.contract.bundle import BUNDLE_JSON, load_bundle, read_bundle_info
from trustvlm.contract.manifest import read_manifest
from trustvlm.contract.ood_gate import OOD_GATE_FILE, OodGateInfo

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def encoded(demo_embeddings):
    """Pixels, raw float32 embeddings, frame statistics and labels of the calibration split and 2,000 test images."""
    from trustvlm.data.fashion_mnist import load_split, to_rgb  # noqa: PLC0415
    from trustvlm.runtime.preprocess import PreprocessConfig, preprocess_batch  # noqa: PLC0415

    config = PreprocessConfig.from_dict(read_manifest(demo_embeddings.artifacts)["preprocess"])
    out = {}
    for split, embeddings, count in (("calib", demo_embeddings.calib, None), ("test", demo_embeddings.test, 2000)):
        data = load_split(split)
        pixels = preprocess_batch(to_rgb(data.images[:count]), config)
        out[split] = (pixels, embeddings[:count].astype(np.float32), frame_features(pixels), data.labels[:count])
    return out


def test_conformal_threshold_defers_k_of_n_plus_one_worked_by_hand():
    # 9 values, rate 0.2: k = floor(0.2 * 10) = 2, the threshold is the 2nd smallest, 1 value lies below it
    threshold, below = conformal_threshold(np.array([5.0, 1.0, 2.0, 9.0, 3.0, 4.0, 8.0, 7.0, 6.0]), 0.2)
    assert (threshold, below) == (2.0, 1)
    # Too few values for the rate: no threshold (the gate cannot be set)
    assert conformal_threshold(np.arange(3.0), 0.2) == (float("-inf"), 0)


def test_a_gate_at_1_percent_false_rejects_defers_about_1_percent_of_fresh_in_distribution_frames(encoded):
    # Given a gate fitted on half the calibration split, its threshold set on the other half at 1%
    _, emb, frames, labels = encoded["calib"]
    rows = np.random.default_rng(0).permutation(len(labels))
    fit_rows, threshold_rows = np.sort(rows[:2500]), np.sort(rows[2500:])
    gate = fit_ood_gate(emb, frames, labels, fit_rows, threshold_rows, rate=0.01)
    n, k = len(threshold_rows), int(np.floor(0.01 * (len(threshold_rows) + 1)))
    assert gate.info.calibration_rejected == k - 1
    # When 2,000 fresh test images of the same camera are scored
    _, test_emb, test_frames, _ = encoded["test"]
    rejected = int(np.sum(gate.typicality(test_emb, test_frames) < gate.info.threshold))
    # Then the count is what split-conformal theory allows: over calibration draws the deferral probability
    # is Beta(k, n + 1 - k), so the count is beta-binomial; outside its central 99.9% the test fails
    counts = stats.betabinom(len(test_emb), k, n + 1 - k)
    low, high = counts.ppf(0.0005), counts.ppf(0.9995)
    assert low <= rejected <= high, f"{rejected} of {len(test_emb)} deferred; expected {low:.0f}..{high:.0f}"


def test_the_float32_graph_matches_the_float64_reference(encoded):
    # Given a gate fitted on the calibration split and its ONNX graph
    pixels, emb, frames, labels = encoded["calib"]
    gate = fit_ood_gate(emb, frames, labels, np.arange(0, 5000, 2), np.arange(1, 5000, 2), rate=0.01)
    session = ort.InferenceSession(build_ood_gate_graph(gate, 32, emb.shape[1]).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    # When in-distribution, noise and uniform frames go through both (the graph gets the encoder's float32)
    rng = np.random.default_rng(1)
    unseen = np.concatenate([rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
                             np.repeat(np.arange(0, 256, 32, dtype=np.uint8), 32 * 32 * 3).reshape(8, 32, 32, 3)])
    batch = np.concatenate([pixels[:200], unseen])
    embedding = np.concatenate([emb[:200], rng.normal(size=(16, emb.shape[1])).astype(np.float32)])
    graph = session.run(None, {"pixels": batch, "embedding": embedding})[0]
    reference = gate.typicality(embedding.astype(np.float64), frame_features(batch))
    # Then they agree to 1e-4 relative: float32 has 6e-8 relative rounding per operation, and a distance sums
    # at most 128 squared whitened terms after a 128-term product, so its relative error stays below
    # ~256 * 6e-8 = 1.5e-5 plus the inputs' own float32 rounding; 1e-4 leaves room, and no decision flips
    np.testing.assert_allclose(graph, reference, rtol=1e-4, atol=1e-6)
    assert np.array_equal(graph >= gate.info.threshold, reference >= gate.info.threshold)


def test_a_bundle_records_its_gate_and_round_trips_and_an_old_bundle_loads_without_one(demo_artifacts, encoded,
                                                                                         tmp_path):
    from trustvlm.calibration.text_prototypes import build_text_prototypes  # noqa: PLC0415
    from trustvlm.data.fashion_mnist import CLASS_NAMES  # noqa: PLC0415

    from ..runtime.conftest import make_info  # noqa: PLC0415

    # Given a bundle written with a gate
    _, emb, frames, labels = encoded["calib"]
    gate = fit_ood_gate(emb, frames, labels, np.arange(0, 400), np.arange(400, 800), rate=0.05)
    text = build_text_prototypes(demo_artifacts, CLASS_NAMES, ["a photo of a {}."])
    info = make_info(read_manifest(demo_artifacts), CLASS_NAMES, 0.5)
    bundle = write_bundle(tmp_path / "bundle", text, text, info, ood_gate=gate)
    # Then bundle.json records it, it loads back equal, and its graph is verified like the other files
    loaded = load_bundle(bundle.path, demo_artifacts)
    assert loaded.info.ood_gate == gate.info == OodGateInfo.from_dict(json.loads(json.dumps(gate.info.to_dict())))
    assert loaded.ood_gate_path == bundle.path / OOD_GATE_FILE and OOD_GATE_FILE in loaded.info.files
    # And a bundle of schema 1.1 (no ood_gate key) still loads, without a gate
    data = json.loads((bundle.path / BUNDLE_JSON).read_text())
    del data["ood_gate"]
    data["schema_version"] = "1.1"
    (bundle.path / BUNDLE_JSON).write_text(json.dumps(data))
    old = read_bundle_info(bundle.path)
    assert old.ood_gate is None


def test_the_gate_mode_says_when_there_is_no_gate_and_on_refuses_too_few_images(encoded):
    pixels, emb, _, labels = encoded["calib"]
    shots, rest = np.arange(20), np.arange(20, 120)  # 50 threshold images cannot set 1%
    args = (0.01, emb[:120], pixels[:120], _config(), labels[:120], shots, rest, 0)
    assert fit_calibration_gate("off", *args) == (None, "out-of-distribution gate off")
    gate, note = fit_calibration_gate("auto", *args)
    assert gate is None and "cannot set a 1% false-reject rate (need 99" in note
    with pytest.raises(ValueError, match="switch the out-of-distribution gate off"):
        fit_calibration_gate("on", *args)


def _config():
    from trustvlm.runtime.preprocess import PreprocessConfig  # noqa: PLC0415

    return PreprocessConfig(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_calibrate_cli_writes_the_gate_on_and_leaves_it_out_off(tiny_artifacts, tmp_path, capsys):
    import argparse  # noqa: PLC0415

    from trustvlm.calibration.cli import add_calibrate_parser  # noqa: PLC0415

    from .test_calibrate import write_image_folder  # noqa: PLC0415

    data = write_image_folder(tmp_path / "data")  # 30 images: 12 threshold images can set a 20% rate
    parser = argparse.ArgumentParser(prog="trustvlm")
    add_calibrate_parser(parser.add_subparsers(dest="command", required=True))
    common = ["calibrate", "--artifacts", str(tiny_artifacts), "--data", str(data), "--k", "2", "--lam", "1",
              "--alpha", "0.5", "--threads", "1"]
    # When the gate is asked for at 20% false rejects
    on = parser.parse_args(common + ["--out", str(tmp_path / "on"), "--ood-gate", "on", "--ood-false-reject-rate",
                                     "0.2"])
    assert on.handler(on) == 0
    # Then the bundle has it, and the line says so
    assert "out-of-distribution gate on embedding + frame" in capsys.readouterr().out
    info = load_bundle(tmp_path / "on", tiny_artifacts).info
    assert info.ood_gate.false_reject_rate == 0.2 and (tmp_path / "on" / OOD_GATE_FILE).exists()
    # And switched off, there is no gate file and no gate in bundle.json
    off = parser.parse_args(common + ["--out", str(tmp_path / "off"), "--ood-gate", "off"])
    assert off.handler(off) == 0
    assert load_bundle(tmp_path / "off", tiny_artifacts).info.ood_gate is None
    assert not (tmp_path / "off" / OOD_GATE_FILE).exists()
    assert "out-of-distribution gate off" in capsys.readouterr().out


def test_a_bad_false_reject_rate_is_refused_before_any_image_is_read(tiny_artifacts, tmp_path):
    from trustvlm.calibration.calibrate import calibrate  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"false-reject rate should be in \(0, 1\), but got 1.5"):
        calibrate(tiny_artifacts, tmp_path / "no such folder", tmp_path / "b", ood_false_reject_rate=1.5)
    with pytest.raises(ValueError, match="gate mode should be one of"):
        calibrate(tiny_artifacts, tmp_path / "no such folder", tmp_path / "b", ood_gate="maybe")
