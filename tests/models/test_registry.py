import json

import pytest

from trustvlm.contract.files import sha256_file
from trustvlm.models.prompts import build_prompts, get_templates
from trustvlm.models.registry import REGISTRY_PATH, UnknownModelError, get_model_spec, list_models

REQUIRED = {"clip_vitb32", "clip_vitb16", "clip_vitl14", "clip_rn50", "siglip_vitb16", "demo_fmnist"}


def test_registry_holds_the_required_models():
    assert REQUIRED <= set(list_models())


@pytest.mark.parametrize("name", sorted(json.loads(REGISTRY_PATH.read_text())["models"]))
def test_every_entry_is_complete(name):
    spec = get_model_spec(name)
    assert spec.embed_dim > 0 and spec.preprocess.size > 0
    assert len(spec.preprocess.mean) == 3 and len(spec.preprocess.std) == 3
    assert spec.checkpoint_file, "the error for missing weights names the file expected"
    assert spec.pretrained or spec.embedded_checkpoint, "weights must come from somewhere"


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="known models: clip_rn50, clip_vitb16"):
        get_model_spec("clip_vitb99")


def test_embedded_demo_checkpoint_matches_its_registry_hash():
    spec = get_model_spec("demo_fmnist")
    assert spec.local_config is not None and spec.local_config.name == "demo-fmnist-vit-tiny.json"
    assert spec.embedded_checkpoint.exists(), "the demo checkpoint is committed"
    assert spec.embedded_checkpoint.stat().st_size <= 20 * 2**20
    assert sha256_file(spec.embedded_checkpoint) == spec.checkpoint_sha256


def test_prompts_fill_every_template():
    templates = get_templates("ensemble")
    prompts = build_prompts(["bag", "coat"], templates)
    assert len(prompts) == 2 and len(prompts[0]) == len(templates)
    assert prompts[1][0] == "a photo of a coat."
    assert get_templates("paper") == ["a photo of a {}."]
    with pytest.raises(ValueError, match="unknown template set"):
        get_templates("fancy")


@pytest.mark.parametrize("name, architecture, dim", [("dinov2_vitb14", "vit_base_patch14_dinov2", 768),
                                                     ("dinov2_vits14", "vit_small_patch14_dinov2", 384)])
def test_dinov2_entries_are_image_encoders_with_imagenet_preprocessing(name, architecture, dim):
    spec = get_model_spec(name)
    assert spec.kind == "image-encoder" and not spec.has_text_encoder
    assert spec.timm_name == f"{architecture}.lvd142m" and spec.embed_dim == dim
    assert spec.preprocess.size == 224 and spec.preprocess.interpolation == "bicubic"
    assert spec.preprocess.mean == (0.485, 0.456, 0.406) and spec.preprocess.std == (0.229, 0.224, 0.225)
    assert get_model_spec("clip_vitb32").kind == "clip", "entries without a kind are CLIP models"


def test_unknown_entry_keys_and_kinds_are_rejected(monkeypatch):
    from trustvlm.models import registry  # noqa: PLC0415

    entry = json.loads(REGISTRY_PATH.read_text())["models"]["clip_vitb32"]
    monkeypatch.setattr(registry, "_read_registry", lambda: {"odd": {**entry, "colour": "red"},
                                                             "weird": {**entry, "kind": "audio"}})
    with pytest.raises(ValueError, match=r"model 'odd' has unknown keys \['colour'\]; known keys: "):
        get_model_spec("odd")
    with pytest.raises(ValueError, match=r"model 'weird' has kind 'audio'; expected one of \['clip', 'image-encoder'\]"):
        get_model_spec("weird")
