"""`trustvlm source --record`: the frames it sends, written into the review layout, unscored."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import zmq

from trustvlm.pipelines.frame_sender import FrameEncoder

from .conftest import trustvlm

pytestmark = pytest.mark.timeout(60)


def test_source_records_the_frames_it_sends_as_sent_and_unscored(tmp_path, zmq_context):
    # Given three image files and a PULL socket of our own standing in for the service
    (tmp_path / "frames").mkdir()
    originals = []
    for i in range(3):
        image = np.full((12, 16, 3), 60 * i, np.uint8)
        image[i, :, 2] = 255
        cv2.imwrite(str(tmp_path / "frames" / f"{i}.png"), image)
        originals.append(image)
    pull = zmq_context.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    # When the source sends them as PNG, recording every frame
    result = trustvlm("source", "--images", str(tmp_path / "frames"), "--connect", f"tcp://127.0.0.1:{port}",
                      "--camera-id", "cam9", "--encoding", "png", "--record", str(tmp_path / "rec"),
                      "--record-interval", "0")
    assert result.returncode == 0, result.stderr
    assert "recorded to" in result.stdout and "written 3" in result.stdout, result.stdout
    # Then each frame sent is in to_review/_unscored, its bytes the payload as sent, with a CSV row
    camera = tmp_path / "rec" / "cam9"
    with open(camera / "frames.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["seq"] for row in rows] == ["0", "1", "2"]
    for row, image in zip(rows, originals):
        path = camera / row["path"]
        assert path.parent.name == "_unscored" and path.name == f"cam9_{row['seq']}_{row['capture_ts_ns']}.png"
        assert path.read_bytes() == FrameEncoder("png").encode(image).payload
        assert row["camera"] == "cam9" and all(row[key] == "" for key in (
            "predicted_label", "score", "decision", "reason", "typicality", "monitor"))
    assert (tmp_path / "rec" / "README.txt").exists()
