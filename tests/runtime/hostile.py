"""Hostile ingest messages: a registry of named makers, each building one message that must never be accepted.

Used by the property tests (``test_fuzz_ingest.py``: hypothesis draws a maker name and a seed), by the
test against the running service (``test_hostile_service.py``), by the soak (a share of its traffic)
and by the atheris harness (``fuzz_atheris_ingest.py``) as seeds. Every maker returns a
:class:`Hostile` whose flaw is certain (a header that breaks schema 1, a payload that cannot be the
image its header announces, a limit exceeded), so the oracle is simple: the outcome is a counted
rejection or a ``defer``, never ``accept``. Makers only use ``random.Random``: the same seed gives
the same bytes.

Payloads are small (32 x 32 images, the fault model's input size) so thousands of messages stay cheap.
"""

from __future__ import annotations

import json
import random
import re
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import cv2
import msgpack
import numpy as np

from trustvlm.runtime.schema import FRAME_SCHEMA

try:
    from . import damaged
except ImportError:  # loaded as a top-level module (the atheris harness puts this folder on sys.path)
    import damaged

CAMERA = "evil"
LIMITS = dict(max_message_bytes=200_000, max_header_bytes=4096, max_width=640, max_height=640)


@dataclass(frozen=True)
class Hostile:
    """One hostile message.

    Attributes:
        kind: The maker's name.
        parts: The ZeroMQ message parts.
    """

    kind: str
    parts: list[bytes]


def _image(rng: random.Random, size: int = 32) -> np.ndarray:
    # Pixels >= 40, even after resizing: the fault model turns a first pixel of 7 or 13 into errors on purpose.
    return np.random.default_rng(rng.getrandbits(32)).integers(40, 256, (size, size, 3), dtype=np.uint8)


def good_jpeg(rng: random.Random, size: int = 32) -> bytes:
    return cv2.imencode(".jpg", _image(rng, size))[1].tobytes()


def good_png(rng: random.Random, size: int = 32) -> bytes:
    return cv2.imencode(".png", _image(rng, size))[1].tobytes()


def header(seq: int = 0, encoding: str = "jpeg", camera: str = CAMERA, **extra) -> dict:
    """A valid schema-1 header map (raw needs shape and dtype in `extra`)."""
    return {"schema_version": "1.0", "camera_id": camera, "seq": seq, "capture_ts_ns": time.time_ns(),
            "encoding": encoding, **extra}


def pack(data) -> bytes:
    return msgpack.packb(data, use_bin_type=True)


def pack_map_raw(items: list[tuple[str, bytes]]) -> bytes:
    """A msgpack map whose values are given as already-packed bytes (for values msgpack would not write)."""
    assert len(items) < 16
    return bytes([0x80 | len(items)]) + b"".join(pack(key) + value for key, value in items)


def _raw_str(data: bytes) -> bytes:
    """A msgpack str object holding arbitrary (possibly non-UTF-8) bytes."""
    return (bytes([0xA0 | len(data)]) if len(data) < 32 else b"\xd9" + bytes([len(data)])) + data


def _valid_raw(rng: random.Random) -> tuple[dict, bytes]:
    image = _image(rng, rng.choice([8, 32]))
    return header(encoding="raw", shape=list(image.shape), dtype="uint8"), image.tobytes()


def _mutate_value(rng: random.Random, key: str, choices: list) -> list[bytes]:
    """A valid header with `key` set to one of `choices` (each one breaks the schema), and a good JPEG."""
    data = header(seq=rng.randrange(1 << 20))
    data[key] = rng.choice(choices)
    return [pack(data), good_jpeg(rng)]


def _deep(rng: random.Random, depth: int):
    value = rng.choice([0, "x", b"y", None])
    for _ in range(depth):
        value = rng.choice([[value], {"k": value}])
    return value


# --- makers: rng -> parts -------------------------------------------------------------------------------------

def parts_count(rng):
    return [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.choice([0, 1, 3, 4, 7]))]


def random_header(rng):
    return [rng.randbytes(rng.randrange(0, 600)), rng.randbytes(rng.randrange(0, 600))]


def msgpack_non_map(rng):
    value = rng.choice([[1, 2], 7, -1, "1.0", b"\x00", None, True, 3.5, [header()], _deep(rng, 5)])
    return [pack(value), good_jpeg(rng)]


def wrong_major_version(rng):
    data = header()
    data["schema_version"] = rng.choice(["0.9", "2.0", "99.1", "10.0", "0.0"])
    return [pack(data), good_jpeg(rng)]


def bad_version_value(rng):
    return _mutate_value(rng, "schema_version", ["1", "1.0.0", "1.0\n", "v1.0", "", " 1.0", 1.0, 1, None,
                                                  b"1.0", ["1", "0"], {"major": 1}])


def missing_key(rng):
    data = header()
    del data[rng.choice(["schema_version", "camera_id", "seq", "capture_ts_ns", "encoding"])]
    return [pack(data), good_jpeg(rng)]


def unknown_key_same_minor(rng):
    data = header()
    data[rng.choice(["Seq", "camera", "priority", "exposure_us", ""])] = rng.choice([1, "x", None, {"a": 1}])
    return [pack(data), good_jpeg(rng)]


def bad_camera_id(rng):
    choice = rng.randrange(3)
    if choice == 0:  # non-UTF-8 text (msgpack str type with invalid bytes)
        items = [(k, pack(v)) for k, v in header().items() if k != "camera_id"]
        items.append(("camera_id", _raw_str(rng.choice([b"\xff\xfe", b"cam\xc3", b"\xed\xa0\x80cam"]))))
        rng.shuffle(items)
        return [pack_map_raw(items), good_jpeg(rng)]
    return _mutate_value(rng, "camera_id", ["", "a" * 65, "cam/x", "cam x", "cam\n", "_cam", "-cam", "cam\x00",
                                             "kam\u00e9ra", b"cam", 7, None, ["cam"], {"id": "cam"}, True])


def bad_seq(rng):
    return _mutate_value(rng, "seq", [-1, 2**63, 2**64 - 1, -(2**63), True, 1.5, float("nan"), "1", None, b"1",
                                      [1], {"n": 1}])


def bad_capture_ts(rng):
    return _mutate_value(rng, "capture_ts_ns", [-1, 2**63, 2**64 - 1, False, 1e18, float("inf"), "now", None,
                                                [0], {"s": 1}])


def bad_encoding(rng):
    return _mutate_value(rng, "encoding", ["gif", "JPEG", "jpg", "", "bmp", "webp", 1, None, ["jpeg"], b"jpeg"])


def raw_bad_dtype(rng):
    data, payload = _valid_raw(rng)
    data["dtype"] = rng.choice(["float32", "float64", "uint16", "int8", "<u1", "|u1", "", None, 1, ["uint8"],
                                b"uint8"])
    return [pack(data), payload]


def raw_float_pixels(rng):
    """Float pixels with NaN and inf: float raw frames are not supported, so the header is refused."""
    pixels = np.random.default_rng(rng.getrandbits(32)).random((8, 8, 3), dtype=np.float32)
    pixels.flat[rng.randrange(pixels.size)] = rng.choice([np.nan, np.inf, -np.inf])
    data = header(encoding="raw", shape=[8, 8, 3], dtype=rng.choice(["float32", "float16", "float64"]))
    return [pack(data), pixels.astype(data["dtype"]).tobytes()]


def raw_bad_shape(rng):
    data, payload = _valid_raw(rng)
    data["shape"] = rng.choice([[], [32], [32, 32, 3, 1], [0, 32], [32, 0, 3], [-1, 32], [32, 32, 2], [32, 32, 4],
                                [1.5, 2], ["32", "32"], [True, 32], [[32], [32]], {"h": 32}, None, "32x32",
                                [2**40, 2**40], [2**62, 4], [2**63, 2**63, 3]])
    if rng.random() < 0.3:
        payload = b""
    return [pack(data), payload]


def raw_wrong_length(rng):
    data, payload = _valid_raw(rng)
    cut = rng.choice([-1, 1, -len(payload), len(payload), 7])
    return [pack(data), payload[:cut] if cut < 0 else payload + bytes(cut)]


def pixel_format_mismatch(rng):
    data, payload = _valid_raw(rng)
    data["pixel_format"] = "mono8"
    if rng.random() < 0.5:  # [h, w] grey pixels announced as colour
        data["shape"] = data["shape"][:2]
        payload = payload[: data["shape"][0] * data["shape"][1]]
        data["pixel_format"] = rng.choice(["bgr8", "rgb8"])
    return [pack(data), payload]


def bad_pixel_format(rng):
    data, payload = _valid_raw(rng)
    data["pixel_format"] = rng.choice(["rgba8", "BGR8", "yuv422", "", None, 3])
    return [pack(data), payload]


def ext_types(rng):
    """Ext values (application types, timestamps, reserved negative codes) where a header holds plain values."""
    data = header()
    key = rng.choice(list(data) + ["extra"])
    data.pop(key, None)
    ext = rng.choice([pack(msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(0, 20)))),
                      pack(msgpack.Timestamp(rng.randrange(1 << 30), 5)), b"\xd6\xff\x00\x00\x00\x01",
                      b"\xc7\x03\x80abc", b"\xd4\x00\x00", pack([msgpack.ExtType(1, b"")])])
    return [pack_map_raw([(k, pack(v)) for k, v in data.items()] + [(key, ext)]), good_jpeg(rng)]


def nested_values(rng):
    """A value nested 2 to 2000 levels deep (written by hand: msgpack's packer stops at 512)."""
    data = header()
    key = rng.choice(list(data) + ["extra"])
    data.pop(key, None)
    depth = rng.choice([2, 10, 200, 2000])
    nested = rng.choice([b"\x91", b"\x81\xa1k"]) * depth + pack(rng.choice([0, "x", None]))
    return [pack_map_raw([(k, pack(v)) for k, v in data.items()] + [(key, nested)]), good_jpeg(rng)]


def msgpack_limits(rng):
    """Long strings, arrays and maps inside a header that still fits max_header_bytes."""
    data = header()
    data[rng.choice(["camera_id", "encoding", "note"])] = rng.choice(
        ["x" * 3000, list(range(1000)), {str(i): i for i in range(300)}, b"\x00" * 3000])
    return [pack(data), good_jpeg(rng)]


def json_deep(rng):
    depth = rng.choice([500, 1500, 3000])
    return [b'{"msg": ' + b"[" * depth + b"]" * depth + b"}", good_jpeg(rng)]


def json_huge_ints(rng):
    data = header(seq=rng.randrange(100))
    data[rng.choice(["seq", "capture_ts_ns"])] = rng.choice([10**30, -(10**30), 2**64, 10**4000])
    data["encoding"] = rng.choice(["gif", "jpeg"])
    return [json.dumps(data).encode(), good_jpeg(rng)]


def json_specials(rng):
    text = rng.choice(['{"msg": NaN, "shape": [Infinity, 2], "dtype": "uint8"}', '{"msg": "cam", "shape": [-1e999]}',
                       '{"schema_version": "1.0", "camera_id": "cam", "seq": NaN}',
                       '{"msg": "\\ud800", "shape": [2], "dtype": "uint8"}',
                       '{"msg": "cam", "dtype": "uint8", "shape": [32, 32, 3], "msg": "x"}', '{"msg"'])
    return [text.encode(), good_jpeg(rng)]


def imagezmq_bad(rng):
    data = rng.choice([{"msg": "cam", "shape": [32, 32, 3], "dtype": "float32"}, {"msg": "cam", "shape": "32"},
                       {"msg": "cam", "extra": 1}, {"shape": [32, 32, 3], "dtype": "uint8"},
                       {"msg": "cam", "shape": [32, 32, 3]}, {"msg": "cam", "dtype": "uint8"},
                       {"msg": {"nested": ["map"]}, "shape": [4, 4, 9], "dtype": "uint8"}])
    return [json.dumps(data).encode(), rng.randbytes(rng.randrange(0, 3100))]


def truncated_jpeg(rng):
    jpeg = good_jpeg(rng)
    return [pack(header()), jpeg[: rng.randrange(0, len(jpeg) - 2)]]


def truncated_png(rng):
    png = good_png(rng)
    return [pack(header(encoding="png")), png[: rng.randrange(0, len(png) - 12)]]


def _patch_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    pos = 2
    while pos + 9 <= len(jpeg):
        marker = jpeg[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return jpeg[: pos + 5] + struct.pack(">HH", height, width) + jpeg[pos + 9:]
        pos += 2 + struct.unpack(">H", jpeg[pos + 2: pos + 4])[0]
    raise AssertionError("no SOF in the JPEG")


def _patch_png_size(png: bytes, width: int, height: int) -> bytes:
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def image_bomb(rng):
    """A real JPEG/PNG whose header declares dimensions over the limits (decompression bomb)."""
    width, height = rng.choice([(65535, 65535), (641, 10), (10, 641), (100000, 100000), (2**31 - 1, 1), (0, 32),
                                (32, 0), (2**32 - 1, 2**32 - 1)])
    if rng.random() < 0.5 and max(width, height) <= 65535:
        return [pack(header()), _patch_jpeg_size(good_jpeg(rng), width, height)]
    return [pack(header(encoding="png")), _patch_png_size(good_png(rng), width, height)]


def png_chunk_bomb(rng):
    """A tiny PNG with a chunk whose length field claims up to 2 GB (OpenCV 5.0 allocates what it claims)."""
    png = good_png(rng)
    length = rng.choice([0x7FFFFFF0, 0x1A54D3CF, 10_000_000, len(png)])
    forged = png[:33] + struct.pack(">I", length) + rng.choice([b"tEXt", b"zTXt", b"IDAT", b"acTL"]) + png[33:]
    return [pack(header(encoding="png")), forged]


def jpeg_scan_bomb(rng):
    """A JPEG with hundreds of start-of-scan markers (each scan is another pass over the image)."""
    extra_scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    return [pack(header()), good_jpeg(rng)[:-2] + extra_scan * rng.randrange(65, 400) + b"\xff\xd9"]


def not_an_image(rng):
    payload = rng.choice([b"", b"GIF89a" + rng.randbytes(100), b"BM" + rng.randbytes(100), rng.randbytes(500),
                          b"\xff\xd8" + rng.randbytes(300) + b"\xff\xd9", b"\x89PNG\r\n\x1a\n" + rng.randbytes(40),
                          b"\xff\xd8\xff\xda\x00\x02\xff\xd9", b"\xff\xd8" + b"\xff" * 2000])
    return [pack(header(encoding=rng.choice(["jpeg", "png"]))), payload]


def encoding_mismatch(rng):
    if rng.random() < 0.5:
        return [pack(header(encoding="png")), good_jpeg(rng)]
    return [pack(header(encoding="jpeg")), good_png(rng)]


def corrupt_jpeg_body(rng):
    """Scan data replaced by zeros, end marker kept (libjpeg would fill in grey and only warn)."""
    jpeg = good_jpeg(rng)
    start = jpeg.index(b"\xff\xda")
    return [pack(header()), jpeg[:start + 4] + bytes(rng.randrange(50, 3000)) + b"\xff\xd9"]


def smooth_image(rng: random.Random, size: int) -> np.ndarray:
    """A camera-like image (smooth, so JPEG scans are short and every damage family has room)."""
    noise = np.random.default_rng(rng.getrandbits(32)).integers(40, 256, (size, size, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (7, 7), 0)


#: Damage families of tests/runtime/damaged.py that are refused whatever the image (in-place overwrites of
#: entropy-coded bytes can leave a valid bitstream in a small image: measured there, not drawn here).
DAMAGE_FAMILIES = {name: fn for name, fn in {**damaged.JPEG_FAMILIES, **damaged.PNG_FAMILIES}.items()
                   if name != "jpeg_scan_overwritten"}


def damaged_image(rng):
    """A real-looking JPEG or PNG damaged in one of the families of damaged.py; OpenCV decodes many of them."""
    originals = damaged.originals(smooth_image(rng, rng.randrange(24, 97)))
    while True:
        family = rng.choice(sorted(DAMAGE_FAMILIES))
        name = rng.choice([n for n, (encoding, _) in originals.items() if family.startswith(encoding)])
        encoding, payload = originals[name]
        copies = [c for c in DAMAGE_FAMILIES[family](payload, rng) if c != payload]
        if copies:
            return [pack(header(encoding=encoding)), rng.choice(copies)]


def json_schema1_header(rng):
    """A valid schema-1 map, sent as JSON: schema 1 is msgpack."""
    data = header(seq=rng.randrange(1 << 20), encoding=rng.choice(["jpeg", "png"]))
    return [json.dumps(data).encode(), good_jpeg(rng) if data["encoding"] == "jpeg" else good_png(rng)]


def version_outside_pattern(rng):
    return _mutate_value(rng, "schema_version", ["01.0", "01.1", "+1.0", "1.0.0", "1.", ".1", "1.0 ", "0x1.0"])


def imagezmq_bad_name(rng):
    """imagezmq names that are not camera ids (they used to be rewritten, merging senders)."""
    name = rng.choice(["", "_health", "cam/../x", "a\x00b", "kam\U0001f4f7", " cam", "cam ", "x" * 65, "-cam",
                       ".", "trust/cam"])
    if rng.random() < 0.5:
        return [json.dumps({"msg": f"{name}|x"}).encode(), good_jpeg(rng)]
    image = _image(rng, 8)
    return [json.dumps({"msg": name, "dtype": "uint8", "shape": list(image.shape)}).encode(), image.tobytes()]


def oversized_payload(rng):
    return [pack(header()), b"\xff\xd8" + bytes(LIMITS["max_message_bytes"] + rng.randrange(1, 100_000))]


def oversized_header(rng):
    data = header()
    data["pad"] = "x" * (LIMITS["max_header_bytes"] + rng.randrange(1, 2000))
    return [pack(data), good_jpeg(rng)]


def raw_over_dimension_limit(rng):
    shape = rng.choice([[641, 1], [1, 641], [641, 2, 3]])
    data = header(encoding="raw", shape=shape, dtype="uint8")
    return [pack(data), bytes(int(np.prod(shape)))]


MAKERS: dict[str, Callable[[random.Random], list[bytes]]] = {
    fn.__name__: fn for fn in (
        parts_count, random_header, msgpack_non_map, wrong_major_version, bad_version_value, missing_key,
        unknown_key_same_minor, bad_camera_id, bad_seq, bad_capture_ts, bad_encoding, raw_bad_dtype,
        raw_float_pixels, raw_bad_shape, raw_wrong_length, pixel_format_mismatch, bad_pixel_format, ext_types,
        nested_values, msgpack_limits, json_deep, json_huge_ints, json_specials, imagezmq_bad, truncated_jpeg,
        truncated_png, image_bomb, png_chunk_bomb, jpeg_scan_bomb, not_an_image, encoding_mismatch,
        corrupt_jpeg_body, oversized_payload,
        oversized_header, raw_over_dimension_limit, damaged_image, json_schema1_header, version_outside_pattern,
        imagezmq_bad_name)
}


def make(kind: str, seed: int) -> Hostile:
    """The hostile message of maker `kind` for `seed`."""
    return Hostile(kind, MAKERS[kind](random.Random(seed)))


def hostile_messages(count: int, seed: int = 0) -> list[Hostile]:
    """`count` hostile messages cycling through every maker, with seeds from `seed`."""
    rng = random.Random(seed)
    kinds = sorted(MAKERS)
    return [make(kinds[i % len(kinds)], rng.getrandbits(32)) for i in range(count)]


# --- valid edge cases: each must be decided (accept allowed), never crash anything ---------------------------

def edge_huge_seq(rng):
    return [pack(header(seq=rng.choice([2**63 - 1, 2**62, 0]), camera="edge")), good_jpeg(rng)]


def edge_long_camera_id(rng):
    camera = "E" + "".join(rng.choice("abcXYZ019_.:-") for _ in range(63))
    return [pack(header(camera=camera, encoding="png")), good_png(rng)]


def edge_tiny_images(rng):
    choice = rng.randrange(3)
    if choice == 0:
        pixel = bytes([rng.randrange(40, 256)])
        return [pack(header(camera="edge", encoding="raw", shape=[1, 1], dtype="uint8")), pixel]
    ext = ".jpg" if choice == 1 else ".png"
    return [pack(header(camera="edge", encoding=ext[1:].replace("jpg", "jpeg"))),
            cv2.imencode(ext, _image(rng, 1))[1].tobytes()]


def edge_limit_dimensions(rng):
    shape = rng.choice([[640, 100, 3], [640, 1], [1, 640, 3], [100, 640]])
    pixels = bytes(rng.randrange(40, 256) for _ in range(int(np.prod(shape))))
    return [pack(header(camera="edge", encoding="raw", shape=shape, dtype="uint8")), pixels]


def edge_newer_minor(rng):
    """A newer minor version may add keys this service does not know."""
    data = header(camera="edge")
    data["schema_version"], data["exposure_us"] = "1.9", rng.randrange(10000)
    return [pack(data), good_jpeg(rng)]


def edge_imagezmq(rng):
    image = _image(rng, 16)
    if rng.random() < 0.5:
        return [json.dumps({"msg": "edge|x", "dtype": "uint8", "shape": list(image.shape)}).encode(), image.tobytes()]
    return [json.dumps({"msg": "edge"}).encode(), cv2.imencode(".jpg", image)[1].tobytes()]


EDGE_MAKERS: dict[str, Callable[[random.Random], list[bytes]]] = {
    fn.__name__: fn for fn in (edge_huge_seq, edge_long_camera_id, edge_tiny_images, edge_limit_dimensions,
                               edge_newer_minor, edge_imagezmq)
}


def make_edge(kind: str, seed: int) -> Hostile:
    """The valid edge-case message of maker `kind` for `seed`."""
    return Hostile(kind, EDGE_MAKERS[kind](random.Random(seed)))


# --- a reference reading of schema 1, written from schemas/frame_v1.json (not from the parser) ---------------

PATTERN = re.compile(FRAME_SCHEMA["properties"]["camera_id"]["pattern"].strip("^$"), re.ASCII)


def _int64(value) -> bool:
    return type(value) is int and 0 <= value < 2**63


def reference_problem(header: dict) -> str | None:
    """Why `header` breaks schema 1 as schemas/frame_v1.json and its description state it, or None."""
    version = header.get("schema_version")
    if not (isinstance(version, str) and re.fullmatch(r"(0|[1-9][0-9]*)\.[0-9]+", version)):
        return "schema_version"  # the schema's pattern is ^1\.[0-9]+$: no leading zero, no sign
    major, minor = (int(part) for part in version.split("."))
    if major != 1:
        return "major version"
    if set(header) - set(FRAME_SCHEMA["properties"]) and minor <= 0:
        return "unknown keys at minor 0"
    if not (isinstance(header.get("camera_id"), str) and PATTERN.fullmatch(header["camera_id"])):
        return "camera_id"
    if not (_int64(header.get("seq")) and _int64(header.get("capture_ts_ns"))):
        return "seq or capture_ts_ns"
    if header.get("encoding") not in ("jpeg", "png", "raw"):
        return "encoding"
    if header["encoding"] == "raw":
        shape = header.get("shape")
        if not (isinstance(shape, list) and len(shape) in (2, 3) and all(type(v) is int and v >= 1 for v in shape)
                and (len(shape) == 2 or shape[2] in (1, 3))):
            return "shape"
        if header.get("dtype") != "uint8":
            return "dtype"
        if "pixel_format" in header and header["pixel_format"] not in ("bgr8", "rgb8", "mono8"):
            return "pixel_format"
    return None
