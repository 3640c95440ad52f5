"""Image payloads: format guards (size probes, chunk and scan checks) and decoding, one table entry per encoding.

:data:`DECODERS` maps each :class:`~trustvlm.runtime.frames.Encoding` to a :class:`Decoder`: how
its width and height are read from the payload's own header before anything is decoded (the
ingest checks them against :class:`~trustvlm.runtime.ingest.ingest.FrameLimits`), and how the payload
becomes uint8 RGB pixels behind that format's guards. Another decoder (a strict libjpeg-turbo
one, reduced-resolution decoding, a GPU decoder) is one entry: replace the encoding's
:class:`Decoder`, keeping its :class:`FrameDecodeError` reasons.

Decoding is strict: damage that a decoder would paper over is ``undecodable``. libjpeg fills a
cut or corrupted scan with grey and only warns (OpenCV's ``imdecode`` drops the warning and
returns the image), so JPEGs are decoded with libjpeg-turbo through simplejpeg with
``strict=True``, which turns every libjpeg warning (premature end of data, bad Huffman code,
extraneous bytes before a marker) into an error. For PNG, every chunk's length and CRC is
checked, and the IDAT zlib stream must be complete (its end and Adler-32 reached) and inflate to
exactly the bytes the IHDR implies, with nothing after it, before OpenCV decodes it.

The guards exist because decoders trust their input: OpenCV's PNG reader allocates what a chunk
length says, and a progressive JPEG can carry thousands of scans. Each guard refuses such
payloads with ``undecodable`` before the decoder sees them.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import simplejpeg

from trustvlm.runtime.frames import Encoding, FrameHeader, PixelFormat, ReceivedFrame
from trustvlm.runtime.messages import Reason

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}
_APNG_CHUNKS = frozenset({b"acTL", b"fcTL", b"fdAT"})
#: A camera's PNG has a handful of chunks (IHDR, a few IDAT, IEND); progressive JPEGs have about 10 scans.
MAX_PNG_CHUNKS = 4096
MAX_JPEG_SCANS = 64


class FrameDecodeError(ValueError):
    """A payload that cannot become an RGB image; `reason` says which defer reason applies."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason = reason


def probe_png_size(payload: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding the image.

    Raises:
        FrameDecodeError: UNDECODABLE when the header cannot be read.
    """
    if payload[:8] != PNG_SIGNATURE or payload[12:16] != b"IHDR" or len(payload) < 24:
        raise FrameDecodeError(Reason.UNDECODABLE, "not a PNG: missing signature or IHDR chunk")
    return struct.unpack(">II", payload[16:24])


def _jpeg_frame_header(payload: bytes) -> tuple[int, int, int]:
    """(SOF marker, its position, position of the first SOS or -1), walking the marker segments by their lengths.

    Raises:
        FrameDecodeError: UNDECODABLE when no frame header comes before the image data.
    """
    if payload[:2] != JPEG_SOI:
        raise FrameDecodeError(Reason.UNDECODABLE, f"not a JPEG: starts with {payload[:4].hex()}, expected ffd8")
    pos, frame = 2, None
    while pos + 4 <= len(payload):
        if payload[pos] != 0xFF:
            raise FrameDecodeError(Reason.UNDECODABLE, f"JPEG: expected a marker at byte {pos}")
        marker = payload[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        length = struct.unpack(">H", payload[pos + 2:pos + 4])[0]
        if marker in _JPEG_SOF and frame is None:
            if pos + 9 > len(payload):
                break
            frame = (marker, pos)
        if marker == 0xDA:
            return (*frame, pos) if frame is not None else _no_frame()
        if length < 2:
            break
        pos += 2 + length
    if frame is not None:
        return (*frame, -1)
    return _no_frame()


def _no_frame():
    raise FrameDecodeError(Reason.UNDECODABLE, "JPEG: no frame header (SOF) before the image data")


def probe_jpeg_size(payload: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header (SOF), without decoding the image.

    Raises:
        FrameDecodeError: UNDECODABLE when the header cannot be read.
    """
    _, at, _ = _jpeg_frame_header(payload)
    height, width = struct.unpack(">HH", payload[at + 5:at + 9])
    return width, height


def check_png_chunks(payload: bytes, max_chunks: int = MAX_PNG_CHUNKS) -> None:
    """Walk a PNG's chunks before anything decodes it: lengths within the payload, CRCs right, no animation.

    OpenCV's PNG reader allocates what a chunk's length field says: one 3 kB PNG with a forged
    length made it allocate 3.4 GB (found by fuzzing, OpenCV 5.0.0). A length that runs past the
    payload, a CRC that does not match, APNG chunks or more than `max_chunks` chunks are refused.

    Raises:
        FrameDecodeError: UNDECODABLE, saying which chunk is wrong.
    """
    view, pos, count = memoryview(payload), len(PNG_SIGNATURE), 0
    while True:
        if pos + 12 > len(payload):
            raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: chunk at byte {pos} runs past the end ({len(payload)} "
                                                       "bytes) before IEND")
        length, kind = struct.unpack(">I4s", view[pos:pos + 8])
        end = pos + 12 + length
        if end > len(payload):
            raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: chunk {kind!r} at byte {pos} declares {length} bytes, "
                                                       f"but only {len(payload) - pos - 12} follow")
        if not kind.isalpha() or kind in _APNG_CHUNKS:
            raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: chunk type {kind!r} at byte {pos} is not accepted "
                                                       "(not 4 letters, or animated PNG)")
        if zlib.crc32(view[pos + 4:pos + 8 + length]) != struct.unpack(">I", view[pos + 8 + length:end])[0]:
            raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: chunk {kind!r} at byte {pos} fails its CRC")
        count += 1
        if kind == b"IEND":
            return
        if count >= max_chunks:
            raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: more than {max_chunks} chunks")
        pos = end


def check_jpeg_scans(payload: bytes, max_scans: int = MAX_JPEG_SCANS) -> None:
    """Refuse a JPEG with more than `max_scans` scans (each costs a pass over the image: a CPU bomb), or
    whose scans do not carry every component to the end.

    Start-of-scan markers (ff da) cannot occur inside entropy-coded data (ff is stuffed as ff 00
    there), so counting them counts the scans. A progressive JPEG cut between two scans and closed
    with ff d9 is a valid file that libjpeg decodes without a warning (the missing refinements read
    as zeros): each component's 64 coefficients must reach full precision (a scan with Al 0) in some
    scan, as every libjpeg progression script does. A sequential JPEG must scan every component.

    Raises:
        FrameDecodeError: UNDECODABLE.
    """
    starts = _jpeg_sos_positions(payload)
    scans = len(starts)
    if scans > max_scans:
        raise FrameDecodeError(Reason.UNDECODABLE, f"JPEG with {scans} scans; at most {max_scans} are accepted")
    marker, at, pos = _jpeg_frame_header(payload)
    count = payload[at + 9] if at + 9 < len(payload) else 0
    components = [payload[at + 10 + 3 * i] for i in range(count) if at + 12 + 3 * i < len(payload)]
    done: dict[int, set[int]] = {}
    progressive = marker in (0xC2, 0xC6, 0xCA, 0xCE)
    while pos >= 0 and pos + 5 <= len(payload):
        length, ns = struct.unpack(">HB", payload[pos + 2:pos + 5])
        ids = payload[pos + 5:pos + 5 + 2 * ns:2]
        if pos + 5 + 2 * ns + 3 > len(payload):
            break
        ss, se, approximation = payload[pos + 5 + 2 * ns:pos + 8 + 2 * ns]
        for component in ids:
            covered = done.setdefault(component, set())
            if not progressive:
                covered.update(range(64))
            elif approximation & 0x0F == 0:  # Al 0: these coefficients are at full precision after this scan
                covered.update(range(ss, min(se, 63) + 1))
        following = bisect.bisect_left(starts, pos + 2 + length)
        pos = starts[following] if following < len(starts) else -1
    missing = [c for c in components if len(done.get(c, ())) < 64]
    if missing:
        raise FrameDecodeError(Reason.UNDECODABLE, f"JPEG ends before its scans cover every coefficient of "
                                                   f"component(s) {missing} ({scans} scans; cut between scans?)")


def _jpeg_sos_positions(payload: bytes) -> list[int]:
    """Where each ff da (start of scan) begins, in one vectorized pass (a tenth of the time of bytes.count
    and bytes.find on a camera frame: 0xff is common in entropy-coded data, 0xda rarer)."""
    data = np.frombuffer(payload, dtype=np.uint8)
    after = np.flatnonzero(data[1:] == 0xDA)
    return after[data[after] == 0xFF].tolist()


def decode_raw(header: FrameHeader, payload: bytes) -> np.ndarray:
    """Raw pixels of `header.shape` in `header.pixel_format` (default bgr8, or mono8 for one channel) to RGB.

    Raises:
        FrameDecodeError: BAD_SHAPE for pixels that do not fit their pixel format.
    """
    pixels = np.frombuffer(payload, dtype=np.uint8).reshape(header.shape)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    pixel_format = header.pixel_format or (PixelFormat.MONO8 if channels == 1 else PixelFormat.BGR8)
    if (pixel_format is PixelFormat.MONO8) != (channels == 1):
        raise FrameDecodeError(Reason.BAD_SHAPE, f"pixel_format {pixel_format.value} does not fit shape "
                                                 f"{list(header.shape)}")
    if channels == 1:
        return cv2.cvtColor(pixels.reshape(pixels.shape[:2]), cv2.COLOR_GRAY2RGB)
    return pixels.copy() if pixel_format is PixelFormat.RGB8 else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def decode_jpeg(header: FrameHeader, payload: bytes, min_side: int = 0) -> np.ndarray:
    """A complete, undamaged JPEG of at most :data:`MAX_JPEG_SCANS` scans to RGB, with libjpeg-turbo (strict).

    Args:
        min_side: When > 0, decode at the smallest of 1/2, 1/4, 1/8 scale (in the DCT domain) whose
            short side is still >= `min_side`; full size when none is. The guards and the strictness
            are the same at every scale.

    Raises:
        FrameDecodeError: UNDECODABLE for a truncated, scan-heavy or corrupt payload, including
            any libjpeg warning (a cut or overwritten scan decodes with only a warning otherwise).
    """
    if JPEG_EOI not in payload[-64:]:
        raise FrameDecodeError(Reason.UNDECODABLE, "truncated JPEG: no end-of-image marker (ffd9) at the end")
    check_jpeg_scans(payload)
    min_width = min_height = 0
    if min_side > 0:
        width, height = probe_jpeg_size(payload)
        factor = jpeg_scale_factor(width, height, min_side)
        # libjpeg takes the smallest scale meeting both minimums; ceil(size / factor) rules out those below 1/factor
        min_width, min_height = -(-width // factor), -(-height // factor)
    try:
        return simplejpeg.decode_jpeg(payload, colorspace="RGB", strict=True, min_height=min_height,
                                      min_width=min_width)
    except (ValueError, TypeError) as error:
        raise FrameDecodeError(Reason.UNDECODABLE, f"JPEG damaged or not decodable ({len(payload)} bytes): "
                                                   f"{error}") from None


#: DCT-domain scales used for reduced decoding (libjpeg-turbo also has 3/8, 5/8, ...; these are the cheap ones).
JPEG_SCALE_FACTORS = (8, 4, 2)


def jpeg_scale_factor(width: int, height: int, min_side: int) -> int:
    """The largest of 8, 4, 2 whose scaled short side (rounded up, as libjpeg does) is >= `min_side`; else 1."""
    short = min(width, height)
    return next((f for f in JPEG_SCALE_FACTORS if -(-short // f) >= min_side), 1)


#: Samples per pixel of each PNG colour type (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_rows(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> list[tuple[int, int]]:
    """(row count, bytes per row without the filter byte) of each pass of the image data."""
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    rows = []
    for x0, y0, dx, dy in passes:
        pass_width, pass_height = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if pass_width and pass_height:
            rows.append((pass_height, (pass_width * bits_per_pixel + 7) // 8))
    return rows


def check_png_data(payload: bytes, piece: int = 1 << 20) -> None:
    """The IDAT zlib stream is whole: it ends, its Adler-32 matches, it inflates to exactly the bytes the IHDR
    implies (rows and their filter bytes) and nothing follows it. Inflated piece by piece, never held whole.
    Call after :func:`check_png_chunks` (lengths and CRCs checked).

    Raises:
        FrameDecodeError: UNDECODABLE, saying what is wrong.
    """
    if payload[12:16] != b"IHDR" or payload[8:12] != b"\x00\x00\x00\x0d":
        raise FrameDecodeError(Reason.UNDECODABLE, "PNG: the first chunk is not a 13-byte IHDR")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", payload[16:29])
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or interlace not in (0, 1):
        raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: unsupported IHDR (bit depth {depth}, colour type "
                                                   f"{colour}, interlace {interlace})")
    expected = sum(count * (1 + size) for count, size in
                   _png_rows(width, height, depth * _PNG_CHANNELS[colour], interlace == 1))
    pos, chunks = len(PNG_SIGNATURE), []
    while pos + 8 <= len(payload):
        length, kind = struct.unpack(">I4s", payload[pos:pos + 8])
        if kind == b"IDAT":
            chunks.append(payload[pos + 8:pos + 8 + length])
        pos += 12 + length
    inflater, pending, total = zlib.decompressobj(), b"".join(chunks), 0
    try:
        while pending and not inflater.eof and total <= expected:
            total += len(inflater.decompress(pending, piece))
            pending = inflater.unconsumed_tail
    except zlib.error as error:
        raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: image data is not a valid zlib stream: {error}") from None
    if total != expected or not inflater.eof or inflater.unused_data:
        state = "complete" if inflater.eof else "unfinished"
        raise FrameDecodeError(Reason.UNDECODABLE, f"PNG: image data inflates to {total} bytes in a {state} zlib "
                                                   f"stream ({len(inflater.unused_data)} bytes after it); {width}x"
                                                   f"{height} needs exactly {expected}")


def decode_png(header: FrameHeader, payload: bytes) -> np.ndarray:
    """A complete, well-formed PNG (chunks and image data checked first) to RGB, with OpenCV.

    Raises:
        FrameDecodeError: UNDECODABLE for a truncated, malformed or corrupt payload.
    """
    if b"IEND" not in payload[-16:]:
        raise FrameDecodeError(Reason.UNDECODABLE, "truncated PNG: no IEND chunk at the end")
    check_png_chunks(payload)
    check_png_data(payload)
    return _opencv_decode(header, payload)


def _opencv_decode(header: FrameHeader, payload: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FrameDecodeError(Reason.UNDECODABLE, f"OpenCV cannot decode this {header.encoding.value} payload "
                                                   f"({len(payload)} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class Decoder:
    """How one encoding becomes pixels.

    Attributes:
        probe: (width, height) from the payload's own header, without decoding; None when the
            frame header carries the size (raw). Raises FrameDecodeError.
        decode: The payload, behind its guards, as uint8 RGB (H x W x 3). Raises FrameDecodeError.
        decode_reduced: Same, at a reduced scale whose short side is still >= the third argument;
            None for encodings that decode only at full size.
    """

    probe: Callable[[bytes], tuple[int, int]] | None
    decode: Callable[[FrameHeader, bytes], np.ndarray]
    decode_reduced: Callable[[FrameHeader, bytes, int], np.ndarray] | None = None


#: One entry per encoding; a new decoder replaces its encoding's entry.
DECODERS: dict[Encoding, Decoder] = {
    Encoding.JPEG: Decoder(probe_jpeg_size, decode_jpeg, decode_jpeg),
    Encoding.PNG: Decoder(probe_png_size, decode_png),
    Encoding.RAW: Decoder(None, decode_raw),
}


def probe_image_size(payload: bytes, encoding: Encoding) -> tuple[int, int]:
    """(width, height) of an encoded payload from its own header, without decoding the image.

    Raises:
        FrameDecodeError: UNDECODABLE when the header cannot be read.
        ValueError: An encoding whose size is in the frame header (raw).
    """
    probe = DECODERS[encoding].probe
    if probe is None:
        raise ValueError(f"{encoding.value} payloads have no header of their own; their size is the frame "
                         "header's shape")
    return probe(payload)


def decode_image(frame: ReceivedFrame, min_side: int = 0) -> np.ndarray:
    """Decode a checked frame to uint8 RGB (H x W x 3) with its encoding's decoder.

    `min_side` > 0 lets a decoder that can decode at reduced scale (JPEG) return an image whose
    short side is at least `min_side` instead of the full one; the others ignore it.

    Raises:
        FrameDecodeError: UNDECODABLE (corrupt or truncated JPEG/PNG) or BAD_SHAPE (raw pixels
            that do not fit their pixel format).
    """
    decoder = DECODERS[frame.header.encoding]
    if min_side > 0 and decoder.decode_reduced is not None:
        return decoder.decode_reduced(frame.header, frame.payload, min_side)
    return decoder.decode(frame.header, frame.payload)
