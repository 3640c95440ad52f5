"""Cluster-mode scenarios on a real two-node Ray cluster, run inside a network namespace with only ``lo`` up.

Started by tests/runtime/test_cluster_mode.py as
``unshare --net --pid --fork --mount-proc bash -c 'ip link set lo up && exec python cluster_scenario.py ...'``:
in that namespace every Ray node registers as 127.0.0.1 and nothing leaves loopback; the pid
namespace ends every process started here when the driver exits. It writes what it saw to a
JSON report that the tests check:

* ``same_frames``: 4 cameras, frames sent in rounds of one per camera (each round waits for its 4
  decisions, so no frame supersedes another) to the single-machine service and to the cluster
  gateway (2 replicas, one pinned to each node by the custom resource ``trustvlm_replica``).
* ``reload``: SIGHUP after the bundle folder got first a bundle whose trust head no replica can open
  (its sha256 records are right, so only the replicas can find out: the reload must be refused and
  the old bundle keep scoring), then a good bundle with another threshold (swapped in everywhere:
  every later decision carries its id).
* ``unanswered``: a gateway whose answer timeout (1 microsecond) no cluster can meet: every frame is
  sent again, then deferred ``engine_error``.
* ``refused_at_start``: a gateway started on a bundle that only the replicas can find bad; it must
  not start, and its one line must carry the replica's reason.
* ``camera_map``: a gateway serving a camera map (``--bundles``): ``cam_a`` on one bundle, ``cam_b*``
  on another (the same prototypes, another threshold), ``stranger`` on none; then a reload whose
  bundle for ``cam_b*`` only the replicas can find bad (refused: every camera keeps its bundle), then
  one with a good new bundle for ``cam_b*`` (swapped in on every replica; only its files sent again).
* ``node_loss``: the gateway keeps getting frames while the worker node is killed (SIGKILL of its
  raylet and every process it started) and started again; the report holds every frame sent,
  every decision, every heartbeat, and the local scorer's decision for each frame sent.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import zmq

from trustvlm.data.fashion_mnist import load_split
from trustvlm.pipelines.serve_process import ServeProcess, ServiceStartError
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame, send_frame
from trustvlm.runtime.messages import DecisionMessage, decode_body
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer

RAY = str(Path(sys.executable).with_name("ray"))
PORT, RESOURCE, CAMERAS = 6379, "trustvlm_replica", 4


def pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


class Cluster:
    """A head and a worker node started with ``ray start`` (each one CPU and one ``trustvlm_replica``)."""

    def __init__(self, temp_dir: str, log):
        self.temp_dir, self.log = temp_dir, log
        self.worker_pids: set[int] = set()

    def _start(self, *args: str) -> None:
        command = [RAY, "start", "--num-cpus=1", f"--resources={json.dumps({RESOURCE: 1})}",
                   "--disable-usage-stats", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stdout[-800:]} {result.stderr[-800:]}")

    def start_head(self) -> None:
        self._start("--head", f"--port={PORT}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}")

    def start_worker(self) -> None:
        before = pids()
        self._start(f"--address=127.0.0.1:{PORT}")
        self.worker_pids = pids() - before

    def kill_worker(self) -> None:
        """SIGKILL the worker node: every process its ``ray start`` left, and all their descendants."""
        doomed = set(self.worker_pids)
        while True:
            more = {pid for pid in pids() if parent_of(pid) in doomed} - doomed
            if not more:
                break
            doomed |= more
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log(f"killed the worker node: {len(doomed)} processes")


class Gateway:
    """A SUB socket on a service's decisions and heartbeats, and a PUSH socket for frames."""

    def __init__(self, context: zmq.Context, service: ServeProcess):
        self.sub = context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"trust/")
        self.sub.connect(service.publish)
        self.push = context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(service.ingest)
        self.decisions: list[dict] = []
        self.health: list[dict] = []
        self.wait_for(lambda: self.health, 60)  # subscribed: heartbeats come through

    def poll(self, timeout_s: float) -> None:
        if self.sub.poll(int(timeout_s * 1000)):
            message = decode_body(self.sub.recv_multipart()[1])
            (self.decisions if isinstance(message, DecisionMessage) else self.health).append(message.to_dict())

    def wait_for(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                return False
            self.poll(0.1)
        return True

    def close(self) -> None:
        self.sub.close()
        self.push.close()


def encoded_images(count: int) -> list[bytes]:
    images = load_split("test").images[:count]
    return [cv2.imencode(".png", image)[1].tobytes() for image in images]


def send(gateway: Gateway, lock: threading.Lock, camera: int, seq: int, payload: bytes, sent: list) -> None:
    header = FrameHeader(f"cam{camera}", seq, time.time_ns(), Encoding.PNG)
    with lock:
        send_frame(gateway.push, header, payload)
    sent.append([header.camera_id, seq])


def same_frames(gateway: Gateway, images: list[bytes], rounds: int) -> list[dict]:
    """Rounds of one frame per camera; each round waits for its decisions."""
    lock, sent = threading.Lock(), []
    for seq in range(rounds):
        for camera in range(CAMERAS):
            send(gateway, lock, camera, seq, images[(seq * CAMERAS + camera) % len(images)], sent)
        if not gateway.wait_for(lambda: len(gateway.decisions) >= len(sent), 120):
            raise RuntimeError(f"round {seq}: {len(gateway.decisions)} decisions for {len(sent)} frames")
    return list(gateway.decisions)


def break_trust_head_of(bundle: Path) -> None:
    """Replace the trust head by bytes no ONNX Runtime can open, with bundle.json's sha256 record to match."""
    head = bundle / "trust_head.onnx"
    head.write_bytes(b"this is not an ONNX graph")
    info = json.loads((bundle / "bundle.json").read_text())
    info["files"]["trust_head.onnx"] = hashlib.sha256(head.read_bytes()).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(info))


def install_bundle(staging: Path, bundle_dir: Path, break_trust_head: bool) -> None:
    """Move a bundle written in `staging` into the served folder (optionally with an unloadable trust head)."""
    if break_trust_head:
        break_trust_head_of(staging)
    for name in ("prototypes.npz", "trust_head.onnx", "bundle.json"):
        os.replace(staging / name, bundle_dir / name)


def reload(gateway: Gateway, service: ServeProcess, artifacts: str, bundle_dir: Path, images: list[bytes],
           first_seq: int, log) -> dict:
    """A refused reload (a trust head the replicas cannot open), then a good one swapped in on every replica."""
    from trustvlm.calibration.bundle import write_bundle  # noqa: PLC0415
    from trustvlm.contract.bundle import load_bundle  # noqa: PLC0415

    original = load_bundle(bundle_dir, artifacts)
    old_id = gateway.health[-1]["bundle_id"]
    threshold = dataclasses.replace(original.info.threshold, threshold=original.info.threshold.threshold - 0.05)
    staging = bundle_dir.parent / "staging"
    lock, sent, result = threading.Lock(), [], {"old_bundle_id": old_id}

    def round_of_frames(seq: int) -> list[dict]:
        start = len(gateway.decisions)
        for camera in range(CAMERAS):
            send(gateway, lock, camera, seq, images[(seq * CAMERAS + camera) % len(images)], sent)
        if not gateway.wait_for(lambda: len(gateway.decisions) - start >= CAMERAS, 120):
            raise RuntimeError(f"no decisions for round {seq} of the reload")
        return gateway.decisions[start:]

    write_bundle(staging, original.text_prototypes, original.image_prototypes,
                 dataclasses.replace(original.info, threshold=threshold))
    install_bundle(staging, bundle_dir, break_trust_head=True)
    os.kill(service.pid, signal.SIGHUP)
    if not gateway.wait_for(lambda: gateway.health[-1]["counters"].get("reloads_refused", 0) >= 1, 120):
        raise RuntimeError("the broken bundle was not refused")
    result["after_refusal"] = round_of_frames(first_seq)
    log("broken bundle refused")
    new = write_bundle(staging, original.text_prototypes, original.image_prototypes,
                       dataclasses.replace(original.info, threshold=threshold))
    install_bundle(staging, bundle_dir, break_trust_head=False)
    os.kill(service.pid, signal.SIGHUP)
    if not gateway.wait_for(lambda: gateway.health[-1]["bundle_id"] != old_id, 120):
        raise RuntimeError("the new bundle was not swapped in")
    result["new_bundle_id"], result["new_threshold"] = gateway.health[-1]["bundle_id"], new.info.threshold.threshold
    result["after_swap"] = [d for seq in range(first_seq + 1, first_seq + 5) for d in round_of_frames(seq)]
    result["counters"] = gateway.health[-1]["counters"]
    log("new bundle swapped in")
    return result


def camera_map_phase(context: zmq.Context, artifacts: Path, bundle: Path, folder: Path, logs: Path, flags: tuple,
                     images: list[bytes], log) -> dict:
    """Two cameras on two bundles and one camera without an entry, on the replicas; then a refused map reload."""
    from trustvlm.calibration.bundle import write_bundle  # noqa: PLC0415
    from trustvlm.contract.bundle import load_bundle  # noqa: PLC0415
    from trustvlm.contract.camera_map import CameraMap, write_camera_map  # noqa: PLC0415

    started = time.monotonic()
    original = load_bundle(bundle, artifacts)
    bundle_a, bundle_b = folder / "map_a", folder / "map_b"
    bundle_a.mkdir()
    for path in bundle.iterdir():
        (bundle_a / path.name).write_bytes(path.read_bytes())
    threshold = dataclasses.replace(original.info.threshold, threshold=original.info.threshold.threshold - 1.0)
    write_bundle(bundle_b, original.text_prototypes, original.image_prototypes,
                 dataclasses.replace(original.info, threshold=threshold))  # B accepts what A defers
    camera_map = write_camera_map(folder / "cameras.toml", CameraMap({"cam_a": bundle_a, "cam_b*": bundle_b}))
    cameras = ("cam_a", "cam_b1", "stranger")
    result: dict = {"decisions": []}
    with ServeProcess(artifacts, camera_map, logs, flags, name="camera_map", echo=True,
                      start_timeout_s=300) as service:
        gateway, lock, sent = Gateway(context, service), threading.Lock(), []

        def round_of_frames(seq: int) -> list[dict]:
            start = len(gateway.decisions)
            for number, camera in enumerate(cameras):
                header = FrameHeader(camera, seq, time.time_ns(), Encoding.PNG)
                with lock:
                    send_frame(gateway.push, header, images[(seq * len(cameras) + number) % len(images)])
                sent.append([camera, seq])
            if not gateway.wait_for(lambda: len(gateway.decisions) - start >= len(cameras), 120):
                raise RuntimeError(f"no decisions for round {seq} of the camera map")
            return gateway.decisions[start:]

        result["decisions"] = [d for seq in range(3) for d in round_of_frames(seq)]
        result["bundles"] = gateway.health[-1]["bundles"]
        # A bundle only the replicas can find bad (its sha256 records hold): the whole reload is refused
        break_trust_head_of(bundle_b)
        os.kill(service.pid, signal.SIGHUP)
        if not gateway.wait_for(lambda: gateway.health[-1]["counters"].get("reloads_refused", 0) >= 1, 120):
            raise RuntimeError("the camera map with a broken bundle was not refused")
        result["after_refusal"] = round_of_frames(3)
        # A good bundle for cam_b*: swapped in on every replica, only its files sent again
        swapped = dataclasses.replace(threshold, threshold=threshold.threshold + 0.5)
        write_bundle(bundle_b, original.text_prototypes, original.image_prototypes,
                     dataclasses.replace(original.info, threshold=swapped))
        old_b = {tuple(b["cameras"]): b["bundle_id"] for b in result["bundles"]}[("cam_b*",)]
        os.kill(service.pid, signal.SIGHUP)
        if not gateway.wait_for(lambda: old_b not in {b["bundle_id"] for b in gateway.health[-1]["bundles"]}, 120):
            raise RuntimeError("the camera map with a new bundle for cam_b* was not swapped in")
        result["after_swap"], result["bundles_after_swap"] = round_of_frames(4), gateway.health[-1]["bundles"]
        result["status"] = service.stop(60)
        result["log"] = [line for line in (logs / "camera_map.stderr").read_text().splitlines()
                         if "camera map" in line]
        gateway.close()
    result["thresholds"] = {"cam_a": original.info.threshold.threshold, "cam_b*": threshold.threshold,
                            "swapped": swapped.threshold}
    result["seconds"] = time.monotonic() - started
    log(f"camera map served on the cluster in {result['seconds']:.1f} s")
    return result


def node_loss(gateway: Gateway, cluster: Cluster, images: list[bytes], first_seq: int, log) -> dict:
    """Frames keep coming while the worker node dies and comes back."""
    lock, sent, stop, events = threading.Lock(), [], threading.Event(), {}
    start = len(gateway.decisions)

    def sender():
        seq = first_seq
        while not stop.is_set():
            for camera in range(CAMERAS):
                send(gateway, lock, camera, seq, images[(seq * CAMERAS + camera) % len(images)], sent)
            seq += 1
            stop.wait(0.1)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    statuses = lambda: [h["status"] for h in gateway.health]  # noqa: E731
    try:
        if not gateway.wait_for(lambda: len(gateway.decisions) - start >= 8, 120):
            raise RuntimeError("no decisions before the node was killed")
        seen = len(gateway.health)
        cluster.kill_worker()
        events["killed_after_decisions"] = len(gateway.decisions) - start
        if not gateway.wait_for(lambda: "degraded" in statuses()[seen:], 120):
            raise RuntimeError(f"no degraded heartbeat after the node was killed: {statuses()[seen:][-5:]}")
        degraded_at = len(gateway.health)
        log("heartbeat degraded: " + gateway.health[-1]["detail"])
        cluster.start_worker()
        log("worker node started again")
        if not gateway.wait_for(lambda: "ok" in statuses()[degraded_at:], 180):
            raise RuntimeError(f"no ok heartbeat after the node came back: {gateway.health[-1]}")
        log("heartbeat ok again")
        scored_after = len(gateway.decisions)
        if not gateway.wait_for(lambda: sum(d["kappa"] is not None for d in gateway.decisions[scored_after:]) >= 8,
                                120):
            raise RuntimeError("no scored frames after the node came back")
    finally:
        stop.set()
        thread.join(5)
    gateway.wait_for(lambda: len(gateway.decisions) - start >= len(sent), 120)
    return {"sent": sent, "decisions": gateway.decisions[start:], "events": events}


def expected_decisions(artifacts: str, bundle: str, images: list[bytes], frames: list[list]) -> dict:
    """The single-machine scorer's decision for each (camera, seq) sent."""
    scorer = load_scorer(artifacts, bundle, ScorerConfig(threads=1))
    result = {}
    for camera_id, seq in frames:
        image = images[(seq * CAMERAS + int(camera_id[3:])) % len(images)]
        frame = ReceivedFrame(FrameHeader(camera_id, seq, 0, Encoding.PNG), image, 0)
        result[f"{camera_id}/{seq}"] = scorer.decide([frame])[0].to_dict()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ray-temp", default=None, help="Ray's temp folder (default: a new one in /tmp)")
    args = parser.parse_args()
    args.ray_temp = args.ray_temp or tempfile.mkdtemp(prefix="rt", dir="/tmp")
    log = lambda text: print(f"[cluster scenario {time.strftime('%H:%M:%S')}] {text}", flush=True)  # noqa: E731
    report: dict = {"nodes": []}
    temp_dir = args.ray_temp  # Ray's socket paths must stay short: a folder of /tmp that the test removes
    os.environ["TMPDIR"] = temp_dir  # the nodes, hence the replicas' bundle folders, write there too
    logs = Path(args.report).parent / "logs"
    cluster = Cluster(temp_dir, log)
    cluster.start_head()
    cluster.start_worker()
    log("two Ray nodes started")
    import ray  # noqa: PLC0415

    ray.init(address=f"127.0.0.1:{PORT}", logging_level="WARNING", log_to_driver=False)
    report["nodes"] = [{"address": n["NodeManagerAddress"], "alive": n["Alive"],
                        "replica_slots": n["Resources"].get(RESOURCE, 0)} for n in ray.nodes()]
    ray.shutdown()
    images = encoded_images(40)
    bundle = Path(args.report).parent / "served_bundle"
    bundle.mkdir()
    for path in Path(args.bundle).iterdir():
        (bundle / path.name).write_bytes(path.read_bytes())
    flags = ("--staleness-ms", "0", "--heartbeat-ms", "200", "--threads", "1", "--no-watch")
    cluster_flags = ("--cluster", f"127.0.0.1:{PORT}", "--replicas", "2", "--replica-resource", RESOURCE)
    context = zmq.Context()
    with ServeProcess(Path(args.artifacts), bundle, logs, flags, name="single", echo=True) as single:
        gateway = Gateway(context, single)
        report["single"] = same_frames(gateway, images, args.rounds)
        gateway.close()
    log("single-machine service done")
    with ServeProcess(Path(args.artifacts), bundle, logs, flags + cluster_flags, name="gateway",
                      echo=True, start_timeout_s=300) as service:
        gateway = Gateway(context, service)
        report["cluster"] = same_frames(gateway, images, args.rounds)
        log("same frames scored on the cluster")
        report["reload"] = reload(gateway, service, args.artifacts, bundle, images, args.rounds, log)
        report["node_loss"] = node_loss(gateway, cluster, images, args.rounds + 5, log)
        report["status"] = service.stop(60)
        gateway.wait_for(lambda: gateway.health and gateway.health[-1]["status"] == "stopped", 10)
        report["health"] = [{k: h[k] for k in ("status", "detail")} for h in gateway.health]
        report["final_counters"] = gateway.health[-1]["counters"]
        report["reload"]["log"] = [line for line in (logs / "gateway.stderr").read_text().splitlines()
                                   if "bundle reload" in line]
        gateway.close()
    report["camera_map"] = camera_map_phase(context, Path(args.artifacts), Path(args.bundle), Path(args.report).parent,
                                            logs, flags + cluster_flags, images, log)
    # A gateway that can never get an answer in time (1 microsecond): every frame is sent again, then deferred
    unanswered_flags = flags + cluster_flags + ("--answer-timeout-ms", "0.001")
    with ServeProcess(Path(args.artifacts), bundle, logs, unanswered_flags, name="unanswered", echo=True,
                      start_timeout_s=300) as service:
        gateway = Gateway(context, service)
        report["unanswered"] = same_frames(gateway, images, 2)
        gateway.close()
    log("a gateway without answers deferred its frames")
    # A bundle that only the replicas can find bad (its sha256 records hold): the gateway does not start, and says why
    refused = Path(args.report).parent / "refused_bundle"
    refused.mkdir()
    for path in bundle.iterdir():
        (refused / path.name).write_bytes(path.read_bytes())
    break_trust_head_of(refused)
    try:
        ServeProcess(Path(args.artifacts), refused, logs, flags + cluster_flags, name="refused",
                     start_timeout_s=300).start()
        report["refused_at_start"] = "started"
    except ServiceStartError as error:
        report["refused_at_start"] = str(error)
    log("a bundle the replicas refuse stopped the gateway from starting")
    report["expected"] = expected_decisions(args.artifacts, str(bundle), images, report["node_loss"]["sent"])
    Path(args.report).write_text(json.dumps(report))
    context.term()
    log("report written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
