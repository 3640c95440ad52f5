"""The decode pool: latest frame wins before decode, order and one outcome per frame, failures deferred."""

from __future__ import annotations

import time
from collections import defaultdict

import cv2
import numpy as np
import pytest

from trustvlm.runtime.decode.decode_pool import DecodeConfig, DecodePool, DecodeScale
from trustvlm.runtime.ingest.frame_buffer import BufferConfig, FrameBuffer
from trustvlm.runtime.frames import Encoding, FrameHeader, Notice, ReceivedFrame, send_frame
from trustvlm.runtime.messages import Reason
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer

from . import damaged

pytestmark = pytest.mark.timeout(120)
SCORED = {Reason.MEETS_THRESHOLD, Reason.BELOW_THRESHOLD}


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def frame(camera: str, seq: int, payload: bytes) -> ReceivedFrame:
    return ReceivedFrame(FrameHeader(camera, seq, time.time_ns(), Encoding.JPEG), payload, time.time_ns())


@pytest.fixture
def demo_scorer(demo_export, demo_bundle):
    return load_scorer(demo_export, demo_bundle, ScorerConfig(threads=1))


def test_a_superseded_frame_is_never_decoded(demo_scorer, fmnist_images):
    # Given 5 frames of camera a (4 superseded before scoring) and 1 of camera b in the latest-frame-wins buffer
    images, _ = fmnist_images
    buffer = FrameBuffer(BufferConfig(staleness_ms=0))
    for seq in range(5):
        buffer.put(frame("a", seq, jpeg(images[seq])))
    buffer.put(frame("b", 0, jpeg(images[9])))
    items = buffer.take(8)
    # When the taken frames go to a pool of 2 workers
    pool = DecodePool(DecodeConfig(workers=2, scale=DecodeScale.FULL))
    frames = [item for item in items if isinstance(item, ReceivedFrame)]
    prepared = pool.submit(frames, demo_scorer).result()
    pool.close()
    # Then only the 2 newest frames were decoded; the 4 others are dropped notices
    assert pool.preparer.decoded == 2, f"{pool.preparer.decoded} decode calls for 2 frames"
    assert [(f.header.camera_id, f.header.seq) for f in frames] == [("a", 4), ("b", 0)]
    assert [n.seq for n in items if isinstance(n, Notice) and n.reason is Reason.DROPPED] == [0, 1, 2, 3]
    assert all(isinstance(p, dict) and p["embedding"].shape == (32, 32, 3) for p in prepared)


def test_workers_give_the_same_pixels_in_the_same_order_as_the_scoring_thread(demo_scorer, fmnist_images,
                                                                               vtest_frames):
    images, _ = fmnist_images
    payloads = [jpeg(images[i]) for i in range(6)] + [jpeg(f) for f in vtest_frames[:3]]
    cut = next(damaged.jpeg_cut_with_eoi(payloads[-1], __import__("random").Random(0)))
    frames = [frame(f"cam{i}", 0, p) for i, p in enumerate(payloads + [cut])]
    inline = DecodePool(DecodeConfig(workers=0)).submit(frames, demo_scorer).result()
    pool = DecodePool(DecodeConfig(workers=3))
    pooled = pool.submit(frames, demo_scorer).result()
    pool.close()
    for one, other in zip(inline[:-1], pooled[:-1]):
        assert np.array_equal(one["embedding"], other["embedding"])
    # a decode failure on a worker is the frame's defer notice, as on the scoring thread
    assert isinstance(pooled[-1], Notice) and pooled[-1].reason is Reason.UNDECODABLE, pooled[-1]
    assert (pooled[-1].camera_id, pooled[-1].seq) == (f"cam{len(payloads)}", 0)
    decisions = demo_scorer.decide(frames, pooled)
    assert [d.reason for d in decisions][-1] is Reason.UNDECODABLE
    assert {d.reason for d in decisions[:-1]} <= SCORED


@pytest.mark.parametrize("workers", ["2", "0"])
def test_a_jpeg_flood_through_the_pool_gets_one_outcome_per_frame_in_camera_order(serve, subscribe, push,
                                                                                  demo_export, demo_bundle,
                                                                                  vtest_frames, workers):
    # Given the service with 2 decode workers (or the scoring thread decoding), and 4 cameras flooding 768x576 JPEG
    service = serve("--artifacts", str(demo_export), "--bundle", str(demo_bundle), "--decode-workers", workers)
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    payloads = [jpeg(f) for f in vtest_frames]
    sent = defaultdict(list)
    for i in range(200):
        camera = f"cam{i % 4}"
        seq = len(sent[camera])
        send_frame(sender, FrameHeader(camera, seq, time.time_ns(), Encoding.JPEG), payloads[i % len(payloads)])
        sent[camera].append(seq)
    # Then 200 decisions, each camera's in the order sent, every one scored or dropped
    assert subscriber.wait_for(lambda s: len(s.decisions) >= 200, 60), f"{len(subscriber.decisions)} decisions"
    got = defaultdict(list)
    for decision in subscriber.decisions:
        got[decision.camera_id].append(decision.seq)
    assert dict(got) == dict(sent)
    reasons = [d.reason for d in subscriber.decisions]
    assert set(reasons) <= SCORED | {Reason.DROPPED}, set(reasons)
    # And the frames decoded are exactly the frames scored: no superseded frame was decoded
    assert subscriber.wait_for(lambda s: s.health[-1].counters.get("decisions") == 200, 20)
    scored = sum(reason in SCORED for reason in reasons)
    assert subscriber.health[-1].counters["decode_calls"] == scored, (subscriber.health[-1].counters, scored)
    assert service.stop() == 0


def test_the_next_batch_is_decoded_ahead_only_while_decoding_is_a_real_share_of_the_time():
    pool = DecodePool(DecodeConfig(workers=1))
    assert pool.prefetch_pays(), "nothing measured yet: decode ahead"
    pool.record(decode_s=0.010, encode_s=0.020)  # encoder 2x decode: overlapping pays
    assert pool.prefetch_pays()
    for _ in range(30):  # encoder 100x decode (a large model on a CPU): take the next batch after encoding
        pool.record(decode_s=0.010, encode_s=1.0)
    assert not pool.prefetch_pays()
    pool.close()


def test_a_pending_batch_says_how_long_its_decoding_took(demo_scorer, fmnist_images):
    images, _ = fmnist_images
    frames = [frame(f"cam{i}", 0, jpeg(images[i])) for i in range(3)]
    for workers in (0, 2):
        pool = DecodePool(DecodeConfig(workers=workers))
        pending = pool.submit(frames, demo_scorer)
        assert len(pending.result()) == 3
        assert pending.decode_s is not None and pending.decode_s > 0, workers
        pool.close()
