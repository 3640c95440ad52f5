"""Reduced-resolution JPEG decoding: the same strict decoder at every DCT scale, and the gate that allows it."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from trustvlm.contract.bundle import engine_sha256
from trustvlm.contract.decode_gate import DECODE_GATE_FILE, check_decode_gate
from trustvlm.contract.manifest import read_manifest
from trustvlm.runtime.decode.decode_pool import DecodeConfig, DecodePool, DecodeScale, gate_policy
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame
from trustvlm.runtime.decode.image_codec import FrameDecodeError, decode_image, jpeg_scale_factor
from trustvlm.runtime.messages import Reason
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer

from . import damaged

pytestmark = pytest.mark.timeout(300)


def jpeg_frame(payload: bytes) -> ReceivedFrame:
    return ReceivedFrame(FrameHeader("cam", 0, 1, Encoding.JPEG), payload, 1)


@pytest.mark.parametrize(("width", "height", "min_side", "factor"), [
    (768, 576, 224, 2), (768, 576, 32, 8), (768, 576, 144, 4), (768, 576, 145, 2), (768, 576, 300, 1),
    (1920, 1080, 224, 4), (1920, 1080, 135, 8), (200, 150, 224, 1), (151, 151, 19, 8)])
def test_the_scale_is_the_largest_power_of_two_that_keeps_the_short_side(width, height, min_side, factor):
    # worked out by hand: ceil(576 / 4) = 144 >= 144, ceil(576 / 4) < 145; ceil(151 / 8) = 19
    assert jpeg_scale_factor(width, height, min_side) == factor


def test_a_reduced_decode_has_the_chosen_size_and_the_full_decodes_content(vtest_frames):
    payload = damaged.originals(vtest_frames[0])["jpeg_baseline_colour"][1]
    full = decode_image(jpeg_frame(payload))
    for min_side, shape in ((224, (288, 384, 3)), (100, (144, 192, 3)), (32, (72, 96, 3)), (600, (576, 768, 3))):
        reduced = decode_image(jpeg_frame(payload), min_side)
        assert reduced.shape == shape, (min_side, reduced.shape)
        # the DCT-domain scale is close to an area average of the full image
        factor = full.shape[0] // shape[0]
        pooled = full.reshape(shape[0], factor, shape[1], factor, 3).mean(axis=(1, 3))
        assert np.abs(pooled - reduced).mean() < 4.0, (min_side, np.abs(pooled - reduced).mean())


@pytest.mark.parametrize("min_side", [288, 144, 72])
def test_damaged_jpegs_are_undecodable_at_every_scale(vtest_frames, min_side):
    # Given the damaged-JPEG corpus of a real frame (every family, baseline/progressive, colour/grey)
    total = 0
    for family, original, encoding, payload in damaged.damaged_images(vtest_frames[0], seed=1, png_families={}):
        # When it is decoded at 1/2, 1/4 or 1/8 scale, Then the strict decoder refuses it as at full size
        with pytest.raises(FrameDecodeError) as caught:
            decode_image(jpeg_frame(payload), min_side)
        assert caught.value.reason is Reason.UNDECODABLE, (family, original)
        total += 1
    assert total > 100, f"only {total} damaged JPEGs"


@pytest.fixture
def demo_scorer(demo_export, demo_bundle):
    return load_scorer(demo_export, demo_bundle, ScorerConfig(threads=1))


def write_gate(folder, precision: str, sha256: str, preprocess: dict, passed: bool, headroom: int = 1) -> None:
    record = {"schema_version": "1.0", "model": "demo_fmnist", "passed": passed, "preprocess": preprocess,
              "encoders": {precision: {"sha256": sha256, "passed": passed, "min_cosine": 0.999 if passed else 0.98,
                                       "top1_agreement": 1.0 if passed else 0.9, "headroom": headroom}}}
    (folder / DECODE_GATE_FILE).write_text(json.dumps(record))


def test_the_gate_refuses_a_model_without_a_passed_record_for_its_encoder(demo_export, tmp_path):
    manifest = read_manifest(demo_export)
    sha = engine_sha256(manifest, "fp32", towers=("image",))["image_encoder"]
    preprocess = dict(manifest["preprocess"])
    assert not check_decode_gate(tmp_path, "fp32", sha, preprocess).passed  # no record
    write_gate(tmp_path, "fp32", sha, preprocess, passed=False)
    verdict = check_decode_gate(tmp_path, "fp32", sha, preprocess)
    assert not verdict.passed and "failed the gate" in verdict.reason
    write_gate(tmp_path, "fp32", "0" * 64, preprocess, passed=True)
    verdict = check_decode_gate(tmp_path, "fp32", sha, preprocess)
    assert not verdict.passed and "another fp32 encoder" in verdict.reason
    write_gate(tmp_path, "fp32", sha, preprocess, passed=True)
    assert not check_decode_gate(tmp_path, "fp16", sha, preprocess).passed  # another precision
    assert check_decode_gate(tmp_path, "fp32", sha, preprocess).passed
    write_gate(tmp_path, "fp32", sha, preprocess, passed=True, headroom=2)
    assert check_decode_gate(tmp_path, "fp32", sha, preprocess).headroom == 2


def test_the_pool_decodes_reduced_only_for_a_model_that_passed(demo_scorer, demo_export, vtest_frames, caplog):
    tower = demo_scorer.towers["embedding"]
    folder, precision, _, sha, preprocess = tower.source
    gate = demo_export / DECODE_GATE_FILE
    payload = damaged.originals(vtest_frames[0])["jpeg_baseline_colour"][1]
    seen = []
    try:
        for passed, headroom, expected_side in ((False, 1, 0), (True, 1, 32), (True, 2, 64)):
            write_gate(demo_export, precision, sha, json.loads(preprocess), passed, headroom)
            pool = DecodePool(DecodeConfig(workers=0), policy=gate_policy)
            pool.preparer._decode = lambda frame, side: seen.append(side) or decode_image(frame, side)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="trustvlm.runtime.decode"):
                (pixels,) = pool.submit([jpeg_frame(payload)], demo_scorer).result()
            assert pixels["embedding"].shape == (1 * 32, 32, 3)
            assert seen[-1] == expected_side
            assert ("reduced-resolution decode refused" in caplog.text) is not passed, caplog.text
        # decode scale full never asks the gate
        pool = DecodePool(DecodeConfig(workers=0, scale=DecodeScale.FULL), policy=lambda s: 1 / 0)
        assert pool.min_side(demo_scorer) == 0
    finally:
        gate.unlink(missing_ok=True)
