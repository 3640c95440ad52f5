"""Coverage-guided fuzzing of the ingest parser and decoder with atheris (libFuzzer). Not part of the test suite.

Run (atheris is optional: ``pip install atheris``; it ships wheels for CPython 3.11 on x86-64 Linux)::

    .venv/bin/python tests/runtime/fuzz_atheris_ingest.py -atheris_runs=200000
    .venv/bin/python tests/runtime/fuzz_atheris_ingest.py -max_total_time=120 /tmp/ingest-corpus

Each input becomes one multipart message in one of five ways (chosen by its first byte): raw parts;
a schema-1 header built field by field from the input; a message of the hostile registry
(tests/runtime/hostile.py) with bytes of the input written over it; a valid header with a payload
spliced from a real image and the input; a damaged image (tests/runtime/damaged.py, the families
that are refused whatever the image) whose family, image and copy the input picks. The message goes through ``parse_message``, then for a
frame ``decode_image`` and ``resize_and_crop``, and a defer message is serialized in both wire
formats. Invariants (any breach raises, and libFuzzer stops with the input saved):

* nothing raises except ``FrameDecodeError`` from the decoder;
* a damaged image (fifth way) is never decoded: the strict decoder is in the loop, and the outcome
  ``opencv_would_decode`` counts those of them, and of the spliced payloads the strict decoder refused,
  that OpenCV's ``imdecode`` would have decoded;
* a frame's header passes the reference reading of the schema (``hostile.reference_problem``) and
  its announced size is within the limits; a decoded image is uint8 H x W x 3 within the limits.

Every 100,000 inputs (and at a normal exit) it prints: inputs, crashes (0 when it gets there),
frames whose header the reference refuses (must be 0), and the outcomes; libFuzzer's own final
statistics follow with ``-print_final_stats=1``.
"""

from __future__ import annotations

import atexit
import random
import sys
import time
from collections import Counter
from pathlib import Path

import atheris
import cv2
import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile  # noqa: E402 - a sibling helper module, found through sys.path

with atheris.instrument_imports():
    from trustvlm.runtime.frames import Notice, ReceivedFrame
    from trustvlm.runtime.decode.image_codec import FrameDecodeError, check_png_chunks, decode_image
    from trustvlm.runtime.ingest.ingest import FrameLimits, Rejection
    from trustvlm.runtime.messages import Decision, DecisionMessage, WireFormat, encode_body
    from trustvlm.runtime.decode.preprocess import PreprocessConfig, resize_and_crop
    from trustvlm.runtime.ingest.wire import ImagezmqNamer, parse_message

LIMITS = FrameLimits(**hostile.LIMITS)
PREPROCESS = PreprocessConfig(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
KINDS = sorted(hostile.MAKERS)
SEEDS = {"jpeg": hostile.good_jpeg(random.Random(0)), "png": hostile.good_png(random.Random(0)),
         "raw": bytes(range(256)) * 12}
STATS: Counter = Counter()
REPORT_EVERY = 100_000  # libFuzzer ends the process without running atexit handlers: report on the way
NAMER = ImagezmqNamer(max_cameras=64)
DAMAGE = sorted(hostile.DAMAGE_FAMILIES)
_ORIGINALS: dict[int, dict] = {}
DAMAGED: list[str | None] = [None]  # the damage family of the current input, if it is a damaged image


def _damaged(fdp: atheris.FuzzedDataProvider) -> list[bytes]:
    """A copy of one of 32 small camera-like images, damaged in a family that must always be refused."""
    key = fdp.ConsumeIntInRange(0, 31)
    if key not in _ORIGINALS:
        rng = random.Random(key)
        _ORIGINALS[key] = hostile.damaged.originals(hostile.smooth_image(rng, rng.randrange(16, 129)))
    family = DAMAGE[fdp.ConsumeIntInRange(0, len(DAMAGE) - 1)]
    names = [n for n, (encoding, _) in _ORIGINALS[key].items() if family.startswith(encoding)]
    encoding, payload = _ORIGINALS[key][names[fdp.ConsumeIntInRange(0, len(names) - 1)]]
    copies = [c for c in hostile.DAMAGE_FAMILIES[family](payload, random.Random(fdp.ConsumeInt(4))) if c != payload]
    if not copies:
        return [hostile.pack(hostile.header(encoding=encoding)), payload[:2]]
    DAMAGED[0] = family
    return [hostile.pack(hostile.header(encoding=encoding)), copies[fdp.ConsumeIntInRange(0, len(copies) - 1)]]


def _header_from(fdp: atheris.FuzzedDataProvider) -> dict:
    header = {}
    for key, choices in (("schema_version", ["1.0", "1.1", "2.0", "1"]), ("camera_id", ["cam", "c" * 64, "a/b"]),
                         ("encoding", ["jpeg", "png", "raw", "gif"]), ("dtype", ["uint8", "float32"]),
                         ("pixel_format", ["bgr8", "rgb8", "mono8", "x"])):
        pick = fdp.ConsumeIntInRange(0, len(choices) + 1)
        if pick < len(choices):
            header[key] = choices[pick]
        elif pick == len(choices):
            header[key] = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 70))
    for key in ("seq", "capture_ts_ns"):
        if fdp.ConsumeBool():
            header[key] = fdp.ConsumeIntInRange(-(2**63), 2**64 - 1)
    if fdp.ConsumeBool():
        header["shape"] = [fdp.ConsumeIntInRange(-2, 700) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if fdp.ConsumeIntInRange(0, 7) == 0:
        header[fdp.ConsumeUnicodeNoSurrogates(6)] = fdp.ConsumeIntInRange(0, 9)
    return header


def _message(data: bytes) -> list[bytes]:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 4)
    if mode == 4:
        return _damaged(fdp)
    if mode == 0:
        return [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 700)) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if mode == 1:
        header = _header_from(fdp)
        encoding = header.get("encoding")
        seed = SEEDS.get(encoding, b"") if fdp.ConsumeBool() else b""
        return [msgpack.packb(header, use_bin_type=True), seed + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 3000))]
    if mode == 2:
        parts = hostile.make(KINDS[fdp.ConsumeIntInRange(0, len(KINDS) - 1)], fdp.ConsumeIntInRange(0, 2**31)).parts
        for _ in range(fdp.ConsumeIntInRange(0, 8)):
            if not parts:
                break
            index = fdp.ConsumeIntInRange(0, len(parts) - 1)
            part = bytearray(parts[index])
            if part:
                part[fdp.ConsumeIntInRange(0, len(part) - 1)] = fdp.ConsumeInt(1) & 0xFF
            parts[index] = bytes(part)
        return parts
    encoding = ["jpeg", "png", "raw"][fdp.ConsumeIntInRange(0, 2)]
    extra = {"shape": [32, 32, 3], "dtype": "uint8"} if encoding == "raw" else {}
    seed = SEEDS[encoding] if encoding != "raw" else bytes(32 * 32 * 3)
    cut, splice = fdp.ConsumeIntInRange(0, len(seed)), fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
    payload = seed[:cut] + splice + seed[cut + len(splice):]
    return [hostile.pack(hostile.header(encoding=encoding, **extra)), payload]


def test_one_input(data: bytes) -> None:
    STATS["inputs"] += 1
    if STATS["inputs"] % REPORT_EVERY == 0:
        _report()
    DAMAGED[0] = None
    parts = _message(data)
    if DAMAGED[0]:
        STATS["damaged_images"] += 1
    result = parse_message(parts, 1_700_000_000_000_000_000, LIMITS, NAMER)
    if isinstance(result, Rejection):
        STATS["rejected"] += 1
        return
    if isinstance(result, Notice):
        STATS[f"defer:{result.reason.value}"] += 1
        body = DecisionMessage(result.camera_id, result.seq, result.capture_ts_ns, result.receipt_ts_ns,
                               Decision.DEFER, result.reason, 0.5, "trustvlm", "m", "b", detail=result.detail)
        for wire_format in WireFormat:
            encode_body(body.stamped(time.time_ns()), wire_format)
        return
    assert isinstance(result, ReceivedFrame), result
    if parts[0][:1] != b"{":  # a schema-1 msgpack header (imagezmq JSON headers have their own rules)
        problem = hostile.reference_problem(msgpack.unpackb(parts[0], raw=False, strict_map_key=False))
        if problem is not None:
            STATS["frames_the_reference_refuses"] += 1
            raise AssertionError(f"a frame the reference refuses ({problem}): {parts[0]!r}")
    try:
        rgb = decode_image(result)
    except FrameDecodeError as error:
        STATS[f"defer:{error.reason.value}"] += 1
        if _opencv_would_decode(result):
            STATS["opencv_would_decode"] += 1
        return
    assert DAMAGED[0] is None, f"a damaged image ({DAMAGED[0]}) was decoded: {result.payload[:64]!r}"
    height, width = rgb.shape[:2]
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, rgb.shape
    assert width <= LIMITS.max_width and height <= LIMITS.max_height, rgb.shape
    assert resize_and_crop(rgb, PREPROCESS).shape == (32, 32, 3)
    STATS["frames_decoded"] += 1


def _opencv_would_decode(frame: ReceivedFrame) -> bool:
    """Whether OpenCV alone takes a payload the strict decoder refused (PNGs only after the chunk check:
    OpenCV allocates what a forged chunk length says)."""
    if frame.header.encoding.value == "raw":
        return False
    if frame.header.encoding.value == "png":
        try:
            check_png_chunks(frame.payload)
        except FrameDecodeError:
            return False
    return cv2.imdecode(np.frombuffer(frame.payload, np.uint8), cv2.IMREAD_COLOR) is not None


def _report() -> None:
    outcomes = {k: v for k, v in sorted(STATS.items()) if k != "inputs"}
    print(f"\natheris ingest fuzz: {STATS['inputs']} inputs, 0 crashes, "
          f"{STATS['frames_the_reference_refuses']} frames the reference refuses; outcomes {outcomes}", flush=True)


if __name__ == "__main__":
    cv2.setNumThreads(1)
    atexit.register(_report)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
