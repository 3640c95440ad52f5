"""The guarantee watch as a decision tap, in process: thinning, acting, audits, feedback, bundles, state on disk."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np

from trustvlm.contract.monitor_reference import MonitorReference
from trustvlm.contract.threshold import ThresholdChoice
from trustvlm.runtime.frames import Encoding, FrameHeader, PixelFormat, ReceivedFrame
from trustvlm.runtime.messages import Decision, DecisionMessage, Reason
from trustvlm.runtime.monitor.config import MonitorConfig
from trustvlm.runtime.monitor.state_file import read_state
from trustvlm.runtime.monitor.watch import GuaranteeWatch
from trustvlm.runtime.scoring_loop import ScoringLoop

CLASSES = ("shirt", "shoe")


def make_bundle(bundle_id: str, scores: np.ndarray | None, alpha: float = 0.05, feasible: bool = True):
    reference = None if scores is None else MonitorReference.from_values("test", score=scores)
    choice = ThresholdChoice(threshold=0.5 if feasible else float("inf"), alpha=alpha, delta=0.1, coverage=0.5,
                             empirical_risk=0.01, risk_upper_bound=0.04, n_calibration=200, feasible=feasible,
                             method="test")
    info = SimpleNamespace(monitor_reference=reference, threshold=choice, class_names=CLASSES)
    return SimpleNamespace(bundle=SimpleNamespace(info=info), bundle_id=bundle_id)


class Slot:
    def __init__(self, scorer):
        self.scorer = scorer

    def current(self):
        return self.scorer


def decision(seq: int, kappa: float | None = 0.9, camera: str = "cam", bundle_id: str = "m:1",
             capture_s: float | None = None, accept: bool = True) -> DecisionMessage:
    reason = (Reason.MEETS_THRESHOLD if accept else Reason.BELOW_THRESHOLD) if kappa is not None else Reason.DROPPED
    return DecisionMessage(camera, seq, int((seq if capture_s is None else capture_s) * 1e9), 0,
                           Decision.ACCEPT if reason is Reason.MEETS_THRESHOLD else Decision.DEFER, reason, 0.5,
                           "trustvlm", "m@w", bundle_id, label="shirt" if kappa is not None else None,
                           class_id=0 if kappa is not None else None, kappa=kappa)


HIGH = np.linspace(0.95, 1.0, 200)  # every real score below: the monitor's most extreme evidence


def config(**changes) -> MonitorConfig:
    return MonitorConfig(**{"alarm_level": 1e4, "watch_level": 10.0, "interval_s": 1.0, "audit_rate": 0.0,
                            **changes})


def run(watch, decisions):
    return watch([None] * len(decisions), decisions)


def test_a_camera_unlike_its_reference_goes_to_alarm_and_its_frames_are_deferred_guarantee_lost(caplog):
    watch = GuaranteeWatch(config(), Slot(make_bundle("m:1", HIGH)), seed=0)
    states, reasons = [], []
    with caplog.at_level(logging.INFO, logger="trustvlm.runtime.monitor"):
        for seq in range(60):
            out = run(watch, [decision(seq, kappa=0.6)])[0]
            states.append(out.monitor)
            reasons.append(out.reason)
    assert states[0] == "ok" and "watch" in states and states[-1] == "alarm"
    first = states.index("alarm")
    assert all(s == "alarm" for s in states[first:])  # latched
    assert reasons[first] is Reason.GUARANTEE_LOST and all(r is Reason.GUARANTEE_LOST for r in reasons[first:])
    assert all(r is Reason.MEETS_THRESHOLD for r in reasons[:first])
    changes = [r.getMessage() for r in caplog.records if "->" in r.getMessage()]
    assert any("OK -> WATCH" in m for m in changes) and any("WATCH -> ALARM" in m and "guarantee_lost" in m
                                                             for m in changes), changes
    assert watch.counters()["cameras_alarm"] == 1


def test_warn_only_reports_and_frames_deferred_for_their_own_reason_keep_it():
    watch = GuaranteeWatch(config(on_drift="warn"), Slot(make_bundle("m:1", HIGH)), seed=0)
    outs = [run(watch, [decision(seq, kappa=0.6)])[0] for seq in range(60)]
    assert outs[-1].monitor == "alarm" and all(o.reason is Reason.MEETS_THRESHOLD for o in outs)
    defer = GuaranteeWatch(config(), Slot(make_bundle("m:1", HIGH)), seed=0)
    for seq in range(60):
        run(defer, [decision(seq, kappa=0.6)])
    ood = DecisionMessage("cam", 99, int(99e9), 0, Decision.DEFER, Reason.OUT_OF_DISTRIBUTION, 0.5, "trustvlm", "m@w",
                          "m:1", label="shirt", class_id=0, kappa=0.6, typicality=-3.0)
    assert run(defer, [ood])[0].reason is Reason.OUT_OF_DISTRIBUTION


def test_thinning_takes_at_most_one_frame_per_interval_of_capture_time():
    watch = GuaranteeWatch(config(interval_s=1.0), Slot(make_bundle("m:1", HIGH)), seed=0)
    frames = [decision(seq, kappa=0.99, capture_s=seq * 0.1) for seq in range(50)]  # 10 frames a second, 5 s
    run(watch, frames)
    assert watch.counters()["monitor_frames"] == 5
    run(watch, [decision(50, kappa=0.99, capture_s=1.0)])  # a clock that went back: taken, thinning restarts there
    assert watch.counters()["monitor_frames"] == 6


def test_unscored_frames_and_bundles_without_a_reference_are_not_watched():
    watch = GuaranteeWatch(config(), Slot(make_bundle("m:1", None)), seed=0)
    out = run(watch, [decision(0), decision(1, kappa=None)])
    assert [o.monitor for o in out] == ["", ""] and watch.counters()["monitor_frames"] == 0
    other = GuaranteeWatch(config(), Slot(make_bundle("m:1", HIGH)), seed=0)
    assert run(other, [decision(0, bundle_id="")])[0].monitor == ""  # no_bundle: nothing to watch
    assert run(other, [decision(1, kappa=None)])[0].monitor == "ok"  # stamped, not counted
    assert other.counters()["monitor_frames"] == 0


def test_audits_mark_only_accepted_frames_at_the_rate_and_labels_of_others_are_ignored():
    watch = GuaranteeWatch(config(audit_rate=0.25), Slot(make_bundle("m:1", np.linspace(0.0, 1.0, 200))), seed=3)
    outs = run(watch, [decision(seq, kappa=0.9, accept=seq % 2 == 0, capture_s=seq * 10) for seq in range(4000)])
    audited = [o for o in outs if o.audit]
    assert all(o.decision is Decision.ACCEPT for o in audited)
    assert 0.2 < len(audited) / 2000 < 0.3  # 2,000 accepted; binomial sd ~0.01
    assert watch.feedback("cam", 1, "shirt") == "unmatched"  # deferred: never drawn
    not_drawn = next(o.seq for o in outs if o.decision is Decision.ACCEPT and not o.audit)
    assert watch.feedback("cam", not_drawn, "shirt") == "unmatched"
    assert watch.feedback("cam", audited[0].seq, "hat") == "unknown_label"
    assert watch.feedback("cam", audited[0].seq, "shirt") == "matched"
    assert watch.feedback("cam", audited[0].seq, "shirt") == "unmatched"  # once only
    assert watch.feedback("other", 0, "shirt") == "unwatched_camera"
    counts = watch.counters()
    assert counts["feedback_matched"] == 1 and counts["feedback_unmatched"] == 3 and counts["audit_marked"] == len(audited)


def test_pending_audits_are_bounded_oldest_forgotten_first():
    watch = GuaranteeWatch(config(audit_rate=1.0, max_pending_audits=3), Slot(make_bundle("m:1", HIGH)), seed=0)
    run(watch, [decision(seq, kappa=0.99, capture_s=seq * 10) for seq in range(5)])
    assert watch.counters()["audit_forgotten"] == 2
    assert watch.feedback("cam", 0, "shirt") == "unmatched" and watch.feedback("cam", 4, "shirt") == "matched"


def test_wrong_audit_labels_make_the_camera_violated_and_its_frames_deferred():
    watch = GuaranteeWatch(config(audit_rate=1.0), Slot(make_bundle("m:1", np.linspace(0.0, 1.0, 200))), seed=0)
    seq = 0
    while True:
        out = run(watch, [decision(seq, kappa=0.9, capture_s=seq * 10)])[0]
        if out.reason is Reason.GUARANTEE_LOST:
            break
        assert out.audit and watch.feedback("cam", seq, "shoe") == "matched"  # predicted shirt: an error
        seq += 1
        assert seq < 100
    assert out.audit_state == "violated" and "audit" in out.detail and not out.audit


def test_a_new_bundle_starts_the_camera_afresh_and_a_reset_clears_it():
    slot = Slot(make_bundle("m:1", HIGH))
    watch = GuaranteeWatch(config(), slot, seed=0)
    for seq in range(60):
        run(watch, [decision(seq, kappa=0.6)])
    assert watch.snapshot()[0]["monitor"] == "alarm"
    slot.scorer = make_bundle("m:2", HIGH)
    out = run(watch, [decision(60, kappa=0.6, bundle_id="m:2")])[0]
    assert out.monitor == "ok" and out.reason is Reason.MEETS_THRESHOLD
    for seq in range(61, 120):
        run(watch, [decision(seq, kappa=0.6, bundle_id="m:2")])
    assert watch.reset("cam", "test") and not watch.reset("nobody", "test")
    assert run(watch, [decision(200, kappa=0.99, bundle_id="m:2")])[0].monitor == "ok"
    assert watch.counters()["monitor_resets"] == 1


def test_the_state_survives_a_restart_on_the_same_bundle_only(tmp_path):
    path = tmp_path / "state" / "monitor.msgpack"
    first = GuaranteeWatch(config(state_file=path), Slot(make_bundle("m:1", HIGH)), seed=0)
    for seq in range(60):
        run(first, [decision(seq, kappa=0.6)])
    first.close()
    assert read_state(path)["cam"]["bundle_id"] == "m:1"
    mirror = json.loads(path.with_name(path.name + ".json").read_text())
    assert mirror["cameras"]["cam"]["bundle_id"] == "m:1"
    again = GuaranteeWatch(config(state_file=path), Slot(make_bundle("m:1", HIGH)), seed=1)
    out = run(again, [decision(100, kappa=0.99)])[0]
    assert out.monitor == "alarm" and out.reason is Reason.GUARANTEE_LOST
    fresh = GuaranteeWatch(config(state_file=path), Slot(make_bundle("m:9", HIGH)), seed=1)
    assert run(fresh, [decision(100, kappa=0.99, bundle_id="m:9")])[0].monitor == "ok"


def test_an_unreadable_state_file_starts_afresh_with_one_log_line(tmp_path, caplog):
    path = tmp_path / "monitor.msgpack"
    path.write_bytes(b"\xc1 not msgpack")
    with caplog.at_level(logging.ERROR, logger="trustvlm.runtime.monitor"):
        watch = GuaranteeWatch(config(state_file=path), Slot(make_bundle("m:1", HIGH)), seed=0)
    assert run(watch, [decision(0, kappa=0.99)])[0].monitor == "ok"
    assert any("starts afresh" in r.getMessage() for r in caplog.records)


def test_a_tap_that_fails_defers_the_batch_engine_error():
    class Failing:
        def __call__(self, frames, decisions):
            raise RuntimeError("broken tap")

    scorer = SimpleNamespace(defer=lambda n: DecisionMessage(n.camera_id, n.seq, n.capture_ts_ns, n.receipt_ts_ns,
                                                             Decision.DEFER, n.reason, 0.5, "trustvlm", "m@w", "m:1",
                                                             detail=n.detail))
    loop = ScoringLoop.__new__(ScoringLoop)  # only its taps are exercised here
    loop.taps = [Failing()]
    frame = ReceivedFrame(FrameHeader("cam", 1, 5, Encoding.RAW, (2, 3), "uint8", PixelFormat.MONO8), b"\0" * 6, 7)
    out = loop.tapped(scorer, [frame], [decision(1)])
    assert out[0].reason is Reason.ENGINE_ERROR and "broken tap" in out[0].detail
