import cv2
import numpy as np
import pytest
import torch

from tests.conftest import require_fashion_mnist
from trustvlm.data.fashion_mnist import load_split
from trustvlm.models.compact_clip import CheckpointError, load_checkpoint
from trustvlm.training.augment import augment
from trustvlm.training.train_demo import contrastive_loss


def test_contrastive_loss_by_hand():
    # Two images (classes 0, 1), two captions (classes 0, 1), orthogonal and perfectly aligned,
    # scale 1: each row's logits are (1, 0) -> loss = log(1 + e^-1) in both directions.
    emb = torch.eye(2)
    loss = contrastive_loss(emb, emb, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor(1.0))
    assert loss.item() == pytest.approx(np.log(1 + np.exp(-1)), abs=1e-6)


def test_same_class_captions_are_not_negatives():
    # One image of class 0 and two captions of class 0: both are positives (soft target 1/2 each),
    # so equal logits give log(2) - log(2)... the loss is exactly the uniform cross-entropy, log 2.
    image, captions = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = contrastive_loss(image, captions, torch.tensor([0]), torch.tensor([0, 0]), torch.tensor(5.0))
    image_to_text = np.log(2)
    text_to_image = 0.0  # one image in the batch: each caption's only candidate is its positive
    assert loss.item() == pytest.approx(0.5 * (image_to_text + text_to_image), abs=1e-6)


def test_augment_keeps_shape_and_dtype_and_changes_pixels():
    pixels = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    out = augment(pixels, torch.Generator().manual_seed(1), "flip")
    assert out.shape == pixels.shape and out.dtype == torch.uint8
    assert not torch.equal(out, pixels)


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)


@pytest.mark.slow
def test_trainer_learns_from_an_image_folder(tmp_path):
    """The real trainer on a user-style image folder (two classes), one short epoch."""
    require_fashion_mnist()
    from trustvlm.training.cli import train_from_args

    train = load_split("train")
    for class_id, name in ((1, "trouser"), (8, "bag")):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(train.labels == class_id)[:300]):
            cv2.imwrite(str(folder / f"{i}.png"), train.images[index])
    summary = train_from_args(str(tmp_path / "data"), tmp_path / "domain.pt", epochs=3, seed=0, threads=1)
    model, metadata = load_checkpoint(tmp_path / "domain.pt")
    assert metadata["class_names"] == ["bag", "trouser"]
    accuracy = float(summary.split("zero-shot accuracy ")[1].split("%")[0])
    assert accuracy >= 90.0, summary  # trousers vs bags is easy: a trainer that learns gets it


def test_sampled_captions_cover_every_class_with_distinct_templates():
    from trustvlm.training.train_demo import sample_captions

    picks = sample_captions(num_classes=3, num_templates=4, per_class=2, generator=torch.Generator().manual_seed(0))
    classes, templates = picks // 4, picks % 4
    assert classes.tolist() == [0, 0, 1, 1, 2, 2]
    for c in range(3):
        assert len(set(templates[classes == c].tolist())) == 2, "two different templates per class"
