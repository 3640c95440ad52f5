"""Faults around `trustvlm serve`: peers and the service restarting, engines and bundles corrupted or swapped.

An ONNX Runtime error in the middle of a batch is covered elsewhere: test_scorer.py
(``test_an_engine_error_defers_every_frame_of_the_batch_and_the_next_batch_works``) and
test_service.py (``test_nan_scores_and_engine_errors_defer_and_report_degraded_health``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from trustvlm.calibration.bundle import write_bundle
from trustvlm.contract.files import sha256_file, write_json_atomic
from trustvlm.contract.manifest import MANIFEST_NAME, read_manifest
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame, send_frame
from trustvlm.runtime.messages import Decision, HealthStatus, Reason
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer

from .conftest import (FAULT_CLASSES, Subscriber, _fault_encoder, check_outcome_against_age, decide_until_scored,
                       fault_image, make_info)

pytestmark = pytest.mark.timeout(120)


def send(sender, camera: str, seq: int, pixel: int = 100, capture_ns: int | None = None) -> None:
    image = fault_image(pixel)
    send_frame(sender, FrameHeader(camera, seq, capture_ns or time.time_ns(), Encoding.RAW, image.shape, "uint8"),
               image.tobytes())


def seqs(subscriber: Subscriber, camera: str) -> list[int]:
    return [d.seq for d in subscriber.decisions if d.camera_id == camera]


def copy_export(source, target):
    shutil.copytree(source, target)
    return target


def swap_image_encoder(export_dir, seed: int, update_manifest: bool = True) -> None:
    """Write another image encoder into `export_dir` (and record its sha256 in the manifest)."""
    path = export_dir / "image_encoder.onnx"
    _fault_encoder(path, 8, seed)
    if update_manifest:
        manifest = read_manifest(export_dir)
        manifest["precisions"]["fp32"]["files"]["image_encoder"]["sha256"] = sha256_file(path)
        write_json_atomic(export_dir / MANIFEST_NAME, manifest)


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def run_serve_expecting_refusal(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "trustvlm.runtime.cli", "serve", "--ingest", "tcp://127.0.0.1:*",
                             "--publish", "tcp://127.0.0.1:*", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == "", (result.returncode, result.stdout, result.stderr)
    return result.stderr


# --- peers restarting ------------------------------------------------------------------------------------------

def test_a_restarted_sender_and_a_restarted_subscriber_carry_on(serve, subscribe, push, fault_export,
                                                               make_fault_bundle, tmp_path):
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")))
    subscriber = subscribe(service.publish)
    # Given a sender that sends 3 frames, then restarts (new socket, its seq starts again at 0)
    # (each frame waits for its decision, so none is superseded by the next however slow the machine is)
    sender = push(service.ingest)
    for seq in range(3):
        send(sender, "cam", seq)
        assert subscriber.wait_for(lambda s: seqs(s, "cam") == list(range(seq + 1)), 10), seqs(subscriber, "cam")
    sender.close(0)
    restarted = push(service.ingest)
    for seq in range(3):
        send(restarted, "cam", seq)
        assert subscriber.wait_for(lambda s: seqs(s, "cam") == [0, 1, 2] + list(range(seq + 1)), 10), \
            seqs(subscriber, "cam")
    # Then its new frames are decided like the first ones
    assert all(d.decision is Decision.ACCEPT for d in subscriber.decisions)
    # When the subscriber restarts (closes, and a new one connects)
    subscriber.socket.close(0)
    again = subscribe(service.publish)
    send(restarted, "cam", 3)
    # Then the new subscriber gets heartbeats and the decisions of new frames
    assert again.wait_for(lambda s: seqs(s, "cam") == [3], 10), seqs(again, "cam")
    assert service.stop() == 0


def test_a_killed_and_restarted_service_shows_as_a_heartbeat_gap_then_resumes(serve, push, fault_export,
                                                                             make_fault_bundle, tmp_path,
                                                                             zmq_context):
    bundle = make_fault_bundle(tmp_path / "bundle")
    staleness_ms = 500
    args = ("--artifacts", str(fault_export), "--bundle", str(bundle), "--staleness-ms", str(staleness_ms))
    first = serve(*args)
    # Given a subscriber and a sender connected (not bound) to the service's ports, as a robot's would be
    sub = zmq_context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"trust/")
    sub.connect(first.publish)
    subscriber = Subscriber(sub)
    assert subscriber.wait_for(lambda s: s.health, 20)
    sender = push(first.ingest)
    send(sender, "cam", 0)
    assert subscriber.wait_for(lambda s: seqs(s, "cam") == [0], 10)
    # When the service is killed (no goodbye heartbeat) and frames keep coming during the outage
    first.process.kill()
    first.process.wait(10)
    killed_ns = time.time_ns()
    for seq in range(1, 6):
        send(sender, "cam", seq)
        time.sleep(0.1)  # a camera's pace; nothing below depends on how long this takes
    # And it is restarted on the same ports; the subscriber resumes when it hears the heartbeat again (decisions
    # published before its SUB socket has reconnected are lost to it: PUB/SUB keeps nothing for absent subscribers)
    restart_ns = time.time_ns()
    second = serve(*args, "--ingest", first.ingest, "--publish", first.publish, ports=False)
    assert subscriber.wait_for(lambda s: s.health[-1].ts_ns > killed_ns, 20), "no heartbeat after the restart"
    # Then the first fresh frame after the restart is scored (one sent while the restarted service is busy may
    # be older than the deadline when it is picked up: its outcome is checked against its age and another sent)
    decision, after = decide_until_scored(subscriber, lambda seq: send(sender, "cam", seq), "cam", 6, staleness_ms)
    assert decision.decision is Decision.ACCEPT, after
    # And the subscriber saw a heartbeat gap covering the outage: the last heartbeat before it was sent before
    # the kill, the next one after the new process was started; no 'stopped' message in between
    stamps = [h.ts_ns for h in subscriber.health]
    gaps = [(a, b) for a, b in zip(stamps, stamps[1:]) if a <= killed_ns and b > restart_ns]
    assert len(gaps) == 1, "no heartbeat gap spans the outage"
    gap_s = (gaps[0][1] - gaps[0][0]) / 1e9
    assert HealthStatus.STOPPED not in [h.status for h in subscriber.health]
    # And frames sent during the outage were lost with the process, superseded, or decided by their age when
    # the restarted service received them
    late = [d for d in subscriber.decisions if d.camera_id == "cam" and 1 <= d.seq <= 5]
    assert all(d.reason in (Reason.STALE, Reason.DROPPED, Reason.MEETS_THRESHOLD) for d in late), \
        [(d.seq, d.reason.value) for d in late]
    outage = [check_outcome_against_age(d, staleness_ms) for d in late]
    print(f"\nheartbeat gap {gap_s:.2f} s (outage from the kill to the restart {(restart_ns - killed_ns) / 1e9:.2f} s)"
          f"; outage frames decided: {outage}; after the restart: {after}")
    assert second.stop() == 0


# --- engines and bundles corrupted or swapped ------------------------------------------------------------------

def test_a_corrupted_engine_is_refused_at_start_with_one_line(fault_export, make_fault_bundle, tmp_path):
    export = copy_export(fault_export, tmp_path / "export")
    bundle = make_fault_bundle(tmp_path / "bundle")
    flip_a_byte(export / "image_encoder.onnx")
    err = run_serve_expecting_refusal("--artifacts", str(export), "--bundle", str(bundle))
    assert err.count("\n") == 1 and err.startswith("trustvlm serve: error: ")
    assert "image_encoder.onnx: sha256 does not match the manifest (corrupt or replaced)" in err, err


def test_a_swapped_engine_is_refused_at_start_with_one_line(fault_export, make_fault_bundle, tmp_path):
    # Given an export whose image encoder was replaced by another one, manifest and all
    export = copy_export(fault_export, tmp_path / "export")
    bundle = make_fault_bundle(tmp_path / "bundle")
    swap_image_encoder(export, seed=9)
    # Then the bundle, built for the old encoder, is refused
    err = run_serve_expecting_refusal("--artifacts", str(export), "--bundle", str(bundle))
    assert err.count("\n") == 1 and "image_encoder (fp32) differs: the bundle was built with sha256" in err, err


def test_a_corrupted_bundle_file_is_refused_at_start_with_one_line(fault_export, make_fault_bundle, tmp_path):
    bundle = make_fault_bundle(tmp_path / "bundle")
    flip_a_byte(bundle / "trust_head.onnx")
    err = run_serve_expecting_refusal("--artifacts", str(fault_export), "--bundle", str(bundle))
    assert err.count("\n") == 1 and "trust_head.onnx" in err and "sha256" in err, err


def test_reloads_refuse_corrupted_or_swapped_engines_and_never_mix_a_bundle_with_another_engine(
        serve, subscribe, push, fault_export, make_fault_bundle, tmp_path):
    export = copy_export(fault_export, tmp_path / "export")
    bundle = make_fault_bundle(tmp_path / "bundle", threshold=-10.0)
    service = serve("--artifacts", str(export), "--bundle", str(bundle), "--no-watch")
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    seq = iter(range(1000))

    def decide():
        number = next(seq)
        send(sender, "cam", number, pixel=60)
        assert subscriber.wait_for(lambda s: number in seqs(s, "cam"), 10), f"no decision for {number}"
        return subscriber.decisions[-1]

    def reload_and_wait(count: int):
        service.process.send_signal(signal.SIGHUP)
        assert subscriber.wait_for(lambda s: sum(s.health[-1].counters.get(k, 0) for k in
                                                 ("reloads_ok", "reloads_refused")) == count, 10)

    first = decide()
    # When the encoder file is corrupted on disk and a reload is asked for: refused, old bundle kept
    original = (export / "image_encoder.onnx").read_bytes()
    flip_a_byte(export / "image_encoder.onnx")
    reload_and_wait(1)
    assert decide().bundle_id == first.bundle_id
    (export / "image_encoder.onnx").write_bytes(original)
    # When the encoder is swapped (manifest updated) but the bundle is still the old one: refused
    swap_image_encoder(export, seed=9)
    reload_and_wait(2)
    kept = decide()
    assert (kept.bundle_id, kept.kappa) == (first.bundle_id, first.kappa), "the old engine must still be running"
    # When a bundle built for the new encoder arrives: swapped in, and it runs with the NEW encoder
    rng = np.random.default_rng(3)
    write_bundle(bundle, rng.normal(size=(3, 8)), rng.normal(size=(3, 8)),
                 make_info(read_manifest(export), FAULT_CLASSES, -10.0))
    fresh = load_scorer(export, bundle, ScorerConfig(threads=1))  # reference: new engine + new bundle, in process
    reload_and_wait(3)
    new = decide()
    image = fault_image(60)
    (expected,) = fresh.decide([ReceivedFrame(FrameHeader("ref", 0, time.time_ns(), Encoding.RAW, image.shape,
                                                          "uint8"), image.tobytes(), time.time_ns())])
    assert new.bundle_id == fresh.bundle_id != first.bundle_id
    np.testing.assert_allclose(new.kappa, expected.kappa, rtol=1e-6)
    counters = subscriber.health[-1].counters
    assert (counters.get("reloads_refused"), counters.get("reloads_ok")) == (2, 1), counters
    refused = [line for line in service.stderr().splitlines() if "bundle reload refused" in line]
    assert len(refused) == 2 and "sha256 does not match the manifest" in refused[0] and "differs" in refused[1], \
        refused
    assert service.stop() == 0

