"""The feedback socket's requests: what is refused (in one line, counted) and what reaches the watch."""

from __future__ import annotations

import json
from contextlib import contextmanager

import msgpack
import pytest
import zmq

from trustvlm.runtime.monitor.feedback import (FEEDBACK_SCHEMA_VERSION, MAX_ITEMS, FeedbackServer,
                                               check_feedback_address, encode_request, parse_request)
from trustvlm.runtime.schema import SCHEMA_DIR


@contextmanager
def serving(watch, timeout_ms: int = 20_000):
    """A running FeedbackServer over `watch` on loopback; yields (server, ask), ask(body) -> the answer."""
    with zmq.Context() as context:
        server = FeedbackServer("tcp://127.0.0.1:*", watch, context)
        endpoint = server.open()
        server.start()
        client = context.socket(zmq.REQ)
        client.setsockopt(zmq.LINGER, 0)
        client.setsockopt(zmq.RCVTIMEO, timeout_ms)
        client.connect(endpoint)

        def ask(body: bytes) -> dict:
            client.send(body)
            return msgpack.unpackb(client.recv(), raw=False)

        try:
            yield server, ask
        finally:
            client.close()
            server.stop()


def item(**changes) -> dict:
    return {"camera_id": "cam1", "seq": 4, "label": "shirt", **changes}


@pytest.mark.parametrize("body, message", [
    (b"\xc1", "neither msgpack nor JSON"),
    (msgpack.packb([1, 2]), "expected a map"),
    (encode_request("labels", items=[]), "1 to 1000 labels"),
    (encode_request("labels", items=[item()] * (MAX_ITEMS + 1)), "1 to 1000 labels"),
    (encode_request("labels", items=[item(seq=-1)]), "seq should be an integer >= 0"),
    (encode_request("labels", items=[item(seq=True)]), "seq should be an integer >= 0"),
    (encode_request("labels", items=[item(label="")]), "label should be a class name"),
    (encode_request("labels", items=[item(camera_id="a/b")]), "camera_id should match"),
    (encode_request("labels", items=[{**item(), "extra": 1}]), "expected a map with keys camera_id, seq, label"),
    (encode_request("reset", camera_id="cam1", operator=""), "operator should be a name"),
    (encode_request("reset", camera_id="cam1"), "missing keys"),
    (encode_request("delete", camera_id="cam1"), "kind should be 'labels' or 'reset'"),
    (msgpack.packb({"schema_version": "2.0", "kind": "reset", "camera_id": "c", "operator": "o"}), "schema"),
])
def test_requests_outside_the_schema_are_refused_with_one_line(body, message):
    with pytest.raises(ValueError, match=message):
        parse_request(body)


def test_labels_and_resets_parse_from_msgpack_and_json_and_the_version_is_the_schema_documents():
    assert FEEDBACK_SCHEMA_VERSION == json.loads((SCHEMA_DIR / "feedback_v1.json").read_text())["version"]
    kind, items = parse_request(encode_request("labels", items=[item(), item(seq=5, label="shoe")]))
    assert kind == "labels" and [(i.camera_id, i.seq, i.label) for i in items] == [("cam1", 4, "shirt"),
                                                                                   ("cam1", 5, "shoe")]
    body = json.dumps({"schema_version": "1.0", "kind": "reset", "camera_id": "cam1", "operator": "alice"}).encode()
    assert parse_request(body) == ("reset", ("cam1", "alice"))


def test_off_this_machine_the_socket_needs_curve():
    for address in ("tcp://127.0.0.1:5557", "tcp://localhost:5557", "tcp://[::1]:5557", "ipc:///tmp/feedback"):
        check_feedback_address(address, curve=False)
    with pytest.raises(ValueError, match="must be on loopback"):
        check_feedback_address("tcp://*:5557", curve=False)
    check_feedback_address("tcp://*:5557", curve=True)


def test_the_server_answers_each_request_and_counts_the_refused_ones():
    class Watch:
        def __init__(self):
            self.labels, self.resets = [], []

        def feedback_many(self, items):
            self.labels.extend(items)
            return ["matched" if seq == 4 else "unmatched" for _, seq, _ in items]

        def reset(self, camera_id, who):
            self.resets.append((camera_id, who))
            return True

    watch = Watch()
    with serving(watch) as (server, ask):
        assert ask(encode_request("labels", items=[item(), item(seq=9)])) == {
            "kind": "outcomes", "outcomes": {"matched": 1, "unmatched": 1}}
        assert ask(encode_request("reset", camera_id="cam1", operator="alice")) == {"kind": "reset", "done": True}
        refused = ask(b"\xc1")
        assert refused["kind"] == "error" and "neither msgpack nor JSON" in refused["error"]
    assert watch.labels == [("cam1", 4, "shirt"), ("cam1", 9, "shirt")]
    assert watch.resets == [("cam1", "operator 'alice' (feedback socket)")] and server.rejected == 1


@pytest.mark.parametrize("kind", [[1], {"a": 1}])
def test_a_kind_that_is_no_string_is_refused_in_one_line(kind):
    with pytest.raises(ValueError, match="kind should be 'labels' or 'reset'"):
        parse_request(json.dumps({"schema_version": "1.0", "kind": kind}).encode())


def test_the_socket_stays_up_after_an_odd_request_and_a_failure_of_the_watch():
    class Watch:
        def __init__(self):
            self.fail = True

        def feedback_many(self, items):
            if self.fail:
                raise RuntimeError("state file unwritable")
            return ["matched"] * len(items)

    watch = Watch()
    with serving(watch) as (server, ask):
        assert ask(b'{"schema_version": "1.0", "kind": [1]}')["kind"] == "error"
        failed = ask(encode_request("labels", items=[item()]))
        assert failed["kind"] == "error" and "state file unwritable" in failed["error"]
        watch.fail = False
        assert ask(encode_request("labels", items=[item()])) == {"kind": "outcomes", "outcomes": {"matched": 1}}
        assert server.alive
