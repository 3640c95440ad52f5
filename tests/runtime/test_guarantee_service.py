"""The guarantee watch through the real service: alarm and guarantee_lost, the state across a restart, an operator's
reset and audit labels through `trustvlm audit`, the heartbeat and /metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from dataclasses import replace

import numpy as np
import pytest

from trustvlm.calibration.bundle import write_bundle
from trustvlm.contract.bundle import read_bundle_info
from trustvlm.contract.monitor_reference import MonitorReference
from trustvlm.runtime.frames import Encoding, FrameHeader, send_frame
from trustvlm.runtime.messages import Decision, Reason

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def watched_bundle(demo_bundle, tmp_path_factory):
    """The demo bundle with a reference sample above every score it can give: each frame is strong evidence."""
    info = read_bundle_info(demo_bundle)
    prototypes = np.load(demo_bundle / "prototypes.npz")
    reference = MonitorReference.from_values("test: above every real score", score=np.linspace(10.0, 11.0, 100))
    out = tmp_path_factory.mktemp("watched") / "bundle"
    write_bundle(out, prototypes["text_prototypes"], prototypes["image_prototypes"],
                 replace(info, monitor_reference=reference, files={}, created_utc=""))
    return out


def write_config(path, state_file, **monitor):
    path.write_text(json.dumps({"monitor": {"alarm_level": 1000.0, "watch_level": 30.0, "interval_s": 0.0,
                                            "feedback": "tcp://127.0.0.1:*", "state_file": str(state_file),
                                            **monitor}}))
    return path


class Camera:
    """Sends Fashion-MNIST frames one at a time, each once the one before is decided."""

    def __init__(self, service, subscriber, sender, images):
        self.service, self.subscriber, self.sender, self.images = service, subscriber, sender, images
        self.seq = 0

    def next(self):
        image = self.images[self.seq % len(self.images)]
        send_frame(self.sender, FrameHeader("cam", self.seq, 10**18 + self.seq, Encoding.RAW, image.shape, "uint8"),
                   image.tobytes())
        self.seq += 1
        count = len([d for d in self.subscriber.decisions if d.camera_id == "cam"])
        assert self.subscriber.wait_for(lambda s: len([d for d in s.decisions if d.camera_id == "cam"]) > count,
                                        60), self.service.stderr()
        return [d for d in self.subscriber.decisions if d.camera_id == "cam"][-1]


def audit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trustvlm", "audit", *args], capture_output=True, text=True,
                          timeout=60)


def feedback_of(service) -> str:
    return re.search(r"feedback=(\S+)", service.line).group(1)


def test_alarm_defers_guarantee_lost_survives_a_restart_and_an_operator_reset_clears_it(
        serve, subscribe, push, demo_export, watched_bundle, fmnist_images, tmp_path):
    images = fmnist_images[0][:64]
    state = tmp_path / "state" / "monitor.msgpack"
    config = write_config(tmp_path / "serve.json", state)
    args = ("--config", str(config), "--artifacts", str(demo_export), "--bundle", str(watched_bundle),
            "--metrics", "127.0.0.1:0")
    service = serve(*args)
    subscriber = subscribe(service.publish)
    camera = Camera(service, subscriber, push(service.ingest), images)
    decisions = []
    while not decisions or decisions[-1].reason is not Reason.GUARANTEE_LOST:
        decisions.append(camera.next())
        assert len(decisions) < 40, [d.monitor for d in decisions]
    states = [d.monitor for d in decisions]
    assert states[0] == "ok" and states[-1] == "alarm" and "watch" in states
    assert all(d.reason is not Reason.GUARANTEE_LOST for d in decisions[:-1])
    assert subscriber.wait_for(lambda s: any(m["monitor"] == "alarm" for h in s.health for m in h.monitors), 20)
    metrics = urllib.request.urlopen(f"{service.metrics}/metrics", timeout=10).read().decode()
    assert re.search(r'trustvlm_camera_guarantee_state\{camera="cam"\} 2\.0', metrics), metrics[-2000:]
    assert "WATCH -> ALARM" in service.stderr()
    assert service.stop() == 0

    again = serve(*args)  # the state file brings the alarm back
    subscriber = subscribe(again.publish)
    camera = Camera(again, subscriber, push(again.ingest), images)
    first = camera.next()
    assert first.monitor == "alarm" and first.reason is Reason.GUARANTEE_LOST, again.stderr()
    reset = audit("--feedback", feedback_of(again), "--reset", "cam", "--operator", "tester")
    assert reset.returncode == 0 and "reset" in reset.stdout, reset.stderr
    after = camera.next()
    assert after.monitor in ("ok", "watch") and after.reason is not Reason.GUARANTEE_LOST
    assert "reset by operator 'tester'" in again.stderr()
    unknown = audit("--feedback", feedback_of(again), "--reset", "nobody")
    assert unknown.returncode == 1 and "not watched" in unknown.stdout
    assert again.stop() == 0


def test_wrong_audit_labels_sent_by_trustvlm_audit_make_the_camera_violated(
        serve, subscribe, push, demo_export, demo_bundle, fmnist_images, tmp_path):
    images = fmnist_images[0][:64]
    config = write_config(tmp_path / "serve.json", tmp_path / "monitor.msgpack", audit_rate=1.0)
    service = serve("--config", str(config), "--artifacts", str(demo_export), "--bundle", str(demo_bundle))
    subscriber = subscribe(service.publish)
    camera = Camera(service, subscriber, push(service.ingest), images)
    accepted = []
    while len(accepted) < 8:
        decision = camera.next()
        assert decision.monitor == "" and decision.audit_state == "unverified"  # no reference sample: audits only
        assert decision.audit == (decision.decision is Decision.ACCEPT)
        if decision.audit:
            accepted.append(decision)
        assert camera.seq < 64
    wrong = {d.seq: next(e.label for e in d.top_k if e.label != d.label) for d in accepted}  # another class
    rows = ["camera_id,seq,label"] + [f"cam,{seq},{label}" for seq, label in wrong.items()]
    rows.append(f"cam,9999,{accepted[0].label}")  # never drawn: does not count
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    sent = audit("--feedback", feedback_of(service), "--labels", str(tmp_path / "labels.csv"))
    assert sent.returncode == 0 and "matched 8" in sent.stdout and "unmatched 1" in sent.stdout, sent.stdout + sent.stderr
    later = [camera.next()]  # the labels are in: the next frame is decided with the audit violated
    assert later[-1].audit_state == "violated", service.stderr()
    assert later[-1].audit_state == "violated" and later[-1].reason is Reason.GUARANTEE_LOST
    assert "audit UNVERIFIED -> VIOLATED" in service.stderr()
    bad = (tmp_path / "bad.csv")
    bad.write_text(f"camera_id,seq,label\ncam,notanumber,{accepted[0].label}\n")
    refused = audit("--feedback", feedback_of(service), "--labels", str(bad))
    assert refused.returncode != 0 and "bad.csv:2" in refused.stderr and "Traceback" not in refused.stderr
    assert service.stop() == 0
