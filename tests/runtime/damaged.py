"""Damaged JPEGs and PNGs made from real frames: each must be ``undecodable``, never scored.

:func:`damaged_images` turns one undamaged image into a corpus of damaged copies, one family per
kind of damage (see :data:`JPEG_FAMILIES` and :data:`PNG_FAMILIES`): scans cut at many points with
and without the end-of-image marker, bytes overwritten in the entropy-coded scan, headers and Huffman
tables flipped, progressive JPEGs ended between two scans, PNG image data cut or flipped behind valid chunk CRCs, and chunk CRCs broken. Every
family is built for baseline and progressive JPEG, colour and grayscale (:func:`originals`), so the
corpus covers each decoder path. Deterministic: the same image and seed give the same bytes.
"""

from __future__ import annotations

import random
import struct
import zlib
from typing import Iterator

import cv2
import numpy as np

EOI = b"\xff\xd9"
CUTS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.97, 0.995)


def originals(image: np.ndarray) -> dict[str, tuple[str, bytes]]:
    """The undamaged encodings of `image` (BGR): name -> (encoding, payload)."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    progressive = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    restart = [cv2.IMWRITE_JPEG_RST_INTERVAL, 4]
    return {"jpeg_baseline_colour": ("jpeg", cv2.imencode(".jpg", image)[1].tobytes()),
            "jpeg_progressive_colour": ("jpeg", cv2.imencode(".jpg", image, progressive)[1].tobytes()),
            "jpeg_baseline_gray": ("jpeg", cv2.imencode(".jpg", gray)[1].tobytes()),
            "jpeg_progressive_gray": ("jpeg", cv2.imencode(".jpg", gray, progressive)[1].tobytes()),
            "jpeg_restart_colour": ("jpeg", cv2.imencode(".jpg", image, restart)[1].tobytes()),
            "png_colour": ("png", cv2.imencode(".png", image)[1].tobytes()),
            "png_gray": ("png", cv2.imencode(".png", gray)[1].tobytes())}


def _first_scan_data(jpeg: bytes) -> int:
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + struct.unpack(">H", jpeg[sos + 2:sos + 4])[0]


def _segments(jpeg: bytes, marker: int) -> list[tuple[int, int]]:
    """(start of payload, end) of each marker segment `marker` before the first scan."""
    found, pos = [], 2
    while pos + 4 <= len(jpeg) and jpeg[pos + 1] != 0xDA:
        length = struct.unpack(">H", jpeg[pos + 2:pos + 4])[0]
        if jpeg[pos + 1] == marker:
            found.append((pos + 4, pos + 2 + length))
        pos += 2 + length
    return found


def jpeg_cut_with_eoi(jpeg: bytes, rng: random.Random) -> Iterator[bytes]:
    """The scans cut at each of :data:`CUTS`, then ff d9: libjpeg warns 'premature end' and fills in grey."""
    start = _first_scan_data(jpeg)
    for fraction in CUTS:
        yield jpeg[:start + int((len(jpeg) - 2 - start) * fraction)] + EOI


def jpeg_cut_without_eoi(jpeg: bytes, rng: random.Random) -> Iterator[bytes]:
    start = _first_scan_data(jpeg)
    for fraction in CUTS:
        yield jpeg[:start + int((len(jpeg) - 2 - start) * fraction)]


def jpeg_cut_between_scans(jpeg: bytes, rng: random.Random) -> Iterator[bytes]:
    """A progressive JPEG ended (ff d9) after one of its scans: a valid file libjpeg decodes without a warning."""
    pos = jpeg.find(b"\xff\xda", _first_scan_data(jpeg))
    while pos > 0:
        yield jpeg[:pos] + EOI
        pos = jpeg.find(b"\xff\xda", pos + 2)


def jpeg_scan_overwritten(jpeg: bytes, rng: random.Random) -> Iterator[bytes]:
    """Entropy-coded bytes overwritten in place every `step` bytes (markers and ff bytes left alone)."""
    start = _first_scan_data(jpeg)
    for step in (97, 257, 1009, 4001):
        data = bytearray(jpeg)
        for pos in range(start + rng.randrange(step), len(jpeg) - 2, step):
            if data[pos] != 0xFF and data[pos - 1] != 0xFF:
                data[pos] = rng.choice([v for v in range(0xFF) if v != data[pos]])
        yield bytes(data)


def jpeg_scan_zeroed(jpeg: bytes, rng: random.Random) -> Iterator[bytes]:
    """A run of scan bytes overwritten with zeros (lost packets of a camera link)."""
    start = _first_scan_data(jpeg)
    for fraction in (0.1, 0.4, 0.8):
        pos = start + int((len(jpeg) - 2 - start) * fraction)
        run = max(64, (len(jpeg) - start) // 20)
        yield jpeg[:pos] + bytes(min(run, len(jpeg) - 2 - pos)) + jpeg[pos + run:] if pos + run < len(jpeg) - 2 \
            else jpeg[:pos] + bytes(len(jpeg) - 2 - pos) + EOI


def jpeg_huffman_table_flipped(jpeg: bytes, rng: random.Random) -> Iterator[bytes]:
    """A byte of a Huffman table's code counts flipped: the codes no longer match the scan."""
    for begin, end in _segments(jpeg, 0xC4)[:4]:
        data = bytearray(jpeg)
        data[begin + 1 + rng.randrange(2, 8)] ^= 0x01  # one count among code lengths 3..8 bits
        yield bytes(data)


def jpeg_frame_header_flipped(jpeg: bytes, rng: random.Random) -> Iterator[bytes]:
    """Sampling factors or component ids in the frame header (SOF) flipped."""
    for begin, end in _segments(jpeg, 0xC0) + _segments(jpeg, 0xC2):
        for offset in range(6, end - begin, 3):  # component id, then sampling factors, per component
            data = bytearray(jpeg)
            data[begin + offset] ^= 0x40
            yield bytes(data)


JPEG_FAMILIES = {fn.__name__: fn for fn in (jpeg_cut_with_eoi, jpeg_cut_without_eoi, jpeg_cut_between_scans,
                                            jpeg_scan_overwritten,
                                            jpeg_huffman_table_flipped, jpeg_frame_header_flipped)}
#: Damage that can leave a valid bitstream (a run of zero bits decodes as short Huffman codes): refused most of the
#: time, not always; measured, not asserted (RELIABILITY.md, known limits).
JPEG_BEST_EFFORT = {"jpeg_scan_zeroed": jpeg_scan_zeroed}


def _chunks(png: bytes) -> list[tuple[int, int, bytes]]:
    """(start, length, type) of every chunk."""
    found, pos = [], 8
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        found.append((pos, length, kind))
        pos += 12 + length
    return found


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _with_idat(png: bytes, idat: bytes) -> bytes:
    """`png` with its image data replaced by `idat` in one chunk whose CRC is right."""
    chunks = _chunks(png)
    head = png[:chunks[1][0]]  # signature + IHDR
    return head + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _idat(png: bytes) -> bytes:
    return b"".join(png[pos + 8:pos + 8 + length] for pos, length, kind in _chunks(png) if kind == b"IDAT")


def png_cut_with_iend(png: bytes, rng: random.Random) -> Iterator[bytes]:
    """The zlib stream cut at each of :data:`CUTS`, in a chunk with a right CRC, then IEND."""
    idat = _idat(png)
    for fraction in CUTS:
        yield _with_idat(png, idat[:int(len(idat) * fraction)])


def png_cut_without_iend(png: bytes, rng: random.Random) -> Iterator[bytes]:
    for fraction in CUTS:
        yield png[:8 + int((len(png) - 8) * fraction)]


def png_data_flipped(png: bytes, rng: random.Random) -> Iterator[bytes]:
    """Bytes of the zlib stream flipped, every chunk CRC recomputed (damage before the CRC was written)."""
    idat = _idat(png)
    for position in (2, len(idat) // 3, len(idat) // 2, len(idat) - 6, len(idat) - 1):
        data = bytearray(idat)
        data[position] ^= 1 << rng.randrange(8)
        yield _with_idat(png, bytes(data))


def png_data_padded(png: bytes, rng: random.Random) -> Iterator[bytes]:
    """Bytes after the end of the zlib stream, or a stream holding more rows than the header says."""
    idat = _idat(png)
    yield _with_idat(png, idat + rng.randbytes(16))
    pixels = zlib.decompress(idat)
    yield _with_idat(png, zlib.compress(pixels + pixels[: len(pixels) // 4]))
    yield _with_idat(png, zlib.compress(pixels[: len(pixels) * 3 // 4]))


def png_crc_broken(png: bytes, rng: random.Random) -> Iterator[bytes]:
    """One byte of a chunk flipped, CRC left as it was (damage in transit)."""
    for pos, length, kind in _chunks(png)[:3]:
        if length:
            data = bytearray(png)
            data[pos + 8 + rng.randrange(length)] ^= 0x10
            yield bytes(data)


def png_header_flipped(png: bytes, rng: random.Random) -> Iterator[bytes]:
    """IHDR width, height, bit depth or colour type changed, CRC recomputed."""
    ihdr = bytearray(png[16:29])
    for offset, value in ((3, ihdr[3] ^ 0x01), (7, ihdr[7] ^ 0x02), (8, 16 if ihdr[8] == 8 else 8),
                          (9, 2 if ihdr[9] == 0 else 0), (12, 1)):
        changed = bytearray(ihdr)
        changed[offset] = value
        yield png[:12] + _chunk(b"IHDR", bytes(changed))[4:] + png[33:]


PNG_FAMILIES = {fn.__name__: fn for fn in (png_cut_with_iend, png_cut_without_iend, png_data_flipped,
                                           png_data_padded, png_crc_broken, png_header_flipped)}


def damaged_images(image: np.ndarray, seed: int = 0, jpeg_families: dict | None = None,
                   png_families: dict | None = None) -> Iterator[tuple[str, str, str, bytes]]:
    """(family, original, encoding, payload) for every damaged copy of `image` (BGR uint8)."""
    rng = random.Random(seed)
    for name, (encoding, payload) in originals(image).items():
        if encoding == "jpeg":
            families = JPEG_FAMILIES if jpeg_families is None else jpeg_families
        else:
            families = PNG_FAMILIES if png_families is None else png_families
        for family, make in families.items():
            for damaged in make(payload, rng):
                if damaged != payload:
                    yield family, name, encoding, damaged
