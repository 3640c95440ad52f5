"""Damaged JPEGs and PNGs made from real frames are ``undecodable`` and never scored; the originals are accepted.

The corpus (tests/runtime/damaged.py) covers each family of damage for baseline and progressive,
colour and grayscale JPEG and for colour and grayscale PNG. Before strict decoding, a JPEG whose
scan was cut and closed with ff d9, or overwritten in place, decoded with only a libjpeg warning
and was scored like a good frame.
"""

from __future__ import annotations

import random
from collections import Counter

import cv2
import numpy as np
import pytest

from trustvlm.calibration.bundle import write_bundle
from trustvlm.contract.manifest import read_manifest
from trustvlm.runtime.frames import Encoding, FrameHeader, Notice, ReceivedFrame, pack_frame_header
from trustvlm.runtime.decode.image_codec import FrameDecodeError, decode_image
from trustvlm.runtime.ingest.ingest import FrameLimits
from trustvlm.runtime.messages import Decision, Reason
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer
from trustvlm.runtime.ingest.wire import parse_message

from . import damaged
from .conftest import FAULT_CLASSES, make_info, open_gate

pytestmark = pytest.mark.timeout(120)
LIMITS = FrameLimits(max_message_bytes=1 << 22, max_width=1024, max_height=1024)


@pytest.fixture(scope="module")
def accept_all(fault_export, tmp_path_factory):
    """The fault model with threshold -10: every frame it can score is accepted (its gate passes them all)."""
    rng = np.random.default_rng(0)
    bundle = tmp_path_factory.mktemp("damaged") / "bundle"
    write_bundle(bundle, rng.normal(size=(3, 8)), rng.normal(size=(3, 8)),
                 make_info(read_manifest(fault_export), FAULT_CLASSES, -10.0), ood_gate=open_gate(8))
    return load_scorer(fault_export, bundle, ScorerConfig(threads=1))


def outcome(scorer, encoding: str, payload: bytes, seq: int):
    """What the service does with one message: (decision, reason)."""
    header = FrameHeader("cam", seq, 1, Encoding(encoding))
    result = parse_message([pack_frame_header(header), payload], 1, LIMITS)
    if isinstance(result, Notice):
        message = scorer.defer(result)
    else:
        assert isinstance(result, ReceivedFrame), result
        (message,) = scorer.decide([result])
    return message.decision, message.reason


def test_damaged_real_frames_are_undecodable_and_never_scored(vtest_frames, accept_all):
    # Given two real 768 x 576 video frames and a 288 x 384 crop of a third
    images = [vtest_frames[0], vtest_frames[3], vtest_frames[5][100:388, 200:584]]
    counts, reasons, scored = Counter(), Counter(), []
    for index, image in enumerate(images):
        for family, original, encoding, payload in damaged.damaged_images(image, seed=index):
            # When a damaged copy is decoded, or sent through parse -> score
            with pytest.raises(FrameDecodeError) as caught:
                decode_image(ReceivedFrame(FrameHeader("cam", 0, 1, Encoding(encoding)), payload, 1))
            assert caught.value.reason is Reason.UNDECODABLE
            decision, reason = outcome(accept_all, encoding, payload, counts.total())
            # Then it is deferred before scoring: undecodable (or too_large, when the damage is in the declared size)
            if decision is not Decision.DEFER or reason not in (Reason.UNDECODABLE, Reason.TOO_LARGE):
                scored.append((family, original, decision.value, reason.value))
            counts[family] += 1
            reasons[reason.value] += 1
    assert scored == []
    assert set(counts) == set(damaged.JPEG_FAMILIES) | set(damaged.PNG_FAMILIES)
    print(f"\n{counts.total()} damaged images, none scored ({dict(reasons)}): {dict(sorted(counts.items()))}")


def test_the_undamaged_originals_are_decoded_and_accepted(vtest_frames, accept_all):
    for image in (vtest_frames[0], vtest_frames[5][100:388, 200:584]):
        for name, (encoding, payload) in damaged.originals(image).items():
            rgb = decode_image(ReceivedFrame(FrameHeader("cam", 0, 1, Encoding(encoding)), payload, 1))
            reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR),
                                     cv2.COLOR_BGR2RGB)
            assert rgb.shape == reference.shape, name
            # libjpeg-turbo and OpenCV's libjpeg may round the inverse DCT differently: within 2 levels
            assert np.abs(rgb.astype(int) - reference).max() <= 2, name
            assert outcome(accept_all, encoding, payload, 0) == (Decision.ACCEPT, Reason.MEETS_THRESHOLD), name


def test_runs_of_zeroed_scan_bytes_are_mostly_refused(vtest_frames):
    """A run of zero bits can decode as valid short Huffman codes: no decoder can tell. Measured, not promised."""
    refused = total = 0
    for image in (vtest_frames[0], vtest_frames[3]):
        for family, original, encoding, payload in damaged.damaged_images(
                image, jpeg_families=damaged.JPEG_BEST_EFFORT, png_families={}):
            total += 1
            try:
                decode_image(ReceivedFrame(FrameHeader("cam", 0, 1, Encoding.JPEG), payload, 1))
            except FrameDecodeError:
                refused += 1
    print(f"\nzeroed scan runs: {refused} of {total} refused")
    assert refused >= total // 2


def test_a_cut_scan_closed_with_an_end_marker_was_the_reported_failure(vtest_frames):
    # Given the reported case: a JPEG's scan cut at 10 % and closed with ff d9
    jpeg = damaged.originals(vtest_frames[0])["jpeg_baseline_colour"][1]
    cut = next(damaged.jpeg_cut_with_eoi(jpeg, random.Random(0)))
    # OpenCV decodes it (libjpeg only warns) ...
    assert cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_COLOR) is not None
    # ... the service's decoder does not
    with pytest.raises(FrameDecodeError, match="premature end of data segment"):
        decode_image(ReceivedFrame(FrameHeader("cam", 0, 1, Encoding.JPEG), cut, 1))


def test_a_progressive_jpeg_ended_between_scans_is_refused_though_libjpeg_does_not_warn(vtest_frames):
    jpeg = damaged.originals(vtest_frames[0])["jpeg_progressive_colour"][1]
    cuts = list(damaged.jpeg_cut_between_scans(jpeg, random.Random(0)))
    assert len(cuts) >= 5
    for cut in cuts:
        assert cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_COLOR) is not None  # a valid, coarser image
        with pytest.raises(FrameDecodeError, match="scans cover every coefficient"):
            decode_image(ReceivedFrame(FrameHeader("cam", 0, 1, Encoding.JPEG), cut, 1))
