"""Which tokenizer a registry model takes, and the one-line errors when it cannot be had offline."""

import json
import sys

import numpy as np
import pytest

from tests.models.hf_tokenizer import make_tokenizer_folder
from trustvlm.models.registry import REGISTRY_PATH, get_model_spec
from trustvlm.models.tokenizers import (OPEN_CLIP, TokenizerUnavailableError, load_hf_tokenizer, load_tokenizer,
                                        tokenizer_info)

pytest.importorskip("open_clip")

CLIP_ENTRIES = [name for name, entry in json.loads(REGISTRY_PATH.read_text())["models"].items()
                if entry.get("kind", "clip") == "clip"]


@pytest.fixture
def offline_empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


@pytest.mark.parametrize("name", CLIP_ENTRIES)
def test_every_clip_entry_names_its_tokenizer(name):
    info = tokenizer_info(get_model_spec(name).architecture)
    if name.startswith("siglip"):
        assert info.kind == "hf:timm/ViT-B-16-SigLIP" and info.hf_name == "timm/ViT-B-16-SigLIP"
        assert (info.context_length, info.vocab_size) == (64, 32000)
        assert info.kwargs == {"clean": "canonicalize"}
    else:
        assert info.kind == OPEN_CLIP and info.hf_name is None


def test_open_clip_tokenizer_needs_no_files():
    tokens = load_tokenizer("ViT-B-32", "clip_vitb32")(["a photo of a bag."])
    assert tokens.shape == (1, 77) and int(tokens.max()) == 49407


def test_siglip_tokenizer_absent_is_one_line_naming_what_to_fetch(offline_empty_cache):
    with pytest.raises(TokenizerUnavailableError) as caught:
        load_tokenizer("ViT-B-16-SigLIP", "siglip_vitb16")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("siglip_vitb16: no tokenizer")
    assert "hf download timm/ViT-B-16-SigLIP" in message and "--tokenizer DIR" in message
    assert isinstance(caught.value, FileNotFoundError), "calibrate turns FileNotFoundError into one line"


def test_siglip_tokenizer_without_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(TokenizerUnavailableError, match=r"needs the transformers package; install the export "
                                                        r"extra \(pip install 'trustvlm-edge\[export\]'\)"):
        load_hf_tokenizer(tokenizer_info("ViT-B-16-SigLIP"), "timm/ViT-B-16-SigLIP", "siglip_vitb16", "x")


def test_missing_or_unusable_tokenizer_folder(tmp_path, offline_empty_cache):
    pytest.importorskip("transformers")
    with pytest.raises(TokenizerUnavailableError, match="tokenizer folder .*nope does not exist"):
        load_tokenizer("ViT-B-16-SigLIP", "siglip_vitb16", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerUnavailableError, match="cannot load the tokenizer timm/ViT-B-16-SigLIP from"):
        load_tokenizer("ViT-B-16-SigLIP", "siglip_vitb16", tmp_path / "empty")


def test_local_tokenizer_folder_pads_to_the_model_context(tmp_path, offline_empty_cache):
    folder = make_tokenizer_folder(tmp_path / "tok")
    tokens = load_tokenizer("ViT-B-16-SigLIP", "siglip_vitb16", folder)(["a photo of a coat.", "A  Bag!"])
    assert tokens.shape == (2, 64)
    ids = tokens.numpy()
    assert ids.max() < 32000 and (ids[:, -1] == 0).all(), "padded with <pad> (0) to 64 tokens"
    assert (ids == 1).sum(axis=1).tolist() == [1, 1], "one </s> per prompt"


def test_synthetic_ids_stay_within_the_vocabulary():
    from trustvlm.export.text_tokens import synthetic_token_ids  # noqa: PLC0415 - needs torch

    ids = synthetic_token_ids(80, 64, 32000)
    assert ids.shape == (80, 64) and ids.dtype == np.int64
    assert ids.min() == 0 and ids.max() == 31999, "both ends of the embedding table"
    assert np.array_equal(ids, synthetic_token_ids(80, 64, 32000)), "seeded"
    assert (ids[:, -1] == 0).mean() > 0.5, "most rows end in padding"


@pytest.mark.parametrize("name", [n for n in CLIP_ENTRIES if get_model_spec(n).local_config is None])
def test_a_built_in_config_is_read_as_open_clip_reads_it(name):
    import open_clip  # noqa: PLC0415

    from trustvlm.models.tokenizers import _packaged_open_clip_config  # noqa: PLC0415

    architecture = get_model_spec(name).architecture
    path = _packaged_open_clip_config(architecture)
    assert path is not None, f"{architecture}: open_clip's config file not found"
    assert json.loads(path.read_text()) == open_clip.get_model_config(architecture)


def test_a_folder_without_tokenizer_files_is_refused_before_anything_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip.tokenizer", None)  # loading would fail: the check comes first
    (tmp_path / "weights_only").mkdir()
    (tmp_path / "weights_only" / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(TokenizerUnavailableError, match=r"cannot load the tokenizer timm/ViT-B-16-SigLIP from .*"
                                                        r"weights_only \(it holds none of the files"):
        load_tokenizer("ViT-B-16-SigLIP", "siglip_vitb16", tmp_path / "weights_only")


def test_the_tokenizer_is_found_in_the_cache_that_huggingface_hub_names(tmp_path, monkeypatch):
    """Offline, from the cache `huggingface_hub.constants.HF_HUB_CACHE` names when it is read (not at import):
    in-process tests (tests/export/in_process.py) give a command an empty cache by setting it."""
    # Given: the small tokenizer as the hub would have cached timm/ViT-B-16-SigLIP, in a cache of its own
    constants = pytest.importorskip("huggingface_hub.constants")
    folder = make_tokenizer_folder(tmp_path / "tok")
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--timm--ViT-B-16-SigLIP"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for path in folder.iterdir():
        (repo / "snapshots" / commit / path.name).write_bytes(path.read_bytes())
    (repo / ".no_exist" / commit).mkdir(parents=True)
    (repo / ".no_exist" / commit / "config.json").touch()  # what a download records for a file the repo lacks
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # When / Then: found there, and the same ids as from the folder
    prompts = ["a photo of a coat.", "A  Bag!"]
    from_cache = load_tokenizer("ViT-B-16-SigLIP", "siglip_vitb16")(prompts).numpy()
    assert np.array_equal(from_cache, load_tokenizer("ViT-B-16-SigLIP", "siglip_vitb16", folder)(prompts).numpy())
    # and an empty cache is refused in the one line
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(TokenizerUnavailableError, match="^siglip_vitb16: no tokenizer for its prompts"):
        load_tokenizer("ViT-B-16-SigLIP", "siglip_vitb16")
