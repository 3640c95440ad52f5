"""Hot reload of the bundle under traffic: validated before an atomic swap, bad bundles refused."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from trustvlm.runtime.frames import Encoding, FrameHeader, send_frame
from trustvlm.runtime.messages import Reason

from .conftest import fault_image

pytestmark = pytest.mark.timeout(90)


class Traffic:
    """A thread sending raw frames of camera 'cam' every 20 ms until stopped."""

    def __init__(self, sender):
        self.sender, self.sent = sender, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        image = fault_image()
        while not self._stop.is_set():
            send_frame(self.sender, FrameHeader("cam", self.sent, time.time_ns(), Encoding.RAW, image.shape, "uint8"),
                       image.tobytes())
            self.sent += 1
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.sent


def bundle_ids_in_order(decisions) -> list[str]:
    ids = []
    for decision in decisions:
        if not ids or ids[-1] != decision.bundle_id:
            ids.append(decision.bundle_id)
    return ids


def test_a_changed_bundle_is_swapped_in_under_traffic_and_a_bad_one_is_refused(
        serve, subscribe, push, fault_export, make_fault_bundle, tmp_path):
    # Given a service started from a config file (relative paths, fast file watch) on bundle A (accept all)
    make_fault_bundle(tmp_path / "bundle", threshold=-10.0)
    (tmp_path / "serve.json").write_text(json.dumps({
        "artifacts": str(fault_export), "bundle": "bundle", "reload": {"watch": True, "poll_ms": 100}}))
    service = serve("--config", str(tmp_path / "serve.json"))
    subscriber = subscribe(service.publish)
    traffic = Traffic(push(service.ingest))
    assert subscriber.wait_for(lambda s: len(s.decisions) >= 5, 10)
    bundle_a = subscriber.decisions[0].bundle_id
    # When bundle B (defer all) replaces it on disk while frames keep coming
    make_fault_bundle(tmp_path / "bundle", threshold=10.0, seed=1)
    assert subscriber.wait_for(lambda s: s.decisions[-1].bundle_id != bundle_a, 10), "B was never loaded"
    bundle_b = subscriber.decisions[-1].bundle_id
    # And then B's prototypes are damaged (sha256 no longer matches bundle.json)
    # (written aside and renamed, so the watcher sees one change, not a half-written file and then the whole one)
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "damaged.npz", text_prototypes=rng.normal(size=(3, 8)).astype(np.float32),
             image_prototypes=rng.normal(size=(3, 8)).astype(np.float32))
    os.replace(tmp_path / "damaged.npz", tmp_path / "bundle" / "prototypes.npz")
    assert subscriber.wait_for(lambda s: s.health[-1].counters.get("reloads_refused") == 1, 20), \
        subscriber.health[-1].counters
    count_after_damage = len(subscriber.decisions)
    assert subscriber.wait_for(lambda s: len(s.decisions) >= count_after_damage + 5, 10)
    sent = traffic.stop()
    assert subscriber.wait_for(lambda s: len(s.decisions) == sent, 10), f"{len(subscriber.decisions)} of {sent}"
    assert service.stop() == 0
    # Then every frame got exactly one decision, in order, and the bundle changed once, from A to B
    decisions = subscriber.decisions
    assert [d.seq for d in decisions] == list(range(sent))
    assert bundle_ids_in_order(decisions) == [bundle_a, bundle_b]
    for decision in decisions:
        allowed = {Reason.DROPPED, Reason.MEETS_THRESHOLD if decision.bundle_id == bundle_a else Reason.BELOW_THRESHOLD}
        assert decision.reason in allowed, (decision.seq, decision.bundle_id, decision.reason)
    # And the damaged bundle was refused with exactly one log line, keeping B
    refused = [line for line in service.stderr().splitlines() if "bundle reload refused" in line]
    assert len(refused) == 1 and "sha256 differs" in refused[0] and bundle_b in refused[0], refused
    assert sum("bundle reloaded (file change)" in line for line in service.stderr().splitlines()) == 1


def test_sighup_reloads_when_file_watching_is_off(serve, subscribe, push, fault_export, make_fault_bundle, tmp_path):
    bundle = make_fault_bundle(tmp_path / "bundle", threshold=-10.0)
    service = serve("--artifacts", str(fault_export), "--bundle", str(bundle), "--no-watch")
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    image = fault_image()

    def decide(seq: int):
        send_frame(sender, FrameHeader("cam", seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"), image.tobytes())
        assert subscriber.wait_for(lambda s: len(s.decisions) == seq + 1, 10), f"no decision for {seq}"
        return subscriber.decisions[-1]

    first = decide(0)
    make_fault_bundle(bundle, threshold=10.0, seed=2)
    time.sleep(1.5)  # longer than the default watch period: nothing may change without SIGHUP
    assert decide(1).bundle_id == first.bundle_id, "--no-watch must not reload on a file change"
    service.process.send_signal(signal.SIGHUP)
    assert subscriber.wait_for(lambda s: (decide(len(s.decisions)).bundle_id != first.bundle_id), 10)
    assert subscriber.decisions[-1].reason is Reason.BELOW_THRESHOLD
    assert service.stop() == 0
