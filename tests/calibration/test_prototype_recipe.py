"""Prototype recipes: unit-mean (each shot normalized first) and raw-mean (the official code's), in the bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.calibration.split_files import write_fmnist_split
from tests.calibration.test_aux_encoder import write_tiny_aux
from trustvlm.calibration.calibrate import calibrate, open_encoders
from trustvlm.calibration.image_prototypes import encode_images, prototypes_from_embeddings
from trustvlm.calibration.pools import load_pool
from trustvlm.contract.bundle import BundleInfo, describe_bundle, load_bundle

pytestmark = pytest.mark.timeout(120)


def test_the_two_recipes_worked_out_by_hand():
    embeddings = np.array([[3.0, 4.0], [0.0, 1.0], [0.0, -2.0], [0.0, -5.0]])
    shots = np.array([[0, 1], [2, 3]])
    # unit-mean: (0.6, 0.8) and (0, 1) -> (0.3, 0.9) -> / sqrt(0.9)
    np.testing.assert_allclose(prototypes_from_embeddings(embeddings, shots, "unit-mean"),
                               [[0.3 / np.sqrt(0.9), 0.9 / np.sqrt(0.9)], [0.0, -1.0]])
    # raw-mean: (1.5, 2.5) -> / sqrt(8.5); the long shot (3, 4) weighs more
    np.testing.assert_allclose(prototypes_from_embeddings(embeddings, shots, "raw-mean"),
                               [[1.5 / np.sqrt(8.5), 2.5 / np.sqrt(8.5)], [0.0, -1.0]])
    with pytest.raises(ValueError, match="prototype recipe should be one of"):
        prototypes_from_embeddings(embeddings, shots, "median")


@pytest.fixture
def split(tmp_path):
    return write_fmnist_split(tmp_path / "fmnist", {"train": 3, "val": 4})


def test_an_auxiliary_encoder_bundle_uses_and_records_the_official_recipe(tiny_artifacts, split, tmp_path):
    # Given an auxiliary prototype encoder and no recipe asked for
    split_file, image_root, _ = split
    aux = write_tiny_aux(tmp_path / "aux")
    bundle = calibrate(tiny_artifacts, split_file, tmp_path / "bundle", k=3, lam=1.0, alpha=0.5, threads=1,
                       image_root=image_root, prototype_encoder=aux)
    # Then the bundle says raw-mean, and its prototypes are the normalized raw means of the train shots
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["prototype_recipe"] == "raw-mean"
    loaded = load_bundle(tmp_path / "bundle", tiny_artifacts, aux)
    assert loaded.info.prototype_recipe == "raw-mean" and "(raw-mean)" in describe_bundle(loaded)
    pool = load_pool(split_file, image_root)
    encoders = open_encoders(aux, need_text=False)
    raw = encode_images(encoders.image, pool.images[:30], encoders.preprocess).reshape(10, 3, -1).mean(axis=1)
    np.testing.assert_allclose(bundle.image_prototypes, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    # and the VLM's own prototypes keep unit-mean unless asked
    vlm = calibrate(tiny_artifacts, split_file, tmp_path / "vlm", k=3, lam=1.0, alpha=0.5, threads=1,
                    image_root=image_root)
    assert vlm.info.prototype_recipe == "unit-mean"
    asked = calibrate(tiny_artifacts, split_file, tmp_path / "asked", k=3, lam=1.0, alpha=0.5, threads=1,
                      image_root=image_root, prototype_recipe="raw-mean")
    assert asked.info.prototype_recipe == "raw-mean"


def test_a_bundle_written_before_recipes_reads_as_unit_mean(tiny_artifacts, split, tmp_path):
    split_file, image_root, _ = split
    bundle = calibrate(tiny_artifacts, split_file, tmp_path / "bundle", k=3, lam=1.0, alpha=0.5, threads=1,
                       image_root=image_root)
    data = bundle.info.to_dict()
    data.pop("prototype_recipe")
    data["schema_version"] = "1.1"
    assert BundleInfo.from_dict(data).prototype_recipe == "unit-mean"
    with pytest.raises(ValueError, match="prototype_recipe should be one of"):
        BundleInfo.from_dict({**bundle.info.to_dict(), "prototype_recipe": "median"})
