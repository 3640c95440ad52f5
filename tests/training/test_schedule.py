"""The trainer's plan (steps, warm-up, decay), its test against chance, and its augmentation policies."""

import math

import numpy as np
import pytest
import torch

from trustvlm.training.augment import AUGMENT_POLICIES, augment
from trustvlm.training.chance import binomial_upper_tail, check_above_chance
from trustvlm.training.schedule import learning_rate_at, plan_training


def test_a_small_folder_gets_enough_steps_by_default():
    # Given 3,600 training images: batch 3600 // 16 = 225, 16 steps an epoch; 8 epochs would be 128 steps
    plan = plan_training(3600, batch_size=256, warmup_steps=200)
    # then the run is the 2,000-step minimum, 125 epochs, warm-up 200 steps (a fifth of it would be 400)
    assert (plan.steps, plan.batch_size, plan.steps_per_epoch, plan.warmup_steps, plan.how) == (2000, 225, 16, 200,
                                                                                                "auto")
    assert plan.epochs == 125 and plan.eval_every == 250


def test_eight_epochs_run_between_the_minimum_and_the_cap():
    assert plan_training(55000, batch_size=256, warmup_steps=200).steps == 2000  # 8 epochs would be 1,712
    assert plan_training(55000, 256, 200, epochs=8).steps == 8 * (55000 // 256)  # the shipped demo's schedule
    assert plan_training(100_000, batch_size=256, warmup_steps=200).steps == 8 * (100_000 // 256)  # 3,120
    assert plan_training(1_000_000, batch_size=256, warmup_steps=200).steps == 4000


def test_steps_or_epochs_when_given_not_both():
    assert plan_training(3600, 256, 200, steps=40).steps == 40
    assert plan_training(3600, 256, 200, epochs=3).steps == 48
    with pytest.raises(ValueError, match="not both"):
        plan_training(3600, 256, 200, steps=40, epochs=3)


def test_warm_up_then_cosine_decay_to_zero_at_the_last_step():
    plan = plan_training(3600, 256, 200, steps=100)  # warm-up 100 // 5 = 20 steps
    assert learning_rate_at(0, plan, 1.0) == pytest.approx(1 / 20)
    assert learning_rate_at(19, plan, 1.0) == pytest.approx(1.0)
    assert learning_rate_at(60, plan, 1.0) == pytest.approx(0.5)  # half-way through the 80 decay steps
    assert learning_rate_at(100, plan, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert [s for s in range(100) if plan.is_evaluation_step(s)] == [12, 25, 38, 51, 64, 77, 90, 99]


def test_binomial_tail_matches_scipy():
    binomtest = pytest.importorskip("scipy.stats").binomtest
    for k, n, p in ((61, 400, 0.1), (60, 400, 0.1), (8, 20, 0.1), (3, 5, 0.5), (520, 5000, 0.1)):
        assert binomial_upper_tail(k, n, p) == pytest.approx(binomtest(k, n, p, alternative="greater").pvalue,
                                                            rel=1e-9)
    assert binomial_upper_tail(0, 10, 0.3) == 1.0
    assert binomial_upper_tail(3, 3, 0.5) == pytest.approx(1 / 8)  # by hand: all three right


def test_clearly_above_chance_is_61_of_400_for_ten_classes():
    # P(X >= 61) = 6.3e-4 < 0.001 <= P(X >= 60) = 1.05e-3 for X ~ Binomial(400, 0.1)
    assert check_above_chance(61, 400, 10).above_chance
    verdict = check_above_chance(60, 400, 10)
    assert not verdict.above_chance and "NOT clearly above chance" in verdict.describe()
    assert verdict.to_dict()["accuracy"] == 0.15 and math.isclose(verdict.chance, 0.1)
    with pytest.raises(ValueError):
        check_above_chance(5, 4, 10)


def test_only_the_flip_policy_mirrors_images():
    # Given images whose left half is white and right half black (a shift of <= 3 pixels keeps that)
    pixels = torch.zeros((64, 32, 32, 3), dtype=torch.uint8)
    pixels[:, :, :16] = 255
    for policy in AUGMENT_POLICIES:
        out = augment(pixels, torch.Generator().manual_seed(0), policy).numpy()
        mirrored = (out[:, :, :8] == 0).all(axis=(1, 2, 3))
        if policy == "flip":
            assert 0 < mirrored.sum() < 64, "about half the images mirrored"
        else:
            assert not mirrored.any(), f"{policy} must never mirror an image"
    assert torch.equal(augment(pixels, torch.Generator(), "none"), pixels)
    with pytest.raises(ValueError, match="one of"):
        augment(pixels, torch.Generator(), "rotate")
    assert np.array_equal(augment(pixels, torch.Generator().manual_seed(3), "shift")[:, :, :13].numpy(),
                          np.full((64, 32, 13, 3), 255, np.uint8))


def test_shift_erase_moves_each_image_on_its_own_and_occludes_about_half():
    # Given 400 images of random pixels (a shifted copy matches the original at one offset only)
    pixels = torch.randint(0, 256, (400, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = augment(pixels, torch.Generator().manual_seed(1), "shift-erase").numpy()
    padded = np.pad(pixels.numpy(), ((0, 0), (3, 3), (3, 3), (0, 0)), mode="edge")
    offsets, erased = set(), 0
    for i in range(len(out)):
        # Then each image is its original moved by at most 3 pixels...
        matches = {(dy, dx): (out[i] == padded[i, dy:dy + 32, dx:dx + 32]).all(axis=2).mean()
                   for dy in range(7) for dx in range(7)}
        offset, share = max(matches.items(), key=lambda item: item[1])
        assert share >= 1 - 121 / 1024 - 0.01, f"image {i}: no offset explains it ({share:.3f})"
        offsets.add(offset)
        if share < 1:
            # ...except inside one erased square, which holds the image's mean
            differing = ~(out[i] == padded[i, offset[0]:offset[0] + 32, offset[1]:offset[1] + 32]).all(axis=2)
            rows, cols = np.nonzero(differing)
            assert rows.max() - rows.min() <= 10 and cols.max() - cols.min() <= 10
            fill = out[i][differing].ravel()
            assert np.all(fill == fill[0]) and abs(int(fill[0]) - pixels[i].float().mean().item()) <= 3
            erased += 1
    assert len(offsets) > 20, "every image gets its own offset, not one per batch"
    assert 140 <= erased <= 260, f"about half the images occluded, got {erased} of 400"
