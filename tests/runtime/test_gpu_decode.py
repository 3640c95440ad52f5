"""GPU JPEG decoding with nvImageCodec: refused at start where it cannot run; strict and equal to the CPU on a GPU."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

from trustvlm.runtime.decode.decode_pool import DecodeConfig
from trustvlm.runtime.frames import Encoding, FrameHeader, ReceivedFrame
from trustvlm.runtime.decode.gpu_decode import DecoderUnavailableError, NvImageCodecBatch
from trustvlm.runtime.decode.image_codec import FrameDecodeError, decode_image

from . import damaged

HAS_NVIMGCODEC = (importlib.util.find_spec("nvidia") is not None
                  and importlib.util.find_spec("nvidia.nvimgcodec") is not None)


def jpeg_frame(payload: bytes, seq: int = 0) -> ReceivedFrame:
    return ReceivedFrame(FrameHeader("cam", seq, 1, Encoding.JPEG), payload, 1)


def test_an_unknown_decoder_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"decoder should be one of \['cpu', 'nvimgcodec'\]"):
        DecodeConfig(decoder="nvjpeg")


@pytest.mark.skipif(HAS_NVIMGCODEC, reason="nvImageCodec is installed here: the refusal path cannot be shown")
def test_nvimgcodec_is_refused_at_start_with_one_line_where_it_is_not_installed():
    with pytest.raises(DecoderUnavailableError,
                       match=r"pip install .nvidia-nvimgcodec-cu13\[nvjpeg\]. .*--decoder cpu"):
        NvImageCodecBatch()


@pytest.mark.timeout(60)
def test_serve_refuses_nvimgcodec_in_one_line_where_it_cannot_run(demo_export, demo_bundle, tmp_path):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if HAS_NVIMGCODEC:
        pytest.skip("nvImageCodec is installed here; on a GPU machine the service starts instead")
    done = subprocess.run([sys.executable, "-m", "trustvlm.runtime.cli", "serve", "--artifacts", str(demo_export),
                           "--bundle", str(demo_bundle), "--ingest", "tcp://127.0.0.1:*", "--publish",
                           "tcp://127.0.0.1:*", "--decoder", "nvimgcodec"], capture_output=True, text=True,
                          timeout=50, cwd=tmp_path)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nvidia-nvimgcodec-cu13[nvjpeg]" in lines[0], done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.skipif(not HAS_NVIMGCODEC, reason="GPU decode needs nvImageCodec (the gpu extra) and a CUDA device; "
                                               "this machine has neither")
def test_gpu_decode_matches_the_cpu_and_stays_strict(vtest_frames):
    try:
        gpu = NvImageCodecBatch()
    except DecoderUnavailableError as error:
        pytest.skip(str(error))
    originals = damaged.originals(vtest_frames[0])
    payloads = [originals["jpeg_baseline_colour"][1], originals["jpeg_progressive_colour"][1]]
    bad = [p for _, _, _, p in damaged.damaged_images(vtest_frames[0], png_families={})][:20]
    frames = [jpeg_frame(p, i) for i, p in enumerate(payloads + bad)]
    started = time.perf_counter()
    results = gpu.decode(frames, 0)
    print(f"\n{len(frames)} JPEGs in {time.perf_counter() - started:.3f} s")
    for frame, result in zip(frames[:2], results[:2]):
        cpu = decode_image(frame)
        assert isinstance(result, np.ndarray) and result.shape == cpu.shape
        # different IDCT and upsampling: within a few levels on average
        assert np.abs(result.astype(int) - cpu).mean() < 3.0
    assert all(isinstance(r, FrameDecodeError) for r in results[2:]), "a damaged JPEG reached the GPU"
