"""Controller: the SAFE/OK state machine on a fake clock, and the loop against a PUB socket of the test's own."""

from __future__ import annotations

import math
import threading
import time

import pytest
import zmq

from trustvlm.pipelines.controller import (EVENT_SAFE_ENTER, EVENT_SAFE_EXIT, Controller, ControllerConfig,
                                           ControllerObserver, ControllerState, HeartbeatWatch)
from trustvlm.pipelines.controller_output import ConsolePrinter, describe_event, format_summary
from trustvlm.runtime.messages import (HEALTH_TOPIC, Decision, DecisionMessage, HealthMessage, HealthStatus, Reason,
                                       encode_body, topic_for)

pytestmark = pytest.mark.timeout(30)


def health(status: HealthStatus = HealthStatus.OK, counters: dict | None = None) -> HealthMessage:
    return HealthMessage(status, time.time_ns(), 1.0, "model", "bundle", 0.5, 1, counters or {})


def decision(camera: str, seq: int, accept: bool, label: str = "bag") -> DecisionMessage:
    now = time.time_ns()
    return DecisionMessage(camera, seq, now - 5_000_000, now - 2_000_000,
                           Decision.ACCEPT if accept else Decision.DEFER,
                           Reason.MEETS_THRESHOLD if accept else Reason.BELOW_THRESHOLD, 0.5, "trustvlm", "model",
                           "bundle", label=label, class_id=8, kappa=0.9 if accept else 0.1).stamped(now - 1_000_000)


def test_heartbeat_watch_enters_and_leaves_safe_on_a_fake_clock():
    # Given a watch with a 500 ms timeout at t = 100 s: SAFE until the first heartbeat
    watch = HeartbeatWatch(500, now=100.0)
    assert watch.state is ControllerState.SAFE and watch.check(101.0) is None
    # When the first heartbeat comes at 101 s, then silence
    event = watch.on_health(health(), 101.0)
    assert (event.name, event.reason, watch.state) == (EVENT_SAFE_EXIT, "first heartbeat", ControllerState.OK)
    assert event.safe_ms == pytest.approx(1000.0)
    assert watch.check(101.49) is None, "still inside the timeout"
    event = watch.check(101.6)
    # Then SAFE is entered once, saying how long the heartbeat has been missing
    assert (event.name, watch.state) == (EVENT_SAFE_ENTER, ControllerState.SAFE)
    assert event.silent_ms == pytest.approx(600.0)
    assert watch.check(105.0) is None, "entering SAFE is reported once"
    # When heartbeats resume at 103 s, and then the service says it stopped at 104 s
    event = watch.on_health(health(), 103.0)
    assert event.name == EVENT_SAFE_EXIT and event.safe_ms == pytest.approx(1400.0)
    event = watch.on_health(health(HealthStatus.STOPPED), 104.0)
    assert (event.name, event.reason, watch.service_stopped) == (EVENT_SAFE_ENTER, "service stopped", True)
    watch.finish(104.5)
    # Then 2 entries after the start, and 1.0 + 1.4 + 0.5 s in SAFE
    assert watch.safe_entries == 2
    assert watch.safe_seconds == pytest.approx(2.9)
    # And the line printed for a missing heartbeat says how long and the timeout
    fresh = HeartbeatWatch(500, now=0.0)
    fresh.on_health(health(), 0.0)
    assert describe_event(fresh.check(0.6), 500) == ("SAFE: no heartbeat for 600 ms (timeout 500 ms): every camera "
                                                     "is treated as deferred")


def test_heartbeat_timeout_must_be_positive():
    with pytest.raises(ValueError, match="heartbeat timeout should be > 0 ms, but got 0"):
        HeartbeatWatch(0, now=0.0)


class Recorder(ControllerObserver):
    def __init__(self):
        self.decisions, self.events = [], []

    def on_decision(self, message, record, action, state):
        self.decisions.append((message.camera_id, message.seq, action.value, state.value))

    def on_event(self, event):
        self.events.append(event.name)


@pytest.fixture
def publisher(zmq_context):
    socket = zmq_context.socket(zmq.PUB)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    yield socket, f"tcp://127.0.0.1:{port}"
    socket.close()


class Running:
    """controller.run() on a thread; the test publishes heartbeats until the controller has seen one."""

    def __init__(self, controller: Controller, recorder: Recorder, socket):
        self.summary = None
        self.thread = threading.Thread(target=self._run, args=(controller,), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not recorder.events and time.monotonic() < deadline:
            socket.send_multipart([HEALTH_TOPIC, encode_body(health())])
            time.sleep(0.05)
        # (with a short heartbeat timeout, SAFE may already have been entered again by the time this is read)
        assert recorder.events[:1] == [EVENT_SAFE_EXIT], "the controller never saw a heartbeat"

    def _run(self, controller: Controller) -> None:
        self.summary = controller.run()

    def join(self, timeout_s: float = 10.0) -> dict:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the controller did not end"
        return self.summary


def test_controller_follows_one_camera_exactly_and_ends_after_max_decisions(zmq_context, publisher):
    # Given a controller following camera 'cam1' only, ending after 3 decisions
    socket, endpoint = publisher
    recorder = Recorder()
    config = ControllerConfig(endpoint, cameras=("cam1",), heartbeat_timeout_ms=5000, max_decisions=3)
    with Controller(config, zmq_context, recorder) as controller:
        running = Running(controller, recorder, socket)
        # When 'cam10' (same topic prefix), a body that is not a message, and 4 decisions of 'cam1' arrive
        socket.send_multipart([topic_for("cam10"), encode_body(decision("cam10", 0, True))])
        socket.send_multipart([topic_for("cam1"), b"\xc1 not msgpack"])
        for seq in range(4):
            socket.send_multipart([topic_for("cam1"), encode_body(decision("cam1", seq, accept=seq != 1))])
        summary = running.join()
    # Then only cam1's first 3 decisions are taken; accepted ones are acted on, the deferred one held
    assert recorder.decisions == [("cam1", 0, "act", "ok"), ("cam1", 1, "hold", "ok"), ("cam1", 2, "act", "ok")]
    assert summary["ended_by"] == "max_decisions" and summary["decisions"] == 3
    assert summary["bad_messages"] == 1
    assert summary["actions"] == {"act": 2, "hold": 1}
    assert summary["cameras"] == {"cam1": {"decisions": 3, "accepted": 2, "deferred": 1, "labelled": 0}}


def test_controller_holds_accepted_decisions_while_safe_and_ends_on_the_stopped_heartbeat(zmq_context, publisher):
    # Given a controller with a 300 ms heartbeat timeout that ends when the service stops
    socket, endpoint = publisher
    recorder = Recorder()
    config = ControllerConfig(endpoint, heartbeat_timeout_ms=300, exit_on_stop=True, duration_s=20)
    with Controller(config, zmq_context, recorder) as controller:
        running = Running(controller, recorder, socket)
        # When the heartbeat stops for longer than the timeout and an accepted decision then arrives
        # (no heartbeat is sent from here on, so once SAFE is entered it stays so until the 'stopped' heartbeat)
        deadline = time.monotonic() + 5
        while recorder.events[-1:] != [EVENT_SAFE_ENTER] and time.monotonic() < deadline:
            time.sleep(0.05)
        socket.send_multipart([topic_for("cam"), encode_body(decision("cam", 0, True))])
        socket.send_multipart([HEALTH_TOPIC, encode_body(health(HealthStatus.STOPPED, {"decisions_accept": 1}))])
        summary = running.join()
    # Then SAFE was entered on the silence, the accepted decision is held, and the run ends on the service's stop
    # (a heartbeat of the start-up that the controller read over 300 ms after the one before is a silence too:
    # each adds one SAFE episode, which the summary must count)
    episodes = len(recorder.events) // 2
    assert episodes >= 1 and recorder.events == [EVENT_SAFE_EXIT, EVENT_SAFE_ENTER] * episodes, recorder.events
    assert recorder.decisions == [("cam", 0, "hold", "safe")]
    assert summary["ended_by"] == "service_stopped" and summary["state"] == "safe"
    assert summary["safe"]["entries"] == episodes and summary["service"]["counters"] == {"decisions_accept": 1}
    assert any(line.startswith("  SAFE entered 1 time(s)") for line in format_summary(summary))


def test_controller_rejects_a_bad_endpoint_and_bad_limits(zmq_context):
    with pytest.raises(ValueError, match="cannot connect to 'nowhere'"):
        Controller(ControllerConfig("nowhere"), zmq_context)
    with pytest.raises(ValueError, match="max_decisions should be >= 1, but got 0"):
        ControllerConfig("tcp://127.0.0.1:1", max_decisions=0)


def test_console_printer_prints_the_summary_with_nan_as_n_a(capsys):
    from trustvlm.pipelines.scoreboard import Scoreboard  # noqa: PLC0415

    summary = Scoreboard().summary()
    summary.update(seconds=1.0, ended_by="signal", state="safe", actions={}, bad_messages=0, truth_bad_rows=0,
                   safe={"entries": 0, "seconds": 1.0}, service=None)
    ConsolePrinter().on_summary(summary)
    out = capsys.readouterr().out
    assert "latency from capture to the controller: p50 n/a" in out and "service never heard from" in out
    assert not math.isnan(summary["seconds"])


def test_controller_counts_a_run_of_dropped_frames_as_each_of_its_frames(zmq_context, publisher):
    # Given a controller that ends after 6 decisions
    socket, endpoint = publisher
    recorder = Recorder()
    config = ControllerConfig(endpoint, heartbeat_timeout_ms=5000, max_decisions=6)
    with Controller(config, zmq_context, recorder) as controller:
        running = Running(controller, recorder, socket)
        # When seq 0 is accepted, one schema-1.2 message covers seq 1..4 as dropped, and seq 5 is accepted
        now = time.time_ns()
        run = DecisionMessage("cam", 1, now - 5_000_000, now - 2_000_000, Decision.DEFER, Reason.DROPPED, 0.5,
                              "trustvlm", "model", "bundle", seq_last=4, frames=4).stamped(now)
        for message in (decision("cam", 0, True), run, decision("cam", 5, True)):
            socket.send_multipart([topic_for("cam"), encode_body(message)])
        summary = running.join()
    # Then the 3 messages are the outcomes of 6 frames, and the run is held
    assert summary["ended_by"] == "max_decisions" and summary["decisions"] == 6
    assert summary["actions"] == {"act": 2, "hold": 4}
    assert summary["reasons"] == {"meets_threshold": 2, "dropped": 4}


def test_a_change_of_a_cameras_guarantee_is_an_event_and_the_summary_shows_it():
    from dataclasses import replace  # noqa: PLC0415

    from trustvlm.pipelines.controller import EVENT_GUARANTEE  # noqa: PLC0415

    class Events(ControllerObserver):
        def __init__(self):
            self.events = []

        def on_event(self, event):
            self.events.append(event)

    observer = Events()
    with zmq.Context() as context, Controller(ControllerConfig("tcp://127.0.0.1:1"), context, observer) as controller:
        states = [("ok", "unverified"), ("ok", "unverified"), ("watch", "unverified"), ("alarm", "unverified")]
        for seq, (monitor, audit) in enumerate(states):
            message = replace(decision("cam1", seq, accept=monitor != "alarm"), monitor=monitor, audit_state=audit)
            if monitor == "alarm":
                message = replace(message, reason=Reason.GUARANTEE_LOST)
            controller._handle(encode_body(message), time.time_ns(), time.monotonic())
        dropped = replace(decision("cam1", 9, accept=False), reason=Reason.DROPPED, label=None, class_id=None,
                          kappa=None)  # decided before scoring: carries no guarantee state, and is no news
        controller._handle(encode_body(dropped), time.time_ns(), time.monotonic())
        controller._handle(encode_body(decision("cam2", 0, accept=True)), time.time_ns(), time.monotonic())
        summary = controller.summary(1.0)
    guarantee = [e.reason for e in observer.events if e.name == EVENT_GUARANTEE]
    # a camera first seen ok is not news; each change after is, and a camera not watched at all never is
    assert guarantee == ["cam1: monitor watch / audit unverified (was monitor ok / audit unverified)",
                         "cam1: monitor alarm / audit unverified (was monitor watch / audit unverified)"]
    assert summary["guarantees"]["cam1"] == {"monitor": "alarm", "audit": "unverified"}
    assert summary["guarantees"]["cam2"] == {"monitor": "", "audit": ""}
    assert any("monitor alarm, audit unverified" in line for line in format_summary(summary))
    assert describe_event(observer.events[-1], 500).startswith("GUARANTEE: cam1: monitor alarm")
