"""The runtime's OpenCV preprocessing gives the same embeddings as open_clip's own PIL transforms."""

import cv2
import numpy as np
import pytest

from tests.conftest import require_fashion_mnist
from trustvlm.data.fashion_mnist import load_split, to_rgb
from trustvlm.models.registry import get_model_spec
from trustvlm.runtime.decode.preprocess import resize_and_crop

VIDEOS = ["/usr/share/doc/opencv-doc/examples/data/vtest.avi", "/usr/share/doc/opencv-doc/examples/data/Megamind.avi"]


def real_frames() -> list[np.ndarray]:
    """RGB frames of two real video clips (different sizes) and real Fashion-MNIST images."""
    frames = []
    for path in VIDEOS:
        capture = cv2.VideoCapture(path)
        for _ in range(3):
            ok, bgr = capture.read()
            if not ok:
                pytest.skip(f"cannot read {path} (apt-get install opencv-doc)")
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            for _ in range(20):
                capture.grab()
        capture.release()
    require_fashion_mnist()
    frames += list(to_rgb(load_split("test").images[:4]))
    return frames


@pytest.mark.parametrize("model_name", ["clip_vitb32", "demo_fmnist"])
def test_runtime_preprocessing_matches_open_clip_by_embedding(model_name):
    import open_clip
    import torch
    from PIL import Image

    from trustvlm.export.model_loading import load_model
    from trustvlm.export.torch_wrappers import ImageEncoderForExport

    spec = get_model_spec(model_name)
    config = spec.preprocess
    model = load_model(spec, "random" if model_name == "clip_vitb32" else None).model
    reference_transform = open_clip.transform.image_transform(
        config.size, is_train=False, mean=config.mean, std=config.std,
        interpolation=config.interpolation, resize_mode=config.resize_mode)
    wrapper = ImageEncoderForExport(model, config.mean, config.std).eval()
    frames = real_frames()
    with torch.no_grad():
        ours = wrapper(torch.from_numpy(np.stack([resize_and_crop(f, config) for f in frames])))
        theirs = model.encode_image(torch.stack([reference_transform(Image.fromarray(f)) for f in frames]))
    cosine = torch.nn.functional.cosine_similarity(ours, theirs).numpy()
    assert cosine.min() >= 0.999, f"{model_name}: cosine per image {np.round(cosine, 5)}"
