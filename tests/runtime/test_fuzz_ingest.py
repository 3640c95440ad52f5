"""Property tests of the ingest parser and decoder against hostile input (hypothesis), in process.

The pipeline under test is the service's own: ``parse_message`` -> (frame) ``BundleScorer.decide``
or (notice) ``BundleScorer.defer`` -> ``encode_body`` in both wire formats. The scorer is the fault
model with threshold -10, which *accepts every frame it can score*: so a bad message that slipped
through the checks would show up as an accept. Oracles:

* no exception anywhere (crashes: 0);
* a message from the hostile registry (tests/runtime/hostile.py) is a counted rejection or a defer
  (accepts on bad input: 0); a valid edge case is accepted (the oracle is not vacuous);
* for arbitrary msgpack headers, the parser agrees with a reference reading of schemas/frame_v1.json
  (``hostile.reference_problem``).

The figures (inputs, crashes, accepts on bad input, outcomes) are printed at the end of the module.
``TRUSTVLM_FUZZ_SCALE=10`` runs ten times as many examples.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter

import cv2
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustvlm.calibration.bundle import write_bundle
from trustvlm.contract.manifest import read_manifest
from trustvlm.runtime.frames import Encoding, FrameHeader, Notice, ReceivedFrame
from trustvlm.runtime.ingest.ingest import FrameLimits, Rejection
from trustvlm.runtime.messages import Decision, Reason, WireFormat, decode_body, encode_body
from trustvlm.runtime.schema import BODY_UNPACK_LIMITS, MessageError
from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer
from trustvlm.runtime.ingest.wire import ImagezmqNamer, parse_message

from . import hostile
from .conftest import FAULT_CLASSES, make_info

pytestmark = pytest.mark.timeout(600)
SCALE = int(os.environ.get("TRUSTVLM_FUZZ_SCALE", "1"))
LIMITS = FrameLimits(**hostile.LIMITS)
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def stats(request):
    """Counts per test; printed (inputs, crashes, accepts on bad input, outcomes) when the module ends."""
    counts: dict[str, Counter] = {}
    yield counts
    lines, total, totals = [], Counter(), ("inputs", "crashes", "bad_accepts")
    for name, counter in counts.items():
        total.update({k: v for k, v in counter.items() if k in totals})
        outcomes = {k: v for k, v in sorted(counter.items()) if k not in totals}
        lines.append(f"fuzz {name}: {counter['inputs']} inputs, {counter['crashes']} crashes, "
                     f"{counter['bad_accepts']} accepts on bad input; outcomes {outcomes}")
    lines.append(f"fuzz total: {total['inputs']} inputs, {total['crashes']} crashes, "
                 f"{total['bad_accepts']} accepts on bad input")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and counts:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)


@pytest.fixture(scope="module")
def scorer(fault_export, tmp_path_factory):
    """The fault model's scorer with threshold -10: every frame it can score is accepted."""
    manifest = read_manifest(fault_export)
    rng = np.random.default_rng(0)
    bundle = tmp_path_factory.mktemp("fuzz") / "bundle"
    write_bundle(bundle, rng.normal(size=(3, 8)), rng.normal(size=(3, 8)), make_info(manifest, FAULT_CLASSES, -10.0))
    return load_scorer(fault_export, bundle, ScorerConfig(threads=1))


def outcome(parts: list[bytes], scorer, namer: ImagezmqNamer | None = None) -> tuple[str, object]:
    """("rejected" | "defer:<reason>" | "accept", the parse result), after serializing the decision."""
    result = parse_message(parts, 1_700_000_000_000_000_000, LIMITS, namer or ImagezmqNamer())
    if isinstance(result, Rejection):
        return "rejected", result
    decision = scorer.defer(result) if isinstance(result, Notice) else scorer.decide([result])[0]
    for wire_format in WireFormat:  # the publisher must be able to send whatever came out
        assert decode_body(encode_body(decision, wire_format)).seq == decision.seq
    if decision.decision is Decision.ACCEPT:
        return "accept", result
    return f"defer:{decision.reason.value}", result


def record(counter: Counter, label: str, bad: bool) -> None:
    counter["inputs"] += 1
    counter[label.split(":")[0] if label.startswith("defer") else label] += 1
    counter["bad_accepts"] += bad and label == "accept"


@settings(FUZZ, max_examples=800 * SCALE)
@given(kind=st.sampled_from(sorted(hostile.MAKERS)), seed=st.integers(0, 2**32 - 1))
def test_hostile_messages_are_rejected_or_deferred_never_accepted(stats, scorer, kind, seed):
    counter = stats.setdefault("hostile registry", Counter())
    message = hostile.make(kind, seed)
    try:
        label, result = outcome(message.parts, scorer)
    except Exception:
        counter["crashes"] += 1
        raise
    record(counter, label, bad=True)
    assert label != "accept", f"{kind} (seed {seed}) was accepted: {result}"


@settings(FUZZ, max_examples=300 * SCALE)
@given(family=st.sampled_from(sorted(hostile.DAMAGE_FAMILIES)), seed=st.integers(0, 2**32 - 1),
       size=st.integers(8, 160), pick=st.integers(0, 63))
def test_damaged_images_are_never_scored_even_when_opencv_decodes_them(stats, scorer, family, seed, size, pick):
    """Damaged-but-decodable images: the strict decoder is in the loop, OpenCV only tells how many it would take."""
    counter = stats.setdefault("damaged images", Counter())
    rng = random.Random(seed)
    originals = hostile.damaged.originals(hostile.smooth_image(rng, size))
    name = sorted(n for n, (encoding, _) in originals.items() if family.startswith(encoding))[pick % (
        2 if family.startswith("png") else 5)]
    encoding, original = originals[name]
    copies = [c for c in hostile.DAMAGE_FAMILIES[family](original, rng) if c != original]
    if not copies:
        return
    payload = copies[pick % len(copies)]
    counter["opencv_would_decode"] += cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR) is not None
    try:
        label, result = outcome([hostile.pack(hostile.header(encoding=encoding)), payload], scorer)
    except Exception:
        counter["crashes"] += 1
        raise
    record(counter, label, bad=True)
    counter[label] += 1
    assert label in ("defer:undecodable", "defer:too_large"), f"{family} of {name} ({size} px, seed {seed}): {label}"


@settings(FUZZ, max_examples=60 * SCALE)
@given(kind=st.sampled_from(sorted(hostile.EDGE_MAKERS)), seed=st.integers(0, 2**32 - 1))
def test_valid_edge_cases_are_scored_and_accepted_by_the_accept_all_bundle(stats, scorer, kind, seed):
    counter = stats.setdefault("valid edge cases", Counter())
    message = hostile.make_edge(kind, seed)
    label, result = outcome(message.parts, scorer)
    record(counter, label, bad=False)
    assert label == "accept", f"{kind} (seed {seed}) was not accepted: {label} {result}"


# --- arbitrary msgpack headers against a reference reading of the schema -------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12)
           | st.binary(max_size=12))
ANYTHING = st.recursive(SCALARS | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=6)),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                    max_size=4), max_leaves=8)
GOOD = {
    "schema_version": st.sampled_from(["1.0"] * 6 + ["1.3", "2.0", "0.1", "1", "1.0\n", "1.x"]),
    "camera_id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,70}", fullmatch=True) | st.sampled_from(
        ["", "a/b", "cam\n", " cam"]),
    "seq": st.integers(-5, 2**64 - 1) | st.sampled_from([0, 2**63 - 1, 2**63]),
    "capture_ts_ns": st.integers(-5, 2**64 - 1),
    "encoding": st.sampled_from(["jpeg", "png", "raw", "gif", "RAW"]),
    "shape": st.lists(st.integers(-1, 70), min_size=1, max_size=4) | st.lists(st.integers(1, 40), min_size=2,
                                                                               max_size=3),
    "dtype": st.sampled_from(["uint8", "float32", "uint16"]),
    "pixel_format": st.sampled_from(["bgr8", "rgb8", "mono8", "rgba8"]),
}
def _has_ext(value) -> bool:
    if isinstance(value, msgpack.ExtType):
        return True
    if isinstance(value, dict):
        return any(_has_ext(v) for v in value.values())
    return isinstance(value, list) and any(_has_ext(v) for v in value)


@st.composite
def headers(draw) -> dict:
    header = {}
    for key, good in GOOD.items():
        choice = draw(st.sampled_from(["good"] * 12 + ["anything", "absent"]))
        if choice == "good":
            header[key] = draw(good)
        elif choice == "anything":
            header[key] = draw(ANYTHING)
    if draw(st.integers(0, 4)) == 0:
        header.update(draw(st.dictionaries(st.sampled_from(["extra", "Seq", "note"]), ANYTHING, max_size=2)))
    return header


@settings(FUZZ, max_examples=600 * SCALE)
@given(header=headers(), seed=st.integers(0, 2**32 - 1))
def test_arbitrary_headers_are_read_as_the_schema_says(stats, scorer, header, seed):
    counter = stats.setdefault("arbitrary msgpack headers", Counter())
    rng = random.Random(seed)
    raw_header = msgpack.packb(header, use_bin_type=True)
    problem = hostile.reference_problem(header)
    if problem is None and _has_ext(header):
        problem = "ext type"
    expect_size = None
    if problem is None and header["encoding"] == "raw":
        size = math.prod(header["shape"])
        payload = (bytes(LIMITS.max_message_bytes + 1) if size > LIMITS.max_message_bytes
                   else bytes([rng.randrange(40, 256)]) * size)
        if size > LIMITS.max_message_bytes or max(header["shape"][:2]) > 640:
            expect_size = Reason.TOO_LARGE
    elif problem is None:
        payload = hostile.good_jpeg(rng) if header["encoding"] == "jpeg" else hostile.good_png(rng)
    else:
        payload = rng.choice([rng.randbytes(50), hostile.good_jpeg(rng)])
    try:
        label, result = outcome([raw_header, payload], scorer)
    except Exception:
        counter["crashes"] += 1
        raise
    record(counter, label, bad=problem is not None)
    if len(raw_header) > LIMITS.max_header_bytes:
        assert isinstance(result, Rejection) and result.reason is Reason.TOO_LARGE
    elif problem is not None:
        assert isinstance(result, Rejection) or (isinstance(result, Notice) and result.reason is Reason.BAD_HEADER), \
            f"reference says {problem}, parser gave {result}"
    elif expect_size is not None:
        assert isinstance(result, Notice) and result.reason is expect_size, result
    else:
        assert isinstance(result, ReceivedFrame), f"a valid header was refused: {result}"


@settings(FUZZ, max_examples=400 * SCALE)
@given(parts=st.lists(st.binary(max_size=300) | st.sampled_from([b"\xff\xd8", b"{", b"\x81\xa1a", b""]),
                      max_size=4))
def test_arbitrary_bytes_never_crash_the_parser(stats, scorer, parts):
    counter = stats.setdefault("arbitrary bytes", Counter())
    try:
        label, _ = outcome(parts, scorer)
    except Exception:
        counter["crashes"] += 1
        raise
    record(counter, label, bad=True)
    assert label != "accept"


# --- the decision side: bodies a subscriber reads -------------------------------------------------------------

def test_decisions_with_extreme_but_valid_values_serialize_in_both_formats(scorer):
    png = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()
    frame = ReceivedFrame(FrameHeader("edge", 2**63 - 1, 2**63 - 1, Encoding.PNG), png, 0)
    (decision,) = scorer.decide([frame])
    assert decision.decision is Decision.ACCEPT
    for wire_format in WireFormat:
        body = encode_body(decision.stamped(2**63 - 1), wire_format)
        assert decode_body(body).seq == 2**63 - 1


@pytest.mark.parametrize("body, match", [
    (msgpack.packb({"kind": "decision", "top_k": list(range(BODY_UNPACK_LIMITS.max_array_len + 1))}),
     "exceeds max_array_len"),
    (msgpack.packb({"kind": "health", "x": "y" * (BODY_UNPACK_LIMITS.max_str_len + 1)}), "exceeds max_str_len"),
    (msgpack.packb({"kind": msgpack.ExtType(3, b"abc")}), "exceeds max_ext_len"),
    (b'{"kind": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    (b"\x91" * 5000 + b"\xc0", "neither msgpack nor JSON"),
])
def test_a_subscriber_reads_bodies_within_explicit_limits(body, match):
    with pytest.raises(MessageError, match=match):
        decode_body(body)
