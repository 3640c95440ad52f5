"""`trustvlm train-demo` on a folder with nothing to learn: refused at chance, or kept marked weak."""

import numpy as np
import pytest

from trustvlm.benchmarks.train_folders import write_image_folder
from trustvlm.cli import main
from trustvlm.models.compact_clip import load_checkpoint

pytestmark = pytest.mark.slow
CLASSES = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="module")
def noise_folder(tmp_path_factory):
    """120 random-noise 28x28 PNGs under 10 class folders: labels with no link to the pixels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (120, 28, 28), dtype=np.uint8)
    return write_image_folder(tmp_path_factory.mktemp("noise") / "data", images, np.arange(120) % 10, CLASSES)


def train(folder, output, *extra):
    return main(["train-demo", "--data", str(folder), "--output", str(output), "--steps", "4", "--threads", "1",
                 *extra])


def test_a_model_at_chance_is_refused_and_no_checkpoint_written(noise_folder, tmp_path, capsys):
    # Given random labels (12 validation images, 10 classes) and 4 steps, when trained
    status = train(noise_folder, tmp_path / "noise.pt")
    out, err = capsys.readouterr()
    # then: the plan and the expected time were printed, the exit is non-zero with one line, nothing written
    assert "plan: 4 steps (--steps) of 16 images" in out and "expected time:" in out, out
    assert "augmentation shift-erase" in out, out
    assert status == 1
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "NOT clearly above chance" in errors[0] and "--keep-weak" in errors[0], err
    assert not (tmp_path / "noise.pt").exists()


def test_keep_weak_writes_the_checkpoint_marked_weak_with_its_augmentation(noise_folder, tmp_path, capsys):
    status = train(noise_folder, tmp_path / "noise.pt", "--keep-weak", "--augment", "none")
    out, _ = capsys.readouterr()
    assert status == 0 and "WEAK" in out, out
    _, metadata = load_checkpoint(tmp_path / "noise.pt")
    assert metadata["weak"] is True and metadata["validation"]["above_chance"] is False
    assert metadata["validation"]["count"] == 12 and metadata["validation"]["classes"] == 10
    assert metadata["augment"] == "none" and metadata["plan"]["steps"] == 4
    assert metadata["class_names"] == CLASSES


def test_training_a_folder_may_not_replace_the_shipped_checkpoint(noise_folder, capsys):
    from trustvlm.models.registry import get_model_spec

    status = train(noise_folder, get_model_spec("demo_fmnist").embedded_checkpoint)
    assert status == 1 and "shipped demo checkpoint" in capsys.readouterr().err
