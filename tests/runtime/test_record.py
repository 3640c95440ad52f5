"""Recording for recalibration: the recorder (queue, writer, caps, atomic files), its layout, flags, and the service."""

from __future__ import annotations

import csv
import errno
import json
import logging
import threading
import time

import cv2
import numpy as np
import pytest

from trustvlm.runtime.cli import main
from trustvlm.runtime.config import ServiceConfig
from trustvlm.runtime.frames import Encoding, FrameHeader, PixelFormat, ReceivedFrame, send_frame
from trustvlm.runtime.messages import Decision, DecisionMessage, HealthStatus, Reason
from trustvlm.runtime.record import DiskOps, RecordConfig, Recorder, parse_interval, recorder_for
from trustvlm.runtime.record.review_layout import label_folder, safe_name

from .conftest import fault_image

pytestmark = pytest.mark.timeout(60)
S = 1_000_000_000


def jpeg(value: int = 100, size: int = 8) -> bytes:
    return cv2.imencode(".jpg", np.full((size, size, 3), value, np.uint8))[1].tobytes()


def frame(camera: str = "cam1", seq: int = 0, ts: int = 0, payload: bytes | None = None,
          encoding: Encoding = Encoding.JPEG, shape=None, pixel_format=None) -> ReceivedFrame:
    header = FrameHeader(camera, seq, ts, encoding, shape, "uint8" if shape else None, pixel_format)
    return ReceivedFrame(header, jpeg(seq % 250) if payload is None else payload, ts + 1000)


def decision(item: ReceivedFrame, label: str | None = "cat", kappa: float | None = 0.75, accept: bool = True,
             typicality: float | None = None, monitor: str = "") -> DecisionMessage:
    header = item.header
    return DecisionMessage(header.camera_id, header.seq, header.capture_ts_ns, item.receipt_ts_ns,
                           Decision.ACCEPT if accept else Decision.DEFER,
                           Reason.MEETS_THRESHOLD if accept else Reason.BELOW_THRESHOLD, 0.5, "trustvlm", "m", "b",
                           label=label, kappa=kappa, typicality=typicality, monitor=monitor)


def recorder(tmp_path, disk: DiskOps | None = None, **config) -> Recorder:
    return Recorder(RecordConfig(dir=tmp_path / "rec", **{"interval": "0", **config}), disk)


def images(root) -> list[str]:
    """Recorded image paths under `root`, relative, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".jpg", ".png"))


def rows(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_jpeg_bytes_are_written_unchanged_with_their_csv_row_and_a_readme(tmp_path):
    # Given a recorder and a scored JPEG frame whose label needs sanitizing, and one without a label
    rec = recorder(tmp_path)
    first, second = frame(seq=7, ts=5 * S), frame(seq=8, ts=6 * S, payload=jpeg(30))
    decisions = [decision(first, label="T-shirt/top", kappa=1.5, typicality=0.25, monitor="watch"),
                 decision(second, label=None, kappa=None, accept=False)]
    # When the tap sees them and the recorder is closed
    assert rec([first, second], decisions) == decisions
    assert rec.close()
    # Then each image is the payload as sent, under to_review/<sanitized label or _unscored>/
    camera = tmp_path / "rec" / "cam1"
    assert images(camera) == [f"to_review/T-shirt_top/cam1_7_{5 * S}.jpg", f"to_review/_unscored/cam1_8_{6 * S}.jpg"]
    assert (camera / f"to_review/T-shirt_top/cam1_7_{5 * S}.jpg").read_bytes() == first.payload
    # And frames.csv has one row per frame with the decision's fields, the original label kept
    assert rows(camera / "frames.csv") == [
        {"path": f"to_review/T-shirt_top/cam1_7_{5 * S}.jpg", "camera": "cam1", "seq": "7", "capture_ts_ns": str(5 * S),
         "predicted_label": "T-shirt/top", "score": "1.5", "decision": "accept", "reason": "meets_threshold",
         "typicality": "0.25", "monitor": "watch"},
        {"path": f"to_review/_unscored/cam1_8_{6 * S}.jpg", "camera": "cam1", "seq": "8", "capture_ts_ns": str(6 * S),
         "predicted_label": "", "score": "", "decision": "defer", "reason": "below_threshold", "typicality": "",
         "monitor": ""}]
    readme = (tmp_path / "rec" / "README.txt").read_text()
    assert "checked by a person" in readme and f"--data {tmp_path / 'rec'}/<camera>/to_review" in readme
    assert rec.stats() == {"offered": 2, "written": 2, "dropped_queue_full": 0, "deleted_for_space": 0,
                           "write_errors": 0}


def test_labels_and_camera_ids_become_safe_folder_names():
    assert label_folder("ankle boot") == "ankle_boot"  # read back by the image folder as "ankle boot"
    assert label_folder("T-shirt/top") == "T-shirt_top" and label_folder("été..") == "-t_.."
    assert label_folder(None) == label_folder("") == "_unscored"
    assert label_folder("_private") == "-private" and label_folder("..") == "-."  # never hidden, never skipped
    assert safe_name("rack:2") == "rack_2" and len(label_folder("x" * 300)) == 100


@pytest.mark.parametrize("pixel_format, shape", [(None, (6, 5, 3)), (PixelFormat.RGB8, (6, 5, 3)),
                                                 (PixelFormat.MONO8, (6, 5, 1)), (PixelFormat.MONO8, (6, 5))])
def test_raw_frames_are_saved_as_png_that_decodes_to_the_same_pixels(tmp_path, pixel_format, shape):
    # Given a raw frame of distinct pixel values
    pixels = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    rec = recorder(tmp_path)
    rec.offer(frame(seq=1, payload=pixels.tobytes(), encoding=Encoding.RAW, shape=shape, pixel_format=pixel_format))
    rec.close()
    # Then it is a PNG whose pixels are the frame's (BGR on disk: an RGB frame's channels reversed)
    (path,) = (tmp_path / "rec").rglob("*.png")
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    expected = pixels[..., ::-1] if pixel_format is PixelFormat.RGB8 else pixels.reshape(decoded.shape)
    assert decoded.shape == (shape if shape[-1:] == (3,) else shape[:2])
    assert decoded.shape == expected.shape and np.array_equal(decoded, expected)
    assert path.parent.name == "_unscored"


def test_only_matching_cameras_are_recorded_at_most_once_per_interval_of_capture_time(tmp_path):
    rec = recorder(tmp_path, cameras=("cam1", "gripper*"), interval="1s")
    offered = {}
    # Given frames of three cameras, captured 0, 0.5, 1.0, 2.5 and 2.6 s in, then a clock set back to 0.1 s
    for camera in ("cam1", "gripper-left", "cam2"):
        for seq, ts in enumerate((0, S // 2, S, 5 * S // 2, 13 * S // 5, S // 10)):
            offered[camera, seq] = rec.offer(frame(camera, seq, ts))
    rec.close()
    # Then the matching cameras keep the frames 1 s or more apart (and the one after the clock went back)
    kept = [seq for seq in range(6) if offered["cam1", seq]]
    assert kept == [0, 2, 3, 5] and [s for s in range(6) if offered["gripper-left", s]] == kept
    assert not any(offered["cam2", seq] for seq in range(6))
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["README.txt", "cam1", "gripper-left"]
    assert rec.stats()["offered"] == rec.stats()["written"] == 8


def test_caps_delete_the_oldest_images_first_and_count_them_across_restarts(tmp_path):
    payload = b"x" * 100  # the caps do not look inside: any bytes do
    # Given a file cap of 3: five frames leave the newest three
    rec = recorder(tmp_path, max_files=3)
    for seq in range(5):
        rec.offer(frame("cam1", seq, seq * S, payload), decision(frame("cam1", seq, seq * S), label=f"c{seq % 2}"))
    rec.close()
    assert [p.rsplit("/", 1)[1] for p in images(tmp_path / "rec")] == [f"cam1_{s}_{s * S}.jpg" for s in (2, 4, 3)]
    assert rec.stats()["deleted_for_space"] == 2 and rec.stats()["written"] == 5
    # When a new recorder (a restart) with a byte cap of 250 writes one more frame of another camera
    again = recorder(tmp_path, max_bytes=250)
    again.offer(frame("cam2", 0, 10 * S, payload))
    again.close()
    # Then the images already there counted: the two oldest went, so that 250 bytes hold the rest
    left = images(tmp_path / "rec")
    assert [p.rsplit("/", 1)[1] for p in left] == ["cam1_4_4000000000.jpg", "cam2_0_10000000000.jpg"]
    assert again.stats()["deleted_for_space"] == 2
    # And a label folder emptied by the caps is removed (calibration refuses empty class folders)
    assert sorted(p.name for p in (tmp_path / "rec" / "cam1" / "to_review").iterdir()) == ["c0"]
    # And an image larger than the byte cap is refused, counted, and deletes nothing
    tiny = recorder(tmp_path, max_bytes=50)
    tiny.offer(frame("cam3", 0, 11 * S, payload))
    tiny.close()
    assert tiny.stats()["write_errors"] == 1 and tiny.stats()["deleted_for_space"] == 0


class PausedDisk(DiskOps):
    """Holds the first image write until `release` is set; `entered` says the writer is inside it."""

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def write(self, file, data):
        self.entered.set()
        assert self.release.wait(20), "never released"
        super().write(file, data)


def test_a_full_queue_drops_frames_and_counts_each_without_waiting(tmp_path):
    # Given a writer held inside its first write, and a queue of 4
    disk = PausedDisk()
    rec = recorder(tmp_path, disk, queue_size=4)
    assert rec.offer(frame(seq=0))
    assert disk.entered.wait(20)
    # When 7 more frames are offered
    queued = [rec.offer(frame(seq=seq, ts=seq)) for seq in range(1, 8)]
    # Then 4 were queued and exactly 3 dropped, each counted
    assert queued == [True] * 4 + [False] * 3
    assert rec.stats()["dropped_queue_full"] == 3 and rec.stats()["written"] == 0
    disk.release.set()
    assert rec.close()
    assert rec.stats() == {"offered": 8, "written": 5, "dropped_queue_full": 3, "deleted_for_space": 0,
                           "write_errors": 0}
    assert len(images(tmp_path / "rec")) == 5


class FailingDisk(DiskOps):
    """The first `failures` image writes stop half-way with a full disk."""

    def __init__(self, failures: int):
        self.failures = failures

    def write(self, file, data):
        if self.failures:
            self.failures -= 1
            file.write(data[: len(data) // 2])
            file.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(file, data)


def test_a_write_failing_half_way_leaves_no_file_counts_and_logs_once(tmp_path, caplog):
    rec = recorder(tmp_path, FailingDisk(failures=2))
    with caplog.at_level(logging.WARNING, logger="trustvlm.runtime.record"):
        for seq in range(3):
            rec.offer(frame(seq=seq, ts=seq))
        rec.close()
    # Then neither failed image has its final name nor a temporary file left; the third is written whole
    folder = tmp_path / "rec" / "cam1" / "to_review" / "_unscored"
    assert sorted(p.name for p in folder.iterdir()) == ["cam1_2_2.jpg"]
    assert (folder / "cam1_2_2.jpg").read_bytes() == frame(seq=2, ts=2).payload
    assert rec.stats()["write_errors"] == 2 and rec.stats()["written"] == 1
    warnings = [r.getMessage() for r in caplog.records if "could not write an image" in r.getMessage()]
    assert len(warnings) == 1 and "No space left" in warnings[0]
    assert [row["seq"] for row in rows(tmp_path / "rec" / "cam1" / "frames.csv")] == ["2"]


def test_nothing_is_recorded_when_recording_is_off(tmp_path):
    assert recorder_for(RecordConfig()) is None and not ServiceConfig(tmp_path, bundle=tmp_path).record.enabled
    with pytest.raises(ValueError, match="recording is off"):
        Recorder(RecordConfig())
    # And a recorder offered nothing writes nothing, not even its folder
    Recorder(RecordConfig(dir=tmp_path / "rec")).close()
    assert not (tmp_path / "rec").exists()


def test_the_recorded_folder_is_what_calibrate_reads_without_unscored(tmp_path):
    from trustvlm.calibration.pools import load_pool  # noqa: PLC0415
    from trustvlm.data.image_folder import list_image_folder  # noqa: PLC0415

    rec = recorder(tmp_path)
    for seq, label in enumerate(["ankle boot", "bag", "bag", None]):
        item = frame(seq=seq, ts=seq)
        rec([item], [decision(item, label=label)])
    rec.close()
    to_review = tmp_path / "rec" / "cam1" / "to_review"
    files, labels, names = list_image_folder(to_review)
    assert names == ("ankle boot", "bag") and labels.tolist() == [0, 1, 1]
    assert all("_unscored" not in str(path) for path in files)
    pool = load_pool(to_review)
    assert pool.class_names == ("ankle boot", "bag") and len(pool.labels) == 3


def test_intervals_and_serve_flags_map_onto_the_record_section(tmp_path, capsys):
    assert [parse_interval(t) for t in ("0", "1s", "500ms", "1.5s", "2min")] == [0, S, S // 2, 3 * S // 2, 120 * S]
    for bad in ("5", "-1s", "1h", "fast"):
        with pytest.raises(ValueError, match="record interval should be like"):
            parse_interval(bad)
    assert main(["serve", "--artifacts", "a", "--bundle", "b", "--record", "rec", "--record-cameras", "cam1, gripper*",
                 "--record-interval", "500ms", "--record-max-files", "10", "--dump-config"]) == 0
    record = json.loads(capsys.readouterr().out)["record"]
    assert record["cameras"] == ["cam1", "gripper*"] and record["interval"] == "500ms"
    assert record["max_files"] == 10 and record["max_bytes"] == 1 << 30 and record["dir"].endswith("rec")
    assert main(["serve", "--artifacts", "a", "--bundle", "b", "--record-cameras", "cam1"]) == 1
    assert "need --record DIR" in capsys.readouterr().err
    # A config file's record.dir is relative to the file
    (tmp_path / "serve.json").write_text(json.dumps({"artifacts": "a", "bundle": "b", "record": {"dir": "rec"}}))
    assert main(["serve", "--config", str(tmp_path / "serve.json"), "--dump-config"]) == 0
    assert json.loads(capsys.readouterr().out)["record"]["dir"] == str(tmp_path / "rec")


def test_serve_records_the_matching_camera_as_published_and_counts_it_in_the_heartbeat(
        serve, subscribe, push, fault_export, make_fault_bundle, tmp_path):
    # Given the service on the cheap fault model (every finite frame accepted), recording cameras 'rec*'
    bundle = make_fault_bundle(tmp_path / "bundle")
    service = serve("--artifacts", str(fault_export), "--bundle", str(bundle), "--record", str(tmp_path / "rec"),
                    "--record-cameras", "rec*", "--record-interval", "0")
    subscriber = subscribe(service.publish)
    sender = push(service.ingest)
    # When two cameras send 4 JPEG frames each, one frame at a time
    for seq in range(4):
        for camera in ("rec1", "other"):
            payload = cv2.imencode(".jpg", fault_image(fill=40 + 50 * seq))[1].tobytes()
            send_frame(sender, FrameHeader(camera, seq, time.time_ns(), Encoding.JPEG), payload)
            decided = lambda s, camera=camera, seq=seq: any(d.camera_id == camera and d.seq == seq  # noqa: E731
                                                              for d in s.decisions)
            assert subscriber.wait_for(decided, 20), (camera, seq)
    mine = [d for d in subscriber.decisions if d.camera_id == "rec1"]
    assert [d.reason for d in mine] == [Reason.MEETS_THRESHOLD] * 4, mine
    # Then the heartbeat counts the 4 frames written
    assert subscriber.wait_for(lambda s: s.health[-1].counters.get("record_written") == 4, 20), \
        subscriber.health[-1].counters
    assert service.stop() == 0, service.stderr()
    assert subscriber.wait_for(lambda s: s.health[-1].status is HealthStatus.STOPPED, 10)
    final = subscriber.health[-1].counters
    assert {k: v for k, v in final.items() if k.startswith("record_")} == {
        "record_offered": 4, "record_written": 4, "record_dropped_queue_full": 0, "record_deleted_for_space": 0,
        "record_write_errors": 0}
    # And only rec1 was recorded; its CSV matches the published decisions
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["README.txt", "rec1"]
    recorded = rows(tmp_path / "rec" / "rec1" / "frames.csv")
    assert [(r["seq"], r["predicted_label"], r["decision"], r["reason"], r["monitor"]) for r in recorded] == [
        (str(d.seq), d.label, d.decision.value, d.reason.value, d.monitor) for d in mine]
    assert all(float(r["score"]) == pytest.approx(d.kappa, rel=1e-5) for r, d in zip(recorded, mine))
    assert all((tmp_path / "rec" / "rec1" / r["path"]).parent.name == d.label for r, d in zip(recorded, mine))
