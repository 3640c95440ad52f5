"""Give one camera a new bundle in a camera map, verified first, and keep what it had for rollback.

:func:`swap_bundle` verifies a new bundle folder against the export (:func:`~trustvlm.contract.bundle.load_bundle`),
opens and self-checks it as ``trustvlm serve`` will (:func:`~trustvlm.runtime.scoring.scorer.load_scorer`, CPU),
checks that it runs on the image encoder of the map's other bundles (one service runs one encoder), then gives the
camera an **exact** entry for it, whatever routed it before. A refusal is one line and changes nothing. The map is
replaced atomically in :func:`~trustvlm.contract.camera_map.write_camera_map`'s layout, other entries' folders kept
as written (``write_camera_map`` resolves them: ``../shared`` would turn absolute); TOML comments are not kept. A
running service takes the new map on its own (map watch) or on SIGHUP; the camera's guarantee monitor starts afresh
once its decisions carry the new bundle id.

Each swap pushes what it replaced onto the camera's stack (oldest first) in ``<map>.history.json`` beside the map;
:func:`rollback_bundle` pops it. Folders as the map writes them (relative to its folder)::

    {"schema_version": "1.0", "map": "cameras.toml",
     "cameras": {"cam1": [{"previous": "bundles/cam1" | null,      # its exact entry before; null: it had none
                           "previous_route": "cam1" | "cam*" | "default" | null,   # the entry that routed it
                           "previous_bundle_id": "model:0123456789ab" | null,
                           "bundle": "bundles/cam1-v2", "bundle_id": "model:ba9876543210",
                           "created_map": false, "time": "2025-01-31T12:00:00Z"}]}}

``previous`` null: a pattern, the default or nothing routed the camera; rollback removes its exact entry. Swaps and
rollbacks hold an exclusive lock (flock) on the map's folder while they read and write.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from trustvlm.contract.bundle import BundleError, BundleInfo, PrototypeBundle, load_bundle, read_bundle_info
from trustvlm.contract.camera_map import (CAMERA_MAP_SCHEMA_VERSION, DEFAULT_ROUTE, CameraMap, CameraMapError,
                                          read_camera_map)
from trustvlm.contract.files import write_bytes_atomic, write_json_atomic
from trustvlm.contract.manifest import ArtifactError
from trustvlm.runtime.frames import check_camera_id
from trustvlm.runtime.schema import MessageError

try:
    import tomllib
except ImportError:  # Python 3.10: read_camera_map refuses TOML maps there before tomllib is needed
    tomllib = None
try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

__all__ = ["HISTORY_SCHEMA_VERSION", "BundleChange", "SwapError", "history_path", "read_history", "verify_bundle",
           "swap_bundle", "rollback_bundle", "list_bundles"]

HISTORY_SCHEMA_VERSION = "1.0"


class SwapError(ValueError):
    """A swap, rollback or listing refused (one line); nothing was changed."""


@dataclass(frozen=True)
class BundleChange:
    """What a swap or a rollback changed for one camera (``trustvlm bundles`` says it in one line).

    Attributes:
        action: ``swap`` or ``rollback``.
        camera: The camera id.
        map_path: The camera map file.
        record: The history entry pushed (swap) or popped (rollback); see the module docstring.
        other_route: The entry that routed the camera before the swap, or routes it after the rollback: its own
            id, a pattern or ``default`` (None: none; its frames are deferred ``no_bundle``).
        other_folder: That entry's folder as the map writes it (None with `other_route`).
        other_bundle_id: The bundle id there (None: no entry, or an unreadable bundle).
        depth: The camera's rollback depth now.
    """

    action: str
    camera: str
    map_path: Path
    record: dict
    other_route: str | None
    other_folder: str | None
    other_bundle_id: str | None
    depth: int


def history_path(map_path: str | os.PathLike) -> Path:
    """The history file of a camera map: ``<map file name>.history.json`` beside it."""
    map_path = Path(map_path)
    return map_path.with_name(map_path.name + ".history.json")


def read_history(map_path: str | os.PathLike) -> dict[str, list[dict]]:
    """Each camera's stack of swaps (oldest first) from the map's history file; {} when there is none.

    Raises:
        SwapError: An unreadable or malformed history file.
    """
    path = history_path(map_path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SwapError(f"cannot read the swap history {path}: {error}") from error
    cameras = data.get("cameras") if isinstance(data, dict) else None
    if not isinstance(cameras, dict) or not all(isinstance(stack, list) for stack in cameras.values()) or str(
            data.get("schema_version", "")).split(".")[0] != HISTORY_SCHEMA_VERSION.split(".")[0]:
        raise SwapError(f"swap history {path}: expected schema_version {HISTORY_SCHEMA_VERSION} and a table of "
                        "camera -> list of swaps")
    return cameras


def verify_bundle(folder: str | os.PathLike, artifacts: str | os.PathLike,
                  aux_artifacts: str | os.PathLike | None = None) -> tuple[BundleInfo, str]:
    """Verify a bundle against the export and self-check it as the service will (load_scorer, CPU sessions).

    Returns:
        Its bundle.json and its bundle id (what its decisions will carry).

    Raises:
        SwapError: The bundle does not verify, its sessions cannot be built, or the self-check fails.
    """
    from trustvlm.runtime.scoring.onnx_engine import EngineError  # noqa: PLC0415 - onnxruntime: keep --help light
    from trustvlm.runtime.scoring.scorer import ScorerConfig, load_scorer  # noqa: PLC0415

    try:  # load_bundle's checks first, then the sessions and their self-check
        scorer = load_scorer(artifacts, folder, ScorerConfig(providers=("cpu",), threads=1),
                             aux_artifacts_dir=aux_artifacts)
    except (BundleError, ArtifactError, EngineError, OSError, ValueError) as error:
        raise SwapError(f"{folder} refused (nothing changed): {_one_line(error)}") from error
    return scorer.bundle.info, scorer.bundle_id


def swap_bundle(map_path: str | os.PathLike, camera: str, bundle_dir: str | os.PathLike,
                artifacts: str | os.PathLike, aux_artifacts: str | os.PathLike | None = None) -> BundleChange:
    """Verify `bundle_dir`, give `camera` an exact entry for it, and push what it replaced onto the history.

    A missing map is created with only this camera's entry. See the module docstring.

    Raises:
        SwapError: An invalid camera id, an unreadable map or history, or a bundle that does not verify, fails
            its self-check, runs on another image encoder than the map's other bundles, or is already the
            camera's entry. Nothing is changed then.
    """
    map_path, bundle_dir = Path(map_path), Path(bundle_dir)
    _check_camera(camera)
    with _locked(map_path):
        raw, history = _read_raw(map_path), read_history(map_path)
        info, bundle_id = verify_bundle(bundle_dir, artifacts, aux_artifacts)
        camera_map = raw.parsed()
        route = camera_map.route(camera) if camera_map is not None else None
        old_folder = None if route is None else camera_map.folders()[route]
        if route == camera and Path(old_folder).resolve() == bundle_dir.resolve():
            raise SwapError(f"{camera} already has its own entry for {bundle_dir} in {map_path}: nothing changed")
        if camera_map is not None:
            _check_same_encoder(bundle_dir, info, camera_map, camera)
        record = {"previous": raw.cameras[camera] if route == camera else None, "previous_route": route,
                  "previous_bundle_id": None if old_folder is None else _bundle_id(old_folder),
                  "bundle": _as_written(bundle_dir, map_path.parent), "bundle_id": bundle_id,
                  "created_map": not raw.exists, "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        previous_folder = None if route is None else raw.written(route, old_folder)
        raw.cameras[camera] = record["bundle"]
        history.setdefault(camera, []).append(record)
        _write(raw, history)
    return BundleChange("swap", camera, map_path, record, route, previous_folder, record["previous_bundle_id"],
                        len(history[camera]))


def rollback_bundle(map_path: str | os.PathLike, camera: str, artifacts: str | os.PathLike | None = None,
                    aux_artifacts: str | os.PathLike | None = None, force: bool = False) -> BundleChange:
    """Undo `camera`'s last swap: restore its previous exact entry, or remove the one the swap added.

    With `artifacts`, the bundle the camera goes back to is verified and self-checked first.

    Raises:
        SwapError: An invalid camera id, no map, no swap recorded for the camera, an entry changed by hand since
            the swap (unless `force`), a rollback that would leave the map with no entry, or (with `artifacts`)
            a restored bundle that no longer verifies. Nothing is changed then.
    """
    map_path = Path(map_path)
    _check_camera(camera)
    with _locked(map_path):
        raw = _read_raw(map_path)
        if not raw.exists:
            raise SwapError(f"no camera map at {map_path}: nothing to roll back")
        history = read_history(map_path)
        stack = history.get(camera, [])
        if not stack:
            raise SwapError(f"no swap of {camera} is recorded in {history_path(map_path)}: nothing to roll back")
        record = stack[-1]
        current = raw.cameras.get(camera)
        if not force and (current is None or raw.folder(current).resolve() != raw.folder(record["bundle"]).resolve()):
            raise SwapError(f"{camera}'s entry in {map_path} is {current!r}, not {record['bundle']!r} as the last swap "
                            "wrote it (edited since?): nothing changed; --force rolls back anyway")
        if record.get("previous") is None:
            raw.cameras.pop(camera, None)
        else:
            raw.cameras[camera] = record["previous"]
        camera_map = raw.parsed(f"removing {camera}'s entry would leave {map_path} with no entry and no default "
                                f"({camera} had no bundle before its first swap); edit or delete the map yourself")
        route = camera_map.route(camera)
        folder = None if route is None else camera_map.folders()[route]
        bundle_id = (None if folder is None else _bundle_id(folder) if artifacts is None
                     else verify_bundle(folder, artifacts, aux_artifacts)[1])
        stack.pop()
        _write(raw, history)
    return BundleChange("rollback", camera, map_path, record, route,
                        None if route is None else raw.written(route, folder), bundle_id, len(stack))


def list_bundles(map_path: str | os.PathLike, artifacts: str | os.PathLike | None = None,
                 aux_artifacts: str | os.PathLike | None = None) -> list[str]:
    """One line per entry of the map (the default last), then one per camera with history but no own entry.

    Each entry: route -> folder -> bundle id, score, threshold, alpha, calibration coverage, whether the bundle
    has a monitor reference sample, the camera's rollback depth, and, with `artifacts`, whether it verifies
    against that export (:func:`~trustvlm.contract.bundle.load_bundle`, no sessions).

    Returns:
        The lines, ``route -> folder as written -> what is there; rollback depth N``.

    Raises:
        SwapError: No map, or an unreadable map or history.
    """
    map_path = Path(map_path)
    raw = _read_raw(map_path)
    if not raw.exists:
        raise SwapError(f"no camera map at {map_path}")
    history, lines = read_history(map_path), []
    for route, folder in raw.parsed().folders().items():
        depth = len(history.get(route, [])) if route != DEFAULT_ROUTE else 0
        lines.append(f"{route} -> {raw.written(route, folder)} -> {_describe(folder, artifacts, aux_artifacts)}; "
                     f"rollback depth {depth}")
    lines += [f"{camera}: no own entry in the map, rollback depth {len(stack)} (--force rolls back)"
              for camera, stack in history.items() if camera not in raw.cameras and stack]
    return lines


@dataclass
class _RawMap:
    """A camera map's entries as written in its file (folders not resolved), to edit and write back."""

    path: Path
    exists: bool
    default: str | None
    cameras: dict[str, str]

    def folder(self, written: str) -> Path:
        """A folder as written in the map -> its path (relative to the map's folder)."""
        path = Path(written).expanduser()
        return path if path.is_absolute() else self.path.parent / path

    def written(self, route: str, folder: Path) -> str:
        """How the map writes `route`'s folder."""
        return self.default if route == DEFAULT_ROUTE else self.cameras.get(route, str(folder))

    def data(self) -> dict:
        default = {} if self.default is None else {"default": self.default}
        return {"schema_version": CAMERA_MAP_SCHEMA_VERSION, **default, "cameras": dict(self.cameras)}

    def parsed(self, empty: str | None = None) -> CameraMap | None:
        """The entries as a CameraMap (None for a new, empty map); SwapError(`empty`) when there is no entry."""
        if not self.exists and not self.cameras:
            return None
        try:
            return CameraMap.from_dict(self.data(), self.path.parent, self.path)
        except CameraMapError as error:
            raise SwapError(empty or str(error)) from error

    def render(self) -> bytes:
        """The file's new text: JSON for a ``.json`` map, else TOML in write_camera_map's layout."""
        if self.path.suffix == ".json":
            return (json.dumps(self.data(), indent=2) + "\n").encode()
        lines = [f'schema_version = "{CAMERA_MAP_SCHEMA_VERSION}"']
        lines += [] if self.default is None else [f"default = {json.dumps(self.default)}"]
        lines += ["", "[cameras]"] + [f"{json.dumps(key)} = {json.dumps(value)}" for key, value in self.cameras.items()]
        return ("\n".join(lines) + "\n").encode()


def _read_raw(map_path: Path) -> _RawMap:
    """The map's entries as written; an empty, not-yet-existing map when there is no file."""
    if not map_path.exists():
        if not map_path.parent.is_dir():
            raise SwapError(f"no camera map at {map_path}, and its folder {map_path.parent} does not exist")
        return _RawMap(map_path, False, None, {})
    try:
        read_camera_map(map_path)  # every check of the service's reader, one line each
        text = map_path.read_text()
        data = json.loads(text) if map_path.suffix == ".json" else tomllib.loads(text)
    except (CameraMapError, OSError, ValueError) as error:
        raise SwapError(_one_line(error)) from error
    return _RawMap(map_path, True, data.get("default"), {str(k): v for k, v in data.get("cameras", {}).items()})


def _write(raw: _RawMap, history: dict[str, list[dict]]) -> None:
    """The history first (cameras with an empty stack left out), then the map, each replaced atomically."""
    raw.parsed()  # the entries as the service will read them: a map it would refuse is never written
    cameras = {camera: stack for camera, stack in history.items() if stack}
    write_json_atomic(history_path(raw.path), {"schema_version": HISTORY_SCHEMA_VERSION, "map": raw.path.name,
                                               "cameras": cameras})
    write_bytes_atomic(raw.path, raw.render())


@contextlib.contextmanager
def _locked(map_path: Path):
    """An exclusive lock on the map's folder (POSIX flock; none where it is missing) against concurrent swaps."""
    handle = os.open(map_path.parent, os.O_RDONLY) if fcntl is not None and map_path.parent.is_dir() else None
    try:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        if handle is not None:
            os.close(handle)


def _check_camera(camera: str) -> None:
    try:
        check_camera_id(camera, "--camera")
    except MessageError as error:
        raise SwapError(str(error)) from error
    if camera == DEFAULT_ROUTE:
        raise SwapError(f"a camera named {DEFAULT_ROUTE!r} cannot have an entry of its own: that key of a camera map "
                        "is the bundle of cameras no entry matches")


def _check_same_encoder(bundle_dir: Path, info: BundleInfo, camera_map: CameraMap, camera: str) -> None:
    """Refuse a bundle on another model or image encoder (weights, precision, sha256, auxiliary encoder) than the
    map's other bundles."""
    def encoder(other: BundleInfo) -> tuple:
        aux = other.aux_encoder
        return (other.weights_id, other.precision, other.engine_sha256.get("image_encoder"),
                None if aux is None else (aux.model, aux.precision, aux.engine_sha256))

    ours = encoder(info)
    for route, folder in camera_map.folders().items():
        if route == camera:
            continue  # the entry being replaced
        try:
            theirs = encoder(read_bundle_info(folder))
        except (BundleError, OSError):
            continue  # the service refuses that one on its own
        if theirs != ours:
            words = [f"weights {w}, {p} sha256 {str(sha)[:12]}...{'' if aux is None else f', auxiliary {aux[0]}'}"
                     for w, p, sha, aux in (ours, theirs)]
            raise SwapError(f"{bundle_dir} runs on image encoder {words[0]}; the map's bundle for {route!r} ({folder}) "
                            f"on {words[1]}: one service runs one model and one image encoder and would refuse one of "
                            "them; nothing changed")


def _describe(folder: Path, artifacts, aux_artifacts) -> str:
    """Bundle id, score, threshold, alpha, coverage, monitor reference (and, with `artifacts`, verified or not)."""
    try:
        info = read_bundle_info(folder)
    except (BundleError, OSError) as error:
        return f"unreadable: {_one_line(error)}"
    choice = info.threshold
    threshold = f"threshold {choice.threshold:.4g}" if choice.feasible else "no threshold (defers every frame)"
    text = (f"{_bundle_id(folder, info)} score {info.score} {threshold} alpha {choice.alpha:g} coverage "
            f"{100 * choice.coverage:.1f}% monitor reference {'yes' if info.monitor_reference else 'no'}")
    if artifacts is None:
        return text
    try:
        load_bundle(folder, artifacts, aux_artifacts if info.aux_encoder is not None else None)
    except (BundleError, ArtifactError, OSError, ValueError) as error:
        return f"{text} NOT VERIFIED: {_one_line(error)}"
    return f"{text} verified"


def _bundle_id(folder: Path, info: BundleInfo | None = None) -> str | None:
    """The bundle id the service stamps on decisions (from bundle.json alone); None for an unreadable bundle."""
    from trustvlm.runtime.scoring.scorer import bundle_id_of  # noqa: PLC0415

    try:
        return bundle_id_of(PrototypeBundle(Path(folder), None, None, info or read_bundle_info(folder)))
    except (BundleError, OSError):
        return None


def _as_written(folder: Path, base: Path) -> str:
    """`folder` as a map in `base` writes it: relative (POSIX) inside `base`, else absolute."""
    for resolve in (os.path.abspath, os.path.realpath):
        with contextlib.suppress(ValueError):
            return Path(resolve(folder)).relative_to(resolve(base)).as_posix()
    return os.path.abspath(folder)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
