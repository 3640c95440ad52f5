"""Fixtures of the runtime tests: real exports and bundles, the service as a real process, sockets.

* ``demo_export`` is the real demo model's export (the session-wide ``demo_artifacts`` of tests/conftest.py);
  ``demo_bundle`` a real bundle for it: image prototypes from 8 Fashion-MNIST calibration shots per
  class, text prototypes from the exported text encoder, threshold at the median kappa of 200 other
  calibration images (so about half the frames accept).
* ``fault_export`` is a synthetic export whose image encoder misbehaves on purpose, keyed by the
  first pixel of an image (all three channels): 13 -> a NaN embedding for that row, 7 -> a runtime
  error for the whole batch; any other value gives a finite embedding. ``make_fault_bundle`` writes
  bundles for it (threshold -10: every finite frame is accepted; +10: none is), each with an
  out-of-distribution gate whose threshold passes every finite frame, so the gate runs on every
  batch of the fault and hostile-input tests without changing their outcomes.
* ``serve`` starts ``python -m trustvlm.runtime.cli serve`` on random loopback ports and parses the
  line that says where it listens; ``Subscriber`` reads decisions and heartbeats. Unless a test passes
  ``--staleness-ms`` itself, the service runs without a staleness deadline: whether a frame is stale
  depends on how busy the machine is, so only the tests about staleness may have one, and they
  check each frame's outcome against its measured age.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
import zmq
from onnx import TensorProto, helper, numpy_helper

from trustvlm.calibration.bundle import write_bundle
from trustvlm.contract.bundle import BundleInfo, engine_sha256
from trustvlm.contract.files import sha256_file, write_json_atomic
from trustvlm.contract.manifest import MANIFEST_NAME, encoder_path, read_manifest
from trustvlm.contract.threshold import ThresholdChoice
from trustvlm.runtime.messages import DecisionMessage, HealthMessage, Reason, decode_body

REPO = Path(__file__).resolve().parents[2]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
NAN_PIXEL, ERROR_PIXEL, FAULT_SIZE = 13, 7, 32
FAULT_CLASSES = ("cat", "dog", "forklift")


def make_info(manifest: dict, class_names, threshold: float, feasible: bool = True) -> BundleInfo:
    """A BundleInfo for `manifest`'s fp32 encoders with a hand-set threshold."""
    choice = ThresholdChoice(threshold=threshold if feasible else float("inf"), alpha=0.1, delta=0.1,
                             coverage=0.5 if feasible else 0.0, empirical_risk=0.05 if feasible else float("nan"),
                             risk_upper_bound=0.08 if feasible else float("nan"), n_calibration=200,
                             feasible=feasible, method="test-hand-set")
    return BundleInfo(
        model=manifest["model"], architecture=manifest["architecture"], weights_id=manifest["weights"]["id"],
        precision="fp32", engine_sha256=engine_sha256(manifest, "fp32"), preprocess=manifest["preprocess"],
        logit_scale=float(manifest["logit_scale"]), class_names=tuple(class_names), template_set="paper",
        templates=("a photo of a {}.",), prompts=tuple((f"a photo of a {c}.",) for c in class_names),
        image_prototype_encoder="image_encoder.onnx", k=8, seed=0, shots={"source": "test"}, lam=1.0,
        lam_method="manual", temperature=0.01, score="trustvlm", threshold=choice)


@pytest.fixture(scope="session")
def demo_export(demo_artifacts) -> Path:
    """The real demo model's export (tests/conftest.py exports it once per session)."""
    return demo_artifacts


@pytest.fixture(scope="session")
def demo_bundle(demo_export, tmp_path_factory) -> Path:
    from trustvlm.calibration.scores import compute_scores  # noqa: PLC0415
    from trustvlm.calibration.text_prototypes import build_text_prototypes  # noqa: PLC0415
    from trustvlm.data.fashion_mnist import CLASS_NAMES, load_split, to_rgb  # noqa: PLC0415
    from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder  # noqa: PLC0415
    from trustvlm.runtime.decode.preprocess import PreprocessConfig, preprocess_batch  # noqa: PLC0415

    manifest = read_manifest(demo_export)
    calib = load_split("calib")
    rng = np.random.default_rng(0)
    shots = np.concatenate([rng.choice(np.flatnonzero(calib.labels == c), 8, replace=False) for c in range(10)])
    rest = np.setdiff1d(np.arange(len(calib.labels)), shots)[:200]
    encoder = OnnxEncoder(encoder_path(demo_export, manifest, "image"), threads=1)
    config = PreprocessConfig.from_dict(manifest["preprocess"])

    def embed(indices):
        return encoder.encode(preprocess_batch(to_rgb(calib.images[indices]), config)).astype(np.float64)

    shot_embeddings = embed(shots)
    shot_embeddings /= np.linalg.norm(shot_embeddings, axis=1, keepdims=True)
    image_prototypes = shot_embeddings.reshape(10, 8, -1).mean(axis=1)
    text_prototypes = build_text_prototypes(demo_export, CLASS_NAMES, ["a photo of a {}."])
    scores = compute_scores(embed(rest), text_prototypes, image_prototypes, float(manifest["logit_scale"]), lam=1.0)
    out = tmp_path_factory.mktemp("demo_bundle") / "bundle"
    write_bundle(out, text_prototypes, image_prototypes,
                 make_info(manifest, CLASS_NAMES, float(np.median(scores.trustvlm))))
    return out


def _fault_encoder(path: Path, dim: int, seed: int) -> None:
    """uint8 [B,32,32,3] -> float [B,dim]: NaN rows where pixel[0,0,0] == 13, an error if any == 7."""
    rng = np.random.default_rng(seed)
    consts = {"weight": (rng.normal(size=(FAULT_SIZE * FAULT_SIZE * 3, dim)) / 255.0).astype(np.float32),
              "flat_shape": np.array([0, -1], np.int64), "starts": np.array([0, 0, 0, 0], np.int64),
              "ends": np.array([2**62, 1, 1, 1], np.int64), "row_shape": np.array([-1, 1], np.int64),
              "nan_value": np.float32(NAN_PIXEL), "error_value": np.float32(ERROR_PIXEL),
              "half": np.float32(0.5), "zero": np.float32(0.0), "six": np.int64(6), "one": np.int64(1),
              "minus_one": np.array([-1], np.int64), "zero_axis": np.array([0], np.int64)}
    n = helper.make_node
    nodes = [
        n("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT), n("Reshape", ["x", "flat_shape"], ["flat"]),
        n("MatMul", ["flat", "weight"], ["linear"]),
        n("Slice", ["x", "starts", "ends"], ["first4d"]), n("Reshape", ["first4d", "row_shape"], ["first"]),
        # NaN: sqrt(|p - 13| - 0.5) is NaN only for p == 13; times 0 leaves the other rows as they are.
        n("Sub", ["first", "nan_value"], ["d_nan"]), n("Abs", ["d_nan"], ["a_nan"]),
        n("Sub", ["a_nan", "half"], ["s_nan"]), n("Sqrt", ["s_nan"], ["r_nan"]),
        n("Mul", ["r_nan", "zero"], ["nan_term"]), n("Add", ["linear", "nan_term"], ["with_nan"]),
        # Error: reshape to [1 + 6 * any(p == 7), -1]; B * 3072 elements are never divisible by 7.
        n("Equal", ["first", "error_value"], ["is_err"]), n("Cast", ["is_err"], ["err_i"], to=TensorProto.INT64),
        n("ReduceMax", ["err_i"], ["any_err"], keepdims=0), n("Mul", ["any_err", "six"], ["six_err"]),
        n("Add", ["six_err", "one"], ["rows"]), n("Unsqueeze", ["rows", "zero_axis"], ["rows1"]),
        n("Concat", ["rows1", "minus_one"], ["trap_shape"], axis=0), n("Reshape", ["flat", "trap_shape"], ["trapped"]),
        n("ReduceSum", ["trapped"], ["trap_sum"], keepdims=0), n("Mul", ["trap_sum", "zero"], ["trap_zero"]),
        n("Add", ["with_nan", "trap_zero"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "fault", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", FAULT_SIZE, FAULT_SIZE, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="session")
def fault_export(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fault") / "fault"
    folder.mkdir()
    for tower, seed in (("image", 0), ("text", 1)):
        _fault_encoder(folder / f"{tower}_encoder.onnx", 8, seed)
    files = {f"{tower}_encoder": {"file": f"{tower}_encoder.onnx", "sha256": sha256_file(folder / f"{tower}_encoder.onnx")}
             for tower in ("image", "text")}
    write_json_atomic(folder / MANIFEST_NAME, {
        "schema_version": "1.0", "model": "fault", "architecture": "synthetic-fault",
        "weights": {"id": "sha256:fault-0", "source": "synthetic", "random_init": False},
        "preprocess": {"size": FAULT_SIZE, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
                       "resize_mode": "shortest", "crop": "center"},
        "embedding": {"name": "embedding", "dim": 8, "normalized": False},
        "logit_scale": 20.0, "precisions": {"fp32": {"files": files}}})
    return folder


@pytest.fixture
def make_fault_bundle(fault_export):
    """make_fault_bundle(out, threshold=-10.0, seed=0, feasible=True) -> out."""
    def make(out: Path, threshold: float = -10.0, seed: int = 0, feasible: bool = True) -> Path:
        rng = np.random.default_rng(seed)
        manifest = read_manifest(fault_export)
        write_bundle(out, rng.normal(size=(3, 8)), rng.normal(size=(3, 8)),
                     make_info(manifest, FAULT_CLASSES, threshold, feasible), ood_gate=open_gate(8, seed))
        return out
    return make


def open_gate(embed_dim: int, seed: int = 0, threshold: float = float(np.finfo(np.float32).min)):
    """An out-of-distribution gate fitted on random features; its `threshold` (default) passes every finite frame."""
    from dataclasses import replace  # noqa: PLC0415

    from trustvlm.calibration.ood_gate import fit_ood_gate  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    rows = np.arange(300)
    gate = fit_ood_gate(rng.normal(size=(300, embed_dim)), rng.uniform(size=(300, 11)), rows % 3, rows[:150],
                        rows[150:], rate=0.05)
    return replace(gate, info=replace(gate.info, threshold=threshold))


def fault_image(first_pixel: int = 100, fill: int = 100) -> np.ndarray:
    """A 32 x 32 x 3 uint8 image whose pixel (0, 0) is `first_pixel` in every channel."""
    image = np.full((FAULT_SIZE, FAULT_SIZE, 3), fill, np.uint8)
    image[0, 0, :] = first_pixel
    return image


@pytest.fixture(scope="session")
def fmnist_images() -> tuple[np.ndarray, np.ndarray]:
    """The first 64 Fashion-MNIST test images as BGR uint8 (a grey camera) and their labels."""
    from trustvlm.data.fashion_mnist import DEFAULT_ROOT, load_split  # noqa: PLC0415

    if not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    test = load_split("test")
    return np.repeat(test.images[:64, :, :, None], 3, axis=-1), test.labels[:64]


@pytest.fixture(scope="session")
def vtest_frames() -> list[np.ndarray]:
    """The first 6 frames of OpenCV's vtest.avi (768 x 576 BGR)."""
    import cv2  # noqa: PLC0415

    if not VTEST.exists():
        pytest.skip(f"{VTEST} is missing (apt-get install opencv-doc)")
    capture = cv2.VideoCapture(str(VTEST))
    frames = []
    while len(frames) < 6:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 6, f"could read only {len(frames)} frames of {VTEST}"
    return frames


@dataclass
class RunningService:
    """A `serve` process and where it listens."""

    process: subprocess.Popen
    line: str
    stderr_path: Path
    ingest: str = ""
    publish: str = ""
    metrics: str | None = None

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Signal the process and return its exit code (killing it after `timeout_s`)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            pytest.fail(f"serve did not stop within {timeout_s} s of signal {sig}; stderr:\n{self.stderr()}")


@pytest.fixture
def serve(tmp_path):
    """serve(*args) -> RunningService, on random loopback ports, heartbeat 100 ms, 1 thread, no staleness deadline."""
    running: list[RunningService] = []

    def start(*args: str, ports: bool = True) -> RunningService:
        command = [sys.executable, "-m", "trustvlm.runtime.cli", "serve", "--heartbeat-ms", "100", "--threads", "1"]
        if ports:
            command += ["--ingest", "tcp://127.0.0.1:*", "--publish", "tcp://127.0.0.1:*"]
        if "--staleness-ms" not in args:
            command += ["--staleness-ms", "0"]
        stderr_path = tmp_path / f"serve{len(running)}.stderr"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        with open(stderr_path, "w") as stderr:
            process = subprocess.Popen(command + list(args), stdout=subprocess.PIPE, stderr=stderr, env=env,
                                       cwd=tmp_path, text=True)
        service = RunningService(process, "", stderr_path)
        running.append(service)
        ready, _, _ = select.select([process.stdout], [], [], 60)
        service.line = process.stdout.readline() if ready else ""
        if "listening" not in service.line:
            process.kill()
            pytest.fail(f"serve did not start: {service.line!r}; stderr:\n{service.stderr()}")
        service.ingest = re.search(r"ingest=(\S+)", service.line).group(1)
        service.publish = re.search(r"publish=(\S+)", service.line).group(1)
        found = re.search(r"metrics=(\S+)/metrics", service.line)
        service.metrics = found.group(1) if found else None
        return service

    yield start
    for service in running:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait(5)


@dataclass
class Subscriber:
    """A SUB socket on trust/ that waits for the first heartbeat before anything is sent."""

    socket: zmq.Socket
    decisions: list[DecisionMessage] = field(default_factory=list)
    health: list[HealthMessage] = field(default_factory=list)
    topics: list[bytes] = field(default_factory=list)

    def poll(self, timeout_s: float) -> bool:
        """Read one message into decisions/health; False on timeout."""
        if not self.socket.poll(int(timeout_s * 1000)):
            return False
        topic, body = self.socket.recv_multipart()
        message = decode_body(body)
        (self.decisions if isinstance(message, DecisionMessage) else self.health).append(message)
        self.topics.append(topic)
        return True

    def wait_for(self, predicate, timeout_s: float = 20.0) -> bool:
        """Read until predicate(self) holds; False after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.poll(min(remaining, 0.2))
        return True

    def collect(self, count: int, timeout_s: float = 20.0) -> list[DecisionMessage]:
        self.wait_for(lambda s: len(s.decisions) >= count, timeout_s)
        return self.decisions


def check_outcome_against_age(decision: DecisionMessage, staleness_ms: float) -> str:
    """Check a frame's outcome against its age, measured by the service; return a description.

    The staleness deadline is applied when scoring picks a frame up, a moment that lies between the
    frame's receipt and the decision's publication. So a frame deferred ``stale`` must have been
    older than the deadline when its decision was published, and a scored frame must have been
    younger than the deadline when it was received. Which of the two a frame gets depends on how
    busy the machine was; that it is consistent with the frame's measured age does not.
    """
    received_ms = (decision.receipt_ts_ns - decision.capture_ts_ns) / 1e6
    published_ms = (decision.publish_ts_ns - decision.capture_ts_ns) / 1e6
    described = (f"seq {decision.seq}: {decision.reason.value}, {received_ms:.0f} ms old when received, "
                 f"{published_ms:.0f} ms when decided (deadline {staleness_ms:g} ms)")
    if decision.reason is Reason.STALE:
        assert abs(published_ms) > staleness_ms, described
    elif decision.reason in (Reason.MEETS_THRESHOLD, Reason.BELOW_THRESHOLD):
        assert abs(received_ms) <= staleness_ms, described
    return described


def decide_until_scored(subscriber: "Subscriber", send, camera: str, first_seq: int, staleness_ms: float,
                        tries: int = 10) -> tuple[DecisionMessage, list[str]]:
    """Send fresh frames (``send(seq)``) one at a time until one is scored; each outcome checked against its age.

    Returns the scored decision and a description of every outcome on the way.
    """
    seen = []
    for seq in range(first_seq, first_seq + tries):
        send(seq)
        mine = lambda s: [d for d in s.decisions if d.camera_id == camera and d.seq == seq]  # noqa: E731
        assert subscriber.wait_for(lambda s: mine(s), 20), f"no decision for {camera} seq {seq}; saw {seen}"
        (decision,) = mine(subscriber)
        seen.append(check_outcome_against_age(decision, staleness_ms))
        if decision.reason in (Reason.MEETS_THRESHOLD, Reason.BELOW_THRESHOLD):
            return decision, seen
    raise AssertionError(f"none of {tries} fresh frames was scored: {seen}")


def outcome_total(counters: dict) -> int:
    """Messages that got an outcome according to heartbeat counters: a decision, a counted rejection or loss."""
    return sum(counters.get(key, 0) for key in ("decisions", "rejected", "suppressed"))


def assert_accounting_by_name(counters: dict) -> None:
    """The identity RELIABILITY.md states, term by term, from the heartbeat's counter names alone."""
    assert counters["received"] == (counters["decisions"] + counters["rejected"] + counters["suppressed"]
                                    + counters["pending"]), counters
    assert counters["decisions"] == counters["decisions_accept"] + counters["decisions_defer"], counters
    assert counters["suppressed"] == (counters["notices_suppressed"] + counters["publish_overflow"]
                                      + counters["publish_errors"]), counters
    for total, prefix in (("decisions", "reason_"), ("rejected", "rejected_"), ("notices_suppressed", "suppressed_")):
        assert counters[total] == sum(v for k, v in counters.items() if k.startswith(prefix)), (total, counters)


@pytest.fixture
def zmq_context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def subscribe(zmq_context):
    """subscribe(endpoint) -> a Subscriber that has seen one heartbeat (so the subscription is live)."""
    def make(endpoint: str) -> Subscriber:
        sock = zmq_context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.setsockopt(zmq.SUBSCRIBE, b"trust/")
        sock.connect(endpoint)
        subscriber = Subscriber(sock)
        assert subscriber.wait_for(lambda s: s.health, 20), f"no heartbeat from {endpoint} within 20 s"
        return subscriber
    return make


@pytest.fixture
def push(zmq_context):
    """push(endpoint) -> a connected PUSH socket (LINGER 0, 5 s send timeout)."""
    def make(endpoint: str) -> zmq.Socket:
        sock = zmq_context.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 5000)
        sock.connect(endpoint)
        return sock
    return make
