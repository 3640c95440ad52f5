"""SigLIP (ViT-B/16, open_clip `ViT-B-16-SigLIP`): image and text towers exported with random-init
weights and from a checkpoint file, offline, with or without its Hugging Face tokenizer.

Two exports (about half a minute each on 2 cores): random-init weights without a tokenizer through
`trustvlm export` (`offline_export`), and a checkpoint file with a tokenizer folder through the
library (`checkpoint_export`). The refusals come before any model is built (a second each).

Offline here means HF_HUB_OFFLINE=1 and an empty Hugging Face cache: the tokenizer of
timm/ViT-B-16-SigLIP cannot be had, so the text parity gate runs on ids within the vocabulary and
`trustvlm calibrate` refuses in one line. The tokenizer folder of these tests is a small one trained
here (tests/models/hf_tokenizer.py), not SigLIP's. No pretrained SigLIP weights are used anywhere.
"""

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import require_fashion_mnist
from tests.export.in_process import hub_offline, run_in_process
from tests.models.hf_tokenizer import make_tokenizer_folder
from trustvlm.contract.files import sha256_file
from trustvlm.contract.manifest import read_manifest

MODEL = "siglip_vitb16"


def offline_env(tmp_path):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}


def run_cli(*args, tmp_path, timeout=900):
    return subprocess.run([sys.executable, "-m", "trustvlm", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=offline_env(tmp_path))


def one_error_line(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_tokenizer_option_is_refused_for_an_open_clip_tokenizer(tmp_path):
    line = one_error_line(run_cli("export", "--model", "clip_vitb32", "--weights", "random", "--tokenizer",
                                  tmp_path, "--output", tmp_path / "out", tmp_path=tmp_path))
    assert "clip_vitb32 uses open_clip's built-in tokenizer" in line and "drop it" in line
    assert not (tmp_path / "out" / "clip_vitb32").exists()


def test_missing_or_unusable_tokenizer_folder_is_one_line(tmp_path):
    line = one_error_line(run_cli("export", "--model", MODEL, "--weights", "random", "--tokenizer",
                                  tmp_path / "nope", "--output", tmp_path / "out", tmp_path=tmp_path))
    assert "nope does not exist" in line and "hf download timm/ViT-B-16-SigLIP" in line
    (tmp_path / "empty").mkdir()
    line = one_error_line(run_cli("export", "--model", MODEL, "--weights", "random", "--tokenizer",
                                  tmp_path / "empty", "--output", tmp_path / "out", tmp_path=tmp_path))
    assert "cannot load the tokenizer timm/ViT-B-16-SigLIP from" in line
    assert not (tmp_path / "out" / MODEL).exists()


@pytest.fixture(scope="module")
def offline_export(tmp_path_factory):
    """Random-init SigLIP exported offline without a tokenizer (text parity on synthetic ids)."""
    require_fashion_mnist()
    tmp_path = tmp_path_factory.mktemp("siglip-offline")
    result = run_cli("export", "--model", MODEL, "--weights", "random", "--output", tmp_path / "out",
                     "--parity-images", 8, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return tmp_path, result


@pytest.mark.slow
def test_random_init_siglip_exports_both_towers_offline(offline_export):
    tmp_path, result = offline_export
    assert f"exported {MODEL} [random-init weights" in result.stdout
    assert "text parity on token ids drawn within the vocabulary (32000)" in result.stdout + result.stderr
    manifest = read_manifest(tmp_path / "out" / MODEL)
    assert manifest["weights"]["id"] == "random-init" and manifest["architecture"] == "ViT-B-16-SigLIP"
    assert manifest["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-6), "open_clip's SigLIP init, the model's own"
    assert manifest["logit_bias"] == -10.0
    text_input = manifest["text_input"]
    assert text_input["shape"] == ["batch", 64] and text_input["vocab_size"] == 32000
    assert text_input["tokenizer"] == "hf:timm/ViT-B-16-SigLIP" and text_input["tokenizer_folder"] is None
    assert text_input["parity_tokens"].startswith("synthetic ids within the vocabulary")
    assert manifest["embedding"]["dim"] == 768 and manifest["preprocess"]["resize_mode"] == "squash"
    parity = manifest["precisions"]["fp32"]["parity"]
    assert parity["image_min_cosine"] >= 0.9999 and parity["text_min_cosine"] >= 0.9999
    assert not (tmp_path / "out" / MODEL / "tokenizer").exists()


@pytest.mark.slow
def test_calibrate_without_the_tokenizer_is_refused_in_one_line(offline_export, monkeypatch, capfd):
    tmp_path, _ = offline_export
    artifacts = tmp_path / "out" / MODEL
    hub_offline(monkeypatch, home=tmp_path / "hf-home")  # what offline_env gives a new process
    result = run_in_process(capfd, "calibrate", "--artifacts", artifacts, "--out", tmp_path / "bundle")
    line = one_error_line(result)
    assert line.startswith("trustvlm calibrate: error: siglip_vitb16: no tokenizer for its prompts")
    assert "hf download timm/ViT-B-16-SigLIP" in line and f"put them in {artifacts / 'tokenizer'}/" in line
    assert not (tmp_path / "bundle").exists()


@dataclass
class CheckpointExport:
    result: Any             # trustvlm.export.pipeline.ExportResult (torch: imported by the fixture)
    artifacts: Path         # where the export was asked to go: <output_root>/siglip_vitb16
    tokenizer_folder: Path
    checkpoint: Path
    checkpoint_sha256: str


@pytest.fixture(scope="module")
def checkpoint_export(tmp_path_factory):
    """An open_clip state dict (random, seed 1) with its own logit scale and bias, exported offline with a local
    tokenizer folder (4 parity images, the parity prompts tokenized by it).

    The weights and the tokenizer are independent inputs of an export (loaded apart, recorded apart), so one
    export serves the test of each; the random-init export without a tokenizer is `offline_export`'s.
    The checkpoint file is deleted once exported (about 800 MB); its path and sha256 stay.
    """
    require_fashion_mnist()
    import open_clip  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from trustvlm.export.pipeline import ExportRequest, export_model  # noqa: PLC0415

    tmp_path = tmp_path_factory.mktemp("siglip-checkpoint")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        folder = make_tokenizer_folder(tmp_path / "tok")
        torch.manual_seed(1)
        model = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(50.0))
            model.logit_bias.fill_(-12.5)
        checkpoint = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(model.state_dict(), checkpoint)
        del model
        result = export_model(ExportRequest(MODEL, weights=str(checkpoint), output_root=tmp_path / "out",
                                            parity_images=4, tokenizer_dir=folder))
    checkpoint_sha256 = sha256_file(checkpoint)
    checkpoint.unlink()
    return CheckpointExport(result, tmp_path / "out" / MODEL, folder, checkpoint, checkpoint_sha256)


@pytest.mark.slow
def test_siglip_with_a_local_tokenizer_folder(checkpoint_export, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    from trustvlm.calibration.text_prototypes import build_text_prototypes  # noqa: PLC0415
    from trustvlm.calibration.tokenizer import get_tokenizer  # noqa: PLC0415
    from trustvlm.models.tokenizers import load_tokenizer  # noqa: PLC0415

    result, artifacts = checkpoint_export.result, checkpoint_export.artifacts
    folder = checkpoint_export.tokenizer_folder
    text_input = result.manifest["text_input"]
    assert text_input["parity_tokens"] == "prompts" and text_input["tokenizer_folder"] == "tokenizer"
    for record in text_input["tokenizer_files"]:
        assert sha256_file(artifacts / "tokenizer" / record["file"]) == record["sha256"]
    assert result.parity["fp32"].text_min_cosine >= 0.9999 and result.parity["fp32"].prompts == 80
    prompts = ["a photo of a coat.", "a blurry photo of the ankle boot."]
    expected = load_tokenizer("ViT-B-16-SigLIP", MODEL, folder)(prompts).numpy()
    np.testing.assert_array_equal(get_tokenizer(read_manifest(artifacts), artifacts)(prompts), expected)
    prototypes = build_text_prototypes(artifacts, ["coat", "bag", "dress"], ["a photo of a {}."])
    assert prototypes.shape == (3, 768) and np.allclose(np.linalg.norm(prototypes, axis=1), 1.0)


@pytest.mark.slow
def test_siglip_from_a_checkpoint_file_keeps_its_scale_and_bias(checkpoint_export):
    """An open_clip state dict (random, seed 1) with its own logit scale and bias."""
    result = checkpoint_export.result
    manifest = result.manifest
    assert manifest["weights"] == {"id": f"sha256:{checkpoint_export.checkpoint_sha256}",
                                   "source": str(checkpoint_export.checkpoint), "random_init": False}
    assert manifest["logit_scale"] == pytest.approx(50.0, rel=1e-6) and manifest["logit_bias"] == -12.5
    assert result.parity["fp32"].image_min_cosine >= 0.9999 and result.parity["fp32"].text_min_cosine >= 0.9999
