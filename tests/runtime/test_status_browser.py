"""The live status page in a real headless browser (Debian's `chromium`, driven by playwright) on a running service.

Three cameras stream; the page draws a row for each and keeps updating, logs no error and asks nothing of any host but
the service's; a camera that stops turns red within the page's quiet time plus its polling slack; a camera whose
guarantee monitor alarms shows `alarm` and is red; and once every camera has stopped, ``/status.json`` counts what
``/metrics`` counts and what was sent, and the page shows those counts. A screenshot of the page is kept with the
test's outputs (and written to ``$TRUSTVLM_SCREENSHOT`` when that is set: docs/assets/status_page.png comes from there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from trustvlm.contract.camera_map import CameraMap, write_camera_map
from trustvlm.contract.monitor_reference import MonitorReference
from trustvlm.runtime.frames import Encoding, FrameHeader, send_frame
from trustvlm.runtime.status_page import status_file

from .conftest import FAULT_CLASSES, fault_image, make_info

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # the dev extra is not installed
    sync_playwright = None

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (the dev extra)"),
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-packages)")]
#: A guard only: every wait below ends on what the page shows.
GUARD_S = 20.0
#: Seconds between two frames of a streaming camera (far above a scoring pass: a frame is rarely superseded).
FRAME_GAP_S = 0.05

ROWS_JS = """() => {
  const columns = [...document.querySelectorAll("thead th")].map((th) => th.textContent);
  return [...document.querySelectorAll("#cameras tr")].map((tr) => ({
    camera: tr.dataset.camera, state: tr.className,
    cells: Object.fromEntries([...tr.children].map((td, at) => [columns[at], td.textContent]))}));
}"""


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


class Camera(threading.Thread):
    """Sends a frame every FRAME_GAP_S until `stopped` is set; counts what it sent."""

    def __init__(self, name: str, sender) -> None:
        super().__init__(daemon=True)
        self.name_, self.sender, self.stopped, self.sent, self.error = name, sender, threading.Event(), 0, None

    def run(self) -> None:
        image = fault_image()
        try:
            while not self.stopped.is_set():
                send_frame(self.sender, FrameHeader(self.name_, self.sent, time.time_ns(), Encoding.RAW, image.shape,
                                                    "uint8"), image.tobytes())
                self.sent += 1
                self.stopped.wait(FRAME_GAP_S)
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.error = error

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)
        assert not self.is_alive() and self.error is None, self.error


def test_the_status_page_in_a_real_browser(serve, push, subscribe, fault_export, make_fault_bundle, tmp_path):
    from trustvlm.calibration.bundle import write_bundle  # noqa: PLC0415
    from trustvlm.contract.manifest import read_manifest  # noqa: PLC0415

    # Given a service with three cameras that accept every frame, one of them ("dock") watched against a reference
    # sample above every score it can give, so its guarantee monitor alarms after a few frames,
    rng = np.random.default_rng(5)
    watched = replace(make_info(read_manifest(fault_export), FAULT_CLASSES, -10.0),
                      monitor_reference=MonitorReference.from_values("test", score=np.linspace(10.0, 11.0, 100)))
    write_bundle(tmp_path / "dock", rng.normal(size=(3, 8)), rng.normal(size=(3, 8)), watched)
    folders = {"front": make_fault_bundle(tmp_path / "front", threshold=-10.0),
               "rear": make_fault_bundle(tmp_path / "rear", threshold=-10.0, seed=1), "dock": tmp_path / "dock"}
    camera_map = write_camera_map(tmp_path / "cameras.toml", CameraMap(folders))
    (tmp_path / "serve.json").write_text(json.dumps({"monitor": {"interval_s": 0.0, "alarm_level": 100.0,
                                                                 "watch_level": 10.0}}))
    service = serve("--config", str(tmp_path / "serve.json"), "--artifacts", str(fault_export), "--bundles",
                    str(camera_map), "--metrics", "127.0.0.1:0")
    # and a thread streaming frames per camera,
    cameras = {name: Camera(name, push(service.ingest)) for name in folders}
    for camera in cameras.values():
        camera.start()
    poll_s = int(re.search(r"setTimeout\(poll, (\d+)\)", status_file("/status.js")[0].decode()).group(1)) / 1e3
    console, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 300})
            page.set_default_timeout(GUARD_S * 1e3)
            page.on("console", lambda message: message.type in ("error", "warning") and console.append(
                f"{message.type}: {message.text} ({message.location['url']})"))
            page.on("pageerror", lambda error: console.append(f"page error: {error}"))
            page.on("request", lambda request: requests.append(request.url))

            def wait(what: str, condition: str, arg=None, timeout_s: float = GUARD_S, polling="raf") -> None:
                """Wait until `condition` holds on the page; on a timeout, fail with what the page says."""
                try:
                    page.wait_for_function(condition, arg=arg, timeout=timeout_s * 1e3, polling=polling)
                except PlaywrightTimeout:
                    pytest.fail(f"not within {timeout_s:.1f} s: {what}; the page says "
                                f"{page.text_content('#service')!r}, rows {page.evaluate(ROWS_JS)}, console {console}")

            # When the page is loaded, it draws one row per camera
            page.goto(f"{service.metrics}/")
            wait("one row per camera", "n => document.querySelectorAll('#cameras tr').length === n", len(cameras))
            # and its "updated" time advances
            wait("a first update", "() => document.getElementById('updated').textContent !== 'never'")
            updated = page.text_content("#updated")
            wait("the updated time advances", "t => document.getElementById('updated').textContent !== t", updated,
                 3 * poll_s + GUARD_S / 4)
            quiet_s = page.evaluate("QUIET_S")

            # The camera whose guarantee is lost shows `alarm` in the guarantee column and is red
            wait("dock's guarantee lost", """() => {
              const row = document.querySelector('#cameras tr[data-camera="dock"]');
              return row && row.className === "alarm" && row.lastChild.textContent.startsWith("alarm");
            }""")
            # while the streaming cameras are green;
            wait("front and rear green", """() => ["front", "rear"].every((name) =>
              document.querySelector(`#cameras tr[data-camera="${name}"]`).className === "ok")""")

            # when one camera stops, its row turns red within the page's quiet time plus the polling slack
            cameras["rear"].stop()
            stopped = time.monotonic()
            wait("the stopped camera red", """() =>
              document.querySelector('#cameras tr[data-camera="rear"]').className === "alarm" """,
                 timeout_s=quiet_s + 2 * poll_s + 1.0, polling=100)
            red_after_s = time.monotonic() - stopped
            assert red_after_s >= quiet_s - poll_s, f"red after {red_after_s:.1f} s: not for being quiet"
            rows = {row["camera"]: row for row in page.evaluate(ROWS_JS)}
            assert {name: row["state"] for name, row in rows.items()} == {"front": "ok", "rear": "alarm",
                                                                          "dock": "alarm"}, rows
            assert rows["dock"]["cells"]["guarantee"] == "alarm · audit unverified", rows["dock"]
            assert rows["dock"]["cells"]["top deferral reasons"].startswith("guarantee_lost "), rows["dock"]
            assert rows["front"]["cells"]["guarantee"] == "audit unverified", rows["front"]
            shot = tmp_path / "status_page.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("TRUSTVLM_SCREENSHOT"):
                target = Path(os.environ["TRUSTVLM_SCREENSHOT"])
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, target)

            # Once every camera has stopped and the heartbeat shows each frame decided (the thread that counts
            # decisions sends it: /metrics has them too), /status.json counts what /metrics counts and what was sent
            for camera in cameras.values():
                camera.stop()
            sent = {name: camera.sent for name, camera in cameras.items()}
            subscriber = subscribe(service.publish)
            assert subscriber.wait_for(
                lambda s: s.health and s.health[-1].counters.get("decisions", 0) >= sum(sent.values()), GUARD_S)
            status = json.loads(get(f"{service.metrics}/status.json"))
            metrics = get(f"{service.metrics}/metrics").decode()
            counts = {row["camera"]: row for row in status["cameras"]}
            assert set(counts) == set(cameras)
            for name, row in counts.items():
                counted = {(decision, reason): float(value) for decision, reason, value in re.findall(
                    rf'trustvlm_camera_decisions_total{{camera="{name}",decision="(\w+)",reason="(\w+)"}} (\S+)',
                    metrics)}
                received = float(re.search(rf'trustvlm_frames_received_total{{camera="{name}"}} (\S+)', metrics)[1])
                assert row["decisions"] == sum(counted.values()) == row["received"] == received == sent[name], name
                assert row["accepted"] == sum(v for (decision, _), v in counted.items() if decision == "accept")
                assert row["reasons"] == {reason: v for (decision, reason), v in counted.items() if decision == "defer"}
            assert counts["dock"]["reasons"].get("guarantee_lost", 0) >= 1 and counts["front"]["accepted"] >= 1

            # and the page, at its first update built after that read, shows those counts
            wait("an update after the counts were read", "t => previous !== null && previous.time > t", status["time"],
                 2 * poll_s + GUARD_S / 4)
            for row in page.evaluate(ROWS_JS):
                final = counts[row["camera"]]
                share = float(row["cells"]["accept share"].removesuffix("%"))
                assert abs(share - 100 * final["accepted"] / final["decisions"]) <= 0.05 + 1e-9, (row, final)
                shown = row["cells"]["top deferral reasons"]
                for entry in ([] if shown == "-" else shown.split(", ")):
                    reason, count = entry.rsplit(" ", 1)
                    assert final["reasons"][reason] == int(count), (row, final)
        finally:
            for camera in cameras.values():
                camera.stopped.set()
            browser.close()
    assert service.stop() == 0
    # Nothing on the console, and no request left the service's host
    assert not console, console
    assert requests and all(urllib.parse.urlsplit(url).hostname == "127.0.0.1" for url in requests), requests
