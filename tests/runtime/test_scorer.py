"""The scorer in process: decision rule, fail-safe defers, parity with the float64 reference."""

from __future__ import annotations

import math

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from trustvlm.contract.bundle import BundleMismatchError
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame
from trustvlm.runtime.messages import Decision, Reason
from trustvlm.runtime.scoring.onnx_engine import EngineError
from trustvlm.runtime.decode.preprocess import preprocess_batch
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer

from .conftest import ERROR_PIXEL, NAN_PIXEL, fault_image

pytestmark = pytest.mark.timeout(60)
CONFIG = ScorerConfig(threads=1)


def raw_frame(image: np.ndarray, seq: int = 0, camera: str = "cam") -> ReceivedFrame:
    return ReceivedFrame(FrameHeader(camera, seq, 1, Encoding.RAW, image.shape, "uint8"), image.tobytes(), 2)


def reasons(decisions) -> list[str]:
    return [d.reason.value for d in decisions]


def test_nan_rows_are_deferred_and_the_rest_of_the_batch_is_scored(fault_export, make_fault_bundle, tmp_path):
    scorer = load_scorer(fault_export, make_fault_bundle(tmp_path / "b"), CONFIG)
    frames = [raw_frame(fault_image(), 0), raw_frame(fault_image(NAN_PIXEL), 1), raw_frame(fault_image(50), 2)]
    decisions = scorer.decide(frames)
    assert reasons(decisions) == ["meets_threshold", "non_finite", "meets_threshold"]
    assert [d.seq for d in decisions] == [0, 1, 2]
    assert "non-finite trust head outputs: ['kappa'" in decisions[1].detail and decisions[1].kappa is None
    assert decisions[0].label in ("cat", "dog", "forklift") and math.isfinite(decisions[0].kappa)
    assert len(decisions[0].top_k) == 3 and decisions[0].top_k[0].class_id == decisions[0].class_id


def test_an_engine_error_defers_every_frame_of_the_batch_and_the_next_batch_works(fault_export, make_fault_bundle,
                                                                                  tmp_path):
    scorer = load_scorer(fault_export, make_fault_bundle(tmp_path / "b"), CONFIG)
    failed = scorer.decide([raw_frame(fault_image(), 0), raw_frame(fault_image(ERROR_PIXEL), 1)])
    assert reasons(failed) == ["engine_error", "engine_error"]
    assert "image_encoder.onnx failed on a batch of shape (2, 32, 32, 3)" in failed[0].detail
    assert reasons(scorer.decide([raw_frame(fault_image(), 2)])) == ["meets_threshold"]


def test_undecodable_and_misshaped_frames_are_deferred_alone(fault_export, make_fault_bundle, tmp_path):
    scorer = load_scorer(fault_export, make_fault_bundle(tmp_path / "b"), CONFIG)
    jpeg = cv2.imencode(".jpg", fault_image())[1].tobytes()
    truncated = ReceivedFrame(FrameHeader("cam", 1, 1, Encoding.JPEG), jpeg[:100], 2)
    assert reasons(scorer.decide([raw_frame(fault_image(), 0), truncated])) == ["meets_threshold", "undecodable"]


@pytest.mark.parametrize("threshold, feasible, expected", [
    (-10.0, True, ("accept", "meets_threshold")),
    (10.0, True, ("defer", "below_threshold")),
    (0.0, False, ("defer", "no_threshold")),
])
def test_accept_iff_kappa_reaches_the_threshold(fault_export, make_fault_bundle, tmp_path, threshold, feasible,
                                                expected):
    # kappa = msp + s_ii lies in [1/3 - 1, 1 + 1] for 3 classes: -10 accepts all, +10 none, inf defers all
    scorer = load_scorer(fault_export, make_fault_bundle(tmp_path / "b", threshold, feasible=feasible), CONFIG)
    (decision,) = scorer.decide([raw_frame(fault_image())])
    assert (decision.decision.value, decision.reason.value) == expected
    assert decision.threshold == (threshold if feasible else math.inf)
    assert decision.kappa is not None, "a deferred but scored frame still reports its score"


def test_the_decision_is_kappa_against_the_threshold_on_real_images(demo_export, demo_bundle, fmnist_images):
    from trustvlm.calibration.scores import compute_scores  # noqa: PLC0415 - the float64 reference

    scorer = load_scorer(demo_export, demo_bundle, CONFIG)
    images, _ = fmnist_images
    frames = [raw_frame(np.ascontiguousarray(image), seq) for seq, image in enumerate(images[:32])]
    decisions = scorer.decide(frames)
    # Reference: the same pixels through the encoder, then the float64 scores of calibration/scores.py
    rgb = np.stack([cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for image in images[:32]])
    embeddings = scorer.encoder.encode(preprocess_batch(rgb, scorer.preprocess)).astype(np.float64)
    bundle = scorer.bundle
    reference = compute_scores(embeddings, bundle.text_prototypes.astype(np.float64),
                               bundle.image_prototypes.astype(np.float64), bundle.info.logit_scale, lam=bundle.info.lam)
    kappas = np.array([d.kappa for d in decisions])
    np.testing.assert_allclose(kappas, reference.trustvlm, atol=1e-4)
    assert [d.class_id for d in decisions] == list(reference.pred)
    accept = np.array([d.decision is Decision.ACCEPT for d in decisions])
    assert np.array_equal(accept, kappas >= scorer.threshold)
    assert 0 < accept.sum() < len(accept), "the median threshold should split real images"


def test_a_bundle_for_other_engines_is_refused(demo_export, make_fault_bundle, tmp_path):
    with pytest.raises(BundleMismatchError, match="built for weights sha256:fault-0"):
        load_scorer(demo_export, make_fault_bundle(tmp_path / "b"), CONFIG)


def test_a_missing_gpu_provider_is_refused_not_silently_replaced(fault_export, make_fault_bundle, tmp_path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    bundle = make_fault_bundle(tmp_path / "b")
    with pytest.raises(EngineError, match=r"asked for \['CUDAExecutionProvider'\] but onnxruntime gave"):
        load_scorer(fault_export, bundle, ScorerConfig(providers=("cuda", "cpu")))
    fallback = load_scorer(fault_export, bundle, ScorerConfig(providers=("cuda", "cpu"), allow_fallback=True))
    assert fallback.encoder.providers == fallback.head.providers == ["CPUExecutionProvider"]
    assert Reason.MEETS_THRESHOLD.value in reasons(fallback.decide([raw_frame(fault_image())]))
