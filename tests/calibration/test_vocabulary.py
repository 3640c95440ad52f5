"""Class names the model cannot read: refused in one line unless allowed; real CLIP tokenizers always pass."""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.calibration.conftest import write_tiny_artifacts
from trustvlm.calibration.calibrate import calibrate
from trustvlm.calibration.cli import add_calibrate_parser
from trustvlm.calibration.tokenizer import get_tokenizer
from trustvlm.calibration.vocabulary import (UnknownWordsError, check_class_vocabulary, known_token_mask,
                                             unreadable_class_names)
from trustvlm.cli import CliError
from trustvlm.contract.bundle import load_bundle
from trustvlm.contract.files import sha256_file, write_json_atomic
from trustvlm.contract.manifest import MANIFEST_NAME, read_manifest
from trustvlm.data.fashion_mnist import load_split

pytestmark = pytest.mark.timeout(300)

DIGITS = ("zero", "one", "two")


def test_the_demo_text_encoder_knows_only_its_caption_tokens(demo_artifacts):
    manifest = read_manifest(demo_artifacts)
    known = known_token_mask(demo_artifacts / "text_encoder.onnx", manifest["text_input"]["vocab_size"])
    assert known is not None and known.shape == (49408,)
    tokens = get_tokenizer(manifest)(["bag", "zero"])
    assert known[tokens[0, 1]] and not known[tokens[1, 1]], "'bag' is a Fashion-MNIST word, 'zero' is not"
    assert 10 < known.sum() < 200, "a compact vocabulary of a few dozen ids"


def test_unknown_class_names_are_refused_naming_the_words(demo_artifacts):
    manifest = read_manifest(demo_artifacts)
    with pytest.raises(UnknownWordsError, match=r"cannot read 2 of 4 class names: the words 'one', 'zero' "
                                                r".*--allow-unknown-words") as raised:
        check_class_vocabulary(demo_artifacts, manifest, ("zero", "one", "bag", "ankle boot"))
    assert "'bag'" not in str(raised.value) and "\n" not in str(raised.value)
    # Mostly unknown is refused too; one unknown word among known ones is not
    with pytest.raises(UnknownWordsError, match="'forklift'"):
        check_class_vocabulary(demo_artifacts, manifest, ("forklift bag", "coat"))
    assert check_class_vocabulary(demo_artifacts, manifest, ("dress", "ankle boot forklift")) == {}
    # The override goes on and says what it let through
    allowed = check_class_vocabulary(demo_artifacts, manifest, ("zero", "bag"), allow_unknown_words=True)
    assert allowed == {"zero": ("zero",)}


def write_digit_folder(root, classes=DIGITS, per_class: int = 6):
    calib = load_split("calib")
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for index in np.flatnonzero(calib.labels == label)[:per_class]:
            cv2.imwrite(str(root / name / f"{index}.png"), calib.images[index])
    return root


def test_calibrate_refuses_unknown_class_names_unless_allowed(demo_artifacts, tmp_path):
    folder = write_digit_folder(tmp_path / "digits")
    parser = argparse.ArgumentParser()
    add_calibrate_parser(parser.add_subparsers())
    argv = ["calibrate", "--artifacts", str(demo_artifacts), "--data", str(folder), "--k", "2",
            "--out", str(tmp_path / "bundle")]
    args = parser.parse_args(argv)
    with pytest.raises(CliError, match="cannot read 3 of 3 class names"):
        args.handler(args)
    assert not (tmp_path / "bundle").exists()
    bundle = calibrate(demo_artifacts, folder, tmp_path / "bundle", k=2, allow_unknown_words=True)
    assert load_bundle(tmp_path / "bundle", demo_artifacts).info.class_names == tuple(sorted(DIGITS)) == bundle.info.class_names


def write_full_vocabulary_text_encoder(folder, vocab_size: int = 49408, dim: int = 8) -> None:
    """tokens -> Gather(float embedding table of the whole vocabulary) -> mean over positions (no id table)."""
    table = np.random.default_rng(0).normal(size=(vocab_size, dim)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "tokens"], ["per_token"]),
             helper.make_node("ReduceMean", ["per_token"], ["embedding"], axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "full_vocab", [helper.make_tensor_value_info("tokens", TensorProto.INT64,
                                                                                  ["batch", 16])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
                              [numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "text_encoder.onnx")


def test_a_real_clip_tokenizer_is_never_refused(demo_artifacts, tmp_path):
    # Given an export whose text encoder embeds every id of CLIP's vocabulary (no lookup table), tokenized
    # with open_clip's real byte-pair tokenizer of the registry's ViT-B-32
    folder = write_tiny_artifacts(tmp_path / "clip")
    write_full_vocabulary_text_encoder(folder)
    manifest = read_manifest(folder)
    manifest["architecture"] = "ViT-B-32"
    manifest["text_input"]["vocab_size"] = 49408
    manifest["precisions"]["fp32"]["files"]["text_encoder"]["sha256"] = sha256_file(folder / "text_encoder.onnx")
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    names = DIGITS + ("forklift", "pallet jack", "Zyzzyva")
    # Then nothing is refused
    assert known_token_mask(folder / "text_encoder.onnx", 49408) is None
    assert check_class_vocabulary(folder, manifest, names) == {}
    # while the same real tokenizer with the demo's lookup table does refuse the digits
    demo = read_manifest(demo_artifacts)
    demo_known = known_token_mask(demo_artifacts / "text_encoder.onnx", 49408)
    refused = unreadable_class_names(names, get_tokenizer(manifest), demo_known)
    assert set(DIGITS) <= set(refused) and "Zyzzyva" in refused
    assert demo["text_input"]["tokenizer"] == manifest["text_input"].get("tokenizer", "open_clip") == "open_clip"


def test_unknown_class_names_are_refused_before_any_image_is_read(demo_artifacts, tmp_path):
    folder = write_digit_folder(tmp_path / "digits", per_class=1)
    (folder / "zero" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UnknownWordsError, match="'zero'"):
        calibrate(demo_artifacts, folder, tmp_path / "bundle", k=1)
