"""Wire messages: round trips, the version rule, and agreement with the schema documents."""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields, replace

import msgpack
import pytest

from trustvlm.runtime.frames import Encoding, FrameHeader, PixelFormat, pack_frame_header
from trustvlm.contract.scores import SCORES
from trustvlm.contract.files import json_safe as _json_safe
from trustvlm.runtime.messages import (Decision, DecisionMessage, HealthMessage, HealthStatus, Reason, TopKEntry,
                                       WireFormat, decode_body, encode_body, topic_for)
from trustvlm.runtime.schema import (DECISION_SCHEMA, DECISION_SCHEMA_VERSION, FRAME_SCHEMA, FRAME_SCHEMA_VERSION,
                                     MessageError, SchemaVersionError)

pytestmark = pytest.mark.timeout(30)


def validate(instance, schema: dict, root: dict) -> None:
    """The JSON Schema subset our schema documents use (type, enum, const, pattern, min/max, required,
    additionalProperties, properties, items, minItems/maxItems, oneOf, $ref, if/then in allOf)."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return validate(instance, target, root)
    if "oneOf" in schema:
        passed = 0
        for option in schema["oneOf"]:
            try:
                validate(instance, option, root)
                passed += 1
            except AssertionError:
                pass
        assert passed == 1, f"{instance!r} matches {passed} of the oneOf options"
    types = schema.get("type")
    if types is not None:
        checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
                  "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
                  "boolean": lambda v: isinstance(v, bool),
                  "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert any(checks[t](instance) for t in ([types] if isinstance(types, str) else types)), \
            f"{instance!r} is not of type {types}"
    if "const" in schema:
        assert instance == schema["const"], f"{instance!r} != {schema['const']!r}"
    if "enum" in schema:
        assert instance in schema["enum"], f"{instance!r} not in {schema['enum']}"
    if "pattern" in schema and isinstance(instance, str):
        assert re.search(schema["pattern"], instance), f"{instance!r} does not match {schema['pattern']}"
    if isinstance(instance, (int, float)) and not isinstance(instance, bool):
        assert instance >= schema.get("minimum", -math.inf) and instance <= schema.get("maximum", math.inf)
    if isinstance(instance, dict):
        missing = set(schema.get("required", ())) - set(instance)
        assert not missing, f"missing required keys {sorted(missing)}"
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            extra = set(instance) - set(properties)
            assert not extra, f"keys not in the schema: {sorted(extra)}"
        for key, value in instance.items():
            if key in properties:
                validate(value, properties[key], root)
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(value, schema["additionalProperties"], root)
        for rule in schema.get("allOf", ()):
            try:
                validate(instance, rule["if"], root)
            except AssertionError:
                continue
            validate(instance, rule["then"], root)
    if isinstance(instance, list):
        assert schema.get("minItems", 0) <= len(instance) <= schema.get("maxItems", math.inf)
        for item in instance:
            validate(item, schema.get("items", {}), root)


def a_decision(**changes) -> DecisionMessage:
    message = DecisionMessage(
        camera_id="cam-1", seq=7, capture_ts_ns=1_700_000_000_000_000_000, receipt_ts_ns=1_700_000_000_002_000_000,
        decision=Decision.ACCEPT, reason=Reason.MEETS_THRESHOLD, threshold=0.75, score_name="trustvlm",
        model_id="demo_fmnist@sha256:e212d4edfba9", bundle_id="demo_fmnist:0123456789ab", label="trouser",
        class_id=1, kappa=1.5, msp=0.9, s_ii=0.6,
        top_k=(TopKEntry(1, "trouser", 0.9), TopKEntry(3, "dress", 0.05)))
    return replace(message, **changes)


def test_frame_header_round_trips_through_msgpack():
    header = FrameHeader("cam-1", 3, 123, Encoding.RAW, (4, 5, 3), "uint8", PixelFormat.RGB8)
    data = msgpack.unpackb(pack_frame_header(header), raw=False)
    assert FrameHeader.from_dict(data) == header
    jpeg = FrameHeader("cam-1", 4, 124, Encoding.JPEG)
    assert FrameHeader.from_dict(jpeg.to_dict()) == jpeg
    assert "shape" not in jpeg.to_dict(), "raw-only keys are left out of a JPEG header"


@pytest.mark.parametrize("wire_format", list(WireFormat))
def test_decision_round_trips_in_both_wire_formats(wire_format):
    message = a_decision().stamped(1_700_000_000_010_000_000)
    assert message.latency_from_capture_ms == pytest.approx(10.0), "10 ms from capture to publish"
    assert message.latency_from_receipt_ms == pytest.approx(8.0), "8 ms from receipt to publish"
    assert decode_body(encode_body(message, wire_format)) == message
    assert DecisionMessage.from_dict(message.to_dict()) == message


def test_infinite_threshold_and_null_scores_survive_json():
    # Given a frame deferred without a score under a bundle that has no feasible threshold
    message = a_decision(decision=Decision.DEFER, reason=Reason.NO_THRESHOLD, threshold=math.inf, label=None,
                         class_id=None, kappa=None, msp=None, s_ii=None, top_k=())
    body = encode_body(message, WireFormat.JSON)
    # Then the JSON is strict (no Infinity literal) and decodes to an equal message
    assert json.loads(body)["threshold"] == "inf"
    assert decode_body(body) == message


def test_health_round_trips():
    health = HealthMessage(HealthStatus.DEGRADED, 5, 1.5, "m@x", "m:y", math.inf, 2, {"received": 3}, "boom")
    for wire_format in WireFormat:
        assert decode_body(encode_body(health, wire_format)) == health


def test_accept_goes_only_with_meets_threshold():
    with pytest.raises(ValueError, match="decision accept cannot go with reason stale"):
        a_decision(reason=Reason.STALE)
    with pytest.raises(ValueError, match="decision defer cannot go with reason meets_threshold"):
        a_decision(decision=Decision.DEFER)


def test_other_major_versions_are_rejected_and_newer_minors_may_add_keys():
    data = FrameHeader("cam", 1, 2, Encoding.PNG).to_dict()
    with pytest.raises(SchemaVersionError, match=r"schema_version 2\.0 is not supported; this service reads 1\.x"):
        FrameHeader.from_dict({**data, "schema_version": "2.0"})
    with pytest.raises(MessageError, match=r"unknown keys \['exposure_us'\] in schema 1\.0"):
        FrameHeader.from_dict({**data, "exposure_us": 100})
    newer = FrameHeader.from_dict({**data, "schema_version": "1.7", "exposure_us": 100})
    assert newer.schema_version == "1.7" and newer.camera_id == "cam"
    with pytest.raises(MessageError, match="should be a 'major.minor' string"):
        FrameHeader.from_dict({**data, "schema_version": 1})


@pytest.mark.parametrize("change, message", [
    ({"camera_id": "cam/1"}, "camera_id should match"),
    ({"camera_id": "_health"}, "camera_id should match"),
    ({"seq": -1}, r"seq should be an integer in \[0, "),
    ({"seq": True}, "seq should be an integer"),
    ({"encoding": "webp"}, r"encoding should be one of \['jpeg', 'png', 'raw'\], but got 'webp'"),
    ({"encoding": "raw", "shape": [4, 4, 2], "dtype": "uint8"}, r"raw shape should be .* but got \[4, 4, 2\]"),
    ({"encoding": "raw", "shape": [4, 4], "dtype": "float32"}, r"raw dtype should be one of \['uint8'\]"),
    # Python's `$` matches before a final newline and `\d` any Unicode digit: both are closed off
    ({"camera_id": "cam\n"}, "camera_id should match"),
    ({"schema_version": "1.0\n"}, "should be a 'major.minor' string"),
    ({"schema_version": "\u0661.0"}, "should be a 'major.minor' string"),  # Arabic-Indic digit one
    ({"seq": 2**63}, r"seq should be an integer in \[0, 9223372036854775807\]"),
])
def test_bad_frame_headers_say_what_was_expected(change, message):
    with pytest.raises(MessageError, match=message):
        FrameHeader.from_dict({**FrameHeader("cam", 1, 2, Encoding.PNG).to_dict(), **change})


def test_messages_follow_the_schema_documents():
    assert FRAME_SCHEMA["version"] == FRAME_SCHEMA_VERSION == "1.0"
    # 1.1: reasons duplicate, out_of_order; 1.2: out_of_distribution, runs of superseded frames (seq_last, frames);
    # 1.3: no_bundle (a camera the camera map does not route); 1.4: topics end with '/'; 1.5: guarantee_lost, the
    # gate's typicality, the camera's monitor and audit state, audit marks, and the heartbeat's monitors
    assert DECISION_SCHEMA["version"] == DECISION_SCHEMA_VERSION == "1.5"
    raw = FrameHeader("cam", 1, 2, Encoding.RAW, (2, 3), "uint8", PixelFormat.MONO8).to_dict()
    validate(raw, FRAME_SCHEMA, FRAME_SCHEMA)
    with pytest.raises(AssertionError, match="missing required keys"):
        validate({k: v for k, v in raw.items() if k != "shape"}, FRAME_SCHEMA, FRAME_SCHEMA)
    defer = a_decision(decision=Decision.DEFER, reason=Reason.DROPPED, label=None, class_id=None, kappa=None,
                       msp=None, s_ii=None, top_k=(), threshold=math.inf)
    watched = a_decision(typicality=-0.5, monitor="watch", audit_state="verified", audit=True)
    lost = replace(defer, reason=Reason.GUARANTEE_LOST, monitor="alarm", audit_state="unverified", typicality=-0.2)
    for message in (a_decision().stamped(5), defer.stamped(6), watched.stamped(7), lost.stamped(8)):
        validate(json.loads(encode_body(message, WireFormat.JSON)), DECISION_SCHEMA, DECISION_SCHEMA)
        assert decode_body(encode_body(message)) == message
    monitors = ({"camera_id": "cam", "bundle_id": "m:y", "monitor": "alarm", "evidence": 0.3, "frames": 40,
                 "audit_state": "violated", "labels": 12, "risk_lower": 0.07, "risk_upper": 0.4},)
    health = HealthMessage(HealthStatus.OK, 5, 1.5, "m@x", "m:y", 0.5, 2, {"received": 3}, monitors=monitors)
    validate(health.to_dict(), DECISION_SCHEMA, DECISION_SCHEMA)
    assert decode_body(encode_body(health)) == health
    # a 1.4 message has none of the 1.5 keys: read as no typicality, not watched, not audited
    old = {k: v for k, v in a_decision().to_dict().items() if k not in ("typicality", "monitor", "audit_state", "audit")}
    old["schema_version"] = "1.4"
    assert decode_body(json.dumps(_json_safe(old)).encode()) == replace(a_decision(), schema_version="1.4")
    with pytest.raises(MessageError, match="monitor should be one of"):
        decode_body(encode_body(a_decision()).replace(b"\xa7monitor\xa0", b"\xa7monitor\xa1x"))
    with pytest.raises(ValueError, match="only an accepted frame is drawn for audit"):
        replace(defer, audit=True)
    # The schema's enums and keys are the code's
    decision_schema = DECISION_SCHEMA["$defs"]["decision"]["properties"]
    assert decision_schema["reason"]["enum"] == [r.value for r in Reason]
    assert decision_schema["decision"]["enum"] == [d.value for d in Decision]
    assert decision_schema["score_name"]["enum"] == [*SCORES, ""]  # every score a bundle may choose; "": no_bundle
    assert set(decision_schema) == {f.name for f in fields(DecisionMessage)} | {"kind"}
    assert set(DECISION_SCHEMA["$defs"]["health"]["properties"]) == {f.name for f in fields(HealthMessage)} | {"kind"}
    assert set(FRAME_SCHEMA["properties"]) == {f.name for f in fields(FrameHeader)}
    assert FRAME_SCHEMA["properties"]["encoding"]["enum"] == [e.value for e in Encoding]


def test_a_cameras_topic_subscribes_to_that_camera_exactly_through_real_sockets():
    import zmq  # noqa: PLC0415

    with zmq.Context() as context, context.socket(zmq.PUB) as pub, context.socket(zmq.SUB) as exact, \
            context.socket(zmq.SUB) as old_style:
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        for sub, topic in ((exact, topic_for("cam1")), (old_style, b"trust/cam1")):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
            sub.setsockopt(zmq.RCVTIMEO, 10_000)
            sub.connect(f"tcp://127.0.0.1:{port}")
        # a subscription takes effect asynchronously: publish a marker until both subscribers have one
        poller = zmq.Poller()
        for sub in (exact, old_style):
            poller.register(sub, zmq.POLLIN)
        ready = set()
        while len(ready) < 2:
            pub.send_multipart([topic_for("cam1"), b"marker"])
            for sub, _ in poller.poll(50):
                sub.recv_multipart()
                ready.add(sub)
        pub.send_multipart([topic_for("cam10"), b"ten"])
        pub.send_multipart([topic_for("cam1"), b"one"])

        def after_markers(sub) -> list[bytes]:  # one connection keeps its order: markers, then what follows
            while (message := sub.recv_multipart())[1] == b"marker":
                pass
            return message

        assert after_markers(exact) == [b"trust/cam1/", b"one"]  # cam10's never reaches the exact subscriber
        assert after_markers(old_style) == [b"trust/cam10/", b"ten"]  # the prefix before 1.4 still gets both
        assert old_style.recv_multipart() == [b"trust/cam1/", b"one"]


def test_topics_and_unknown_bodies():
    assert topic_for("cam-1") == b"trust/cam-1/"
    with pytest.raises(MessageError, match=r"body kind should be one of \['decision', 'health'\]"):
        decode_body(msgpack.packb({"kind": "frame"}))
    with pytest.raises(MessageError, match="neither msgpack nor JSON"):
        decode_body(b"{not json")


def test_a_run_of_dropped_frames_round_trips_and_a_1_1_message_reads_as_one_frame():
    run = a_decision(decision=Decision.DEFER, reason=Reason.DROPPED, label=None, class_id=None, kappa=None, msp=None,
                     s_ii=None, top_k=(), seq=4, seq_last=9, frames=5).stamped(7)
    for wire_format in WireFormat:
        assert decode_body(encode_body(run, wire_format)) == run
    validate(json.loads(encode_body(run, WireFormat.JSON)), DECISION_SCHEMA, DECISION_SCHEMA)
    # A 1.1 message (no seq_last, no frames) is the outcome of one frame
    old = {k: v for k, v in a_decision().stamped(5).to_dict().items() if k not in ("seq_last", "frames")}
    message = DecisionMessage.from_dict({**old, "schema_version": "1.1"})
    assert (message.seq_last, message.frames) == (None, 1)
    # Only a dropped message covers a run, and a run goes forward
    with pytest.raises(ValueError, match="only a dropped run has seq_last"):
        a_decision(seq=4, seq_last=9, frames=5)
    with pytest.raises(MessageError, match="frames should be an integer"):
        DecisionMessage.from_dict({**run.to_dict(), "frames": "5"})


def test_changed_is_replace_with_the_same_checks():
    message = a_decision()
    assert message.changed(monitor="watch", audit=True) == replace(message, monitor="watch", audit=True)
    assert message.changed(monitor="watch") is not message and message.monitor == ""
    with pytest.raises(ValueError, match="cannot go with reason"):
        message.changed(decision=Decision.DEFER)
    with pytest.raises(TypeError, match="no fields"):
        message.changed(monitr="ok")
