"""Hostile messages against `trustvlm serve` as a real process on loopback: it stays up, never accepts them,
accounts for every one, and still answers a good frame correctly afterwards."""

from __future__ import annotations

import time
from collections import Counter

import msgpack
import pytest
import zmq

from trustvlm.runtime.frames import Encoding, FrameHeader, pack_frame_header, send_frame
from trustvlm.runtime.messages import Decision, HealthStatus, Reason

from . import hostile
from .conftest import assert_accounting_by_name, decide_until_scored, fault_image, outcome_total

pytestmark = pytest.mark.timeout(120)
HOSTILE_COUNT = 400
LIMIT_FLAGS = ("--max-message-bytes", str(hostile.LIMITS["max_message_bytes"]), "--max-width",
               str(hostile.LIMITS["max_width"]), "--max-height", str(hostile.LIMITS["max_height"]))


def send_good(sender, seq: int) -> None:
    image = fault_image()
    send_frame(sender, FrameHeader("good", seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"), image.tobytes())


def good_parts(seq: int) -> list[bytes]:
    image = fault_image()
    return [pack_frame_header(FrameHeader("good", seq, time.time_ns(), Encoding.RAW, image.shape, "uint8")),
            image.tobytes()]


def sequenced(messages: list[hostile.Hostile]) -> list[hostile.Hostile]:
    """The registry's plain schema-1 headers of camera 'evil' (seq 0) get seq = position + 1.

    Without it, every such frame after the first would be deferred ``duplicate`` before the decoder
    saw it, and the test would no longer show what the decoder does with a damaged image.
    """
    result = []
    for position, message in enumerate(messages):
        parts = message.parts
        try:
            data = msgpack.unpackb(parts[0], raw=False)
        except Exception:  # noqa: BLE001 - hostile bytes: anything that is not a plain map stays as it is
            data = None
        if (isinstance(data, dict) and data.get("camera_id") == hostile.CAMERA and data.get("seq") == 0
                and hostile.pack(data) == parts[0]):
            parts = [hostile.pack({**data, "seq": position + 1}), *parts[1:]]
        result.append(hostile.Hostile(message.kind, parts))
    return result


def test_hostile_messages_never_kill_the_service_nor_get_accepted(serve, subscribe, push, fault_export,
                                                                  make_fault_bundle, tmp_path):
    # Given the service on a bundle that accepts every frame it can score (threshold -10)
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")),
                    *LIMIT_FLAGS)
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    # When a bounded stream of hostile messages arrives, every kind in the registry many times
    messages = sequenced([m for m in hostile.hostile_messages(HOSTILE_COUNT, seed=1) if m.parts])  # none of 0 parts
    for message in messages:
        sender.send_multipart(message.parts)
    # And then one good frame, replayed twice, a newer one and an older one
    replayed = good_parts(0)
    for count, parts in enumerate((replayed, replayed, replayed, good_parts(5), good_parts(3)), start=1):
        sender.send_multipart(parts)
        # each waits for the previous decision, so a newer frame cannot supersede it however slow the machine is
        assert subscriber.wait_for(lambda s: sum(d.camera_id == "good" for d in s.decisions) == count, 30), \
            f"no decision for good frame {count}; stderr:\n{service.stderr()[-3000:]}"
    # Then the service is alive and accounted for every message: a decision or a counted rejection
    assert service.process.poll() is None, service.stderr()[-3000:]
    sent = len(messages) + 5
    assert subscriber.wait_for(lambda s: outcome_total(s.health[-1].counters) == sent, 10), \
        f"sent {sent}, counters {subscriber.health[-1].counters}"
    counters = subscriber.health[-1].counters
    assert counters["received"] == sent and subscriber.health[-1].status is HealthStatus.OK, counters
    # received = decisions + rejected + suppressed + pending, each a sum of its named parts; nothing pending now
    assert_accounting_by_name(counters)
    assert counters["pending"] == 0, counters
    # And nothing but the good frame was accepted
    good = [d for d in subscriber.decisions if d.camera_id == "good"]
    assert [(d.seq, d.reason) for d in good] == [(0, Reason.MEETS_THRESHOLD), (0, Reason.DUPLICATE),
                                                 (0, Reason.DUPLICATE), (5, Reason.MEETS_THRESHOLD),
                                                 (3, Reason.OUT_OF_ORDER)]
    accepted = [(d.camera_id, d.seq, d.detail) for d in subscriber.decisions
                if d.camera_id != "good" and d.decision is Decision.ACCEPT]
    assert accepted == [], accepted
    assert len(subscriber.decisions) == counters["decisions_accept"] + counters["decisions_defer"]
    reasons = Counter(d.reason.value for d in subscriber.decisions if d.camera_id != "good")
    print(f"\n{len(messages)} hostile messages of {len(hostile.MAKERS)} kinds: {counters['rejected']} rejected "
          f"{ {k[9:]: v for k, v in counters.items() if k.startswith('rejected_')} }, defer {dict(reasons)}, "
          f"accepted 0")
    assert service.stop() == 0, service.stderr()[-3000:]


def test_a_message_over_the_hard_size_cap_drops_only_that_connection(serve, subscribe, push, fault_export,
                                                                    make_fault_bundle, tmp_path):
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")),
                    *LIMIT_FLAGS)
    subscriber = subscribe(service.publish)
    # Given a sender that sends a part over 4 x max-message-bytes (ZeroMQ's MAXMSGSIZE)
    rogue = push(service.ingest)
    rogue.send_multipart([hostile.pack(hostile.header()), bytes(4 * hostile.LIMITS["max_message_bytes"] + 1)])
    # When another sender sends a good frame
    other = push(service.ingest)  # kept referenced: a collected socket with LINGER 0 drops what it queued
    send_good(other, 0)
    # Then that frame is decided; the rogue message never reached the service (nothing to count)
    assert subscriber.wait_for(lambda s: any(d.camera_id == "good" for d in s.decisions), 20), \
        (subscriber.health[-1].counters, service.stderr()[-2000:])
    assert subscriber.decisions[-1].decision is Decision.ACCEPT
    assert subscriber.wait_for(lambda s: s.health[-1].counters.get("received") == 1, 20), subscriber.health[-1]
    # And the rogue socket reconnects: a good frame from it is decided too
    send_good(rogue, 1)
    assert subscriber.wait_for(lambda s: [d.seq for d in s.decisions if d.camera_id == "good"] == [0, 1], 20)
    assert service.stop() == 0


def test_frames_from_the_future_are_deferred_stale(serve, subscribe, push, fault_export, make_fault_bundle,
                                                    tmp_path):
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")),
                    "--staleness-ms", "500")
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    image = fault_image()

    def send(seq: int, offset_s: float = 0.0) -> None:
        send_frame(sender, FrameHeader("cam", seq, time.time_ns() + int(offset_s * 1e9), Encoding.RAW, image.shape,
                                       "uint8"), image.tobytes())

    # Given a frame an hour ahead (forged or unsynchronized clock): deferred stale
    send(0, offset_s=3600.0)
    assert subscriber.wait_for(lambda s: len(s.decisions) == 1, 10)
    assert subscriber.decisions[0].reason is Reason.STALE and "in the future" in subscriber.decisions[0].detail
    # Then a frame of now is scored (each outcome checked against the age the service measured)
    decision, seen = decide_until_scored(subscriber, send, "cam", 1, 500)
    assert decision.reason is Reason.MEETS_THRESHOLD, seen
    assert service.stop() == 0


def test_a_rep_ingest_answers_hostile_requests_and_stays_up(serve, subscribe, fault_export, make_fault_bundle,
                                                            tmp_path, zmq_context):
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")),
                    "--ingest-socket", "rep", *LIMIT_FLAGS)
    subscriber = subscribe(service.publish)
    request = zmq_context.socket(zmq.REQ)
    request.setsockopt(zmq.LINGER, 0)
    request.setsockopt(zmq.RCVTIMEO, 5000)
    request.connect(service.ingest)
    # Given REQ senders (imagezmq's default) sending hostile messages: each still gets its b'OK'
    messages = [m for m in hostile.hostile_messages(66, seed=2) if m.parts and len(m.parts[-1]) < 400_000]
    for message in messages:
        request.send_multipart(message.parts)
        assert request.recv() == b"OK", message.kind
    request.close(0)
    assert service.process.poll() is None
    assert subscriber.wait_for(lambda s: outcome_total(s.health[-1].counters) == len(messages), 10), \
        subscriber.health[-1].counters
    assert not [d for d in subscriber.decisions if d.decision is Decision.ACCEPT]
    assert service.stop() == 0


def test_damaged_real_frames_are_deferred_by_the_running_service(serve, subscribe, push, fault_export,
                                                                 make_fault_bundle, tmp_path, vtest_frames):
    # Given the accept-everything bundle and the damaged-image corpus of one 768 x 576 video frame
    from . import damaged  # noqa: PLC0415

    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")))
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    corpus = [(family, encoding, payload) for family, _, encoding, payload in damaged.damaged_images(vtest_frames[0])]
    corpus += [("original", encoding, payload) for encoding, payload in damaged.originals(vtest_frames[0]).values()]
    # When each is sent, waiting for its decision (so none is superseded), with increasing seq
    for seq, (family, encoding, payload) in enumerate(corpus):
        sender.send_multipart([pack_frame_header(FrameHeader("cam", seq, time.time_ns(), Encoding(encoding))),
                               payload])
        assert subscriber.wait_for(lambda s: len(s.decisions) == seq + 1, 30), (family, service.stderr()[-2000:])
    # Then every damaged image is deferred before scoring, and every original is accepted
    outcomes: dict[str, Counter] = {}
    for (family, _, _), decision in zip(corpus, subscriber.decisions):
        outcomes.setdefault(family, Counter())[decision.reason.value] += 1
    originals = outcomes.pop("original")
    assert originals == {"meets_threshold": len(damaged.originals(vtest_frames[0]))}, originals
    for family, counter in outcomes.items():
        assert set(counter) <= {"undecodable", "too_large"}, (family, counter)
    print(f"\n{sum(map(sum, map(Counter.values, outcomes.values())))} damaged frames through the service: "
          f"{ {family: dict(counter) for family, counter in sorted(outcomes.items())} }; originals {dict(originals)}")
    assert service.stop() == 0
