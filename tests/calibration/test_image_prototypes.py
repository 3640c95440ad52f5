"""Tests for trustvlm.calibration.image_prototypes (shot sampling, prototype means, encoding)."""

from __future__ import annotations

import numpy as np
import pytest

from trustvlm.calibration.image_prototypes import (EmbeddingError, build_image_prototypes, encode_images,
                                                   prototypes_from_embeddings, remaining_indices, sample_shots)
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder
from trustvlm.runtime.decode.preprocess import PreprocessConfig

pytestmark = pytest.mark.timeout(60)


def test_prototypes_are_normalized_means_of_normalized_shots_worked_by_hand():
    # Given class 0 shots (3, 4) and (0, 2), class 1 shots (-5, 0) and (0, -0.5)
    embeddings = np.array([[3.0, 4.0], [0.0, 2.0], [-5.0, 0.0], [0.0, -0.5], [100.0, 100.0]])
    shots = np.array([[0, 1], [2, 3]])
    # When
    prototypes = prototypes_from_embeddings(embeddings, shots)
    # Then: class 0: mean of (0.6, 0.8) and (0, 1) = (0.3, 0.9), norm sqrt(0.9)
    #       class 1: mean of (-1, 0) and (0, -1) = (-0.5, -0.5), norm sqrt(0.5)
    expected = np.array([[0.3, 0.9] / np.sqrt(0.9), [-0.5, -0.5] / np.sqrt(0.5)])
    np.testing.assert_allclose(prototypes, expected, rtol=0, atol=1e-15)
    assert prototypes.dtype == np.float64


def test_unnormalized_mean_would_differ():
    # The long shot (30, 40) must not outweigh (0, 2): each shot is normalized before averaging.
    prototypes = prototypes_from_embeddings(np.array([[30.0, 40.0], [0.0, 2.0]]), np.array([[0, 1]]))
    np.testing.assert_allclose(prototypes[0], np.array([0.3, 0.9]) / np.sqrt(0.9), atol=1e-15)


def test_zero_embedding_is_rejected():
    with pytest.raises(ValueError, match="zero-norm"):
        prototypes_from_embeddings(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[0, 1]]))


def test_opposite_shots_give_a_zero_mean_and_are_rejected():
    with pytest.raises(ValueError, match="class means"):
        prototypes_from_embeddings(np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([[0, 1]]))


def test_sample_shots_draws_k_distinct_images_of_each_class_like_the_official_recipe():
    labels = np.repeat(np.arange(3), 10)
    np.random.default_rng(5).shuffle(labels)
    shots = sample_shots(labels, 3, k=4, seed=7)
    assert shots.shape == (3, 4) and shots.dtype == np.int64
    for c in range(3):
        assert np.all(labels[shots[c]] == c), f"class {c} got shots of other classes"
        assert len(set(shots[c].tolist())) == 4, "shots are drawn without replacement"
    # One generator, classes in label order, rng.choice without replacement:
    rng = np.random.default_rng(7)
    expected = [rng.choice(np.flatnonzero(labels == c), 4, replace=False) for c in range(3)]
    np.testing.assert_array_equal(shots, np.stack(expected))


def test_sample_shots_is_seeded():
    labels = np.repeat(np.arange(4), 50)
    np.testing.assert_array_equal(sample_shots(labels, 4, 16, 0), sample_shots(labels, 4, 16, 0))
    assert not np.array_equal(sample_shots(labels, 4, 16, 0), sample_shots(labels, 4, 16, 1))


def test_fewer_than_k_shots_names_the_class_and_count():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=r"class 'bag' has 3 image\(s\), fewer than k=4"):
        sample_shots(labels, 2, k=4, class_names=("shirt", "bag"))
    with pytest.raises(ValueError, match=r"class '2' has 0 image\(s\)"):
        sample_shots(labels, 3, k=1)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k_is_rejected(k):
    with pytest.raises(ValueError, match="k \\(shots per class\\) should be an integer >= 1"):
        sample_shots(np.zeros(10, dtype=np.int64), 1, k=k)


def test_remaining_indices_excludes_exactly_the_shots():
    np.testing.assert_array_equal(remaining_indices(7, np.array([[5, 0], [3, 6]])), [1, 2, 4])


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)


def test_build_image_prototypes_encodes_the_sampled_shots(tiny_artifacts):
    # Given a synthetic linear encoder and 3 classes of 6 images
    engine = OnnxEncoder(tiny_artifacts / "image_encoder.onnx")
    config = PreprocessConfig(size=32, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")
    images, labels = _images(18), np.repeat(np.arange(3), 6)
    # When
    result = build_image_prototypes(engine, images, labels, 3, config, k=2, seed=3)
    # Then: the same as encoding everything and averaging the chosen rows
    everything = encode_images(engine, images, config, batch_size=5)
    np.testing.assert_allclose(result.prototypes, prototypes_from_embeddings(everything, result.shot_indices),
                               atol=1e-12)
    np.testing.assert_array_equal(result.shot_indices, sample_shots(labels, 3, 2, 3))
    assert (result.k, result.seed) == (2, 3)


def test_encode_images_refuses_nan_embeddings(make_artifacts):
    folder = make_artifacts(nan=True)
    engine = OnnxEncoder(folder / "image_encoder.onnx")
    config = PreprocessConfig(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(EmbeddingError, match=r"NaN/inf embeddings for 4 of 4 images \(first: a\.png\)"):
        encode_images(engine, _images(4), config, ids=["a.png", "b.png", "c.png", "d.png"])
