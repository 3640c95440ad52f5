"""Captures: the real vtest.avi, an image folder with classes, the dataset replay, the degraded camera."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from trustvlm.calibration.shifts import apply_shift
from trustvlm.data.fashion_mnist import load_split
from trustvlm.pipelines.captures import (DatasetCapture, ImageFolderCapture, SourceConnectionError, VideoCapture,
                                         degrade)

from .conftest import VTEST, require_fashion_mnist, require_vtest


def test_video_file_frames_are_the_clip_and_loop_starts_over():
    require_vtest()
    # Given OpenCV's vtest.avi (768 x 576, 10 fps) and its first frame read directly
    reference = cv2.VideoCapture(str(VTEST))
    ok, first = reference.read()
    reference.release()
    assert ok
    with VideoCapture(str(VTEST), loop=True) as capture:
        assert capture.fps == pytest.approx(10.0)
        frames = capture.frames()
        head = list(itertools.islice(frames, 3))
        # Then the capture delivers the clip's frames, numbered from 0
        assert [f.index for f in head] == [0, 1, 2] and head[0].image.shape == (576, 768, 3)
        np.testing.assert_array_equal(head[0].image, first)
        assert head[0].label is None
        # And with loop, the frame after the last is the first again
        rest = list(itertools.islice(frames, 795 - 3 + 1))
        assert rest[-1].index == 0, "after 795 frames the clip starts over at frame 0"
        np.testing.assert_array_equal(rest[-1].image, first)


def test_video_without_loop_ends_after_its_last_frame():
    require_vtest()
    with VideoCapture(str(VTEST)) as capture:
        count = sum(1 for _ in capture.frames())
    assert count == 795


@pytest.mark.parametrize(("target", "message"), [
    ("/nonexistent.avi", "video file /nonexistent.avi does not exist"),
    (-1, "camera index should be >= 0, but got -1"),
    (63, "cannot open camera index 63"),
])
def test_video_capture_that_cannot_open_raises_at_construction(target, message):
    with pytest.raises(SourceConnectionError, match=message):
        VideoCapture(target)


def test_image_folder_labels_come_from_class_sub_folders_and_unreadable_files_are_skipped(tmp_path):
    # Given two class folders (underscores read as spaces) and a file that is not an image
    for name, value in (("ankle_boot", 10), ("bag", 200)):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "0.png"), np.full((8, 8), value, np.uint8))
    (tmp_path / "bag" / "1.jpg").write_bytes(b"not a jpeg")
    capture = ImageFolderCapture(tmp_path)
    frames = list(capture.frames())
    # Then 2 frames with their labels, and the broken file counted
    assert [(f.label, f.class_id, f.origin) for f in frames] == [("ankle boot", 0, "ankle_boot/0.png"),
                                                                  ("bag", 1, "bag/0.png")]
    assert frames[1].image.shape == (8, 8, 3) and int(frames[1].image[0, 0, 0]) == 200
    assert capture.unreadable == 1
    # And looping goes on past the broken file, pass after pass
    looped = itertools.islice(ImageFolderCapture(tmp_path, loop=True).frames(), 7)
    assert [f.origin for f in looped] == ["ankle_boot/0.png", "bag/0.png"] * 3 + ["ankle_boot/0.png"]


def test_empty_or_missing_image_folder_is_refused(tmp_path):
    with pytest.raises(SourceConnectionError, match=f"image folder {tmp_path} holds no images"):
        ImageFolderCapture(tmp_path)
    with pytest.raises(SourceConnectionError, match="does not exist"):
        ImageFolderCapture(tmp_path / "missing")


def test_dataset_replay_yields_the_test_split_with_labels_and_loops():
    require_fashion_mnist()
    test = load_split("test")
    capture = DatasetCapture(split="test", loop=True, start=9998)
    frames = list(itertools.islice(capture.frames(), 3))
    assert [f.index for f in frames] == [9998, 9999, 0]
    for frame in frames:
        np.testing.assert_array_equal(frame.image, test.images[frame.index])
        assert frame.label == test.class_names[test.labels[frame.index]] and frame.class_id == test.labels[frame.index]
    with pytest.raises(SourceConnectionError, match=r"unknown split 'val' of fashion-mnist; expected one of"):
        DatasetCapture(split="val")


def test_degrade_is_the_calibration_shift_in_rgb_order():
    # Given a grey frame and a BGR frame
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    bgr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    # Then a grey frame gets exactly the batch shift, and a BGR frame is shifted as RGB and returned as BGR
    np.testing.assert_array_equal(degrade(grey, "low_light", 3), apply_shift("low_light", grey[None], 3)[0])
    rgb_shifted = apply_shift("jpeg", bgr[None, :, :, ::-1].copy(), 0)[0]
    np.testing.assert_array_equal(degrade(bgr, "jpeg", 0), rgb_shifted[:, :, ::-1])
    with pytest.raises(ValueError, match=r"unknown camera shift 'fog'; expected one of \['blur'"):
        degrade(grey, "fog", 0)
