"""The live status page on the metrics port: its files, its policy, and /status.json counts equal to /metrics."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from trustvlm.contract.camera_map import CameraMap, write_camera_map
from trustvlm.runtime.frames import Encoding, FrameHeader, send_frame
from trustvlm.runtime.status_page import STATUS_FILES, _quantile, status_file

from .conftest import fault_image


def get(url: str) -> tuple[bytes, dict]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read(), dict(response.headers)


def test_the_page_needs_nothing_from_elsewhere_and_stays_small():
    files = {path: status_file(path)[0].decode() for path in STATUS_FILES}
    assert sum(len(text.encode()) for text in files.values()) < 150 * 1024
    for path, text in files.items():
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path  # no URL of another origin
        assert "<script>" not in text and "style=" not in text, path  # nothing inline: CSP default-src 'self'
    assert status_file("/etc/passwd") is None and status_file("/../metrics.py") is None


def test_quantiles_interpolate_as_histogram_quantile_does():
    buckets = [(0.1, 2.0), (0.5, 6.0), (1.0, 10.0), (float("inf"), 10.0)]
    assert _quantile(buckets, 0.5) == pytest.approx(0.1 + 0.4 * (5 - 2) / 4)
    assert _quantile(buckets, 0.95) == pytest.approx(0.5 + 0.5 * (9.5 - 6) / 4)
    assert _quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert _quantile([(0.1, 0.0), (float("inf"), 3.0)], 0.5) == 0.1  # all above the last bound: its lower edge


def test_status_json_counts_are_the_metrics_counters_of_a_running_service(serve, push, subscribe, fault_export,
                                                                          make_fault_bundle, tmp_path):
    folders = {"cam_a": make_fault_bundle(tmp_path / "a", threshold=-10.0),
               "cam_b": make_fault_bundle(tmp_path / "b", threshold=10.0, seed=1)}
    camera_map = write_camera_map(tmp_path / "cameras.toml", CameraMap(folders))
    service = serve("--artifacts", str(fault_export), "--bundles", str(camera_map), "--metrics", "127.0.0.1:0")
    subscriber, sender, image = subscribe(service.publish), push(service.ingest), fault_image()
    sent = [("cam_a", 0), ("cam_b", 0), ("cam_a", 1), ("cam_b", 1), ("cam_a", 2), ("stranger", 0)]
    for camera, seq in sent:
        send_frame(sender, FrameHeader(camera, seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"),
                   image.tobytes())
    assert subscriber.wait_for(lambda s: len(s.decisions) == len(sent), 20)
    # the heartbeat is sent by the thread that counts decisions: once it shows them all, /metrics has them too
    assert subscriber.wait_for(lambda s: s.health and s.health[-1].counters.get("decisions", 0) >= len(sent), 20)
    page, headers = get(f"{service.metrics}/")
    assert b"<table>" in page and headers["Content-Security-Policy"] == "default-src 'self'"
    status = json.loads(get(f"{service.metrics}/status.json")[0])
    metrics = get(f"{service.metrics}/metrics")[0].decode()
    assert service.stop() == 0
    rows = {row["camera"]: row for row in status["cameras"]}
    assert set(rows) == {"cam_a", "cam_b", "stranger"}
    for camera, row in rows.items():
        counted = {(decision, reason): float(value) for decision, reason, value in re.findall(
            rf'trustvlm_camera_decisions_total{{camera="{camera}",decision="(\w+)",reason="(\w+)"}} (\S+)', metrics)}
        assert row["decisions"] == sum(counted.values()) == sum(1 for c, _ in sent if c == camera)
        assert row["accepted"] == sum(v for (decision, _), v in counted.items() if decision == "accept")
        assert row["reasons"] == {reason: v for (decision, reason), v in counted.items() if decision == "defer"}
        received = re.search(rf'trustvlm_frames_received_total{{camera="{camera}"}} (\S+)', metrics).group(1)
        assert row["received"] == float(received)
        assert row["last_decision_ts"] <= status["time"] and row["p95_latency_ms"] is not None
    by_camera = {d.camera_id: d for d in subscriber.decisions}
    for camera, row in rows.items():  # and what the subscriber got (a superseded frame is a `dropped` deferral)
        mine = [d for d in subscriber.decisions if d.camera_id == camera]
        assert row["accepted"] == sum(d.frames for d in mine if d.decision.value == "accept") and row["decisions"] == (
            sum(d.frames for d in mine))
    assert rows["cam_a"]["accepted"] >= 1 and set(rows["cam_b"]["reasons"]) <= {"below_threshold", "dropped"}
    assert rows["cam_a"]["bundle_id"] == by_camera["cam_a"].bundle_id and rows["stranger"]["bundle_id"] == ""
    assert rows["stranger"]["reasons"] == {"no_bundle": 1} and status["health"]["kind"] == "health"
    # bundles without a reference sample: audited, not monitored; a camera without a bundle: neither
    assert (rows["cam_a"]["guarantee"], rows["cam_a"]["audit"]) == ("", "unverified")
    assert (rows["stranger"]["guarantee"], rows["stranger"]["audit"]) == ("", "")
