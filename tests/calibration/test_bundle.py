"""Tests for trustvlm.calibration.bundle: round trip, verification, refusal, atomic writes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from trustvlm.calibration.bundle import write_bundle
from trustvlm.calibration.image_prototypes import prototypes_from_embeddings, sample_shots
from trustvlm.calibration.numerics import l2_normalize, softmax
from trustvlm.calibration.scores import compute_scores
from trustvlm.contract.bundle import (BUNDLE_JSON, BundleError, BundleInfo, BundleMismatchError, PROTOTYPES_FILE,
                                      engine_sha256, load_bundle)
from trustvlm.contract.files import write_json_atomic
from trustvlm.contract.manifest import MANIFEST_NAME, read_manifest
from trustvlm.contract.threshold import ThresholdChoice

pytestmark = pytest.mark.timeout(120)

CLASSES = ("cat", "dog", "forklift")


def make_info(manifest: dict, **changes) -> BundleInfo:
    """A plausible BundleInfo for a 3-class bundle of `manifest`'s model."""
    threshold = ThresholdChoice(threshold=0.75, alpha=0.05, delta=0.1, coverage=0.4, empirical_risk=0.01,
                                risk_upper_bound=0.045, n_calibration=500, feasible=True, method="sgr-clopper-pearson")
    info = BundleInfo(
        model=manifest["model"], architecture=manifest["architecture"], weights_id=manifest["weights"]["id"],
        precision="fp32", engine_sha256=engine_sha256(manifest, "fp32"), preprocess=manifest["preprocess"],
        logit_scale=float(manifest["logit_scale"]), class_names=CLASSES, template_set="paper",
        templates=("a photo of a {}.",), prompts=tuple((f"a photo of a {c}.",) for c in CLASSES),
        image_prototype_encoder="image_encoder.onnx", k=2, seed=0,
        shots={"source": "x", "files": [["a.png", "b.png"]] * 3, "sha256": [["0" * 64] * 2] * 3},
        lam=1.0, lam_method="paper", temperature=0.01, score="trustvlm", threshold=threshold,
        selection={"lambda_table": [{"lambda": 0.0, "auroc": "nan"}]})
    return replace(info, **changes)


def random_prototypes(d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(len(CLASSES), d)), rng.normal(size=(len(CLASSES), d))


@pytest.fixture
def bundle_dir(tmp_path, tiny_artifacts) -> Path:
    text, image = random_prototypes(8)
    write_bundle(tmp_path / "bundle", text, image, make_info(read_manifest(tiny_artifacts)))
    return tmp_path / "bundle"


def test_bundle_info_round_trips_through_json(tiny_artifacts):
    info = make_info(read_manifest(tiny_artifacts), files={"prototypes.npz": "ab"}, created_utc="now")
    text = json.dumps(info.to_dict(), allow_nan=False)
    assert BundleInfo.from_dict(json.loads(text)) == info


def test_bundle_info_rejects_unknown_and_missing_keys(tiny_artifacts):
    data = make_info(read_manifest(tiny_artifacts)).to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        BundleInfo.from_dict({**data, "colour": "red"})
    del data["lam"]
    with pytest.raises(ValueError, match=r"missing keys \['lam'\]"):
        BundleInfo.from_dict(data)


def test_bundle_info_rejects_unknown_modes(tiny_artifacts):
    with pytest.raises(ValueError, match="lam_method should be one of"):
        make_info(read_manifest(tiny_artifacts), lam_method="guess")


def test_write_then_load_round_trips(bundle_dir, tiny_artifacts):
    bundle = load_bundle(bundle_dir, tiny_artifacts)
    text, image = random_prototypes(8)
    np.testing.assert_array_equal(bundle.text_prototypes, text.astype(np.float32))
    np.testing.assert_array_equal(bundle.image_prototypes, image.astype(np.float32))
    assert bundle.info.class_names == CLASSES
    assert set(bundle.info.files) == {"prototypes.npz", "trust_head.onnx"}
    assert bundle.trust_head_path.exists()
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["bundle"], "no stage folder may remain"


def test_engine_hash_mismatch_is_refused(bundle_dir, tiny_artifacts, tmp_path):
    # Given the same export, but its image encoder re-exported (a different sha256 in the manifest)
    moved = tmp_path / "reexported"
    moved.mkdir()
    manifest = read_manifest(tiny_artifacts)
    manifest["precisions"]["fp32"]["files"]["image_encoder"]["sha256"] = "f" * 64
    write_json_atomic(moved / MANIFEST_NAME, manifest)
    # Then
    with pytest.raises(BundleMismatchError,
                       match=r"image_encoder \(fp32\) differs: .*fffffffffff.*make calibrate MODEL=tiny"):
        load_bundle(bundle_dir, moved)


def test_other_weights_are_refused(bundle_dir, tiny_artifacts, tmp_path):
    manifest = read_manifest(tiny_artifacts)
    manifest["weights"]["id"] = "sha256:other"
    (tmp_path / "other").mkdir()
    write_json_atomic(tmp_path / "other" / MANIFEST_NAME, manifest)
    with pytest.raises(BundleMismatchError, match="built for weights sha256:tiny-0 but .* holds sha256:other"):
        load_bundle(bundle_dir, tmp_path / "other")


def test_tampered_prototypes_are_refused(bundle_dir, tiny_artifacts):
    text, image = random_prototypes(8, seed=1)
    np.savez(bundle_dir / PROTOTYPES_FILE, text_prototypes=text.astype(np.float32),
             image_prototypes=image.astype(np.float32))
    with pytest.raises(BundleMismatchError, match=r"prototypes\.npz: sha256 differs .*tampered"):
        load_bundle(bundle_dir, tiny_artifacts)


def test_missing_trust_head_is_refused(bundle_dir, tiny_artifacts):
    (bundle_dir / "trust_head.onnx").unlink()
    with pytest.raises(BundleMismatchError, match=r"trust_head\.onnx is missing"):
        load_bundle(bundle_dir, tiny_artifacts)


def test_wrong_embedding_size_is_refused(tmp_path, tiny_artifacts):
    # A bundle with D=5 (sha256s consistent) cannot run on an export with D=8.
    text, image = random_prototypes(5)
    write_bundle(tmp_path / "b5", text, image, make_info(read_manifest(tiny_artifacts)))
    with pytest.raises(BundleMismatchError, match=r"shape \(3, 5\), expected \(3, 8\)"):
        load_bundle(tmp_path / "b5", tiny_artifacts)


def test_unknown_schema_major_is_refused(bundle_dir, tiny_artifacts):
    data = json.loads((bundle_dir / BUNDLE_JSON).read_text())
    data["schema_version"] = "2.0"
    (bundle_dir / BUNDLE_JSON).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="bundle schema 2.0 is not supported"):
        load_bundle(bundle_dir, tiny_artifacts)


def test_guarantee_frontier_round_trips_and_an_old_bundle_without_it_loads(bundle_dir, tiny_artifacts):
    frontier = [{"alpha": 0.01, "coverage": 0.0, "threshold": None},
                {"alpha": 0.05, "coverage": 0.4, "threshold": 0.75}]
    info = make_info(read_manifest(tiny_artifacts), guarantee_frontier=frontier)
    assert BundleInfo.from_dict(json.loads(json.dumps(info.to_dict(), allow_nan=False))) == info
    data = json.loads((bundle_dir / BUNDLE_JSON).read_text())
    assert data["guarantee_frontier"] == []
    del data["guarantee_frontier"]
    data["schema_version"] = "1.2"  # written before the field existed
    (bundle_dir / BUNDLE_JSON).write_text(json.dumps(data))
    assert load_bundle(bundle_dir, tiny_artifacts).info.guarantee_frontier == []


def test_missing_bundle_says_how_to_build_one(tmp_path, tiny_artifacts):
    with pytest.raises(BundleError, match="no bundle.json in .*make calibrate"):
        load_bundle(tmp_path, tiny_artifacts)


def test_failed_write_leaves_the_old_bundle_untouched(bundle_dir, tiny_artifacts):
    before = {p.name: p.read_bytes() for p in bundle_dir.iterdir()}
    text, image = random_prototypes(8)
    image[1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_bundle(bundle_dir, text, image, make_info(read_manifest(tiny_artifacts)))
    assert {p.name: p.read_bytes() for p in bundle_dir.iterdir()} == before
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["bundle"], "no stage folder may remain"


def test_rewrite_replaces_the_whole_folder(bundle_dir, tiny_artifacts):
    (bundle_dir / "stray.txt").write_text("old")
    text, image = random_prototypes(8, seed=2)
    write_bundle(bundle_dir, text, image, make_info(read_manifest(tiny_artifacts)))
    assert not (bundle_dir / "stray.txt").exists()
    np.testing.assert_array_equal(load_bundle(bundle_dir, tiny_artifacts).text_prototypes, text.astype(np.float32))


@pytest.mark.slow
def test_trust_head_in_bundle_matches_the_float64_reference_on_real_embeddings(demo_embeddings, tmp_path):
    # Given a bundle of real demo-model prototypes (16 calibration shots per class) and lambda 0.5
    emb = demo_embeddings
    image = prototypes_from_embeddings(emb.calib, sample_shots(emb.calib_labels, 10, 16, 0))
    manifest = read_manifest(emb.artifacts)
    classes = tuple(str(i) for i in range(10))
    info = make_info(manifest, class_names=classes, prompts=tuple((c,) for c in classes), lam=0.5,
                     lam_method="manual")
    write_bundle(tmp_path / "bundle", emb.text, image, info)
    bundle = load_bundle(tmp_path / "bundle", emb.artifacts)
    # When the fused head runs on the real test embeddings
    session = ort.InferenceSession(str(bundle.trust_head_path), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"embedding": emb.test.astype(np.float32)})))
    ref = compute_scores(emb.test.astype(np.float32), bundle.text_prototypes, bundle.image_prototypes,
                         info.logit_scale, lam=0.5, temperature=0.01)
    # Then, away from float64 near-ties (which may flip in float32; see test_trust_head)
    f = l2_normalize(emb.test.astype(np.float32).astype(np.float64))
    logits = info.logit_scale * f @ l2_normalize(bundle.text_prototypes.astype(np.float64)).T
    q = softmax(logits) + 0.5 * softmax(f @ l2_normalize(bundle.image_prototypes.astype(np.float64)).T / 0.01)
    clear, clear_star = top2_gap(logits) > 1e-4, top2_gap(q) > 1e-4
    assert clear.mean() > 0.9 and clear_star.mean() > 0.9, "real embeddings should rarely tie"
    for head_name, ref_value, rows in (("msp", ref.msp, slice(None)), ("kappa", ref.trustvlm, clear),
                                       ("s_ii", ref.s_ii, clear), ("kappa_star", ref.trustvlm_star, clear_star)):
        err = float(np.max(np.abs(out[head_name][rows].astype(np.float64) - ref_value[rows])))
        assert err <= 1e-5, f"{head_name}: max |head - reference| = {err:.2e}"
    np.testing.assert_array_equal(out["pred"][clear], ref.pred[clear])
    np.testing.assert_array_equal(out["pred_star"][clear_star], ref.pred_star[clear_star])


def top2_gap(values: np.ndarray) -> np.ndarray:
    """Gap between the largest and second largest entry of each row."""
    part = np.sort(values, axis=1)
    return part[:, -1] - part[:, -2]
