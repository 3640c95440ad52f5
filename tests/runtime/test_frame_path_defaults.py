"""How the sessions run beside the decode pool: idle ONNX Runtime threads sleep, small graphs on one thread,
batches do not wait for more cameras, and the ingest waits for scoring under a flood by default."""

from __future__ import annotations

import pytest

from trustvlm.runtime.config import ReloadConfig, ServiceConfig
from trustvlm.runtime.decode_pool import DecodeConfig
from trustvlm.runtime.frame_buffer import BufferConfig
from trustvlm.runtime.onnx_engine import OnnxEncoder
from trustvlm.runtime.publisher import PublishConfig
from trustvlm.runtime.scorer import SCORING_THREAD_WAIT_MS, SMALL_GRAPH_THREADS, ScorerConfig, load_scorer
from trustvlm.runtime.service import build_service

pytestmark = pytest.mark.timeout(120)
SPINNING = "session.intra_op.allow_spinning"


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
