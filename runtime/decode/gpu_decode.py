"""JPEG decoding on the GPU in batches with nvImageCodec (``serve --decoder nvimgcodec``): nvJPEG, and on a
Jetson its hardware JPEG decoder.

Strictness stays the CPU decoder's: libjpeg-turbo raises on every warning, and nvJPEG is not
known to. So each JPEG first passes :func:`~trustvlm.runtime.decode.image_codec.decode_jpeg` at 1/8 scale
(every guard, and the whole entropy-coded scan, which is where libjpeg warns: a damaged JPEG is
refused at every scale), on the pool's threads; only those that pass go to the GPU, as one batch,
and come back as host pixels for the resize. The GPU takes the inverse DCT and colour conversion
of the full image; the CPU keeps the Huffman decoding. PNG and raw frames are decoded on the CPU.

This path has not run on a GPU yet: it is written against nvImageCodec's Python API
(``nvidia.nvimgcodec.Decoder().decode(list_of_bytes)`` -> a list of ``Image``; ``Image.cpu()`` ->
host pixels), and its tests skip without a GPU and the package (:data:`NVIMGCODEC_PACKAGE`).
"""

from __future__ import annotations

import numpy as np

from trustvlm.runtime.frames import Encoding, ReceivedFrame
from trustvlm.runtime.decode.image_codec import FrameDecodeError, decode_image, decode_jpeg
from trustvlm.runtime.messages import Reason

#: What to install for --decoder nvimgcodec: the CUDA 13 build with nvJPEG, as today's onnxruntime-gpu wheels on PyPI
#: (the gpu extra installs it); on CUDA 12 (JetPack 6) nvidia-nvimgcodec-cu12 instead.
NVIMGCODEC_PACKAGE = "'nvidia-nvimgcodec-cu13[nvjpeg]' (-cu12 on CUDA 12)"
#: Decoders of `serve --decoder`: name -> one line saying what it is.
DECODER_BACKENDS = {
    "cpu": "libjpeg-turbo (strict) on the decode pool's threads",
    "nvimgcodec": "nvImageCodec on the GPU in batches (JPEG; validated strictly on the CPU first); needs "
                  f"nvImageCodec (pip install {NVIMGCODEC_PACKAGE}) and a CUDA device",
}
#: The scale of the strict validation pass: the smallest, the same entropy decoding.
VALIDATION_MIN_SIDE = 1


class DecoderUnavailableError(RuntimeError):
    """The decoder asked for cannot run here (one line: what is missing and what to do)."""


class NvImageCodecBatch:
    """Batch JPEG decoding on the GPU; frames of other encodings go to the CPU decoders.

    Raises:
        DecoderUnavailableError: nvImageCodec is not installed or finds no CUDA device.
    """

    def __init__(self, device_id: int = 0):
        try:
            from nvidia import nvimgcodec  # noqa: PLC0415 - optional: only for --decoder nvimgcodec
        except ImportError as error:
            raise DecoderUnavailableError(f"--decoder nvimgcodec needs the nvImageCodec package: pip install "
                                          f"{NVIMGCODEC_PACKAGE} (or use --decoder cpu): {error}") from None
        try:
            self._decoder = nvimgcodec.Decoder(device_id=device_id)
            self._decoder.decode([_probe_jpeg()])  # fails here, at start, where no GPU can decode
        except Exception as error:  # nvImageCodec raises its own types for a missing driver or device
            raise DecoderUnavailableError(f"--decoder nvimgcodec cannot decode on CUDA device {device_id}: "
                                          f"{error} (use --decoder cpu)") from None

    def validate(self, frame: ReceivedFrame) -> FrameDecodeError | None:
        """The strict CPU decoder's verdict on a JPEG frame (None: it may go to the GPU)."""
        try:
            decode_jpeg(frame.header, frame.payload, VALIDATION_MIN_SIDE)
        except FrameDecodeError as error:
            return error
        return None

    def decode(self, frames: list[ReceivedFrame], min_side: int) -> list[np.ndarray | FrameDecodeError]:
        """Pixels (uint8 RGB) or the decode error of each frame, in order; JPEGs validated with :meth:`validate`.

        `min_side` applies to frames decoded on the CPU (the GPU decodes at full size).
        """
        results: list[np.ndarray | FrameDecodeError | None] = [None] * len(frames)
        batch = []
        for index, frame in enumerate(frames):
            if frame.header.encoding is not Encoding.JPEG:
                try:
                    results[index] = decode_image(frame, min_side)
                except FrameDecodeError as error:
                    results[index] = error
            else:
                results[index] = self.validate(frame)
                if results[index] is None:
                    batch.append(index)
        if batch:
            images = self._decoder.decode([frames[index].payload for index in batch])
            if len(images) != len(batch):  # a failed image is left out of the list (or None): decode one by one
                images = [self._decoder.decode(frames[index].payload) for index in batch]
            for index, image in zip(batch, images):
                results[index] = (np.asarray(image.cpu()) if image is not None else
                                  FrameDecodeError(Reason.UNDECODABLE, "nvImageCodec could not decode this JPEG"))
        return results


def _probe_jpeg() -> bytes:
    """A small valid JPEG (16 x 16 grey) to check at start that the GPU decodes."""
    import simplejpeg  # noqa: PLC0415

    return simplejpeg.encode_jpeg(np.full((16, 16, 3), 128, np.uint8), quality=90, colorspace="RGB")
