"""One service, many cameras: the camera map, one encoder under many trust heads, refusals and per-camera reload."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
import urllib.request

import numpy as np
import pytest

from trustvlm.contract.camera_map import (DEFAULT_ROUTE, CameraMap, CameraMapError, read_camera_map,
                                          write_camera_map)
from trustvlm.contract.files import sha256_file, write_json_atomic
from trustvlm.contract.manifest import MANIFEST_NAME, read_manifest
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame, send_frame
from trustvlm.runtime.messages import Decision, Reason

from .conftest import _fault_encoder, fault_image

pytestmark = pytest.mark.timeout(120)


def test_the_most_specific_entry_wins_and_an_unmatched_camera_goes_to_the_default_or_nowhere(tmp_path):
    cameras = {"cam1": tmp_path / "exact", "cam*": tmp_path / "short", "cam1*": tmp_path / "long",
               "gripper?": tmp_path / "one", "[ab]*": tmp_path / "set"}
    with_default = CameraMap(cameras, tmp_path / "default")
    assert with_default.route("cam1") == "cam1"  # an exact id before any pattern
    assert with_default.route("cam10") == "cam1*"  # the pattern with the most literal characters
    assert with_default.route("cam2") == "cam*"
    assert with_default.route("gripper7") == "gripper?" and with_default.route("gripper77") == DEFAULT_ROUTE
    assert with_default.route("alpha") == "[ab]*"
    assert CameraMap(cameras).route("front") is None
    # the wire's camera id is only compared: a path in it reaches no folder
    assert CameraMap(cameras).route("../../etc") is None


def test_camera_maps_are_read_from_toml_or_json_relative_to_their_file_and_bad_ones_refused(tmp_path):
    written = write_camera_map(tmp_path / "cameras.toml", CameraMap({"front": tmp_path / "b" / "front",
                                                                      "rear*": tmp_path / "b" / "rear"},
                                                                     tmp_path / "b" / "shared"))
    assert 'default = "b/shared"' in written.read_text()
    toml_map = read_camera_map(written)
    (tmp_path / "cameras.json").write_text(json.dumps(toml_map.to_dict()))
    for camera_map in (toml_map, read_camera_map(tmp_path / "cameras.json")):
        assert camera_map.folders() == {"front": tmp_path / "b/front", "rear*": tmp_path / "b/rear",
                                        DEFAULT_ROUTE: tmp_path / "b/shared"}
    for text, message in (('cameras = {front = "x"}\nextra = 1', "unknown keys"),
                          ('schema_version = "2.0"\ndefault = "x"', "is not 1.x"),
                          ("[cameras]\nfront = 3", "non-empty strings"),
                          ("[cameras]", "nothing to score"),
                          ("default = ", "not valid TOML")):
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(CameraMapError, match=message):
            read_camera_map(tmp_path / "bad.toml")


@pytest.fixture
def two_bundles(fault_export, make_fault_bundle, tmp_path):
    """A camera map: cam_a -> bundle A (accepts every finite frame), cam_b* -> bundle B (defers them), no default."""
    make_fault_bundle(tmp_path / "bundles" / "a", threshold=-10.0)
    make_fault_bundle(tmp_path / "bundles" / "b", threshold=10.0, seed=1)
    return write_camera_map(tmp_path / "cameras.toml", CameraMap({"cam_a": tmp_path / "bundles" / "a",
                                                                  "cam_b*": tmp_path / "bundles" / "b"}))


def raw_frame(camera: str, seq: int) -> ReceivedFrame:
    image = fault_image()
    return ReceivedFrame(FrameHeader(camera, seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"),
                         image.tobytes(), time.time_ns())


def test_one_encoder_session_serves_every_bundle_and_a_mixed_batch_gets_each_cameras_decision(fault_export,
                                                                                              two_bundles):
    from trustvlm.runtime.scoring.routing import RoutedLoader  # noqa: PLC0415
    from trustvlm.runtime.scoring.scorer import ScorerConfig  # noqa: PLC0415

    routed, refused = RoutedLoader(fault_export, two_bundles, ScorerConfig(threads=1)).load_all()
    assert not refused
    a, b = routed.scorers["cam_a"], routed.scorers["cam_b*"]
    assert a is not b and a.towers["embedding"].engine is b.towers["embedding"].engine
    frames = [raw_frame(camera, 0) for camera in ("cam_b1", "cam_a", "elsewhere", "cam_b2", "cam_a")]
    decisions = routed.decide(frames)
    assert [d.camera_id for d in decisions] == [f.header.camera_id for f in frames]
    assert [d.reason for d in decisions] == [Reason.BELOW_THRESHOLD, Reason.MEETS_THRESHOLD, Reason.NO_BUNDLE,
                                             Reason.BELOW_THRESHOLD, Reason.MEETS_THRESHOLD]
    assert [d.bundle_id for d in decisions] == [b.bundle_id, a.bundle_id, "", b.bundle_id, a.bundle_id]
    # the same frames scored bundle by bundle give the same scores: one encoder pass, each its own head
    alone = a.decide([frames[1]])[0]
    assert decisions[1].kappa == pytest.approx(alone.kappa, rel=1e-5) and decisions[1].label == alone.label


def _decide_both_ways(fault_export, camera_map, frames):
    from trustvlm.runtime.scoring.routing import RoutedLoader  # noqa: PLC0415
    from trustvlm.runtime.scoring.scorer import ScorerConfig  # noqa: PLC0415

    stacked, _ = RoutedLoader(fault_export, camera_map, ScorerConfig(threads=1)).load_all()
    alone, _ = RoutedLoader(fault_export, camera_map, ScorerConfig(threads=1, stack_heads=False)).load_all()
    assert stacked.stacked is not None and alone.stacked is None, stacked.stacked_why_not
    together, separately = stacked.decide(frames), alone.decide(frames)
    # every frame gets what its own bundle's head and gate give it alone
    assert [d.reason for d in together] == [d.reason for d in separately]
    assert [d.bundle_id for d in together] == [stacked.scorer_for(f.header.camera_id).bundle_id for f in frames]
    for mine, reference in zip(together, separately):
        assert mine.kappa == pytest.approx(reference.kappa, rel=1e-5) and mine.label == reference.label
        assert mine.msp == pytest.approx(reference.msp, rel=1e-5)
        assert [(k.class_id, k.prob) for k in mine.top_k] == [(k.class_id, pytest.approx(k.prob, rel=1e-5))
                                                              for k in reference.top_k]
    return stacked, separately


def test_stacked_heads_decide_a_mixed_batch_as_each_bundle_alone(fault_export, make_fault_bundle, tmp_path,
                                                                 monkeypatch):
    from trustvlm.calibration.bundle import write_bundle  # noqa: PLC0415
    from trustvlm.runtime.scoring import stacked_heads  # noqa: PLC0415
    from trustvlm.runtime.scoring.routing import RoutedLoader, _verified  # noqa: PLC0415
    from trustvlm.runtime.scoring.scorer import ScorerConfig  # noqa: PLC0415

    from .conftest import FAULT_CLASSES, make_info  # noqa: PLC0415

    # Given three bundles of different prototypes and gates (one accepting, two deferring), mapped to three cameras,
    folders = {f"cam{i}": make_fault_bundle(tmp_path / f"b{i}", threshold=(-10.0, 10.0, 0.0)[i], seed=i)
               for i in range(3)}
    camera_map = write_camera_map(tmp_path / "cameras.toml", CameraMap(folders))
    # and a batch mixing the cameras (images that differ, so that rows cannot be confused)
    frames = [ReceivedFrame(FrameHeader(f"cam{i % 3}", i, time.time_ns(), Encoding.RAW, (32, 32, 3), "uint8"),
                            fault_image(first_pixel=10 * i, fill=40 + 20 * i).tobytes(), time.time_ns())
              for i in range(7)]
    # Then bundles of one structure share one vectorized head and gate (each row its own bundle's constants)
    stacked, separately = _decide_both_ways(fault_export, camera_map, frames)
    assert stacked.stacked.vectorized, stacked.stacked.why_not_vectorized
    assert len({d.kappa for d in separately}) > 3 and {d.reason for d in separately} >= {
        Reason.MEETS_THRESHOLD, Reason.BELOW_THRESHOLD}
    # And a bundle of another structure (no gate) is stacked side by side, with the same decisions as alone
    rng = np.random.default_rng(5)
    write_bundle(tmp_path / "plain", rng.normal(size=(3, 8)), rng.normal(size=(3, 8)),
                 make_info(read_manifest(fault_export), FAULT_CLASSES, -10.0))
    mixed = write_camera_map(tmp_path / "mixed.toml", CameraMap({**folders, "cam2": tmp_path / "plain"}))
    side_by_side, _ = _decide_both_ways(fault_export, mixed, frames)
    assert not side_by_side.stacked.vectorized
    assert side_by_side.stacked.why_not_vectorized == "some bundles have a gate, others not"
    # And without the onnx package (where the stacked graph is built), the bundles' own sessions score instead
    no_onnx = ("import runpy, sys; sys.modules['onnx'] = None; "
               "runpy.run_module('trustvlm.runtime.scoring.stack_graph', run_name='__main__')")
    monkeypatch.setattr(stacked_heads, "stacker_command", lambda: [__import__("sys").executable, "-c", no_onnx])
    fallback, _ = RoutedLoader(fault_export, camera_map, ScorerConfig(threads=1)).load_all()
    assert fallback.stacked is None and "onnx package" in fallback.stacked_why_not
    assert [d.kappa for d in fallback.decide(frames)] == pytest.approx([d.kappa for d in separately], rel=1e-5)
    monkeypatch.undo()
    # and a bundle file replaced since its scorer verified it is not stacked either
    (tmp_path / "b1" / "trust_head.onnx").write_bytes(b"not the verified head")
    scorers = list(stacked.scorers.values())
    refused, why = stacked_heads.stack_heads([_verified(s, s.bundle.trust_head_path) for s in scorers],
                                             [_verified(s, s.bundle.ood_gate_path) for s in scorers],
                                             ("cpu",), False, 8, True)
    assert refused is None and why == "a bundle file changed since it was verified"


def test_each_camera_is_decided_by_its_own_bundle_through_the_service(serve, subscribe, push, fault_export,
                                                                      two_bundles):
    service = serve("--artifacts", str(fault_export), "--bundles", str(two_bundles), "--metrics", "127.0.0.1:0")
    assert "cameras=cam_a" in service.line and "cameras=cam_b*" in service.line, service.line
    subscriber, sender, image = subscribe(service.publish), push(service.ingest), fault_image()
    for seq, camera in enumerate(("cam_a", "cam_b7", "front")):
        send_frame(sender, FrameHeader(camera, seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"),
                   image.tobytes())
    assert subscriber.wait_for(lambda s: len(s.decisions) == 3, 20)
    by_camera = {d.camera_id: d for d in subscriber.decisions}
    assert by_camera["cam_a"].decision is Decision.ACCEPT and by_camera["cam_a"].threshold == -10.0
    assert by_camera["cam_b7"].reason is Reason.BELOW_THRESHOLD and by_camera["cam_b7"].threshold == 10.0
    assert by_camera["cam_a"].bundle_id != by_camera["cam_b7"].bundle_id
    assert by_camera["front"].reason is Reason.NO_BUNDLE and by_camera["front"].bundle_id == ""
    assert subscriber.wait_for(lambda s: s.health[-1].counters.get("reason_no_bundle") == 1, 20)
    # the heartbeat lists each bundle with the cameras it scores; /metrics counts each camera's decisions
    bundles = {tuple(b["cameras"]): b for b in subscriber.health[-1].bundles}
    assert bundles[("cam_a",)]["threshold"] == -10.0 and bundles[("cam_b*",)]["bundle_id"] == by_camera["cam_b7"].bundle_id
    text = urllib.request.urlopen(f"{service.metrics}/metrics", timeout=5).read().decode()
    for camera, decision, reason in (("cam_a", "accept", "meets_threshold"), ("cam_b7", "defer", "below_threshold"),
                                     ("front", "defer", "no_bundle")):
        assert (f'trustvlm_camera_decisions_total{{camera="{camera}",decision="{decision}",reason="{reason}"}} 1.0'
                in text), camera
        assert f'trustvlm_camera_latency_from_capture_seconds_count{{camera="{camera}"}} 1.0' in text, camera
        stamp = float(re.search(rf'trustvlm_camera_last_decision_timestamp_seconds{{camera="{camera}"}} (\S+)',
                                text).group(1))
        assert stamp == by_camera[camera].publish_ts_ns / 1e9
    # the bundle in use per camera: each scored camera its own; a camera no bundle scored has none
    for camera in ("cam_a", "cam_b7"):
        assert (f'trustvlm_camera_bundle_info{{bundle_id="{by_camera[camera].bundle_id}",camera="{camera}"}} 1.0'
                in text), camera
    assert 'camera_bundle_info{bundle_id="",camera="front"}' not in text and text.count("camera_bundle_info{") == 2
    assert service.stop() == 0


def another_encoder(fault_export, folder):
    """A copy of the fault export whose image encoder has other weights (same model name and weights id)."""
    shutil.copytree(fault_export, folder)
    _fault_encoder(folder / "image_encoder.onnx", 8, seed=5)
    manifest = read_manifest(folder)
    manifest["precisions"]["fp32"]["files"]["image_encoder"]["sha256"] = sha256_file(folder / "image_encoder.onnx")
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return folder


def test_a_bundle_calibrated_on_other_encoder_files_refuses_start_in_one_line(serve, fault_export, make_fault_bundle,
                                                                              two_bundles, tmp_path):
    other = another_encoder(fault_export, tmp_path / "other")
    from trustvlm.calibration.bundle import write_bundle  # noqa: PLC0415

    from .conftest import FAULT_CLASSES, make_info  # noqa: PLC0415

    rng = np.random.default_rng(0)
    write_bundle(tmp_path / "bundles" / "b", rng.normal(size=(3, 8)), rng.normal(size=(3, 8)),
                 make_info(read_manifest(other), FAULT_CLASSES, 0.0))
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    done = subprocess.run([sys.executable, "-m", "trustvlm.runtime.cli", "serve", "--artifacts", str(fault_export),
                           "--bundles", str(two_bundles), "--ingest", "tcp://127.0.0.1:*", "--publish",
                           "tcp://127.0.0.1:*"], capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    ours = sha256_file(fault_export / "image_encoder.onnx")[:12]
    theirs = sha256_file(other / "image_encoder.onnx")[:12]
    assert "camera 'cam_b*'" in lines[0] and ours in lines[0] and theirs in lines[0], lines[0]


def test_reloading_one_cameras_bundle_leaves_the_other_camera_streaming(serve, subscribe, push, fault_export,
                                                                        make_fault_bundle, two_bundles, tmp_path):
    service = serve("--artifacts", str(fault_export), "--bundles", str(two_bundles), "--no-watch")
    subscriber, sender, image = subscribe(service.publish), push(service.ingest), fault_image()
    seqs = {"cam_a": 0, "cam_b1": 0}

    def decide(camera: str):
        """Send one frame of `camera`, wait for its decision (closed loop: nothing is ever superseded)."""
        send_frame(sender, FrameHeader(camera, seqs[camera], time.time_ns(), Encoding.RAW, image.shape, "uint8"),
                   image.tobytes())
        seqs[camera] += 1
        count = sum(seqs.values())
        assert subscriber.wait_for(lambda s: len(s.decisions) == count, 20), f"no decision for {camera}"
        return subscriber.decisions[-1]

    first_a, first_b = decide("cam_a"), decide("cam_b1")
    make_fault_bundle(tmp_path / "bundles" / "b", threshold=-10.0, seed=2)  # B now accepts
    service.process.send_signal(signal.SIGHUP)
    # cam_a streams while B is reloaded; cam_b1 is asked in between until its new bundle answers
    deadline = time.monotonic() + 60  # a failure guard: the loop ends on the event
    while decide("cam_b1").bundle_id == first_b.bundle_id:
        assert decide("cam_a").bundle_id == first_a.bundle_id
        assert time.monotonic() < deadline, "the changed bundle of cam_b* was never loaded"
    assert subscriber.decisions[-1].reason is Reason.MEETS_THRESHOLD
    # a damaged bundle for B is refused and B keeps its last good bundle; cam_a is untouched
    reloaded_b = subscriber.decisions[-1].bundle_id
    (tmp_path / "bundles" / "b" / "trust_head.onnx").write_bytes(b"not a graph")
    service.process.send_signal(signal.SIGHUP)
    assert subscriber.wait_for(lambda s: s.health[-1].counters.get("reloads_refused", 0) >= 1, 20)
    assert decide("cam_b1").bundle_id == reloaded_b and decide("cam_a").bundle_id == first_a.bundle_id
    assert service.stop() == 0
    a_decisions = [d for d in subscriber.decisions if d.camera_id == "cam_a"]
    assert [d.seq for d in a_decisions] == list(range(seqs["cam_a"]))
    assert all(d.reason is Reason.MEETS_THRESHOLD for d in a_decisions)
    refused = [line for line in service.stderr().splitlines() if "bundle reload refused" in line]
    assert len(refused) == 1 and "camera 'cam_b*'" in refused[0], refused
