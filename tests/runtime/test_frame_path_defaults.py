"""How the sessions run beside the decode pool: idle ONNX Runtime threads sleep, small graphs on one thread,
batches do not wait for more cameras, the ingest waits for scoring under a flood by default, and the next batch
is taken once the one in flight is decoded."""

from __future__ import annotations

import queue
import threading
import time

import cv2
import pytest

from trustvlm.runtime.config import ReloadConfig, ServiceConfig
from trustvlm.runtime.decode.decode_pool import DecodeConfig, FramePreparer
from trustvlm.runtime.ingest.frame_buffer import BufferConfig
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder
from trustvlm.runtime.publisher import PublishConfig
from trustvlm.runtime.scoring.scorer import SMALL_GRAPH_THREADS, ScorerConfig, load_scorer
from trustvlm.runtime.scoring.scorer_config import SCORING_THREAD_WAIT_MS
from trustvlm.runtime.service import build_service

pytestmark = pytest.mark.timeout(120)
SPINNING = "session.intra_op.allow_spinning"
#: Longest wait for an event before the test fails (never reached when the service works).
GUARD_S = 60.0


def spinning(engine: OnnxEncoder) -> str:
    """The session's spin setting as ONNX Runtime holds it ("" when left at its default, which spins)."""
    try:
        return engine.session.get_session_options().get_session_config_entry(SPINNING)
    except Exception:  # onnxruntime raises for a key that was never set
        return ""


def test_beside_the_decode_pool_threads_sleep_and_batches_do_not_wait():
    # Given the default scorer config
    config = ScorerConfig()
    # When the service runs it beside the decode pool, and on the scoring thread
    pooled, alone = config.beside_decode_pool(True), config.beside_decode_pool(False)
    # Then only beside the pool do idle threads sleep and batches go without waiting for other cameras
    assert (pooled.spin, pooled.max_wait_ms) == (False, 0.0)
    assert (alone.spin, alone.max_wait_ms) == (True, SCORING_THREAD_WAIT_MS)
    assert config.batch_wait_s == SCORING_THREAD_WAIT_MS / 1e3


def test_a_wait_the_user_set_is_kept_beside_the_pool():
    assert ScorerConfig(max_wait_ms=5.0).beside_decode_pool(True).max_wait_ms == 5.0
    assert ScorerConfig(max_wait_ms=0.0).beside_decode_pool(False).batch_wait_s == 0.0
    with pytest.raises(ValueError, match="max_wait_ms"):
        ScorerConfig(max_wait_ms=-1.0)


def test_sessions_opened_without_spinning_say_so_to_onnxruntime(demo_export, demo_bundle):
    # Given the demo scorer loaded as beside the pool, and as on the scoring thread
    pooled = load_scorer(demo_export, demo_bundle, ScorerConfig(threads=2).beside_decode_pool(True))
    alone = load_scorer(demo_export, demo_bundle, ScorerConfig(threads=2).beside_decode_pool(False))
    # Then every session of the pooled one (encoder, trust head, gate) lets its threads sleep; the other spins
    pooled_engines = [pooled.encoder, pooled.head] + ([pooled.gate.engine] if pooled.gate else [])
    assert [spinning(engine) for engine in pooled_engines] == ["0"] * len(pooled_engines)
    assert spinning(alone.encoder) in ("", "1")
    # And the encoder has the threads asked for, the trust head and the gate one
    assert pooled.encoder.session.get_session_options().intra_op_num_threads == 2
    assert pooled.head.session.get_session_options().intra_op_num_threads == SMALL_GRAPH_THREADS == 1
    if pooled.gate is not None:
        assert pooled.gate.engine.session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("workers, spins, wait_ms", [(2, False, 0.0), (0, True, SCORING_THREAD_WAIT_MS)])
def test_the_service_configures_its_scorer_for_its_frame_path(demo_export, demo_bundle, zmq_context, workers,
                                                              spins, wait_ms):
    # Given a service with and without a decode pool
    config = ServiceConfig(artifacts=demo_export, bundle=demo_bundle, scorer=ScorerConfig(threads=1),
                           decode=DecodeConfig(workers=workers), reload=ReloadConfig(watch=False),
                           publish=PublishConfig(address="tcp://127.0.0.1:*"))
    service = build_service(config, lambda context, curve: None, zmq_context)
    try:
        # Then its scorer config and its sessions follow the frame path
        assert (service.scorer_config.spin, service.scorer_config.max_wait_ms) == (spins, wait_ms)
        assert spinning(service.slot.current().encoder) in (("0",) if not spins else ("", "1"))
    finally:
        service.decode.close()


def test_the_ingest_waits_for_scoring_under_a_flood_by_default():
    config = BufferConfig()
    assert (config.max_superseded_per_take, config.flood_superseded_per_s) == (2, 1000.0)
    with pytest.raises(ValueError, match="flood_superseded_per_s"):
        BufferConfig(flood_superseded_per_s=-1)


class _ListIngest:
    """Frames handed to the service in-process, one at a time."""

    def __init__(self):
        self.frames: queue.Queue[ReceivedFrame] = queue.Queue()

    def open(self) -> str:
        return "list://"

    def receive(self) -> ReceivedFrame | None:
        try:
            return self.frames.get(timeout=0.05)
        except queue.Empty:
            return None

    def close(self) -> None:
        pass


class _HeldPreparer(FramePreparer):
    """Holds camera a's decode until released; logs when each decode ends and how many are running."""

    def __init__(self, log):
        super().__init__()
        self.log, self.running, self.lock = log, 0, threading.Lock()
        self.a_started, self.release = threading.Event(), threading.Event()

    def __call__(self, frame, towers, min_side=0, image=None):
        with self.lock:
            self.running += 1
        if frame.header.camera_id == "a":
            self.a_started.set()
            assert self.release.wait(GUARD_S)
        try:
            return super().__call__(frame, towers, min_side, image)
        finally:
            with self.lock:
                self.running -= 1
            self.log.append(("decoded", frame.header.camera_id))


def test_the_next_batch_is_taken_once_the_one_in_flight_is_decoded_and_decodes_while_it_is_scored(
        demo_export, demo_bundle, fmnist_images, zmq_context):
    # Given a service with a decode pool whose decoding of camera a's frame is held, and every step logged
    config = ServiceConfig(artifacts=demo_export, bundle=demo_bundle, scorer=ScorerConfig(threads=1),
                           decode=DecodeConfig(workers=2), buffer=BufferConfig(staleness_ms=0),
                           reload=ReloadConfig(watch=False), publish=PublishConfig(address="tcp://127.0.0.1:*"))
    ingest, log = _ListIngest(), []
    service = build_service(config, lambda context, curve: ingest, zmq_context)
    preparer = service.decode.preparer = _HeldPreparer(log)
    take, submit, put = service.buffer.take, service.decode.submit, service.buffer.put
    decide = service.scoring.score_and_publish
    b_buffered, b_decided = threading.Event(), threading.Event()

    def logged_take(*args, **kwargs):
        log.append(("take", preparer.running))
        return take(*args, **kwargs)

    def logged_submit(frames, scorer):
        log.append(("submit", [f.header.camera_id for f in frames]))
        return submit(frames, scorer)

    def logged_decide(batch):
        cameras = [frame.header.camera_id for frame in batch.frames]
        log.append(("decide", cameras))
        decide(batch)
        if "b" in cameras:
            b_decided.set()

    def logged_put(item):
        put(item)
        if getattr(item, "header", None) is not None and item.header.camera_id == "b":
            b_buffered.set()

    service.buffer.take, service.decode.submit = logged_take, logged_submit
    service.scoring.score_and_publish = logged_decide
    service.buffer.put = logged_put
    images, _ = fmnist_images
    payload = cv2.imencode(".jpg", images[0])[1].tobytes()

    def frame(camera: str) -> ReceivedFrame:
        return ReceivedFrame(FrameHeader(camera, 0, time.time_ns(), Encoding.JPEG), payload, time.time_ns())

    service.start()
    try:
        # When camera a's frame is being decoded, camera b's frame arrives, and then a's decoding ends
        ingest.frames.put(frame("a"))
        assert preparer.a_started.wait(GUARD_S)
        ingest.frames.put(frame("b"))
        assert b_buffered.wait(GUARD_S)
        preparer.release.set()
        assert b_decided.wait(GUARD_S)
    finally:
        preparer.release.set()
        service.request_stop()
        service.wait()
    # Then no batch was taken while a frame was decoding (the next one waits for the frames that come meanwhile),
    steps = list(log)
    assert [step for step in steps if step[0] == "take" and step[1]] == [], steps
    # b's frame was taken after a's was decoded and handed to the pool before a was scored (decoding beside it)
    order = [step for step in steps if step[0] != "take"]
    assert order.index(("decoded", "a")) < order.index(("submit", ["b"])) < order.index(("decide", ["a"])), order
    assert order.index(("decide", ["a"])) < order.index(("decide", ["b"])), order
