"""Ingest checks without sockets: header dialects, limits, size probing, decoding."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import zlib

import cv2
import msgpack
import numpy as np
import pytest

from trustvlm.runtime.frames import Encoding, FrameHeader, Notice, PixelFormat, ReceivedFrame, pack_frame_header
from trustvlm.runtime.decode.image_codec import MAX_JPEG_SCANS, FrameDecodeError, decode_image, probe_image_size
from trustvlm.runtime.ingest.ingest import FrameLimits, Rejection
from trustvlm.runtime.messages import Reason
from trustvlm.runtime.ingest.wire import ImagezmqNamer, parse_message

pytestmark = pytest.mark.timeout(30)
LIMITS = FrameLimits(max_message_bytes=1 << 20, max_width=1000, max_height=1000)


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buffer = cv2.imencode(ext, image)
    assert ok, f"OpenCV could not encode {ext}"
    return buffer.tobytes()


def parts(header: FrameHeader, payload: bytes) -> list[bytes]:
    return [pack_frame_header(header), payload]


@pytest.mark.parametrize("ext, encoding", [(".jpg", Encoding.JPEG), (".png", Encoding.PNG)])
def test_probe_reads_the_size_of_a_real_video_frame(vtest_frames, ext, encoding):
    # Given a 768 x 576 frame of vtest.avi, encoded
    payload = encode(vtest_frames[0], ext)
    # Then its size comes from the header alone: a payload cut after 2 kB still tells it
    assert probe_image_size(payload[:2048], encoding) == (768, 576)


def test_probe_reads_progressive_jpeg():
    image = np.zeros((33, 47, 3), np.uint8)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert probe_image_size(buffer.tobytes(), Encoding.JPEG) == (47, 33)


def test_frames_over_the_dimension_limit_are_deferred_before_decoding(vtest_frames):
    small = FrameLimits(max_width=500, max_height=500)
    result = parse_message(parts(FrameHeader("cam", 0, 1, Encoding.JPEG), encode(vtest_frames[0], ".jpg")), 5, small)
    assert isinstance(result, Notice) and result.reason is Reason.TOO_LARGE
    assert "768x576 pixels is outside 1x1..500x500" in result.detail


def test_payloads_over_the_byte_limit_are_deferred():
    result = parse_message(parts(FrameHeader("cam", 3, 1, Encoding.JPEG), b"\xff\xd8" + bytes(2000)), 5,
                           FrameLimits(max_message_bytes=1000))
    assert isinstance(result, Notice) and (result.camera_id, result.seq, result.reason) == ("cam", 3, Reason.TOO_LARGE)
    assert "payload of 2002 bytes exceeds max_message_bytes 1000" in result.detail


def test_raw_payload_of_the_wrong_size_is_deferred_bad_shape():
    header = FrameHeader("cam", 0, 1, Encoding.RAW, (4, 5, 3), "uint8")
    result = parse_message(parts(header, bytes(59)), 5, LIMITS)
    assert isinstance(result, Notice) and result.reason is Reason.BAD_SHAPE
    assert "raw payload has 59 bytes, expected 60 for shape [4, 5, 3] uint8" in result.detail


@pytest.mark.parametrize("message, reason, detail", [
    ([b"only one part"], Reason.BAD_HEADER, "expected 2 message parts"),
    ([b"a", b"b", b"c"], Reason.BAD_HEADER, "expected 2 message parts"),
    ([b"\xc1\xc1", b"x"], Reason.BAD_HEADER, "neither a msgpack nor an imagezmq JSON map"),
    ([msgpack.packb([1, 2]), b"x"], Reason.BAD_HEADER, "header should be a map, but got list"),
    ([bytes(5000), b"x"], Reason.TOO_LARGE, "header of 5000 bytes exceeds max_header_bytes 4096"),
    ([msgpack.packb({"schema_version": "2.0", "camera_id": "cam", "seq": 1}), b"x"], Reason.BAD_HEADER,
     r"schema_version 2\.0 is not supported"),
    ([msgpack.packb({"schema_version": "1.0", "seq": 1}), b"x"], Reason.BAD_HEADER, "encoding should be one of"),
])
def test_messages_that_name_no_camera_are_counted_rejections(message, reason, detail):
    result = parse_message(message, 5, LIMITS)
    assert isinstance(result, Rejection), f"expected a counted rejection, got {result}"
    assert result.reason is reason and re.search(detail, result.detail), result.detail


def test_a_bad_header_that_names_its_camera_is_deferred_in_that_camera_stream():
    header = {"schema_version": "1.0", "camera_id": "cam", "seq": 9, "capture_ts_ns": 4, "encoding": "webp"}
    result = parse_message([msgpack.packb(header), b"x"], 5, LIMITS)
    assert isinstance(result, Notice)
    assert (result.camera_id, result.seq, result.capture_ts_ns, result.reason) == ("cam", 9, 4, Reason.BAD_HEADER)


def test_imagezmq_headers_become_frames_with_per_camera_sequence_numbers(fmnist_images):
    namer = ImagezmqNamer()
    image = fmnist_images[0][0]
    array_header = json.dumps({"msg": "rpi_1|frame", "dtype": "uint8", "shape": list(image.shape)}).encode()
    jpg_header = json.dumps({"msg": "rpi_1"}).encode()
    first = parse_message([array_header, image.tobytes()], 10, LIMITS, namer)
    second = parse_message([jpg_header, encode(image, ".jpg")], 11, LIMITS, namer)
    assert isinstance(first, ReceivedFrame) and isinstance(second, ReceivedFrame)
    assert (first.header.camera_id, first.header.seq, first.header.encoding) == ("rpi_1", 0, Encoding.RAW)
    assert first.header.pixel_format is PixelFormat.BGR8 and first.header.capture_ts_ns == 10
    assert (second.header.camera_id, second.header.seq, second.header.encoding) == ("rpi_1", 1, Encoding.JPEG)


def test_decode_gives_rgb_from_every_encoding(vtest_frames):
    bgr = vtest_frames[0][:64, :80]
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    png = ReceivedFrame(FrameHeader("c", 0, 0, Encoding.PNG), encode(bgr, ".png"), 0)
    raw_bgr = ReceivedFrame(FrameHeader("c", 0, 0, Encoding.RAW, bgr.shape, "uint8"), bgr.tobytes(), 0)
    raw_rgb = ReceivedFrame(FrameHeader("c", 0, 0, Encoding.RAW, bgr.shape, "uint8", PixelFormat.RGB8),
                            rgb.tobytes(), 0)
    for frame in (png, raw_bgr, raw_rgb):
        assert np.array_equal(decode_image(frame), rgb), f"{frame.header.encoding} {frame.header.pixel_format}"
    grey = ReceivedFrame(FrameHeader("c", 0, 0, Encoding.RAW, (2, 3), "uint8"), bytes(range(6)), 0)
    assert decode_image(grey).shape == (2, 3, 3)


def test_truncated_and_corrupt_images_are_undecodable(vtest_frames):
    jpeg = encode(vtest_frames[0], ".jpg")
    png = encode(vtest_frames[0], ".png")
    for payload, encoding, message in [
        (jpeg[: len(jpeg) // 2], Encoding.JPEG, "truncated JPEG"),
        (png[: len(png) // 2], Encoding.PNG, "truncated PNG"),
        (jpeg[:600] + bytes(4000) + b"\xff\xd9", Encoding.JPEG, "JPEG"),
    ]:
        frame = ReceivedFrame(FrameHeader("c", 0, 0, encoding), payload, 0)
        with pytest.raises(FrameDecodeError, match=message) as caught:
            decode_image(frame)
        assert caught.value.reason is Reason.UNDECODABLE


def test_raw_pixel_format_must_fit_the_channels():
    frame = ReceivedFrame(FrameHeader("c", 0, 0, Encoding.RAW, (2, 2, 3), "uint8", PixelFormat.MONO8), bytes(12), 0)
    with pytest.raises(FrameDecodeError, match="pixel_format mono8 does not fit shape") as caught:
        decode_image(frame)
    assert caught.value.reason is Reason.BAD_SHAPE


def png_with_chunk(png: bytes, kind: bytes, data: bytes, declared: int | None = None) -> bytes:
    """`png` with a chunk inserted after IHDR (CRC right; `declared` overrides the length field)."""
    chunk = struct.pack(">I", len(data) if declared is None else declared) + kind + data
    return png[:33] + chunk + struct.pack(">I", zlib.crc32(kind + data)) + png[33:]


@pytest.mark.parametrize("kind, data, declared, message", [
    (b"tEXt", b"x" * 8, 0x7FFFFFF0, r"chunk b'tEXt' at byte 33 declares 2147483632 bytes, but only \d+ follow"),
    (b"acTL", bytes(8), None, "not accepted .*animated PNG"),
    (b"t3Xt", b"x", None, "not accepted"),
])
def test_png_chunks_are_checked_before_opencv_allocates_anything(kind, data, declared, message):
    png = encode(np.full((8, 8, 3), 100, np.uint8), ".png")
    frame = ReceivedFrame(FrameHeader("c", 0, 0, Encoding.PNG), png_with_chunk(png, kind, data, declared), 0)
    with pytest.raises(FrameDecodeError, match=message) as caught:
        decode_image(frame)
    assert caught.value.reason is Reason.UNDECODABLE
    bad_crc = bytearray(png)
    bad_crc[30] ^= 1  # inside the IHDR CRC
    with pytest.raises(FrameDecodeError, match="fails its CRC"):
        decode_image(ReceivedFrame(FrameHeader("c", 0, 0, Encoding.PNG), bytes(bad_crc), 0))
    # A PNG with an honest ancillary chunk still decodes
    honest = ReceivedFrame(FrameHeader("c", 0, 0, Encoding.PNG), png_with_chunk(png, b"tEXt", b"Comment\0hi"), 0)
    assert decode_image(honest).shape == (8, 8, 3)


def test_a_162_byte_png_bomb_stays_small_in_memory():
    # OpenCV 5.0.0 alone allocates about 2 GB for this payload; through decode_image it is refused first
    # Peak memory is read from VmHWM (this process's own address space): ru_maxrss would also count a
    # forking parent's resident memory, which a big pytest process carries over into the child.
    code = ("import struct, cv2, numpy as np\n"
            "from trustvlm.runtime.decode.image_codec import decode_image, FrameDecodeError\n"
            "from trustvlm.runtime.frames import ReceivedFrame, FrameHeader, Encoding\n"
            "png = cv2.imencode('.png', np.full((32, 32, 3), 100, np.uint8))[1].tobytes()\n"
            "bomb = png[:33] + struct.pack('>I', 0x7FFFFFF0) + b'tEXt' + b'x' * 8 + png[33:]\n"
            "try:\n    decode_image(ReceivedFrame(FrameHeader('c', 0, 0, Encoding.PNG), bomb, 0))\n"
            "except FrameDecodeError as e:\n    print('refused', len(bomb))\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
            "print(int(hwm.split()[1]) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    refused, peak_mb = out.split("\n")[:2]
    assert refused == "refused 162" and int(peak_mb) < 400, out


def test_jpegs_with_too_many_scans_are_refused():
    jpeg = encode(np.full((16, 16, 3), 100, np.uint8), ".jpg")
    scans = jpeg[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * MAX_JPEG_SCANS + b"\xff\xd9"
    with pytest.raises(FrameDecodeError, match=f"JPEG with {MAX_JPEG_SCANS + 1} scans"):
        decode_image(ReceivedFrame(FrameHeader("c", 0, 0, Encoding.JPEG), scans, 0))


@pytest.mark.parametrize("header", [
    {"schema_version": "01.0"}, {"schema_version": "+1.0"}, {"schema_version": "1.0.0"}, {"schema_version": "1."},
    {"schema_version": "١.0"}, {"schema_version": " 1.0"},
])
def test_schema_versions_outside_the_schema_pattern_are_refused(header):
    data = {"schema_version": "1.0", "camera_id": "cam", "seq": 1, "capture_ts_ns": 4, "encoding": "jpeg", **header}
    result = parse_message([msgpack.packb(data), encode(np.full((8, 8, 3), 90, np.uint8), ".jpg")], 5, LIMITS)
    assert not isinstance(result, ReceivedFrame), result
    assert result.reason is Reason.BAD_HEADER and "schema_version" in result.detail, result


def test_a_schema_1_header_sent_as_json_is_refused():
    data = {"schema_version": "1.0", "camera_id": "cam", "seq": 1, "capture_ts_ns": 4, "encoding": "jpeg"}
    payload = encode(np.full((8, 8, 3), 90, np.uint8), ".jpg")
    assert isinstance(parse_message([msgpack.packb(data), payload], 5, LIMITS), ReceivedFrame)
    result = parse_message([json.dumps(data).encode(), payload], 5, LIMITS)
    assert not isinstance(result, ReceivedFrame) and result.reason is Reason.BAD_HEADER
    assert "schema 1 headers are msgpack" in result.detail


@pytest.mark.parametrize("name", ["", "_health", "cam/../x", "a\x00b", "kam📷", " cam", "cam ", "x" * 65, "-cam"])
def test_imagezmq_names_that_are_not_camera_ids_are_refused_not_rewritten(name, caplog):
    namer = ImagezmqNamer()
    payload = encode(np.full((8, 8, 3), 90, np.uint8), ".jpg")
    for _ in range(3):
        result = parse_message([json.dumps({"msg": f"{name}|frame"}).encode(), payload], 5, LIMITS, namer)
        assert isinstance(result, Rejection) and result.reason is Reason.BAD_HEADER, result
    # One warning per refused name, however many frames it sends
    assert len([r for r in caplog.records if "not a valid camera id" in r.getMessage()]) == 1


def test_imagezmq_names_are_kept_as_sent_so_senders_stay_apart():
    namer = ImagezmqNamer()
    payload = encode(np.full((8, 8, 3), 90, np.uint8), ".jpg")
    ids = [parse_message([json.dumps({"msg": msg}).encode(), payload], 5, LIMITS, namer).header.camera_id
           for msg in ("cam", "cam_health", "Cam", "cam.1|left", "cam.1|right")]
    assert ids == ["cam", "cam_health", "Cam", "cam.1", "cam.1"]  # text after '|' is per-frame, not the name
