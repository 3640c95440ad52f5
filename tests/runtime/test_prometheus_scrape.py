"""A real Prometheus (Debian's `prometheus`) scrapes a running service while cameras stream: every expression of the
Grafana dashboard returns data through Prometheus's HTTP API, and `promtool check metrics` passes on /metrics."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import replace

import numpy as np
import pytest

from trustvlm.contract.camera_map import CameraMap, write_camera_map
from trustvlm.contract.monitor_reference import MonitorReference
from trustvlm.runtime.frames import Encoding, FrameHeader, send_frame

from .conftest import FAULT_CLASSES, fault_image, make_info, open_gate
from .test_grafana_dashboard import expressions

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                                 reason="Debian's prometheus package is not installed (make system-packages)")]
#: A guard only: the waits below end on what Prometheus answers.
GUARD_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def concrete(expr: str) -> str:
    """A dashboard expression as Grafana would send it: windows of 10 s (10 scrapes), every camera."""
    return expr.replace("$__rate_interval", "10s").replace('=~"$camera"', '=~".*"').replace('="$camera"', '="cam_a"')


def test_prometheus_scrapes_the_service_and_every_dashboard_expression_returns_data(serve, push, fault_export,
                                                                                    make_fault_bundle, tmp_path):
    from trustvlm.calibration.bundle import write_bundle  # noqa: PLC0415
    from trustvlm.contract.manifest import read_manifest  # noqa: PLC0415
    from trustvlm.pipelines.grafana_dashboard import build_dashboard  # noqa: PLC0415

    # Given a service whose cameras accept (cam_a), defer below the threshold (cam_b) and out of distribution (cam_c),
    rng = np.random.default_rng(3)
    write_bundle(tmp_path / "c", rng.normal(size=(3, 8)), rng.normal(size=(3, 8)),
                 make_info(read_manifest(fault_export), FAULT_CLASSES, -10.0), ood_gate=open_gate(8, 3, threshold=0.0))
    # and one (cam_d) whose frames score below every value of its reference sample: its monitor alarms, its frames
    # are deferred guarantee_lost
    watched = replace(make_info(read_manifest(fault_export), FAULT_CLASSES, -10.0),
                      monitor_reference=MonitorReference.from_values("test", score=np.linspace(10.0, 11.0, 100)))
    write_bundle(tmp_path / "d", rng.normal(size=(3, 8)), rng.normal(size=(3, 8)), watched)
    folders = {"cam_a": make_fault_bundle(tmp_path / "a", threshold=-10.0),
               "cam_b": make_fault_bundle(tmp_path / "b", threshold=10.0, seed=1), "cam_c": tmp_path / "c",
               "cam_d": tmp_path / "d"}
    camera_map = write_camera_map(tmp_path / "cameras.toml", CameraMap(folders))
    (tmp_path / "serve.json").write_text(json.dumps({"monitor": {"interval_s": 0.0, "alarm_level": 100.0,
                                                                 "watch_level": 10.0}}))
    service = serve("--config", str(tmp_path / "serve.json"), "--artifacts", str(fault_export), "--bundles",
                    str(camera_map), "--metrics", "127.0.0.1:0")
    target = service.metrics.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: trustvlm\n"
                      f"    static_configs:\n      - targets: ['{target}']\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "prometheus.log", "w")
    prometheus = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                  stdout=log, stderr=subprocess.STDOUT)
    stop = threading.Event()

    def stream() -> None:  # every camera keeps sending while Prometheus scrapes
        sender, image, seq = push(service.ingest), fault_image(), 0
        while not stop.is_set():
            for camera in folders:
                send_frame(sender, FrameHeader(camera, seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"),
                           image.tobytes())
            seq += 1
            stop.wait(0.02)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        # a bundle reload before Prometheus scrapes (its counter appears) and one after (the annotation shows it)
        service.process.send_signal(signal.SIGHUP)
        dashboard = build_dashboard()
        pending = {f"{where}: {concrete(expr)}": concrete(expr) for where, expr in expressions(dashboard)}
        pending["reloads scraped"] = "trustvlm_bundle_reloads_total"
        deadline, reloaded = time.monotonic() + GUARD_S, False
        while pending and time.monotonic() < deadline and prometheus.poll() is None:
            try:
                pending = {name: expr for name, expr in pending.items() if not query(base, expr)}
            except OSError:  # Prometheus is still starting
                pass
            if "reloads scraped" not in pending and not reloaded:
                service.process.send_signal(signal.SIGHUP)
                reloaded = True
            time.sleep(0.5)
        # Then every panel, variable and annotation query returns data from the real Prometheus
        assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
        assert not pending, sorted(pending)
        # And promtool accepts the exposition
        metrics = urllib.request.urlopen(f"{service.metrics}/metrics", timeout=5).read()
        checked = subprocess.run([PROMTOOL, "check", "metrics"], input=metrics, capture_output=True, timeout=60)
        assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    finally:
        stop.set()
        streamer.join(10)
        prometheus.terminate()
        prometheus.wait(30)
        log.close()
    assert service.stop() == 0
