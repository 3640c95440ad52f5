"""The guarantee watch's edges: a restart under other monitor levels, a camera that restarts its seq, the order of
shutdown, a non-finite typicality on the wire, and `trustvlm audit`'s one-line errors."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import numpy as np
import pytest

from trustvlm.cli_common import CliError
from trustvlm.runtime.messages import Decision, DecisionMessage, Reason, WireFormat, decode_body, encode_body
from trustvlm.runtime.monitor.audit_cli import add_audit_parser, run_audit
from trustvlm.runtime.monitor.watch import GuaranteeWatch
from trustvlm.runtime.schema import DECISION_SCHEMA
from trustvlm.runtime.service import TrustService

from .test_guarantee_watch import HIGH, Slot, config, decision, make_bundle, run
from .test_messages import validate


def test_a_violated_audit_survives_a_restart_whose_monitor_levels_changed(tmp_path):
    path = tmp_path / "monitor.msgpack"
    bundle = make_bundle("m:1", np.linspace(0.0, 1.0, 200))
    first = GuaranteeWatch(config(state_file=path, audit_rate=1.0), Slot(bundle), seed=0)
    for seq in range(100):
        if run(first, [decision(seq, kappa=0.9, capture_s=seq * 10)])[0].reason is Reason.GUARANTEE_LOST:
            break
        first.feedback("cam", seq, "shoe")  # predicted shirt: an error
    first.close()
    assert first.snapshot()[0]["audit_state"] == "violated"
    again = GuaranteeWatch(config(state_file=path, audit_rate=1.0, alarm_level=2e4), Slot(bundle), seed=0)
    out = run(again, [decision(1000, kappa=0.9, capture_s=1e5)])[0]  # the monitor's saved state no longer fits
    assert out.audit_state == "violated" and out.reason is Reason.GUARANTEE_LOST and out.monitor == "ok"


def accepted(seq: int, capture_s: float, label: str) -> DecisionMessage:
    return DecisionMessage("cam", seq, int(capture_s * 1e9), 0, Decision.ACCEPT, Reason.MEETS_THRESHOLD, 0.5,
                           "trustvlm", "m@w", "m:1", label=label, class_id=("shirt", "shoe").index(label), kappa=0.99)


def test_a_seq_used_again_by_a_restarted_camera_is_audited_for_neither_frame():
    watch = GuaranteeWatch(config(audit_rate=1.0), Slot(make_bundle("m:1", HIGH)), seed=0)
    assert run(watch, [accepted(42, 1.0, "shirt")])[0].audit
    again = run(watch, [accepted(42, 500.0, "shoe")])[0]  # the camera restarted and counts from 0 again
    assert not again.audit
    assert watch.feedback("cam", 42, "shirt") == "unmatched"  # the first frame's right label: no false error
    assert watch.snapshot()[0]["labels"] == 0 and watch.counters()["audit_forgotten"] == 1
    assert run(watch, [accepted(43, 501.0, "shirt")])[0].audit and watch.feedback("cam", 43, "shirt") == "matched"


def test_the_feedback_socket_stops_before_the_watch_writes_its_last_state():
    order = []
    service = TrustService.__new__(TrustService)
    service.scoring = SimpleNamespace(run=lambda: None, taps=[SimpleNamespace(close=lambda: order.append("watch"))])
    service.decode = SimpleNamespace(close=lambda: order.append("decode"))
    service.health = SimpleNamespace(feedback=SimpleNamespace(stop=lambda: order.append("feedback")))
    service.publisher = SimpleNamespace(stop=lambda: order.append("publisher"))
    service._score_loop()
    assert order == ["decode", "feedback", "watch", "publisher"]


def test_a_non_finite_typicality_follows_the_decision_schema_in_json():
    for typicality in (float("nan"), float("-inf")):
        message = DecisionMessage("cam", 1, 5, 6, Decision.DEFER, Reason.OUT_OF_DISTRIBUTION, 0.5, "trustvlm", "m@w",
                                  "m:1", label="shirt", class_id=0, kappa=0.6, typicality=typicality).stamped(7)
        body = encode_body(message, WireFormat.JSON)
        validate(json.loads(body), DECISION_SCHEMA, DECISION_SCHEMA)
        assert str(decode_body(body).typicality) == str(typicality)


def audit_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_audit_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["audit", *argv])


def test_trustvlm_audit_says_one_line_for_an_address_a_seq_or_a_timeout_it_cannot_use(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("camera_id,seq,label\ncam,3,shirt\n")
    with pytest.raises(CliError, match="no ZeroMQ address"):
        run_audit(audit_args("--feedback", "127.0.0.1:5557", "--labels", str(labels)))
    for seq in ("\u00b2", "9" * 25):  # a digit int() refuses; a seq beyond 64 bits
        labels.write_text(f"camera_id,seq,label\ncam,{seq},shirt\n")
        with pytest.raises(CliError, match="labels.csv:2"):
            run_audit(audit_args("--feedback", "tcp://127.0.0.1:1", "--labels", str(labels)))
    for timeout in ("-1", "nan", "inf", "0"):  # -1 would wait forever
        with pytest.raises(SystemExit):
            audit_args("--feedback", "tcp://127.0.0.1:1", "--labels", str(labels), "--timeout-s", timeout)
        assert "--timeout-s" in capsys.readouterr().err


def test_a_camera_saved_in_alarm_is_watched_after_a_restart_even_when_the_table_is_full(tmp_path):
    path = tmp_path / "monitor.msgpack"
    first = GuaranteeWatch(config(state_file=path, max_cameras=2), Slot(make_bundle("m:1", HIGH)), seed=0)
    for seq in range(60):
        run(first, [decision(seq, kappa=0.6, camera="gate")])
    first.close()
    again = GuaranteeWatch(config(state_file=path, max_cameras=2), Slot(make_bundle("m:1", HIGH)), seed=0)
    run(again, [decision(0, kappa=0.99, camera="dock1"), decision(0, kappa=0.99, camera="dock2")])  # table full
    out = run(again, [decision(100, kappa=0.99, camera="gate")])[0]
    assert out.monitor == "alarm" and out.reason is Reason.GUARANTEE_LOST
    assert run(again, [decision(0, kappa=0.99, camera="dock3")])[0].monitor == ""  # a new camera still is not
