"""The guarantee monitor's state on disk: each camera's detector and audit, so that a restart does not clear an ALARM.

One msgpack file (``monitor.state_file``) and a JSON mirror beside it (the same name + ``.json``) for people to read;
both written atomically (a temporary file in the same folder, then ``os.replace``). The service reads only the
msgpack file. Layout (:data:`STATE_VERSION` 1)::

    {"version": 1, "written_ns": ..., "cameras": {camera_id: {"bundle_id": ..., "last_capture_ns": ...,
                                                              "drift": {...} | None, "audit": {...} | None}}}

A file that cannot be read, of another version, or that is not such a map is set aside with one log line and
the monitor starts afresh: an unreadable state must not stop the service, and the log says what was lost.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import msgpack

from trustvlm.contract.files import json_safe

__all__ = ["STATE_VERSION", "read_state", "write_state"]

log = logging.getLogger("trustvlm.runtime.monitor")

STATE_VERSION = 1
#: Largest state file read back (a few KB per camera; far above what max_cameras allows).
MAX_STATE_BYTES = 64 * 1024 * 1024


def read_state(path: Path) -> dict[str, dict]:
    """Each camera's saved state (empty when there is no file, or it cannot be used: logged)."""
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
        data = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=True)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(data.get("cameras"), dict):
            raise ValueError(f"not a version-{STATE_VERSION} monitor state")
        cameras = {str(k): v for k, v in data["cameras"].items() if isinstance(v, dict)}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, msgpack.UnpackException) as error:
        log.error("monitor state %s cannot be read (%s): every camera's monitor starts afresh", path, error)
        return {}
    return cameras


def write_state(path: Path, cameras: dict[str, dict]) -> None:
    """Write the state and its JSON mirror atomically (OSError propagates: the caller logs it)."""
    data = {"version": STATE_VERSION, "written_ns": time.time_ns(), "cameras": cameras}
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, body in ((path, msgpack.packb(data, use_bin_type=True)),
                         (path.with_name(path.name + ".json"), json.dumps(json_safe(data), indent=1).encode())):
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            temporary.write_bytes(body)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
