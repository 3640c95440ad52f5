"""Camera map payloads (cluster mode with ``--bundles``): plain, content-addressed bytes that rebuild the routing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import msgpack
import numpy as np
import pytest

from trustvlm.cluster.map_payload import (MAP_KEY_PREFIX, build_routed_scorer, collect_map_payload, read_index,
                                          write_part)
from trustvlm.cluster.payload import PayloadError
from trustvlm.contract.camera_map import CameraMap
from trustvlm.contract.encoders import engine_sha256
from trustvlm.contract.files import sha256_file, write_json_atomic
from trustvlm.contract.manifest import MANIFEST_NAME, read_manifest
from trustvlm.runtime.messages import Reason
from trustvlm.runtime.scoring.routing import RoutedLoader, RouteError
from trustvlm.runtime.scoring.scorer import ScorerConfig

from .conftest import FAULT_CLASSES, _fault_encoder, make_info
from .test_camera_routing import another_encoder, raw_frame


@pytest.fixture
def bundles(make_fault_bundle, tmp_path):
    """Bundle A (accepts every finite frame) and bundle B (defers them)."""
    return (make_fault_bundle(tmp_path / "bundles" / "a", threshold=-10.0),
            make_fault_bundle(tmp_path / "bundles" / "b", threshold=10.0, seed=1))


def on_a_replica(payload, root, loaded=None, previous=None):
    """What a replica does with a payload: check the index, write each part under its content id, build the routing."""
    index = read_index(payload.index, payload.key)
    folders = {part_id: write_part(index, part_id, payload.parts[part_id], root / part_id) for part_id in index["order"]}
    return build_routed_scorer(index, folders, ScorerConfig(threads=1), loaded or {}, previous)


def test_a_map_payload_round_trips_to_the_same_routing_as_the_single_machine_service(fault_export, bundles, tmp_path):
    a, b = bundles
    camera_map = CameraMap({"cam_a": a, "cam_b*": b, "cam_c": a})
    payload, verified = collect_map_payload(fault_export, camera_map)
    # Only bytes cross the cluster: the index and every part are msgpack of maps, strings and bytes
    assert payload.key.startswith(MAP_KEY_PREFIX) and isinstance(payload.index, bytes)
    assert all(isinstance(part, bytes) for part in payload.parts.values())
    assert len(payload.parts) == 3  # the export once, and each bundle folder once (cam_a and cam_c share A)
    assert set(verified) == {"cam_a", "cam_b*", "cam_c"}
    # ... and no path of the gateway: the routes name content ids
    assert str(tmp_path).encode() not in payload.index and str(fault_export).encode() not in payload.index
    routed, _ = on_a_replica(payload, tmp_path / "replica")
    # The image encoder opened once for every bundle; routes of one folder share one scorer
    assert routed.scorers["cam_a"] is routed.scorers["cam_c"] is not routed.scorers["cam_b*"]
    assert routed.scorers["cam_a"].towers["embedding"].engine is routed.scorers["cam_b*"].towers["embedding"].engine
    # Each camera decided by its own bundle, as the single-machine loader decides it; an unmapped camera: no_bundle
    frames = [raw_frame(camera, 0) for camera in ("cam_b1", "cam_a", "elsewhere", "cam_c")]
    single_map = tmp_path / "cameras.json"
    single_map.write_text(json.dumps(camera_map.to_dict()))
    single, _ = RoutedLoader(fault_export, single_map, ScorerConfig(threads=1)).load_all()
    here, there = routed.decide(frames), single.decide(frames)
    assert [(d.reason, d.bundle_id, d.threshold) for d in here] == [(d.reason, d.bundle_id, d.threshold) for d in there]
    assert [d.reason for d in here] == [Reason.BELOW_THRESHOLD, Reason.MEETS_THRESHOLD, Reason.NO_BUNDLE,
                                        Reason.MEETS_THRESHOLD]
    np.testing.assert_allclose([d.kappa for d in here if d.kappa is not None],
                               [d.kappa for d in there if d.kappa is not None], rtol=1e-6)


def test_a_changed_bundle_is_the_only_new_part_and_the_only_scorer_loaded_again(fault_export, bundles,
                                                                                 make_fault_bundle, tmp_path):
    a, b = bundles
    first, _ = collect_map_payload(fault_export, CameraMap({"cam_a": a, "cam_b*": b}))
    routed, scorers = on_a_replica(first, tmp_path / "replica")
    make_fault_bundle(b, threshold=-10.0, seed=2)  # B now accepts
    second, _ = collect_map_payload(fault_export, CameraMap({"cam_a": a, "cam_b*": b}))
    assert second.key != first.key
    # Only the changed bundle is a new part: the export and bundle A are the same content ids (not sent again)
    assert len(set(second.parts) - set(first.parts)) == 1 and len(set(second.parts) & set(first.parts)) == 2
    reloaded, _ = on_a_replica(second, tmp_path / "replica", loaded=scorers, previous=routed.primary)
    assert reloaded.scorers["cam_a"] is routed.scorers["cam_a"]
    assert reloaded.scorers["cam_b*"] is not routed.scorers["cam_b*"]
    assert reloaded.scorers["cam_b*"].towers["embedding"].engine is routed.scorers["cam_a"].towers["embedding"].engine
    assert reloaded.decide([raw_frame("cam_b1", 0)])[0].reason is Reason.MEETS_THRESHOLD


def test_no_camera_id_of_a_map_can_reach_a_path_outside_the_replicas_folder(fault_export, bundles, tmp_path):
    a, b = bundles
    hostile = {"../../escape": a, "/etc/passwd": b, "..": a, "*/../../x*": b}
    payload, _ = collect_map_payload(fault_export, CameraMap(hostile))
    root = tmp_path / "replica"
    routed, _ = on_a_replica(payload, root)
    # Every file written is <root>/<64 hex digits>/<one plain name>; no camera id is part of any path
    written = [path.relative_to(root) for path in root.rglob("*") if path.is_file()]
    assert written and all(len(path.parts) == 2 and len(path.parts[0]) == 64 for path in written), written
    assert not (tmp_path / "escape").exists() and not any(tmp_path.parent.glob("x*"))
    # The ids still route as map keys (compared, never joined to a path)
    assert routed.scorer_for("../../escape") is routed.scorers["../../escape"]
    assert routed.scorer_for("../x") is None
    # An index naming a folder that is not a content id, or a file name with a path, is refused whatever its key
    index = msgpack.unpackb(payload.index, raw=False)
    bundle_id = next(iter(index["bundle_ids"]))
    bad_route = {**index, "routes": {"cam": "../../escape"}}
    table = index["parts"][bundle_id]
    bad_name = {**index, "parts": {**index["parts"], bundle_id: {**table, "sha256": {"../x": "0" * 64}}}}
    for bad, message in ((bad_route, "does not name a bundle part"), (bad_name, "not one plain file name")):
        data = msgpack.packb(bad, use_bin_type=True)
        key = MAP_KEY_PREFIX + hashlib.sha256(data).hexdigest()[:16]
        with pytest.raises(PayloadError, match=message):
            read_index(data, key)
    with pytest.raises(PayloadError, match="does not hash to its key"):
        read_index(payload.index, MAP_KEY_PREFIX + "0" * 16)


def test_a_part_whose_bytes_changed_on_the_way_is_refused_and_nothing_is_written(fault_export, bundles, tmp_path):
    a, _ = bundles
    payload, _ = collect_map_payload(fault_export, CameraMap({"cam_a": a}))
    index = read_index(payload.index, payload.key)
    artifacts = index["artifacts"]
    part = msgpack.unpackb(payload.parts[artifacts], raw=False)
    damaged = bytearray(part["files"]["image_encoder.onnx"])
    damaged[len(damaged) // 2] ^= 0xFF
    part["files"]["image_encoder.onnx"] = bytes(damaged)
    with pytest.raises(PayloadError, match=r"image_encoder.onnx has sha256 .* refusing it"):
        write_part(index, artifacts, msgpack.packb(part, use_bin_type=True), tmp_path / "replica" / artifacts)
    assert not any((tmp_path / "replica").iterdir())


def test_a_bundle_calibrated_on_other_encoder_files_is_refused_in_one_line_naming_the_camera(
        fault_export, bundles, tmp_path):
    a, b = bundles
    other = another_encoder(fault_export, tmp_path / "other")
    from trustvlm.calibration.bundle import write_bundle  # noqa: PLC0415

    rng = np.random.default_rng(0)
    write_bundle(b, rng.normal(size=(3, 8)), rng.normal(size=(3, 8)), make_info(read_manifest(other), FAULT_CLASSES, 0.0))
    with pytest.raises(RouteError) as refused:
        collect_map_payload(fault_export, CameraMap({"cam_a": a, "cam_b*": b}))
    line = str(refused.value)
    assert "\n" not in line and "camera 'cam_b*'" in line, line
    assert sha256_file(fault_export / "image_encoder.onnx")[:12] in line
    assert sha256_file(other / "image_encoder.onnx")[:12] in line


def test_bundles_of_two_encoders_of_one_export_are_refused_in_one_line_naming_the_camera_and_both_hashes(
        fault_export, bundles, tmp_path):
    # Given an export with a second precision whose image encoder has other weights, and a bundle calibrated on it
    export = another_encoder(fault_export, tmp_path / "two")
    _fault_encoder(export / "image_encoder.onnx", 8, seed=0)  # back to the fault export's fp32 encoder
    _fault_encoder(export / "image_encoder.fp16.onnx", 8, seed=5)
    manifest = read_manifest(export)
    manifest["precisions"]["fp32"]["files"]["image_encoder"]["sha256"] = sha256_file(export / "image_encoder.onnx")
    fp16 = {"image_encoder": {"file": "image_encoder.fp16.onnx", "sha256": sha256_file(export / "image_encoder.fp16.onnx")},
            "text_encoder": manifest["precisions"]["fp32"]["files"]["text_encoder"]}
    manifest["precisions"]["fp16"] = {"files": fp16}
    write_json_atomic(export / MANIFEST_NAME, manifest)
    from trustvlm.calibration.bundle import write_bundle  # noqa: PLC0415

    rng = np.random.default_rng(0)
    info = dataclasses.replace(make_info(manifest, FAULT_CLASSES, 0.0), precision="fp16",
                               engine_sha256=engine_sha256(manifest, "fp16"))
    write_bundle(tmp_path / "half", rng.normal(size=(3, 8)), rng.normal(size=(3, 8)), info)
    a, _ = bundles
    with pytest.raises(RouteError) as refused:
        collect_map_payload(export, CameraMap({"cam_a": a, "gripper": tmp_path / "half"}))
    line = str(refused.value)
    assert "\n" not in line and "camera 'gripper'" in line, line
    assert sha256_file(export / "image_encoder.fp16.onnx")[:12] in line
    assert sha256_file(export / "image_encoder.onnx")[:12] in line
    assert os.path.basename(str(export / "image_encoder.fp16.onnx")) in line


def test_the_gateway_stamps_what_it_decides_itself_with_each_cameras_bundle(fault_export, bundles):
    pytest.importorskip("ray")
    from trustvlm.cluster.gateway import ClusterBackend, ClusterConfig, ClusterScorer  # noqa: PLC0415
    from trustvlm.cluster.routed import ClusterRoutedScorer  # noqa: PLC0415

    class Lost:
        """A request no replica answers in time."""

        def result(self, timeout_s):
            raise TimeoutError("no answer")

        def cancel(self):
            pass

    class Handle:
        class score:  # noqa: N801 - Ray Serve's handle.score.remote(...)
            @staticmethod
            def remote(request):
                return Lost()

    a, b = bundles
    camera_map = CameraMap({"cam_a": a, "cam_b*": b})
    payload, verified = collect_map_payload(fault_export, camera_map)
    backend = ClusterBackend(ClusterConfig("127.0.0.1:1"), staleness_ms=0)
    backend.handle = Handle()
    manifest = read_manifest(fault_export)
    stamps = {route: ClusterScorer(backend, bundle, manifest, []) for route, bundle in verified.items()}
    scorer = ClusterRoutedScorer(backend, camera_map, stamps, payload.key, [])
    # Frames lost on the cluster: deferred engine_error, each with its camera's bundle; no entry: no_bundle, here
    decisions = scorer.decide([raw_frame(camera, 0) for camera in ("cam_b1", "cam_a", "stranger")])
    assert [(d.reason, d.bundle_id, d.threshold) for d in decisions] == [
        (Reason.ENGINE_ERROR, stamps["cam_b*"].bundle_id, 10.0), (Reason.ENGINE_ERROR, stamps["cam_a"].bundle_id, -10.0),
        (Reason.NO_BUNDLE, "", float("inf"))]
    assert decisions[0].detail.startswith("not scored on the cluster: TimeoutError")
    # A run of superseded frames decided before scoring: the camera's bundle, and the whole run
    from trustvlm.runtime.frames import Notice  # noqa: PLC0415

    run = scorer.defer(Notice("cam_b7", 5, 0, 0, Reason.DROPPED, seq_last=7, frames=3))
    assert (run.bundle_id, run.threshold, run.seq_last, run.frames) == (stamps["cam_b*"].bundle_id, 10.0, 7, 3)
    # The heartbeat lists each bundle with its cameras
    assert {tuple(entry["cameras"]): (entry["bundle_id"], entry["threshold"]) for entry in scorer.bundles()} == {
        ("cam_a",): (stamps["cam_a"].bundle_id, -10.0), ("cam_b*",): (stamps["cam_b*"].bundle_id, 10.0)}
