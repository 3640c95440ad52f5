"""Which bundle scores which camera: the camera map (``serve --bundles cameras.toml``), read and resolved.

A robot's cameras are calibrated one by one (each camera's prototypes, fused score, threshold and
gate belong to that camera's frames), and one service scores them all with one image encoder. The
camera map says which bundle folder each camera's frames go to. TOML or JSON, one format::

    # cameras.toml
    schema_version = "1.0"
    default = "bundles/shared"        # optional: cameras no entry below matches
    [cameras]
    front = "bundles/front"           # one camera id
    "gripper*" = "bundles/gripper"    # a glob pattern (fnmatch: * ? [..]), matched against the whole id

Folders are relative to the map file's folder. **Most specific match wins**: an exact camera id
before any pattern; among patterns, the one with the most literal (non-wildcard) characters; equal
counts, the pattern that sorts first. A camera that matches nothing goes to ``default``; without one,
its frames are deferred (reason ``no_bundle``). The wire's camera id is only ever compared with the
map's keys: it never becomes part of a path.

This module imports the standard library only; the runtime resolves cameras with
:meth:`CameraMap.route`, calibration writes maps with :func:`write_camera_map`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

__all__ = ["CAMERA_MAP_SCHEMA_VERSION", "DEFAULT_ROUTE", "CameraMap", "CameraMapError", "read_camera_map",
           "write_camera_map"]

CAMERA_MAP_SCHEMA_VERSION = "1.0"
#: The route name of the ``default`` entry.
DEFAULT_ROUTE = "default"
_WILDCARDS = re.compile(r"[*?\[\]]")
_KEYS = {"schema_version", "default", "cameras"}


class CameraMapError(ValueError):
    """A camera map that cannot be used (unreadable, unknown keys, a bad entry)."""


@dataclass(frozen=True)
class CameraMap:
    """Camera id or pattern -> bundle folder, and an optional default folder.

    Attributes:
        cameras: ``{camera id or glob pattern: bundle folder}``.
        default: The folder of cameras no entry matches (None: their frames are deferred ``no_bundle``).
        source: The file it was read from (None: built in code).
    """

    cameras: dict[str, Path] = field(default_factory=dict)
    default: Path | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        for pattern in self.cameras:
            if not isinstance(pattern, str) or not pattern.strip() or pattern == DEFAULT_ROUTE:
                raise CameraMapError(f"camera map {self.source or ''}: {pattern!r} is not a camera id or pattern "
                                     f"(a non-empty string other than {DEFAULT_ROUTE!r})")
        if not self.cameras and self.default is None:
            raise CameraMapError(f"camera map {self.source or ''}: no camera and no default: nothing to score")
        order = sorted((p for p in self.cameras if _WILDCARDS.search(p)),
                       key=lambda p: (-len(_WILDCARDS.sub("", p)), p))
        object.__setattr__(self, "_patterns", tuple(order))

    def route(self, camera_id: str) -> str | None:
        """The entry that scores `camera_id`: its key in :attr:`cameras`, :data:`DEFAULT_ROUTE`, or None."""
        if camera_id in self.cameras:
            return camera_id
        for pattern in self._patterns:
            if fnmatch.fnmatchcase(camera_id, pattern):
                return pattern
        return DEFAULT_ROUTE if self.default is not None else None

    def folders(self) -> dict[str, Path]:
        """``{route: bundle folder}`` for every entry, the default last."""
        routes = dict(self.cameras)
        if self.default is not None:
            routes[DEFAULT_ROUTE] = self.default
        return routes

    def to_dict(self) -> dict:
        """The map as data (folders as strings, as given)."""
        data: dict = {"schema_version": CAMERA_MAP_SCHEMA_VERSION}
        if self.default is not None:
            data["default"] = str(self.default)
        data["cameras"] = {pattern: str(folder) for pattern, folder in self.cameras.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict, base: Path | None = None, source: Path | None = None) -> "CameraMap":
        """Read a map from data; relative folders are taken from `base`.

        Raises:
            CameraMapError: Unknown keys, an unknown major version, or entries that are not strings.
        """
        if not isinstance(data, dict):
            raise CameraMapError(f"camera map {source or ''}: expected a table, got {type(data).__name__}")
        unknown = set(data) - _KEYS
        if unknown:
            raise CameraMapError(f"camera map {source or ''}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        version = str(data.get("schema_version", CAMERA_MAP_SCHEMA_VERSION))
        if version.split(".")[0] != CAMERA_MAP_SCHEMA_VERSION.split(".")[0]:
            raise CameraMapError(f"camera map {source or ''}: schema_version {version} is not 1.x")
        cameras = data.get("cameras", {})
        if not isinstance(cameras, dict):
            raise CameraMapError(f"camera map {source or ''}: 'cameras' should be a table of id -> folder")
        entries = {**cameras, **({DEFAULT_ROUTE: data["default"]} if "default" in data else {})}
        bad = {key: value for key, value in entries.items() if not isinstance(value, str) or not value.strip()}
        if bad:
            raise CameraMapError(f"camera map {source or ''}: bundle folders should be non-empty strings, got {bad}")

        def folder(value: str) -> Path:
            path = Path(value).expanduser()
            return path if path.is_absolute() or base is None else base / path

        return cls({str(key): folder(value) for key, value in cameras.items()},
                   folder(data["default"]) if "default" in data else None, source)


def read_camera_map(path: str | os.PathLike) -> CameraMap:
    """Read a camera map file (``.toml`` or ``.json``); folders relative to the file's folder.

    Raises:
        CameraMapError: An unreadable, malformed or unusable file (one line, with the file's name).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise CameraMapError(f"cannot read the camera map {path}: {error.strerror or error}") from error
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif tomllib is None:
            raise CameraMapError(f"{path}: reading TOML needs Python 3.11; write the camera map as JSON")
        else:
            data = tomllib.loads(text)
    except (ValueError, TypeError) as error:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        if isinstance(error, CameraMapError):
            raise
        raise CameraMapError(f"camera map {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                             f"{error}") from error
    return CameraMap.from_dict(data, path.parent, path)


def write_camera_map(path: str | os.PathLike, camera_map: CameraMap) -> Path:
    """Write `camera_map` as TOML (folders relative to `path`'s folder where they are inside it)."""
    path = Path(path)
    base = path.parent.resolve()

    def relative(folder: Path) -> str:
        try:
            return str(Path(folder).resolve().relative_to(base))
        except ValueError:
            return str(folder)

    lines = [f'schema_version = "{CAMERA_MAP_SCHEMA_VERSION}"']
    if camera_map.default is not None:
        lines.append(f"default = {json.dumps(relative(camera_map.default))}")
    lines.append("")
    lines.append("[cameras]")
    lines += [f"{json.dumps(pattern)} = {json.dumps(relative(folder))}"
              for pattern, folder in camera_map.cameras.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
