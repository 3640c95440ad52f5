"""Cluster mode on a real two-node Ray cluster (``trustvlm serve --cluster``), on loopback only.

Ray registers a node under the machine's network address, so the cluster runs inside a network
namespace made for it with only ``lo`` up (tests/runtime/cluster_scenario.py, started once for the
module); there every node is 127.0.0.1 and no packet leaves the machine. Where such a namespace
cannot be made (no unshare, not root), or Ray is not installed, the tests skip and say why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

SCENARIO = Path(__file__).with_name("cluster_scenario.py")
NAMESPACE = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
KAPPA_TOLERANCE = 1e-5  # the same ONNX Runtime sessions on the same CPU, batched differently


def _namespace_problem() -> str:
    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install '.[cluster]'; `make setup` does it)"
    try:
        probe = subprocess.run(NAMESPACE + ["bash", "-c", "ip link set lo up"], capture_output=True, text=True,
                               timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot make a network namespace: {error}"
    return "" if probe.returncode == 0 else f"cannot make a network namespace: {probe.stderr.strip()[-300:]}"


@pytest.fixture(scope="module")
def cluster_report(demo_export, demo_bundle, tmp_path_factory) -> dict:
    """One run of the scenarios (a head and a worker node, the single-machine service and the gateway)."""
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    folder = tmp_path_factory.mktemp("cluster")
    report = folder / "report.json"
    ray_temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are limited to 107 bytes
    driver = (f"ip link set lo up && exec {sys.executable} {SCENARIO} --artifacts {demo_export} "
              f"--bundle {demo_bundle} --report {report} --ray-temp {ray_temp}")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    try:
        result = subprocess.run(NAMESPACE + ["bash", "-c", driver], capture_output=True, text=True, timeout=840,
                                env=env, cwd=folder)
    finally:  # every process of the namespace has ended with it
        shutil.rmtree(ray_temp, ignore_errors=True)
    if result.returncode != 0 or not report.exists():
        logs = "".join(f"\n--- {path.name}\n{path.read_text()[-3000:]}" for path in sorted(folder.glob("logs/*")))
        pytest.fail(f"the cluster scenario failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}{logs}")
    return json.loads(report.read_text())


def _key(decision: dict) -> tuple[str, int]:
    return decision["camera_id"], decision["seq"]


def test_the_cluster_has_two_loopback_nodes_with_one_replica_slot_each(cluster_report):
    nodes = cluster_report["nodes"]
    assert [(n["address"], n["alive"], n["replica_slots"]) for n in nodes] == [("127.0.0.1", True, 1.0)] * 2, nodes


def test_two_replicas_on_two_nodes_decide_every_frame_as_the_single_machine_service(cluster_report):
    # Given the same 4 cameras' frames sent to the single-machine service and to 2 replicas, one per node
    single, cluster = cluster_report["single"], cluster_report["cluster"]
    # Then every frame has exactly one decision from each
    assert len(single) == len(set(map(_key, single))) == 40
    assert sorted(map(_key, cluster)) == sorted(map(_key, single))
    # ... in each camera's order
    for camera in {d["camera_id"] for d in cluster}:
        seqs = [d["seq"] for d in cluster if d["camera_id"] == camera]
        assert seqs == sorted(seqs), f"{camera}: decisions out of order {seqs}"
    # ... and the decisions are the single machine's (some accepted, some not: the test can tell them apart)
    by_key = {_key(d): d for d in single}
    for decision in cluster:
        expected = by_key[_key(decision)]
        fields = ("decision", "reason", "class_id", "label", "bundle_id", "model_id", "threshold")
        assert {f: decision[f] for f in fields} == {f: expected[f] for f in fields}, _key(decision)
        assert abs(decision["kappa"] - expected["kappa"]) <= KAPPA_TOLERANCE, _key(decision)
    outcomes = Counter(d["decision"] for d in single)
    assert outcomes["accept"] and outcomes["defer"], outcomes


def test_a_node_lost_mid_stream_never_turns_a_frame_into_an_accept_and_every_frame_is_answered(cluster_report):
    run = cluster_report["node_loss"]
    sent = [tuple(item) for item in run["sent"]]
    decided = [_key(d) for d in run["decisions"]]
    # Every frame sent while the worker node died and came back has exactly one outcome
    assert len(decided) == len(set(decided)), Counter(decided).most_common(3)
    assert sorted(decided) == sorted(sent)
    for camera in {c for c, _ in sent}:
        seqs = [s for c, s in decided if c == camera]
        assert seqs == sorted(seqs), f"{camera}: out of order"
    # An accept is only ever a frame that was scored, with the single-machine scorer's score and class
    expected = cluster_report["expected"]
    accepts = [d for d in run["decisions"] if d["decision"] == "accept"]
    assert accepts, "no frame was accepted: the run cannot tell a scored frame from a deferred one"
    for decision in accepts:
        local = expected[f"{decision['camera_id']}/{decision['seq']}"]
        assert local["decision"] == "accept" and local["class_id"] == decision["class_id"], decision
        assert abs(local["kappa"] - decision["kappa"]) <= KAPPA_TOLERANCE, decision
    # Frames that were not scored are deferred with a reason (engine_error, or dropped when superseded)
    for decision in run["decisions"]:
        if decision["kappa"] is None:
            assert decision["decision"] == "defer" and decision["reason"] in ("engine_error", "dropped"), decision
    # And the service's own accounting agrees: every frame received has one outcome
    counters = cluster_report["final_counters"]
    reload = cluster_report["reload"]
    before = len(cluster_report["cluster"]) + len(reload["after_refusal"]) + len(reload["after_swap"])
    assert counters["decisions"] == counters["received"] == before + len(sent)
    assert cluster_report["status"] == 0


def test_the_heartbeat_is_degraded_while_the_node_is_missing_and_ok_once_ray_restored_it(cluster_report):
    statuses = [h["status"] for h in cluster_report["health"]]
    first_degraded = statuses.index("degraded")
    assert "ok" in statuses[:first_degraded], "the heartbeat was not ok before the node was lost"
    assert "ok" in statuses[first_degraded:], "the heartbeat did not return to ok once the node came back"
    details = [h["detail"] for h in cluster_report["health"] if h["status"] == "degraded"]
    assert any("1 of 2 scoring replicas running" in detail for detail in details), details[:3]
    assert statuses[-1] == "stopped"


def test_a_bundle_a_replica_cannot_open_is_refused_everywhere_and_a_good_one_is_swapped_in_everywhere(cluster_report):
    reload = cluster_report["reload"]
    # Given a bundle whose sha256 records hold but whose trust head no replica can open: refused, and said so
    refused = [line for line in reload["log"] if "bundle reload refused" in line]
    assert len(refused) == 1 and "refused bundle" in refused[0] and reload["old_bundle_id"] in refused[0], reload["log"]
    # ... and the old bundle keeps scoring
    assert {d["bundle_id"] for d in reload["after_refusal"]} == {reload["old_bundle_id"]}
    assert all(d["kappa"] is not None for d in reload["after_refusal"])
    # Given a good bundle with another threshold: every later frame, whichever replica scored it, uses it
    assert reload["new_bundle_id"] != reload["old_bundle_id"]
    assert len(reload["after_swap"]) == 16
    assert {(d["bundle_id"], d["threshold"]) for d in reload["after_swap"]} == \
        {(reload["new_bundle_id"], reload["new_threshold"])}
    assert all(d["kappa"] is not None for d in reload["after_swap"])
    assert (reload["counters"]["reloads_refused"], reload["counters"]["reloads_ok"]) == (1, 1)


def test_frames_the_cluster_does_not_answer_in_time_are_sent_again_then_deferred_never_accepted(cluster_report):
    # Given a gateway whose answer timeout (1 microsecond) no replica can meet
    decisions = cluster_report["unanswered"]
    # Then each of its 8 frames has one outcome: deferred engine_error, saying why
    assert sorted(map(_key, decisions)) == [(f"cam{c}", s) for c in range(4) for s in range(2)]
    assert {(d["decision"], d["reason"]) for d in decisions} == {("defer", "engine_error")}
    assert all(d["detail"].startswith("not scored on the cluster: TimeoutError") for d in decisions), decisions[0]
    assert all(d["kappa"] is None for d in decisions)


def test_a_bundle_the_replicas_cannot_open_stops_the_gateway_at_start_with_their_reason(cluster_report):
    message = cluster_report["refused_at_start"]
    assert message != "started", "the gateway started with a bundle no replica could open"
    assert "the scoring replicas did not start" in message and "trust_head.onnx" in message, message
    assert "Traceback" not in message, message


def test_a_camera_map_scores_each_camera_with_its_own_bundle_on_the_replicas(cluster_report):
    run = cluster_report["camera_map"]
    by_camera: dict[str, list[dict]] = {}
    for decision in run["decisions"]:
        by_camera.setdefault(decision["camera_id"], []).append(decision)
    # Every frame has one decision, in each camera's order
    assert {camera: [d["seq"] for d in decisions] for camera, decisions in by_camera.items()} == \
        {camera: [0, 1, 2] for camera in ("cam_a", "cam_b1", "stranger")}
    # Each mapped camera's frames were scored on the replicas with its own bundle: its id and its threshold
    bundles = {tuple(b["cameras"]): b for b in run["bundles"]}
    assert set(bundles) == {("cam_a",), ("cam_b*",)}, run["bundles"]
    for camera, route in (("cam_a", "cam_a"), ("cam_b1", "cam_b*")):
        assert {(d["bundle_id"], d["threshold"]) for d in by_camera[camera]} == \
            {(bundles[(route,)]["bundle_id"], run["thresholds"][route])}, camera
        assert bundles[(route,)]["threshold"] == run["thresholds"][route]
        assert all(d["kappa"] is not None for d in by_camera[camera]), camera
    assert bundles[("cam_a",)]["bundle_id"] != bundles[("cam_b*",)]["bundle_id"]
    # A camera without an entry (the map has no default) is deferred no_bundle, by no bundle
    assert {(d["decision"], d["reason"], d["bundle_id"]) for d in by_camera["stranger"]} == {("defer", "no_bundle", "")}


def test_a_camera_map_reload_one_replica_refuses_keeps_every_cameras_bundle_everywhere(cluster_report):
    run = cluster_report["camera_map"]
    refused = [line for line in run["log"] if "camera map reload refused" in line]
    assert len(refused) == 1 and "camera 'cam_b*'" in refused[0] and "refused camera map" in refused[0], run["log"]
    before = {d["camera_id"]: d["bundle_id"] for d in run["decisions"]}
    after = {d["camera_id"]: d for d in run["after_refusal"]}
    assert {camera: d["bundle_id"] for camera, d in after.items()} == before
    assert after["cam_a"]["kappa"] is not None and after["cam_b1"]["kappa"] is not None
    assert run["status"] == 0


def test_a_camera_map_reload_sends_only_the_changed_bundle_and_swaps_it_in_on_every_replica(cluster_report):
    run = cluster_report["camera_map"]
    before = {d["camera_id"]: d["bundle_id"] for d in run["decisions"]}
    after = {d["camera_id"]: d for d in run["after_swap"]}
    # cam_b* scores with its new bundle and threshold, cam_a with the bundle it had
    assert after["cam_a"]["bundle_id"] == before["cam_a"] and after["cam_b1"]["bundle_id"] != before["cam_b1"]
    assert after["cam_b1"]["threshold"] == run["thresholds"]["swapped"] and after["cam_b1"]["kappa"] is not None
    assert {tuple(b["cameras"]): b["bundle_id"] for b in run["bundles_after_swap"]} == \
        {("cam_a",): before["cam_a"], ("cam_b*",): after["cam_b1"]["bundle_id"]}
    # The encoder and bundle A were not sent again: the reload sent a small part of what the map holds
    sent = [line for line in run["log"] if "verified on the replicas" in line]
    assert len(sent) == 2 and "reloaded on every replica" in run["log"][-1], run["log"]
    megabytes = [float(part.split(" MB sent of ")[0].rsplit("(", 1)[1]) for part in sent]
    total = float(sent[-1].split(" MB sent of ")[1].split(" MB")[0])
    assert megabytes[0] == total and megabytes[1] < total / 10, sent
