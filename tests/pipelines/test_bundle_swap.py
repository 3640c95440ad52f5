"""`trustvlm bundles swap|rollback|list` on real bundles of the tiny fault model, and through a running service.

The bundles are the runtime tests' (tests/runtime/conftest.py): ``make_fault_bundle`` writes real bundles for the
synthetic ``fault_export`` (threshold -10 accepts every finite frame, +10 none), which verify, open and self-check
in milliseconds. The service test synchronizes on the decisions' bundle ids, never on sleeps.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from trustvlm.cli import main
from trustvlm.contract.camera_map import read_camera_map
from trustvlm.contract.files import write_json_atomic
from trustvlm.contract.manifest import MANIFEST_NAME, read_manifest
from trustvlm.contract.monitor_reference import MonitorReference
from trustvlm.pipelines.bundle_swap import (SwapError, history_path, list_bundles, read_history, rollback_bundle,
                                            swap_bundle)
from trustvlm.runtime.frames import Encoding, FrameHeader, send_frame

from ..runtime.conftest import (FAULT_CLASSES, fault_export, fault_image, make_fault_bundle, make_info,  # noqa: F401
                                push, serve, subscribe)
from .conftest import trustvlm

#: A map in the layout the swap writes, with a relative folder outside the map's folder (kept as written).
MAP_TEXT = """schema_version = "1.0"
default = "../shared/fallback"

[cameras]
"cam1" = "bundles/a"
"cam*" = "bundles/pattern"
"""


@pytest.fixture
def site(tmp_path, make_fault_bundle):
    """site/cameras.toml (MAP_TEXT) and its bundles: a, pattern, ../shared/fallback, and new ones b and c."""
    for name, seed in (("a", 0), ("pattern", 1), ("b", 2), ("c", 3)):
        make_fault_bundle(tmp_path / "site" / "bundles" / name, seed=seed)
    make_fault_bundle(tmp_path / "shared" / "fallback", seed=4)
    (tmp_path / "site" / "cameras.toml").write_text(MAP_TEXT)
    return tmp_path / "site"


def bundles_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`trustvlm bundles ARGS` in this process: exit status, stdout, stderr."""
    status = main(["bundles", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def test_swap_gives_one_camera_its_own_entry_and_rollback_puts_back_what_routed_it(site, fault_export, capsys):
    cameras = site / "cameras.toml"
    before = {camera: read_camera_map(cameras).route(camera) for camera in ("cam1", "cam2", "front")}
    # cam1 had its own entry: it now points to b; every other entry is kept as written
    status, out, err = bundles_cli(capsys, "swap", "--map", cameras, "--camera", "cam1", "--bundle",
                                   site / "bundles" / "b", "--artifacts", fault_export)
    assert status == 0 and err == "" and len(out.splitlines()) == 1, (out, err)
    (record,) = read_history(cameras)["cam1"]
    assert record["previous"] == "bundles/a" and record["previous_route"] == "cam1" and record["bundle"] == "bundles/b"
    assert record["previous_bundle_id"] != record["bundle_id"] and record["created_map"] is False
    assert (f"cam1: now bundles/b (bundle {record['bundle_id']}), was bundles/a by its own entry (bundle "
            f"{record['previous_bundle_id']})") in out
    assert "picks it up on its own (map watch) or on SIGHUP" in out and "guarantee monitor starts afresh" in out
    assert cameras.read_text() == MAP_TEXT.replace('"cam1" = "bundles/a"', '"cam1" = "bundles/b"')
    # cam2 was routed by the pattern: it gets an exact entry of its own, the pattern still routes the others
    swap_bundle(cameras, "cam2", site / "bundles" / "c", fault_export)
    camera_map = read_camera_map(cameras)
    assert camera_map.route("cam2") == "cam2" and camera_map.route("cam3") == "cam*"
    assert read_history(cameras)["cam2"][0]["previous"] is None
    assert read_history(cameras)["cam2"][0]["previous_route"] == "cam*"
    lines = list_bundles(cameras, fault_export)
    assert [line.split(" -> ")[:2] for line in lines] == [["cam1", "bundles/b"], ["cam*", "bundles/pattern"],
                                                         ["cam2", "bundles/c"], ["default", "../shared/fallback"]]
    assert all(line.endswith(("rollback depth 1", "rollback depth 0")) and " verified;" in line for line in lines)
    assert "threshold -10 alpha 0.1 coverage 50.0% monitor reference no" in lines[0]
    # rollback removes cam2's entry (back to the pattern), then gives cam1 back its own: the map as it was
    status, out, _ = bundles_cli(capsys, "rollback", "--map", cameras, "--camera", "cam2")
    assert status == 0 and "cam2: back to bundles/pattern by pattern 'cam*'" in out and "depth 0 left" in out, out
    status, out, _ = bundles_cli(capsys, "rollback", "--map", cameras, "--camera", "cam1", "--artifacts", fault_export)
    assert status == 0 and "cam1: back to bundles/a by its own entry" in out, out
    assert cameras.read_text() == MAP_TEXT
    assert {camera: read_camera_map(cameras).route(camera) for camera in before} == before
    assert json.loads(history_path(cameras).read_text())["cameras"] == {}
    status, _, err = bundles_cli(capsys, "rollback", "--map", cameras, "--camera", "cam1")
    assert status == 1 and err.count("\n") == 1 and "no swap of cam1 is recorded" in err, err


def test_the_history_is_a_stack_rollback_goes_back_one_swap_at_a_time(site, fault_export, capsys):
    cameras = site / "cameras.toml"
    ids = [swap_bundle(cameras, "cam1", site / "bundles" / name, fault_export).record for name in ("b", "c")]
    assert ids[1]["previous_bundle_id"] == ids[0]["bundle_id"]
    assert list_bundles(cameras)[0].endswith("rollback depth 2")
    assert [r["bundle"] for r in read_history(cameras)["cam1"]] == ["bundles/b", "bundles/c"]
    assert rollback_bundle(cameras, "cam1").other_bundle_id == ids[0]["bundle_id"]
    assert read_camera_map(cameras).cameras["cam1"] == site / "bundles" / "b"
    assert rollback_bundle(cameras, "cam1").other_bundle_id == ids[0]["previous_bundle_id"]
    assert cameras.read_text() == MAP_TEXT
    with pytest.raises(SwapError, match="no swap of cam1"):
        rollback_bundle(cameras, "cam1")
    # an entry edited by hand since the swap is not rolled back over, unless forced
    swap_bundle(cameras, "cam1", site / "bundles" / "b", fault_export)
    cameras.write_text(cameras.read_text().replace('"cam1" = "bundles/b"', '"cam1" = "bundles/c"'))
    status, _, err = bundles_cli(capsys, "rollback", "--map", cameras, "--camera", "cam1")
    assert status == 1 and "edited since?" in err and "--force" in err, err
    assert rollback_bundle(cameras, "cam1", force=True).other_folder == "bundles/a"


def test_a_missing_map_is_created_with_the_one_camera_and_a_json_map_stays_json(tmp_path, fault_export,
                                                                                 make_fault_bundle, capsys):
    bundle = make_fault_bundle(tmp_path / "bundles" / "front")
    status, out, _ = bundles_cli(capsys, "swap", "--map", tmp_path / "new.toml", "--camera", "front", "--bundle",
                                 bundle, "--artifacts", fault_export)
    assert status == 0 and f"created {tmp_path / 'new.toml'} with only front's entry" in out, out
    assert "front: now bundles/front (bundle fault:" in out and "serve it with `trustvlm serve" in out, out
    assert read_camera_map(tmp_path / "new.toml").cameras == {"front": bundle}
    with pytest.raises(SwapError, match="no entry and no default"):  # removing the only entry: refused
        rollback_bundle(tmp_path / "new.toml", "front")
    json_map = tmp_path / "cameras.json"
    json_map.write_text(json.dumps({"default": "bundles/front"}))
    swap_bundle(json_map, "rear", make_fault_bundle(tmp_path / "bundles" / "rear", seed=1), fault_export)
    assert json.loads(json_map.read_text())["cameras"] == {"rear": "bundles/rear"}
    assert read_camera_map(json_map).route("rear") == "rear" and read_camera_map(json_map).route("x") == "default"


def other_export_bundle(fault_export: Path, folder: Path, weights_id: str) -> Path:
    """A bundle written for a copy of the fault export whose weights id is `weights_id` (another model)."""
    from trustvlm.calibration.bundle import write_bundle  # noqa: PLC0415

    export = folder.parent / f"export-{weights_id.replace(':', '-')}"
    shutil.copytree(fault_export, export)
    manifest = read_manifest(export)
    manifest["weights"]["id"] = weights_id
    write_json_atomic(export / MANIFEST_NAME, manifest)
    rng = np.random.default_rng(0)
    write_bundle(folder, rng.normal(size=(3, 8)), rng.normal(size=(3, 8)), make_info(manifest, FAULT_CLASSES, 0.0))
    return folder


def test_every_refusal_is_one_line_and_changes_nothing(site, fault_export, tmp_path, capsys):
    cameras = site / "cameras.toml"
    tampered = site / "bundles" / "c"
    data = bytearray((tampered / "prototypes.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped
    (tampered / "prototypes.npz").write_bytes(bytes(data))
    other = other_export_bundle(fault_export, tmp_path / "other", "sha256:another-model")
    refusals = {
        "refused (nothing changed): ": ["--camera", "cam1", "--bundle", tampered],
        "sha256 differs": ["--camera", "cam1", "--bundle", tampered],
        "weights sha256:another-model": ["--camera", "cam1", "--bundle", other],
        "no bundle.json": ["--camera", "cam1", "--bundle", tmp_path / "nowhere"],
        "camera_id should match": ["--camera", "cam 1", "--bundle", site / "bundles" / "b"],
        "'default' cannot have an entry of its own": ["--camera", "default", "--bundle", site / "bundles" / "b"],
        "already has its own entry": ["--camera", "cam1", "--bundle", site / "bundles" / "a"],
    }
    for expected, args in refusals.items():
        status, out, err = bundles_cli(capsys, "swap", "--map", cameras, "--artifacts", fault_export, *args)
        assert status == 1 and out == "" and err.count("\n") == 1 and expected in err, (expected, err)
        assert cameras.read_text() == MAP_TEXT and not history_path(cameras).exists(), expected
    # a bundle that verifies, but next to a map bundle of another image encoder: the service would refuse it
    other_map = tmp_path / "other.toml"
    other_map.write_text('[cameras]\n"cam*" = "other"\n')
    status, _, err = bundles_cli(capsys, "swap", "--map", other_map, "--camera", "cam1", "--bundle",
                                 site / "bundles" / "b", "--artifacts", fault_export)
    assert status == 1 and "one service runs one model and one image encoder" in err and "'cam*'" in err, err
    # an unreadable map, a map folder that does not exist, listing a map that does not exist
    bad = tmp_path / "bad.toml"
    bad.write_text("[cameras\n")
    for args, expected in ((["swap", "--map", bad, "--camera", "cam1", "--bundle", site / "bundles" / "b",
                             "--artifacts", fault_export], "is not valid TOML"),
                           (["swap", "--map", tmp_path / "no" / "c.toml", "--camera", "cam1", "--bundle",
                             site / "bundles" / "b", "--artifacts", fault_export], "does not exist"),
                           (["list", "--map", tmp_path / "none.toml"], "no camera map at"),
                           (["rollback", "--map", tmp_path / "none.toml", "--camera", "cam1"], "no camera map at")):
        status, out, err = bundles_cli(capsys, *args)
        assert status == 1 and err.count("\n") == 1 and expected in err, (args, err)
    assert bad.read_text() == "[cameras\n" and not (tmp_path / "no").exists()


def test_list_shows_each_bundles_threshold_monitor_reference_and_what_does_not_verify(site, fault_export,
                                                                                      make_fault_bundle, capsys):
    from trustvlm.calibration.bundle import write_bundle  # noqa: PLC0415

    manifest = read_manifest(fault_export)
    rng = np.random.default_rng(0)
    reference = MonitorReference.from_values("test rows", score=rng.normal(size=40))
    write_bundle(site / "bundles" / "pattern", rng.normal(size=(3, 8)), rng.normal(size=(3, 8)),
                 replace(make_info(manifest, FAULT_CLASSES, 0.25, feasible=True), monitor_reference=reference))
    make_fault_bundle(site / "bundles" / "a", feasible=False)
    (site.parent / "shared" / "fallback" / "trust_head.onnx").write_bytes(b"changed")
    status, out, _ = bundles_cli(capsys, "list", "--map", site / "cameras.toml", "--artifacts", fault_export)
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3, out
    assert "no threshold (defers every frame)" in lines[0] and "monitor reference no verified" in lines[0]
    assert "threshold 0.25 alpha 0.1 coverage 50.0% monitor reference yes verified" in lines[1]
    assert lines[2].startswith("default -> ../shared/fallback -> fault:") and "NOT VERIFIED" in lines[2]


def test_a_running_service_moves_only_the_swapped_camera_and_back(serve, subscribe, push, fault_export,
                                                                  make_fault_bundle, tmp_path):
    shared = make_fault_bundle(tmp_path / "bundles" / "shared")
    new = make_fault_bundle(tmp_path / "bundles" / "cam1-new", threshold=10.0, seed=7)
    cameras = tmp_path / "cameras.toml"
    cameras.write_text('schema_version = "1.0"\n\n[cameras]\n"cam*" = "bundles/shared"\n')
    service = serve("--artifacts", str(fault_export), "--bundles", str(cameras))
    subscriber, sender, image = subscribe(service.publish), push(service.ingest), fault_image()
    seq = 0

    def decide_both() -> dict[str, str]:
        """One frame of cam1 and one of cam2, each answered before the next is sent: camera -> bundle id."""
        nonlocal seq
        for camera in ("cam1", "cam2"):
            send_frame(sender, FrameHeader(camera, seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"),
                       image.tobytes())
        seq += 1
        assert subscriber.wait_for(lambda s: len(s.decisions) == 2 * seq, 20), "no decision within 20 s"
        return {d.camera_id: d.bundle_id for d in subscriber.decisions[-2:]}

    def until_cam1_changes(old: str) -> dict[str, str]:
        """Frames (one round per heartbeat, an event) until cam1's decisions carry another bundle than `old`."""
        deadline = time.monotonic() + 60  # a failure guard: the loop ends on the event
        while (ids := decide_both())["cam1"] == old:
            beats = len(subscriber.health)
            assert subscriber.wait_for(lambda s, beats=beats: len(s.health) > beats, 20), "no heartbeat"
            assert time.monotonic() < deadline, "the service never moved cam1 to another bundle"
            assert ids["cam2"] == first["cam2"]
        return ids

    first = decide_both()
    assert first["cam1"] == first["cam2"] and first["cam1"].startswith("fault:")
    swapped = trustvlm("bundles", "swap", "--map", str(cameras), "--camera", "cam1", "--bundle", str(new),
                       "--artifacts", str(fault_export))
    assert swapped.returncode == 0 and len(swapped.stdout.splitlines()) == 1, swapped.stderr
    new_id = read_history(cameras)["cam1"][-1]["bundle_id"]
    after = until_cam1_changes(first["cam1"])
    assert after == {"cam1": new_id, "cam2": first["cam2"]}, after
    assert subscriber.decisions[-2].reason.value == "below_threshold"  # cam1's new bundle: threshold +10
    rolled = trustvlm("bundles", "rollback", "--map", str(cameras), "--camera", "cam1")
    assert rolled.returncode == 0 and "back to bundles/shared by pattern 'cam*'" in rolled.stdout, rolled.stderr
    assert until_cam1_changes(new_id) == first
    assert shared.exists() and service.stop() == 0
