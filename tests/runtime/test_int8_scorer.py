"""int8 image encoders in the runtime: a bundle calibrated with `--precision int8` is served by the int8 file.

The export is the real demo model quantized by `make export PRECISION=int8` (session fixture
`int8_demo_artifacts`); the bundle is calibrated through the int8 image encoder and the fp32 text
encoder its manifest entry lists.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from trustvlm.contract.bundle import BundleMismatchError
from trustvlm.contract.manifest import read_manifest
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame, send_frame
from trustvlm.runtime.messages import Reason
from trustvlm.runtime.decode.preprocess import preprocess_batch
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
CONFIG = ScorerConfig(threads=1)


@pytest.fixture(scope="module")
def int8_bundle(int8_demo_artifacts, tmp_path_factory):
    from trustvlm.calibration.calibrate import calibrate  # noqa: PLC0415 - calibration side

    out = tmp_path_factory.mktemp("int8_bundle") / "bundle"
    calibrate(int8_demo_artifacts, "fashion-mnist", out, k=8, lam=1.0, alpha=0.1, precision="int8", threads=1)
    return out


def raw_frame(image: np.ndarray, seq: int) -> ReceivedFrame:
    return ReceivedFrame(FrameHeader("cam", seq, 1, Encoding.RAW, image.shape, "uint8"), image.tobytes(), 2)


def test_an_int8_bundle_records_the_int8_image_encoder_and_the_fp32_text_encoder(int8_demo_artifacts, int8_bundle):
    from trustvlm.contract.bundle import read_bundle_info  # noqa: PLC0415

    info = read_bundle_info(int8_bundle)
    files = read_manifest(int8_demo_artifacts)["precisions"]
    assert info.precision == "int8"
    assert info.engine_sha256["image_encoder"] == files["int8"]["files"]["image_encoder"]["sha256"]
    assert info.engine_sha256["image_encoder"] != files["fp32"]["files"]["image_encoder"]["sha256"]
    assert info.engine_sha256["text_encoder"] == files["fp32"]["files"]["text_encoder"]["sha256"]


def test_the_int8_scorer_runs_the_int8_file_and_matches_the_reference(int8_demo_artifacts, int8_bundle,
                                                                      fmnist_images):
    from trustvlm.calibration.scores import compute_scores  # noqa: PLC0415 - the float64 reference

    scorer = load_scorer(int8_demo_artifacts, int8_bundle, CONFIG)
    assert scorer.encoder.path.name == "image_encoder.int8.onnx"
    images, labels = fmnist_images
    decisions = scorer.decide([raw_frame(np.ascontiguousarray(image), seq) for seq, image in enumerate(images)])
    rgb = np.stack([cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for image in images])
    embeddings = scorer.encoder.encode(preprocess_batch(rgb, scorer.preprocess)).astype(np.float64)
    bundle = scorer.bundle
    reference = compute_scores(embeddings, bundle.text_prototypes.astype(np.float64),
                               bundle.image_prototypes.astype(np.float64), bundle.info.logit_scale, lam=1.0)
    np.testing.assert_allclose([d.kappa for d in decisions], reference.trustvlm, atol=1e-4)
    predictions = np.array([d.class_id for d in decisions])
    assert np.array_equal(predictions, reference.pred)
    assert (predictions == labels).mean() >= 0.75, "the int8 demo model should still classify most images"


def test_an_fp32_bundle_loads_from_an_int8_export_of_the_same_weights(int8_demo_artifacts, demo_bundle):
    """demo_bundle was calibrated on the session's fp32/fp16 export: same weights, so it loads here too;
    its fp32 image encoder sha256 matches. A bundle is bound to files, not to folders."""
    scorer = load_scorer(int8_demo_artifacts, demo_bundle, CONFIG)
    assert scorer.encoder.path.name == "image_encoder.onnx" and scorer.precision == "fp32"


def test_an_int8_bundle_refuses_a_replaced_int8_encoder(int8_demo_artifacts, int8_bundle, fresh_copy):
    from trustvlm.contract.files import sha256_file, write_json_atomic  # noqa: PLC0415
    from trustvlm.contract.manifest import MANIFEST_NAME  # noqa: PLC0415

    artifacts = fresh_copy(int8_demo_artifacts)
    manifest = read_manifest(artifacts)
    int8_file = artifacts / "image_encoder.int8.onnx"
    int8_file.write_bytes((artifacts / "image_encoder.onnx").read_bytes())  # "re-quantized" to something else
    manifest["precisions"]["int8"]["files"]["image_encoder"]["sha256"] = sha256_file(int8_file)
    write_json_atomic(artifacts / MANIFEST_NAME, manifest)
    with pytest.raises(BundleMismatchError, match=r"image_encoder \(int8\) differs"):
        load_scorer(artifacts, int8_bundle, CONFIG)


def test_the_service_serves_an_int8_bundle(serve, subscribe, push, int8_demo_artifacts, int8_bundle, fmnist_images):
    service = serve("--artifacts", str(int8_demo_artifacts), "--bundle", str(int8_bundle))
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    images, _ = fmnist_images
    for seq in range(8):
        send_frame(sender, FrameHeader("cam0", seq, time.time_ns(), Encoding.JPEG),
                   cv2.imencode(".jpg", images[seq])[1].tobytes())
        time.sleep(0.05)
    assert subscriber.wait_for(lambda s: len(s.decisions) == 8, 30), service.stderr()
    assert [d.seq for d in subscriber.decisions] == list(range(8))
    assert all(d.reason in (Reason.MEETS_THRESHOLD, Reason.BELOW_THRESHOLD, Reason.DROPPED)
               for d in subscriber.decisions)
    assert service.stop() == 0, service.stderr()
