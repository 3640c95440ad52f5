"""Auxiliary image-prototype encoder (TrustVLM's DINOv2 option): scores, trust head, bundle, calibrate, eval.

Fast tests use synthetic linear encoders; the slow ones export the real DINOv2 ViT-S/14 architecture
with random weights and calibrate the demo model with it (numbers meaningless: plumbing and parity).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.calibration.conftest import write_tiny_artifacts
from tests.calibration.split_files import write_fmnist_split
from trustvlm.calibration.calibrate import calibrate, open_encoders
from trustvlm.calibration.cli import add_calibrate_parser, add_eval_parser
from trustvlm.calibration.eval_report import RESULTS_MD, write_report
from trustvlm.calibration.eval_fused import FUSED_METHODS
from trustvlm.calibration.evaluate import AUX_METHODS, METHODS, EvalConfig, run_evaluation
from trustvlm.calibration.image_prototypes import encode_images
from trustvlm.calibration.metrics import evaluate_selective
from trustvlm.calibration.numerics import l2_normalize
from trustvlm.calibration.pools import load_pool
from trustvlm.calibration.scores import compute_scores
from trustvlm.calibration.trust_head import build_trust_head
from trustvlm.contract.bundle import (AuxEncoderInfo, BundleError, BundleInfo, BundleMismatchError, describe_bundle,
                                      load_bundle, read_bundle_info)
from trustvlm.contract.files import sha256_file, write_json_atomic
from trustvlm.contract.manifest import MANIFEST_NAME, read_manifest
from trustvlm.contract.scores import AUX_HEAD_INPUT, HEAD_INPUT

pytestmark = pytest.mark.timeout(300)

LN3 = math.log(3.0)
LN9 = math.log(9.0)
AUX_DIM = 6


def write_tiny_aux(folder: Path, dim: int = AUX_DIM, seed: int = 1, model: str = "tiny_aux") -> Path:
    """A synthetic image-encoder export (one linear image encoder, kind image-encoder, no text)."""
    write_tiny_artifacts(folder, image_dim=dim, seed=seed, model=model)
    (folder / "text_encoder.onnx").unlink()
    manifest = read_manifest(folder)
    del manifest["precisions"]["fp32"]["files"]["text_encoder"], manifest["text_input"]
    manifest.update(kind="image-encoder", logit_scale=None)
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return folder


@pytest.fixture
def tiny_aux(tmp_path) -> Path:
    return write_tiny_aux(tmp_path / "tiny_aux")


def run_head(path_or_model, emb: np.ndarray, aux: np.ndarray | None) -> dict[str, np.ndarray]:
    data = path_or_model if isinstance(path_or_model, bytes) else Path(path_or_model).read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feed = {HEAD_INPUT: emb.astype(np.float32)}
    if aux is not None:
        feed[AUX_HEAD_INPUT] = aux.astype(np.float32)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


# --------------------------------------------------------------------------- scores and trust head


def test_aux_scores_by_hand_in_numpy_and_onnx():
    """T = I, s = ln 3: p = (3/4, 1/4), pred 0. Aux P = ((0,0,1), (0.6,0.8,0)), g = (0,0,2): cos = (1, 0).

    kappa = 3/4 + 1 = 1.75. T* = 1/ln 9: proto softmax (9/10, 1/10), q = (1.65, 0.35), kappa* = 1.65 + 1.
    """
    text, aux_protos = np.eye(2), np.array([[0.0, 0.0, 1.0], [0.6, 0.8, 0.0]])
    emb, aux = np.array([[3.0, 0.0]]), np.array([[0.0, 0.0, 2.0]])
    scores = compute_scores(emb, text, aux_protos, LN3, lam=1.0, temperature=1 / LN9, aux_embeddings=aux)
    head = build_trust_head(text, aux_protos, LN3, lam=1.0, temperature=1 / LN9, aux_embedding=True)
    out = run_head(head.SerializeToString(), emb, aux)
    for name, expected in (("msp", 0.75), ("s_ii", 1.0), ("kappa", 1.75), ("kappa_star", 2.65)):
        reference = getattr(scores, {"kappa": "trustvlm", "kappa_star": "trustvlm_star"}.get(name, name))
        np.testing.assert_allclose(reference, [expected], atol=1e-12, err_msg=f"numpy {name}")
        np.testing.assert_allclose(out[name], [expected], atol=1e-6, err_msg=f"onnx {name}")
    assert scores.pred.tolist() == out["pred"].tolist() == [0]
    assert scores.pred_star.tolist() == out["pred_star"].tolist() == [0]


def test_aux_head_matches_the_float64_reference_on_random_data():
    # Given: C=7 classes, VLM D=12, aux D=20
    rng = np.random.default_rng(3)
    text, protos = rng.normal(size=(7, 12)), rng.normal(size=(7, 20))
    emb, aux = rng.normal(size=(64, 12)), rng.normal(size=(64, 20))
    # When
    reference = compute_scores(emb, text, protos, 30.0, lam=0.7, aux_embeddings=aux)
    out = run_head(build_trust_head(text, protos, 30.0, lam=0.7, aux_embedding=True).SerializeToString(), emb, aux)
    # Then
    np.testing.assert_array_equal(out["pred"], reference.pred)
    for name, ref in (("msp", reference.msp), ("s_ii", reference.s_ii), ("kappa", reference.trustvlm)):
        np.testing.assert_allclose(out[name], ref, atol=1e-5, err_msg=name)
    assert not np.allclose(reference.s_ii, compute_scores(aux[:, :12], text, protos[:, :12], 30.0).s_ii), \
        "the cosines really come from the aux embeddings"


def test_default_head_keeps_its_single_input():
    rng = np.random.default_rng(0)
    head = build_trust_head(rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), 10.0)
    assert [i.name for i in head.graph.input] == [HEAD_INPUT]
    assert {p.key: p.value for p in head.metadata_props}["aux_embedding"] == "false"


def test_aux_shapes_are_checked():
    rng = np.random.default_rng(0)
    text, protos, emb = rng.normal(size=(3, 4)), rng.normal(size=(3, 5)), rng.normal(size=(2, 4))
    with pytest.raises(ValueError, match="embedding size mismatch: text_prototypes has D=4, image_prototypes has D=5"):
        compute_scores(emb, text, protos, 10.0)
    with pytest.raises(ValueError, match="aux_embeddings has D=4, expected D=5"):
        compute_scores(emb, text, protos, 10.0, aux_embeddings=rng.normal(size=(2, 4)))
    with pytest.raises(ValueError, match="aux_embeddings has 3 rows, expected 2"):
        compute_scores(emb, text, protos, 10.0, aux_embeddings=rng.normal(size=(3, 5)))
    with pytest.raises(ValueError, match="class count mismatch"):
        build_trust_head(text, protos[:2], 10.0, aux_embedding=True)


# --------------------------------------------------------------------------- calibrate + bundle (synthetic)


@pytest.fixture
def split(tmp_path):
    return write_fmnist_split(tmp_path / "fmnist", {"train": 4, "val": 6})


def test_aux_calibration_records_the_encoder_and_builds_a_two_input_head(tiny_artifacts, tiny_aux, split, tmp_path):
    # Given
    split_file, image_root, _ = split
    # When
    bundle = calibrate(tiny_artifacts, split_file, tmp_path / "bundle", k=2, lam=1.0, alpha=0.5, threads=1,
                       image_root=image_root, prototype_encoder=tiny_aux)
    # Then: the bundle names the aux encoder, its weights and engine hash
    aux = bundle.info.aux_encoder
    assert aux == AuxEncoderInfo(model="tiny_aux", architecture="demo-fmnist-vit-tiny", weights_id="sha256:tiny-1",
                                 precision="fp32", engine_sha256=sha256_file(tiny_aux / "image_encoder.onnx"),
                                 embed_dim=AUX_DIM, preprocess=read_manifest(tiny_aux)["preprocess"])
    assert bundle.info.image_prototype_encoder == "tiny_aux:image_encoder.onnx"
    assert bundle.text_prototypes.shape == (10, 8) and bundle.image_prototypes.shape == (10, AUX_DIM)
    # and its head scores with the aux embeddings like the float64 reference
    vlm, aux_enc = open_encoders(tiny_artifacts), open_encoders(tiny_aux, need_text=False)
    pool = load_pool(split_file, image_root)
    emb = encode_images(vlm.image, pool.images, vlm.preprocess)
    aux_emb = encode_images(aux_enc.image, pool.images, aux_enc.preprocess)
    out = run_head(bundle.trust_head_path, emb, aux_emb)
    reference = compute_scores(emb, bundle.text_prototypes, bundle.image_prototypes, bundle.info.logit_scale,
                               bundle.info.lam, aux_embeddings=aux_emb)
    np.testing.assert_allclose(out["kappa"], reference.trustvlm, atol=1e-5)


def test_bundle_json_round_trips_with_an_aux_encoder(tiny_artifacts, tiny_aux, split, tmp_path):
    split_file, image_root, _ = split
    bundle = calibrate(tiny_artifacts, split_file, tmp_path / "bundle", k=2, lam=1.0, alpha=0.5, threads=1,
                       image_root=image_root, prototype_encoder=tiny_aux)
    data = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert data["schema_version"] == "1.3" and data["aux_encoder"]["model"] == "tiny_aux"
    assert BundleInfo.from_dict(data).to_dict() == bundle.info.to_dict(), "NaN-safe comparison (threshold may be nan)"
    assert BundleInfo.from_dict(data).aux_encoder == bundle.info.aux_encoder
    assert AuxEncoderInfo.from_dict(bundle.info.aux_encoder.to_dict()) == bundle.info.aux_encoder
    with pytest.raises(ValueError, match=r"aux_encoder: unknown keys \['colour'\]"):
        AuxEncoderInfo.from_dict({**data["aux_encoder"], "colour": "red"})


def test_a_1_0_bundle_without_aux_encoder_still_reads(image_folder_bundle):
    data = json.loads((image_folder_bundle / "bundle.json").read_text())
    data.pop("aux_encoder")
    data["schema_version"] = "1.0"
    (image_folder_bundle / "bundle.json").write_text(json.dumps(data))
    assert read_bundle_info(image_folder_bundle).aux_encoder is None


@pytest.fixture
def image_folder_bundle(tiny_artifacts, split, tmp_path) -> Path:
    split_file, image_root, _ = split
    calibrate(tiny_artifacts, split_file, tmp_path / "vlm_bundle", k=2, lam=1.0, alpha=0.5, threads=1,
              image_root=image_root)
    return tmp_path / "vlm_bundle"


def test_load_bundle_verifies_the_aux_encoder(tiny_artifacts, tiny_aux, split, tmp_path, image_folder_bundle):
    # Given
    split_file, image_root, _ = split
    calibrate(tiny_artifacts, split_file, tmp_path / "bundle", k=2, lam=1.0, alpha=0.5, threads=1,
              image_root=image_root, prototype_encoder=tiny_aux)
    bundle_dir = tmp_path / "bundle"
    # When / Then: with its aux folder it loads; without it, it is refused with what to pass
    assert load_bundle(bundle_dir, tiny_artifacts, tiny_aux).image_prototypes.shape == (10, AUX_DIM)
    with pytest.raises(BundleError, match="auxiliary encoder tiny_aux .*pass that encoder's artifacts folder"):
        load_bundle(bundle_dir, tiny_artifacts)
    with pytest.raises(BundleMismatchError, match="from the VLM's own image encoder, but an auxiliary encoder folder"):
        load_bundle(image_folder_bundle, tiny_artifacts, tiny_aux)
    other = write_tiny_aux(tmp_path / "other_aux", model="other_aux")
    with pytest.raises(BundleMismatchError, match="come from tiny_aux but .* holds other_aux"):
        load_bundle(bundle_dir, tiny_artifacts, other)
    retrained = write_tiny_aux(tmp_path / "retrained", seed=2)
    with pytest.raises(BundleMismatchError, match="auxiliary encoder tiny_aux had weights sha256:tiny-1 but"):
        load_bundle(bundle_dir, tiny_artifacts, retrained)


def test_load_bundle_refuses_a_different_aux_engine_hash(tiny_artifacts, tiny_aux, split, tmp_path):
    # Given: a bundle built with tiny_aux, whose engine is then re-exported (same weights id)
    split_file, image_root, _ = split
    calibrate(tiny_artifacts, split_file, tmp_path / "bundle", k=2, lam=1.0, alpha=0.5, threads=1,
              image_root=image_root, prototype_encoder=tiny_aux)
    reexported = write_tiny_aux(tmp_path / "reexported", dim=AUX_DIM, seed=7)
    manifest = read_manifest(reexported)
    manifest["weights"]["id"] = "sha256:tiny-1"
    write_json_atomic(reexported / MANIFEST_NAME, manifest)
    # When / Then
    with pytest.raises(BundleMismatchError, match=r"auxiliary image_encoder of tiny_aux \(fp32\) differs: the bundle "
                                                  r"was built with sha256 [0-9a-f]{12}\.\.\., .* has [0-9a-f]{12}"):
        load_bundle(tmp_path / "bundle", tiny_artifacts, reexported)


def test_an_image_encoder_cannot_be_the_vlm(tiny_aux, split, tmp_path):
    split_file, image_root, _ = split
    with pytest.raises(ValueError, match="holds the image encoder tiny_aux without a text encoder"):
        calibrate(tiny_aux, split_file, tmp_path / "bundle", k=2, image_root=image_root)
    with pytest.raises(FileNotFoundError, match="prototype encoder should be 'vlm' or an artifacts folder"):
        calibrate(write_tiny_artifacts(tmp_path / "vlm"), split_file, tmp_path / "bundle", k=2,
                  image_root=image_root, prototype_encoder=tmp_path / "nowhere")
    assert not (tmp_path / "bundle").exists()


def test_cli_flags_reach_calibrate_and_eval(tiny_artifacts, tiny_aux, split, tmp_path, capsys):
    split_file, image_root, _ = split
    parser = argparse.ArgumentParser(prog="trustvlm")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_calibrate_parser(subparsers)
    add_eval_parser(subparsers)
    args = parser.parse_args(["calibrate", "--artifacts", str(tiny_artifacts), "--data", str(split_file),
                              "--image-root", str(image_root), "--prototype-encoder", str(tiny_aux), "--k", "2",
                              "--lam", "1", "--alpha", "0.5", "--out", str(tmp_path / "bundle")])
    assert args.handler(args) == 0
    assert "image prototypes from tiny_aux" in capsys.readouterr().out
    assert parser.parse_args(["eval", "--prototype-encoder", str(tiny_aux)]).prototype_encoder == str(tiny_aux)
    assert parser.parse_args(["eval"]).prototype_encoder == "vlm"


# --------------------------------------------------------------------------- eval comparison (synthetic)


def test_eval_compares_vlm_and_aux_prototypes(tiny_artifacts, tiny_aux, tmp_path):
    # When
    report = run_evaluation(tiny_artifacts, EvalConfig(k=4, shifts=(), test_limit=300, ablations=False, threads=1,
                                                       prototype_encoder=str(tiny_aux)))
    # Then: both prototype sources side by side, same zero-shot predictions
    result = report.datasets[0]
    assert list(result.metrics) == [key for key, _ in METHODS + FUSED_METHODS + AUX_METHODS]
    labels = result.per_sample["labels"]
    for key, pred in (("trustvlm_aux", "pred"), ("proto_sim_aux", "pred"), ("trustvlm_star_aux", "pred_star_aux")):
        assert result.metrics[key] == evaluate_selective(result.per_sample[key], result.per_sample[pred] == labels)
    assert result.metrics["trustvlm_aux"]["accuracy"] == result.metrics["trustvlm"]["accuracy"], \
        "the prediction is the VLM's either way"
    assert not np.allclose(result.per_sample["trustvlm_aux"], result.per_sample["trustvlm"])
    assert "trustvlm_aux_auto" in result.risk_control
    assert report.meta["prototype_encoder"]["model"] == "tiny_aux"
    markdown = (write_report(report, tmp_path / "eval") / RESULTS_MD).read_text()
    assert "TrustVLM, aux prototypes (lambda=1)" in markdown and "auxiliary encoder tiny_aux" in markdown


# --------------------------------------------------------------------------- real DINOv2 architecture (slow)


@pytest.fixture(scope="module")
def dinov2_random(tmp_path_factory) -> Path:
    """dinov2_vits14 with random weights, exported through the export stage (4 parity images)."""
    from tests.conftest import require_fashion_mnist  # noqa: PLC0415
    from trustvlm.export.pipeline import ExportRequest, export_model  # noqa: PLC0415 - needs torch

    require_fashion_mnist()
    root = tmp_path_factory.mktemp("aux_export")
    return export_model(ExportRequest("dinov2_vits14", weights="random", output_root=root, parity_images=4)).output_dir


@pytest.mark.slow
def test_dinov2_export_is_an_image_encoder_with_parity_and_stamp(dinov2_random):
    manifest = read_manifest(dinov2_random)
    assert sorted(p.name for p in dinov2_random.iterdir()) == ["image_encoder.onnx", "manifest.json"]
    assert manifest["kind"] == "image-encoder" and "text_input" not in manifest and manifest["logit_scale"] is None
    assert manifest["weights"]["id"] == "random-init" and manifest["weights"]["random_init"]
    assert manifest["embedding"]["dim"] == 384 and "mean over all output tokens" in manifest["embedding"]["pooling"]
    parity = manifest["precisions"]["fp32"]["parity"]
    assert parity["image_min_cosine"] >= 0.9999 and parity["images"] == 4 and parity["text_min_cosine"] is None
    engine = open_encoders(dinov2_random, need_text=False).image
    assert engine.input_shape == ["batch", 224, 224, 3]
    pixels = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    assert engine.encode(pixels).shape == (3, 384) and engine.encode(pixels[:1]).shape == (1, 384)


@pytest.fixture(scope="module")
def dinov2_bundle(demo_artifacts, dinov2_random, tmp_path_factory):
    """The demo VLM calibrated with random-init DINOv2-S prototypes, on 10 classes x (4 train + 6 val) Fashion-MNIST
    PNGs; built once for the tests below, which only read it. Returns (bundle, its folder, split file, image root)."""
    root = tmp_path_factory.mktemp("aux_bundle")
    split_file, image_root, _ = write_fmnist_split(root / "fmnist", {"train": 4, "val": 6})
    bundle = calibrate(demo_artifacts, split_file, root / "bundle", k=2, lam="auto", alpha=0.3, threads=2,
                       image_root=image_root, prototype_encoder=dinov2_random)
    return bundle, root / "bundle", split_file, image_root


@pytest.mark.slow
def test_aux_calibration_end_to_end_on_the_demo_model(demo_artifacts, dinov2_random, dinov2_bundle):
    # Given / When: the real demo VLM, random-init DINOv2-S, 10 classes x (4 train + 6 val) Fashion-MNIST PNGs
    bundle, bundle_dir, split_file, image_root = dinov2_bundle
    # Then: the bundle records the random-init aux encoder and verifies against both artifact folders
    aux = bundle.info.aux_encoder
    assert (aux.model, aux.weights_id, aux.random_init, aux.embed_dim) == ("dinov2_vits14", "random-init", True, 384)
    assert aux.engine_sha256 == sha256_file(dinov2_random / "image_encoder.onnx")
    assert bundle.text_prototypes.shape == (10, 128) and bundle.image_prototypes.shape == (10, 384)
    assert "(random-init weights)" in describe_bundle(bundle)
    loaded = load_bundle(bundle_dir, demo_artifacts, dinov2_random)
    # and the fused head on the real embeddings matches the float64 reference (predictions from the VLM)
    vlm, dino = open_encoders(demo_artifacts), open_encoders(dinov2_random, need_text=False)
    pool = load_pool(split_file, image_root)
    emb = encode_images(vlm.image, pool.images, vlm.preprocess)
    aux_emb = encode_images(dino.image, pool.images, dino.preprocess)
    out = run_head(loaded.trust_head_path, emb, aux_emb)
    reference = compute_scores(emb, loaded.text_prototypes, loaded.image_prototypes, loaded.info.logit_scale,
                               loaded.info.lam, loaded.info.temperature, aux_embeddings=aux_emb)
    own = compute_scores(emb, loaded.text_prototypes, l2_normalize(emb[:10]), loaded.info.logit_scale)
    np.testing.assert_array_equal(out["pred"], reference.pred)
    np.testing.assert_array_equal(reference.pred, own.pred, err_msg="logits and predictions are the VLM's")
    np.testing.assert_allclose(out["s_ii"], reference.s_ii, atol=1e-5)
    np.testing.assert_allclose(out["kappa"], reference.trustvlm, atol=1e-5)


@pytest.mark.slow
def test_real_aux_bundle_is_refused_when_the_dinov2_engine_changes(demo_artifacts, dinov2_random, dinov2_bundle,
                                                                   tmp_path):
    # Given: a bundle built with the exported DINOv2, then a copy of its artifacts whose engine differs
    _, bundle_dir, _, _ = dinov2_bundle
    changed = tmp_path / "dinov2_vits14"
    shutil.copytree(dinov2_random, changed)
    engine = changed / "image_encoder.onnx"
    data = bytearray(engine.read_bytes())
    data[-10] ^= 0xFF  # a different (re-exported) graph; the manifest is rewritten to match it
    engine.write_bytes(bytes(data))
    manifest = read_manifest(changed)
    manifest["precisions"]["fp32"]["files"]["image_encoder"]["sha256"] = sha256_file(engine)
    write_json_atomic(changed / MANIFEST_NAME, manifest)
    # When / Then
    with pytest.raises(BundleMismatchError, match=r"auxiliary image_encoder of dinov2_vits14 \(fp32\) differs"):
        load_bundle(bundle_dir, demo_artifacts, changed)
    assert load_bundle(bundle_dir, demo_artifacts, dinov2_random).info.aux_encoder.random_init
