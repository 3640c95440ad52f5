"""What the streaming demo runs (:class:`DemoConfig`), apart from the steps that run it (:mod:`.demo`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["VTEST", "DATASET_CAMERA", "VIDEO_CAMERA", "CLEAN", "TEST_FRAMES", "DARKER", "MONITOR_INTERVAL_S",
           "DemoError", "DemoConfig"]

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
DATASET_CAMERA = "fmnist_{shift}"
VIDEO_CAMERA = "vtest"
#: The shared bundle's default camera: the undegraded calibration split (``calibrate --data fashion-mnist``).
CLEAN = "clean"
#: Images of the Fashion-MNIST test split (what a replay sends when no frame count is given).
TEST_FRAMES = 10_000
#: The low-light camera, darker (half the gain of the calibrated one): what the demo's camera drifts to.
DARKER = "low_light:gain=0.25"
#: The demo services' monitor thinning, in seconds of capture time. The labelled replays send independent test
#: images back to back, so a frame every 0.05 s is as independent as one a second (the service's default, set for
#: video, whose consecutive frames are alike) and the monitor sees enough frames within the demo.
MONITOR_INTERVAL_S = 0.05


class DemoError(Exception):
    """A step of the demo that failed; the message says which and why."""


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
        artifacts: Export folder of the model (``trustvlm export`` output).
        out: Folder for everything the demo writes.
        cameras: The degraded cameras (names of calibration.shifts.SHIFTS), each calibrated on its own frames
            and scored against its own bundle (one service, a camera map).
        shared: The camera one shared bundle is calibrated on (a name of SHIFTS; ``clean``: undegraded
            frames): the same streams scored against it show what one bundle for every camera costs.
            None: no comparison. The video camera, which no bundle was calibrated for, is scored against
            it (the map's default).
        shots: Labelled shots per class for the image prototypes.
        seed: Seed of the shot draw.
        alpha: Target risk among accepted frames.
        delta: Allowed probability that the risk exceeds alpha.
        lam: Weight of the image-prototype term: "auto" (chosen on calibration data) or a number.
        frames: Test images replayed (None: all 10,000).
        video: Video file of the second camera (None: no second camera).
        heartbeat_ms: The service's heartbeat period.
        heartbeat_timeout_ms: The controller's SAFE timeout.
        threads: ONNX Runtime threads of the service.
        step_timeout_s: Longest any one step may take.
        threshold_method: How calibrate chooses the accept threshold ("ltt" or "sgr").
        drift: ``name:key=value,...`` (calibration.shifts.parse_shift): the camera of that shift name changes to
            it halfway through its replay (``trustvlm source --drift``); by default the low-light camera gets
            darker. None, or a camera the demo does not run: no drift.
        monitor_interval_s: The services' guarantee monitor takes one frame per camera per this much capture
            time (``serve --monitor-interval``; see :data:`MONITOR_INTERVAL_S`).
    """

    artifacts: Path
    out: Path
    cameras: tuple[str, ...] = ("low_light", "blur", "jpeg")
    shared: str | None = "clean"
    shots: int = 16
    seed: int = 0
    alpha: float = 0.05
    delta: float = 0.1
    lam: str = "auto"
    frames: int | None = None
    video: Path | None = VTEST
    heartbeat_ms: int = 200
    heartbeat_timeout_ms: int = 1000
    threads: int = 1
    step_timeout_s: float = 900.0
    threshold_method: str = "ltt"
    drift: str | None = DARKER
    monitor_interval_s: float = MONITOR_INTERVAL_S

    def camera_id(self, shift: str) -> str:
        """Camera id of the labelled replay through the `shift` camera."""
        return DATASET_CAMERA.format(shift=shift)

    @property
    def dataset_camera(self) -> str:
        """Camera id of the first labelled replay (the one the risk-coverage plot shows)."""
        return self.camera_id(self.cameras[0])

    @property
    def bundle_cameras(self) -> tuple[str, ...]:
        """Every camera a bundle is calibrated for: the demo's cameras, then the shared one."""
        return self.cameras + ((self.shared,) if self.shared and self.shared not in self.cameras else ())

    @property
    def drift_camera(self) -> str | None:
        """The shift name of the camera that drifts (None: no drift)."""
        name = self.drift.partition(":")[0].strip() if self.drift else None
        return name if name in self.cameras else None

    @property
    def drift_after(self) -> int:
        """Frames the drifting camera sends before it changes: half of its replay."""
        return (self.frames or TEST_FRAMES) // 2

    @property
    def video_camera(self) -> str:
        """Camera id of the video clip."""
        return VIDEO_CAMERA
