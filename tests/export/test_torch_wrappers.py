import open_clip
import pytest
import torch

from trustvlm.export.torch_wrappers import (EOT_TOKEN_ID, ImageEncoderForExport, TextEncoderForExport,
                                            first_eot_mask, normalize_uint8_nhwc)
from trustvlm.models.compact_clip import CompactVocabCLIP, UNKNOWN_ID, compact_vocabulary

TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.tokenizer.SimpleTokenizer(context_length=12)


def test_first_eot_mask_picks_the_first_end_of_text_token():
    tokens = torch.tensor([[49406, 320, EOT_TOKEN_ID, 0, 0], [49406, EOT_TOKEN_ID, 5, EOT_TOKEN_ID, 0]])
    expected = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(first_eot_mask(tokens, EOT_TOKEN_ID), expected)


def test_pixel_normalization_by_hand():
    pixels = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)  # 1 x 1 x 1 x 3
    out = normalize_uint8_nhwc(pixels, torch.tensor([0.5, 0.5, 0.2]), torch.tensor([0.5, 0.5, 0.1]))
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, 1.0, 0.0]), atol=1e-6)


def test_casting_before_the_transpose_changes_no_value():
    # TensorRT needs the Cast first (uint8 only as a network input); the values must be those of the old order
    pixels = torch.randint(0, 256, (3, 7, 5, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor([0.48, 0.45, 0.40]), torch.tensor([0.26, 0.26, 0.27])
    old_order = (pixels.permute(0, 3, 1, 2).float() / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.equal(normalize_uint8_nhwc(pixels, mean, std), old_order)


def test_text_wrapper_matches_open_clip_encode_text(tokenizer):
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CLIP).eval()
    tokens = tokenizer(["a photo of a bag.", "a close-up photo of a very long coat, a type of clothing."])
    with torch.no_grad():
        assert torch.allclose(TextEncoderForExport(model)(tokens), model.encode_text(tokens), atol=1e-5)


def test_text_wrapper_matches_compact_vocabulary_model(tokenizer):
    torch.manual_seed(0)
    captions = tokenizer(["a photo of a bag.", "a photo of a coat."])
    model = CompactVocabCLIP(TINY_CLIP, compact_vocabulary(captions)).eval()
    with torch.no_grad():
        assert torch.allclose(TextEncoderForExport(model)(captions), model.encode_text(captions), atol=1e-5)


def test_compact_vocabulary_keeps_end_of_text_largest_and_maps_unknown_words(tokenizer):
    captions = tokenizer(["a photo of a bag."])
    model = CompactVocabCLIP(TINY_CLIP, compact_vocabulary(captions))
    compact = model.compact_tokens(captions)
    assert compact.max() == compact[0, (captions[0] == EOT_TOKEN_ID).nonzero()[0, 0]]
    unknown = model.compact_tokens(tokenizer(["zebra"]))
    assert unknown[0, 1] == UNKNOWN_ID


def test_image_wrapper_normalizes_inside():
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CLIP).eval()
    pixels = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    with torch.no_grad():
        expected = model.encode_image(normalize_uint8_nhwc(pixels, torch.tensor(mean), torch.tensor(std)))
        assert torch.allclose(ImageEncoderForExport(model, mean, std)(pixels), expected, atol=1e-6)
