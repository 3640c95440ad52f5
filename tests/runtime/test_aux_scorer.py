"""Bundles whose image prototypes come from an auxiliary encoder (TrustVLM's DINOv2 option) in the runtime.

The VLM is the real demo model; the auxiliary encoder is a small synthetic image encoder with its own
input size (24 x 24, squashed with bicubic) so that the per-encoder preprocessing is exercised. The
figures are checked against the float64 reference of calibration/scores.py.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from onnx import TensorProto

from tests.calibration.conftest import _linear_encoder
from trustvlm.contract.bundle import BundleError, BundleMismatchError
from trustvlm.contract.files import sha256_file, write_json_atomic
from trustvlm.contract.manifest import MANIFEST_NAME
from trustvlm.contract.scores import AUX_HEAD_INPUT, HEAD_INPUT
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame, send_frame
from trustvlm.runtime.messages import Reason
from trustvlm.runtime.decode.preprocess import preprocess_batch
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer

pytestmark = pytest.mark.timeout(180)
CONFIG = ScorerConfig(threads=1)
AUX_SIZE, AUX_DIM = 24, 6
AUX_PREPROCESS = {"size": AUX_SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                  "resize_mode": "squash", "crop": "center"}


def write_aux_export(folder, seed: int = 3):
    """A synthetic image-encoder export: uint8 24 x 24 x 3 -> linear -> 6-d embedding."""
    folder.mkdir(parents=True)
    weight = np.random.default_rng(seed).normal(size=(AUX_SIZE * AUX_SIZE * 3, AUX_DIM)) / 255.0
    _linear_encoder(folder / "image_encoder.onnx", "pixels", TensorProto.UINT8, ["batch", AUX_SIZE, AUX_SIZE, 3],
                    weight)
    record = {"file": "image_encoder.onnx", "sha256": sha256_file(folder / "image_encoder.onnx")}
    write_json_atomic(folder / MANIFEST_NAME, {
        "schema_version": "1.0", "model": "tiny_aux", "architecture": "linear", "kind": "image-encoder",
        "weights": {"id": f"sha256:aux-{seed}", "source": "synthetic", "random_init": True},
        "preprocess": AUX_PREPROCESS, "embedding": {"name": "embedding", "dim": AUX_DIM, "normalized": False},
        "logit_scale": None, "precisions": {"fp32": {"files": {"image_encoder": record}}}})
    return folder


@pytest.fixture(scope="module")
def aux_export(tmp_path_factory):
    return write_aux_export(tmp_path_factory.mktemp("aux") / "tiny_aux")


@pytest.fixture(scope="module")
def aux_bundle(demo_export, aux_export, tmp_path_factory):
    from trustvlm.calibration.calibrate import calibrate  # noqa: PLC0415 - calibration side

    out = tmp_path_factory.mktemp("aux_bundle") / "bundle"
    calibrate(demo_export, "fashion-mnist", out, k=4, lam=1.0, alpha=0.3, threads=1, prototype_encoder=aux_export)
    return out


def raw_frame(image: np.ndarray, seq: int = 0, camera: str = "cam") -> ReceivedFrame:
    return ReceivedFrame(FrameHeader(camera, seq, 1, Encoding.RAW, image.shape, "uint8"), image.tobytes(), 2)


def test_aux_bundle_decisions_match_the_float64_reference(demo_export, aux_export, aux_bundle, fmnist_images):
    from trustvlm.calibration.scores import compute_scores  # noqa: PLC0415 - the float64 reference

    scorer = load_scorer(demo_export, aux_bundle, CONFIG, aux_artifacts_dir=aux_export)
    assert list(scorer.towers) == [HEAD_INPUT, AUX_HEAD_INPUT]
    assert scorer.towers[AUX_HEAD_INPUT].preprocess.size == AUX_SIZE
    images, _ = fmnist_images
    decisions = scorer.decide([raw_frame(np.ascontiguousarray(image), seq) for seq, image in enumerate(images[:32])])
    rgb = np.stack([cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for image in images[:32]])
    embedded = {name: tower.engine.encode(preprocess_batch(rgb, tower.preprocess)).astype(np.float64)
                for name, tower in scorer.towers.items()}
    assert embedded[AUX_HEAD_INPUT].shape == (32, AUX_DIM)
    bundle = scorer.bundle
    assert bundle.image_prototypes.shape == (10, AUX_DIM), "the prototypes live in the auxiliary space"
    reference = compute_scores(embedded[HEAD_INPUT], bundle.text_prototypes.astype(np.float64),
                               bundle.image_prototypes.astype(np.float64), bundle.info.logit_scale,
                               lam=bundle.info.lam, aux_embeddings=embedded[AUX_HEAD_INPUT])
    np.testing.assert_allclose([d.kappa for d in decisions], reference.trustvlm, atol=1e-4)
    np.testing.assert_allclose([d.s_ii for d in decisions], reference.proto_sim, atol=1e-5)
    assert [d.class_id for d in decisions] == list(reference.pred)


@pytest.mark.parametrize("use_aux", [False, True], ids=["vlm-prototypes", "aux-prototypes"])
def test_the_iobinding_path_gives_the_host_path_outputs(demo_export, demo_bundle, aux_export, aux_bundle,
                                                        fmnist_images, use_aux):
    """The device path, run with CPU OrtValues: same bindings and names as on a GPU."""
    bundle = aux_bundle if use_aux else demo_bundle
    host = load_scorer(demo_export, bundle, CONFIG, aux_artifacts_dir=aux_export)
    bound = load_scorer(demo_export, bundle, CONFIG, aux_artifacts_dir=aux_export)
    bound._device = "cpu"
    images, _ = fmnist_images
    frames = [raw_frame(np.ascontiguousarray(image), seq) for seq, image in enumerate(images[:8])]
    expected, got = host.decide(frames), bound.decide(frames)
    assert [d.class_id for d in got] == [d.class_id for d in expected]
    np.testing.assert_allclose([d.kappa for d in got], [d.kappa for d in expected], rtol=1e-6)
    assert all(d.reason in (Reason.MEETS_THRESHOLD, Reason.BELOW_THRESHOLD) for d in got)


def test_an_aux_bundle_without_its_encoder_folder_is_refused_in_one_line(demo_export, aux_bundle, tmp_path):
    with pytest.raises(BundleError, match=r"auxiliary encoder tiny_aux: pass that encoder's export folder with "
                                          r"--prototype-encoder"):
        load_scorer(demo_export, aux_bundle, CONFIG)
    result = subprocess.run([sys.executable, "-m", "trustvlm.runtime.cli", "serve", "--artifacts", str(demo_export),
                             "--bundle", str(aux_bundle), "--ingest", "tcp://127.0.0.1:*", "--publish",
                             "tcp://127.0.0.1:*"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--prototype-encoder" in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_another_encoder_in_the_aux_folder_is_refused(demo_export, aux_bundle, tmp_path):
    other = write_aux_export(tmp_path / "other_aux", seed=4)
    with pytest.raises(BundleMismatchError, match="auxiliary encoder tiny_aux had weights sha256:aux-3"):
        load_scorer(demo_export, aux_bundle, CONFIG, aux_artifacts_dir=other)


def test_the_service_scores_with_the_aux_encoder_and_reloads_to_a_vlm_bundle(
        serve, subscribe, push, demo_export, demo_bundle, aux_export, aux_bundle, fmnist_images, tmp_path):
    # Given the service on a copy of the aux bundle, reloading on SIGHUP only
    served = tmp_path / "bundle"
    shutil.copytree(aux_bundle, served)
    service = serve("--artifacts", str(demo_export), "--bundle", str(served), "--prototype-encoder", str(aux_export),
                    "--no-watch")
    assert "aux=image_encoder.onnx" in service.line
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    images, _ = fmnist_images

    def send(seq: int) -> None:
        send_frame(sender, FrameHeader("cam0", seq, time.time_ns(), Encoding.PNG),
                   cv2.imencode(".png", images[seq % len(images)])[1].tobytes())
        time.sleep(0.05)

    for seq in range(10):
        send(seq)
    assert subscriber.wait_for(lambda s: len(s.decisions) == 10, 30), service.stderr()
    aux_id = subscriber.decisions[0].bundle_id
    # When the folder is replaced by a bundle of the VLM's own prototypes and SIGHUP is sent
    staged = tmp_path / "bundle.next"
    shutil.copytree(demo_bundle, staged)
    shutil.rmtree(served)
    staged.rename(served)
    service.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    seq = 10
    while time.monotonic() < deadline and subscriber.decisions[-1].bundle_id == aux_id:
        send(seq)
        seq += 1
        subscriber.wait_for(lambda s: len(s.decisions) == seq, 10)
    # Then every frame got one decision, scored by the aux bundle and then by the VLM bundle
    assert subscriber.wait_for(lambda s: len(s.decisions) == seq, 10)
    decisions = subscriber.decisions
    assert [d.seq for d in decisions] == list(range(seq))
    ids = [d.bundle_id for d in decisions]
    assert ids[0] == aux_id and ids[-1] != aux_id, "the VLM bundle was never swapped in"
    assert all(d.reason in (Reason.MEETS_THRESHOLD, Reason.BELOW_THRESHOLD, Reason.DROPPED) for d in decisions)
    assert service.stop() == 0, service.stderr()
    assert "bundle reloaded (SIGHUP)" in service.stderr()


def test_a_reload_reuses_the_encoders_it_can_and_reopens_a_moved_aux_folder(demo_export, aux_export, aux_bundle,
                                                                            tmp_path):
    first = load_scorer(demo_export, aux_bundle, CONFIG, aux_artifacts_dir=aux_export)
    again = load_scorer(demo_export, aux_bundle, CONFIG, previous=first, aux_artifacts_dir=aux_export)
    for name in (HEAD_INPUT, AUX_HEAD_INPUT):
        assert again.towers[name].engine is first.towers[name].engine, f"{name}: the same files, the same session"
    moved = tmp_path / "moved_aux"
    shutil.copytree(aux_export, moved)
    after_move = load_scorer(demo_export, aux_bundle, CONFIG, previous=first, aux_artifacts_dir=moved)
    assert after_move.towers[HEAD_INPUT].engine is first.towers[HEAD_INPUT].engine
    assert after_move.towers[AUX_HEAD_INPUT].engine is not first.towers[AUX_HEAD_INPUT].engine
    assert after_move.towers[AUX_HEAD_INPUT].engine.path == moved / "image_encoder.onnx"


def test_an_aux_folder_whose_preprocessing_changed_is_refused(demo_export, aux_export, aux_bundle, tmp_path):
    changed = tmp_path / "changed_aux"
    shutil.copytree(aux_export, changed)
    manifest = json.loads((changed / MANIFEST_NAME).read_text())
    manifest["preprocess"]["interpolation"] = "bilinear"  # same weights, other pixels in
    write_json_atomic(changed / MANIFEST_NAME, manifest)
    with pytest.raises(BundleMismatchError, match="preprocessing .* is not the one the bundle was calibrated with"):
        load_scorer(demo_export, aux_bundle, CONFIG, aux_artifacts_dir=changed)
