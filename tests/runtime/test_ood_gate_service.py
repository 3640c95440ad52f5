"""The out-of-distribution gate through the real service: noise and uniform frames are deferred, counted, reported."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest

from trustvlm.calibration.bundle import write_bundle
from trustvlm.contract.manifest import read_manifest
from trustvlm.runtime.frames import Encoding, FrameHeader, send_frame
from trustvlm.runtime.messages import Decision, HealthStatus, Reason

from .conftest import FAULT_CLASSES, fault_image, make_info, open_gate

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def gated_bundle(demo_artifacts, tmp_path_factory):
    """A bundle of the demo model calibrated on Fashion-MNIST's calibration split, with its default gate."""
    from trustvlm.calibration.calibrate import calibrate  # noqa: PLC0415

    bundle = calibrate(demo_artifacts, "fashion-mnist", tmp_path_factory.mktemp("gated") / "bundle", k=8, lam=1.0,
                       alpha=0.3, threads=1)
    assert bundle.info.ood_gate is not None and bundle.ood_gate_path.exists()
    return bundle.path


def unseen_frames() -> list[np.ndarray]:
    """Uniform random noise and uniform grey frames (BGR), which no clothing camera produces."""
    rng = np.random.default_rng(7)
    noise = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(4)]
    grey = [np.full((96, 128, 3), level, np.uint8) for level in (0, 64, 128, 255)]
    return noise + grey


def decide_one_by_one(service, subscriber, sender, frames) -> list:
    """Send each frame once its predecessor is decided (nothing is superseded); the decisions, in order."""
    for seq, image in enumerate(frames):
        send_frame(sender, FrameHeader("cam", seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"),
                   image.tobytes())
        assert subscriber.wait_for(lambda s: len(s.decisions) > seq, 60), service.stderr()
    return subscriber.decisions


def test_noise_and_uniform_frames_are_deferred_out_of_distribution_and_counted(serve, subscribe, push, demo_export,
                                                                               gated_bundle, fmnist_images):
    # Given the service on a bundle with the gate, and Prometheus metrics
    service = serve("--artifacts", str(demo_export), "--bundle", str(gated_bundle), "--metrics", "127.0.0.1:0")
    subscriber, sender = subscribe(service.publish), push(service.ingest)
    images, _ = fmnist_images
    unseen = unseen_frames()
    # When noise, grey and then real clothing frames are sent
    decisions = decide_one_by_one(service, subscriber, sender, unseen + list(images[:8]))
    # Then every noise and grey frame is deferred out_of_distribution, with its typicality in the detail
    for decision in decisions[:len(unseen)]:
        assert decision.decision is Decision.DEFER and decision.reason is Reason.OUT_OF_DISTRIBUTION, decision
        assert decision.detail.startswith("typicality"), decision.detail
    # And the clothing frames mostly go on to the trust threshold (1% false rejects expected)
    clothing = decisions[len(unseen):]
    assert sum(d.reason is not Reason.OUT_OF_DISTRIBUTION for d in clothing) >= 6, [d.reason for d in clothing]
    ood = sum(d.reason is Reason.OUT_OF_DISTRIBUTION for d in decisions)
    # And the heartbeat counters and the metrics count them
    assert subscriber.wait_for(lambda s: s.health and s.health[-1].counters.get("decisions") == len(decisions), 20)
    assert subscriber.health[-1].counters.get("reason_out_of_distribution") == ood, subscriber.health[-1].counters
    text = urllib.request.urlopen(f"{service.metrics}/metrics", timeout=5).read().decode()
    counted = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("trustvlm_decisions_total{") and 'reason="out_of_distribution"' in line]
    assert counted == [ood], counted
    assert service.stop() == 0, service.stderr()
    assert subscriber.wait_for(lambda s: s.health[-1].status is HealthStatus.STOPPED, 10)


def test_without_a_gate_no_frame_is_deferred_out_of_distribution(serve, subscribe, push, demo_export, demo_bundle):
    # Given the service on a bundle without a gate (as calibrated before the gate existed, or with --ood-gate off)
    service = serve("--artifacts", str(demo_export), "--bundle", str(demo_bundle))
    subscriber, sender = subscribe(service.publish), push(service.ingest)
    # When the same noise and grey frames are sent
    decisions = decide_one_by_one(service, subscriber, sender, unseen_frames())
    # Then they are scored like any frame: no out_of_distribution reason, and a label
    assert all(d.reason in (Reason.MEETS_THRESHOLD, Reason.BELOW_THRESHOLD) and d.label for d in decisions), decisions
    assert service.stop() == 0, service.stderr()


def test_the_gate_decides_before_the_trust_threshold(serve, subscribe, push, fault_export, tmp_path):
    # Given a bundle whose trust threshold accepts every finite frame but whose gate passes none
    rng = np.random.default_rng(0)
    bundle = write_bundle(tmp_path / "bundle", rng.normal(size=(3, 8)), rng.normal(size=(3, 8)),
                          make_info(read_manifest(fault_export), FAULT_CLASSES, -10.0),
                          ood_gate=open_gate(8, threshold=float(np.finfo(np.float32).max))).path
    service = serve("--artifacts", str(fault_export), "--bundle", str(bundle))
    subscriber, sender = subscribe(service.publish), push(service.ingest)
    # When frames are sent
    decisions = decide_one_by_one(service, subscriber, sender, [fault_image(fill=v) for v in (20, 100, 200)])
    # Then each is scored (label and kappa) yet deferred out_of_distribution, never accepted
    assert all(d.decision is Decision.DEFER and d.reason is Reason.OUT_OF_DISTRIBUTION for d in decisions), decisions
    assert all(d.label in FAULT_CLASSES and d.kappa is not None for d in decisions), decisions
    assert service.stop() == 0, service.stderr()


def test_the_device_path_gates_like_the_host_path(demo_export, gated_bundle, fmnist_images):
    """The IOBinding path (the embedding bound to the gate as an OrtValue), run with CPU OrtValues."""
    from trustvlm.runtime.frames import ReceivedFrame  # noqa: PLC0415
    from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer  # noqa: PLC0415

    host = load_scorer(demo_export, gated_bundle, ScorerConfig(threads=1))
    bound = load_scorer(demo_export, gated_bundle, ScorerConfig(threads=1))
    bound._device = "cpu"
    images, _ = fmnist_images
    frames = [ReceivedFrame(FrameHeader("cam", seq, 1, Encoding.RAW, image.shape, "uint8"),
                            np.ascontiguousarray(image).tobytes(), 2)
              for seq, image in enumerate(unseen_frames() + list(images[:8]))]
    expected, got = host.decide(frames), bound.decide(frames)
    assert [d.reason for d in got] == [d.reason for d in expected]
    assert all(d.reason is Reason.OUT_OF_DISTRIBUTION for d in got[:8]), [d.reason for d in got]
    assert [d.detail for d in got] == [d.detail for d in expected]
