"""The scorer with a TensorRT-engine image encoder, on the CPU through the fake tensorrt module.

The fake "engine" is the real demo image encoder (ONNX) run by ONNX Runtime behind the TensorRT 10
calls the backend makes; its buffers are CPU OrtValues, so the scorer's device path (IOBinding of
the embedding into the trust head) runs for real. What this cannot show is CUDA itself: that is
tests/runtime/test_gpu_scorer.py, where a GPU exists.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest

from trustvlm.contract.scores import HEAD_INPUT
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame
from trustvlm.runtime.messages import Decision
from trustvlm.runtime.scoring.onnx_engine import EngineError
from trustvlm.runtime.scoring.scorer import ScorerConfig, check_batch_limits, load_scorer
from trustvlm.runtime.scoring.tensorrt_engine import TensorRTEncoder

from . import fake_tensorrt

pytestmark = pytest.mark.timeout(120)
CONFIG = ScorerConfig(threads=1)


@pytest.fixture()
def fake_trt(monkeypatch) -> fake_tensorrt.FakeOptions:
    options = fake_tensorrt.FakeOptions(max_batch=8)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make_module(options))
    return options


def frames_of(images: np.ndarray) -> list[ReceivedFrame]:
    return [ReceivedFrame(FrameHeader("cam", seq, 1, Encoding.RAW, image.shape, "uint8"),
                          np.ascontiguousarray(image).tobytes(), 2) for seq, image in enumerate(images)]


def engine_scorer(demo_export, demo_bundle):
    """A scorer whose image encoder is the (fake) TensorRT engine, on the bound (device) path."""
    scorer = load_scorer(demo_export, demo_bundle, CONFIG)
    engine = TensorRTEncoder(demo_export / "image_encoder.onnx", device_type="cpu")
    scorer.towers[HEAD_INPUT] = replace(scorer.towers[HEAD_INPUT], engine=engine)
    scorer.encoder, scorer._device = engine, "cpu"
    scorer.batch_limit = check_batch_limits(list(scorer.towers.values()), CONFIG.max_batch)
    return scorer


def test_an_engine_scorer_decides_as_the_onnx_scorer_in_engine_sized_chunks(fake_trt, demo_export, demo_bundle,
                                                                            fmnist_images):
    images, _ = fmnist_images
    expected = load_scorer(demo_export, demo_bundle, CONFIG).decide(frames_of(images[:20]))
    scorer = engine_scorer(demo_export, demo_bundle)
    assert scorer.batch_limit == 8
    got = scorer.decide(frames_of(images[:20]))
    assert [d.class_id for d in got] == [d.class_id for d in expected]
    assert [d.decision for d in got] == [d.decision for d in expected]
    np.testing.assert_allclose([d.kappa for d in got], [d.kappa for d in expected], rtol=1e-6)
    assert sorted(run[0] for run in fake_trt.runs[-3:]) == [4, 8, 8], "20 frames run as 8 + 8 + 4 on the engine"
    assert any(d.decision is Decision.ACCEPT for d in got)


def test_a_self_check_between_engine_and_head_does_not_change_a_decision(fake_trt, demo_export, demo_bundle,
                                                                        fmnist_images):
    """A reload's self-check runs on another thread: it must not write into a frame's embedding."""
    images, _ = fmnist_images
    scorer = engine_scorer(demo_export, demo_bundle)
    alone = scorer.decide(frames_of(images[:1]))[0]
    engine = scorer.encoder
    run_for_frame = engine.encode_to_ortvalue

    def with_a_self_check_in_between(batch, *args):
        value = run_for_frame(batch, *args)
        run_for_frame(np.full_like(batch, 128))  # the grey self-check image, same batch size
        return value

    engine.encode_to_ortvalue = with_a_self_check_in_between
    interleaved = scorer.decide(frames_of(images[:1]))[0]
    assert (interleaved.class_id, interleaved.kappa) == (alone.class_id, alone.kappa)


def test_engines_whose_profile_the_service_cannot_feed_are_refused(fake_trt, demo_export, demo_bundle):
    scorer = engine_scorer(demo_export, demo_bundle)
    towers = list(scorer.towers.values())
    with pytest.raises(EngineError, match=r"image_encoder.onnx takes batches of 1..8, but the service batches "
                                          r"1..16 frames: lower --max-batch, or rebuild the engine"):
        check_batch_limits(towers, 16)
    scorer.encoder.min_batch = 2
    with pytest.raises(EngineError, match=r"takes batches of 2..8"):
        check_batch_limits(towers, 8)
