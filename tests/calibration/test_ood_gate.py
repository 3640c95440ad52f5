"""The out-of-distribution gate: its false-reject rate, its ONNX graph against the float64 reference, the bundle."""

from __future__ import annotations

import json
from pathlib import Path

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

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


@pytest.fixture(scope="module")
def encoded(demo_embeddings):
    """Pixels, raw float32 embeddings, frame statistics and labels of the calibration split and 2,000 test images."""
    from trustvlm.data.fashion_mnist import load_split, to_rgb  # noqa: PLC0415
    from trustvlm.runtime.decode.preprocess import PreprocessConfig, preprocess_batch  # noqa: PLC0415

    config = PreprocessConfig.from_dict(read_manifest(demo_embeddings.artifacts)["preprocess"])
    out = {}
    for split, embeddings, count in (("calib", demo_embeddings.calib, None), ("test", demo_embeddings.test, 2000)):
        data = load_split(split)
        pixels = preprocess_batch(to_rgb(data.images[:count]), config)
        out[split] = (pixels, embeddings[:count].astype(np.float32), frame_features(pixels), data.labels[:count])
    return out


@pytest.fixture(scope="module")
def outside(demo_embeddings):
    """Raw embeddings and frame statistics of frames unlike Fashion-MNIST: 300 of scikit-learn's handwritten digits
    (near domain: 28 x 28 grey objects on black), the first 24 frames of OpenCV's vtest.avi, 16 noise and 16 grey
    frames."""
    import cv2  # noqa: PLC0415

    from trustvlm.benchmarks.train_folders import digits  # noqa: PLC0415
    from trustvlm.calibration.calibrate import open_encoders  # noqa: PLC0415
    from trustvlm.calibration.image_prototypes import encode_images  # noqa: PLC0415
    from trustvlm.data.fashion_mnist import to_rgb  # noqa: PLC0415
    from trustvlm.runtime.decode.preprocess import preprocess_batch  # noqa: PLC0415

    encoders = open_encoders(demo_embeddings.artifacts)
    rng = np.random.default_rng(3)
    capture, video = cv2.VideoCapture(str(VTEST)), []
    while len(video) < 24 and (frame := capture.read())[0]:
        video.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB))
    capture.release()
    if not video:
        pytest.skip(f"{VTEST} is missing (apt-get install opencv-doc)")
    sources = {"digits": to_rgb(digits()[0][:300]), "vtest": np.stack(video),
               "noise": rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8),
               "grey": np.repeat(np.arange(0, 256, 17, dtype=np.uint8), 64 * 64 * 3).reshape(16, 64, 64, 3)}
    return {name: (encode_images(encoders.image, images, encoders.preprocess).astype(np.float32),
                   frame_features(preprocess_batch(images, encoders.preprocess))) for name, images in sources.items()}


def _halves(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded halves of `count` rows: (fit rows, threshold rows)."""
    rows = np.random.default_rng(0).permutation(count)
    return np.sort(rows[:count // 2]), np.sort(rows[count // 2:])


def test_conformal_threshold_defers_k_of_n_plus_one_worked_by_hand():
    # 9 values, rate 0.2: k = floor(0.2 * 10) = 2, the threshold is the 2nd smallest, 1 value lies below it
    threshold, below = conformal_threshold(np.array([5.0, 1.0, 2.0, 9.0, 3.0, 4.0, 8.0, 7.0, 6.0]), 0.2)
    assert (threshold, below) == (2.0, 1)
    # Too few values for the rate: no threshold (the gate cannot be set)
    assert conformal_threshold(np.arange(3.0), 0.2) == (float("-inf"), 0)


def test_a_gate_at_1_percent_false_rejects_defers_within_the_conformal_bounds_on_fresh_in_distribution_frames(
        encoded):
    # Given a two-component gate fitted on half the calibration split, its cuts set on the other half at 1% / 2
    _, emb, frames, labels = encoded["calib"]
    fit_rows, threshold_rows = _halves(len(labels))
    gate = fit_ood_gate(emb, frames, labels, fit_rows, threshold_rows, rate=0.01)
    n, j = len(threshold_rows), int(np.floor(0.005 * (len(threshold_rows) + 1)))
    # Then each component alone defers j - 1 of the threshold images (its distance above the j-th largest), and
    # the gate the union of those
    held_out = gate.raw_distances(emb[threshold_rows], frames[threshold_rows]) > np.array(gate.info.scales)
    assert held_out.sum(axis=0).tolist() == [j - 1, j - 1] and gate.info.threshold == -1.0
    assert gate.info.calibration_rejected == int(held_out.any(axis=1).sum()) <= 0.01 * (n + 1)
    # When 2,000 fresh test images of the same camera are scored
    _, test_emb, test_frames, _ = encoded["test"]
    rejected = int(np.sum(gate.typicality(test_emb, test_frames) < gate.info.threshold))
    # Then the count is what split-conformal theory allows. Over calibration draws each component's deferral
    # probability p_k is Beta(j, n + 1 - j) (one component's cut is one rank of n + 1 exchangeable values), and
    # the gate's lies between max(p_1, p_2) and p_1 + p_2 (union bound). Below: at least component 1's count, a
    # beta-binomial; above: with both p_k under their 99.975% quantiles, a binomial at their sum. The test fails
    # with probability below 0.15% when the code is right
    low = stats.betabinom(len(test_emb), j, n + 1 - j).ppf(0.0005)
    high = stats.binom(len(test_emb), 2 * stats.beta(j, n + 1 - j).ppf(0.99975)).ppf(0.9995)
    assert low <= rejected <= high, f"{rejected} of {len(test_emb)} deferred; expected {low:.0f}..{high:.0f}"


def test_the_gate_defers_whatever_each_component_alone_defers_at_its_share_of_the_rate(encoded, outside):
    # Given the two-component gate at 2% and each component alone at 1% (the gate's share per component)
    _, emb, frames, labels = encoded["calib"]
    fit_rows, threshold_rows = _halves(len(labels))
    gate = fit_ood_gate(emb, frames, labels, fit_rows, threshold_rows, rate=0.02)
    alone = {name: fit_ood_gate(emb, frames, labels, fit_rows, threshold_rows, rate=0.01, components=(name,))
             for name in ("embedding", "frame")}
    _, test_emb, test_frames, _ = encoded["test"]
    sources = {"fresh in-distribution": (test_emb, test_frames), **outside}
    for source, (embeddings, stats_) in sources.items():
        # When the frames of each source go through all three
        deferred = gate.typicality(embeddings, stats_) < gate.info.threshold
        for name, single in alone.items():
            own = single.typicality(embeddings, stats_) < single.info.threshold
            # Then no component loosens the other: whatever one alone defers, the gate defers
            assert not np.any(own & ~deferred), (f"{source}: {name} alone defers {own.sum()} of {len(own)}, "
                                                 f"the gate lets {np.sum(own & ~deferred)} of them through")
            if source == "fresh in-distribution":  # about 1% each: the check above is not vacuous
                assert own.sum() >= 5, f"{name} alone defers only {own.sum()} of {len(own)} test frames"
    # And beyond the in-distribution frames the gate defers most of every outside source
    for source, (embeddings, stats_) in outside.items():
        deferred = gate.typicality(embeddings, stats_) < gate.info.threshold
        assert deferred.mean() >= 0.5, f"{source}: the gate defers only {deferred.sum()} of {len(deferred)}"


def test_with_one_component_the_rule_is_the_single_component_conformal_rule(encoded, outside):
    _, emb, frames, labels = encoded["calib"]
    fit_rows, threshold_rows = _halves(len(labels))
    _, test_emb, test_frames, _ = encoded["test"]
    sources = {"threshold images": (emb[threshold_rows], frames[threshold_rows]),
               "fresh in-distribution": (test_emb, test_frames), **outside}
    for name in ("embedding", "frame"):
        # Given a one-component gate at 1%
        gate = fit_ood_gate(emb, frames, labels, fit_rows, threshold_rows, rate=0.01, components=(name,))
        # And the single-component conformal rule by hand on the same fit: the distance in medians on the fit
        # images, deferred below the j-th smallest held-out typicality, j = floor(rate (n + 1))
        median = np.median(gate.raw_distances(emb[fit_rows], frames[fit_rows]))

        def typicality(e, f, median=median, gate=gate):
            return -gate.raw_distances(e, f)[:, 0] / median

        j = int(np.floor(0.01 * (len(threshold_rows) + 1)))
        threshold = np.sort(typicality(emb[threshold_rows], frames[threshold_rows]))[j - 1]
        # Then both defer the very same frames of every source, and j - 1 of the threshold images
        for source, (embeddings, stats_) in sources.items():
            by_hand = typicality(embeddings, stats_) < threshold
            assert np.array_equal(gate.typicality(embeddings, stats_) < gate.info.threshold, by_hand), (name, source)
        assert gate.info.calibration_rejected == j - 1, name


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
    shots, rest = np.arange(20), np.arange(20, 120)  # 50 threshold images cannot set 1% / 2 per component
    args = (0.01, emb[:120], pixels[:120], _config(), labels[:120], shots, rest, 0)
    assert fit_calibration_gate("off", *args) == (None, "out-of-distribution gate off")
    gate, note = fit_calibration_gate("auto", *args)
    assert gate is None and "cannot set a 1% false-reject rate over 2 gate component(s) (need 199" in note
    with pytest.raises(ValueError, match="switch the out-of-distribution gate off"):
        fit_calibration_gate("on", *args)


def _config():
    from trustvlm.runtime.decode.preprocess import PreprocessConfig  # noqa: PLC0415

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
