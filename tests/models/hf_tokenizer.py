"""A small Hugging Face tokenizer folder, trained here on the parity prompts (no download).

It stands in for SigLIP's tokenizer files in tests: a SentencePiece-style unigram tokenizer with
<pad> = 0, </s> = 1, <unk> = 2, saved as tokenizer.json + tokenizer_config.json. Its ids are far
below SigLIP's 32,000; it is not SigLIP's vocabulary and produces no meaningful text embedding.
"""

from pathlib import Path

import pytest

FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")


def make_tokenizer_folder(folder: Path) -> Path:
    """Train and save the small tokenizer into `folder` (skips without transformers)."""
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: PLC0415
    from tokenizers.processors import TemplateProcessing  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    from trustvlm.models.prompts import build_prompts, get_templates  # noqa: PLC0415

    corpus = [p for per_class in build_prompts(list(FASHION_CLASSES), get_templates("ensemble")) for p in per_class]
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(corpus, trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tokenizer.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(folder))
    return folder
