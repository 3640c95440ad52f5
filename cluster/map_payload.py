"""A camera map and every bundle it names, carried to the replicas of a cluster as plain, content-addressed data.

``trustvlm serve --cluster ... --bundles cameras.toml``: the gateway reads the camera map
(:func:`trustvlm.contract.camera_map.read_camera_map`), verifies every bundle folder against the
export (:func:`trustvlm.contract.bundle.load_bundle`, naming the camera of one that does not
verify), and packs what the replicas need (:func:`collect_map_payload`):

* one **part** per distinct set of files: the export's files (manifest and image encoder) once, and
  each bundle folder's files; a part is msgpack bytes ``{"kind": "artifacts" | "bundle", "files":
  {file name: bytes}}``, and its **content id** is the sha256 of its kind and the sha256 of each of
  its files;
* the **index**, msgpack bytes: each part's kind and file sha256s, each bundle's id, and the routes
  (the map's camera ids and patterns, and :data:`~trustvlm.contract.camera_map.DEFAULT_ROUTE`) ->
  content id. No path of the gateway crosses the cluster; a map's key holds the start of its index's sha256.

A replica reads the index (:func:`read_index`: its sha256 must be the key's), writes each part it has
not written before into ``<its folder>/<content id>`` (:func:`write_part`: each file's sha256 must be
the index's, each file name one plain name), and builds the same routing as the single-machine
service over those folders (:func:`build_routed_scorer`: a
:class:`~trustvlm.runtime.scoring.routing.RoutedScorer` whose bundles share one opened image encoder). A
camera id is only ever a key of the routes; a folder is only ever named by a content id the replica
has checked is 64 hex digits, so no entry of a map can reach outside the replica's folder.
Only msgpack bytes (maps, strings and bytes) go into Ray's object store: no object of this package is
pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import msgpack

from trustvlm.cluster.payload import PayloadError, artifact_files, bundle_files
from trustvlm.contract.bundle import BundleError, PrototypeBundle, load_bundle
from trustvlm.contract.camera_map import DEFAULT_ROUTE, CameraMap
from trustvlm.contract.encoders import engine_sha256
from trustvlm.contract.manifest import ArtifactError, read_manifest
from trustvlm.runtime.scoring.onnx_engine import EngineError
from trustvlm.runtime.scoring.routing import RoutedScorer, RouteError
from trustvlm.runtime.scoring.scorer import BundleScorer, ScorerConfig, bundle_id_of, load_scorer

__all__ = ["MAP_KEY_PREFIX", "MapPayload", "collect_map_payload", "read_index", "write_part", "build_routed_scorer",
           "payload_name"]

#: The key of a camera map's payload: this prefix, then the first 16 hex digits of its index's sha256.
MAP_KEY_PREFIX = "camera map "
FORMAT = "trustvlm-camera-map-payload/1"
ARTIFACTS, BUNDLE = "artifacts", "bundle"
_CONTENT_ID = re.compile(r"[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: What a bundle that cannot be loaded may raise (anything else is a bug, and is not turned into a refusal).
LOAD_ERRORS = (BundleError, ArtifactError, EngineError, ValueError, OSError)


@dataclass(frozen=True)
class MapPayload:
    """What the gateway ships for one camera map (all of it plain bytes).

    Attributes:
        key: ``camera map <16 hex>`` (:data:`MAP_KEY_PREFIX` and the start of the index's sha256).
        index: The packed index (see the module docstring).
        parts: Content id -> packed part, in the order the replicas are given them.
    """

    key: str
    index: bytes
    parts: dict[str, bytes]

    @property
    def size_bytes(self) -> int:
        return len(self.index) + sum(len(data) for data in self.parts.values())


def payload_name(key: str) -> str:
    """How a log line names what a replica key stands for: ``camera map <hex>``, or ``bundle <bundle id>``."""
    return key if key.startswith(MAP_KEY_PREFIX) else f"bundle {key}"


def content_id(kind: str, sha256: dict[str, str]) -> str:
    """The content id of a part: sha256 of its kind and its files' sha256s."""
    return hashlib.sha256(json.dumps({"kind": kind, "sha256": sha256}, sort_keys=True).encode()).hexdigest()


def _pack_part(kind: str, folder: Path, names: list[str]) -> tuple[str, dict[str, str], bytes]:
    files = {name: (folder / name).read_bytes() for name in sorted(set(names))}
    sha256 = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    return content_id(kind, sha256), sha256, msgpack.packb({"kind": kind, "files": files}, use_bin_type=True)


def collect_map_payload(artifacts_dir: str | os.PathLike,
                        camera_map: CameraMap) -> tuple[MapPayload, dict[str, PrototypeBundle]]:
    """Verify every bundle of `camera_map` against the export and pack the payload; also each route's bundle.

    Raises:
        RouteError: One line naming the camera: a bundle that does not verify against the export, one of
            an auxiliary prototype encoder, or one calibrated on other image encoder files than the rest
            (both sha256s named).
        trustvlm.contract.manifest.ArtifactError, OSError: Unreadable artifacts.
    """
    artifacts = Path(artifacts_dir)
    manifest = read_manifest(artifacts)
    bundles: dict[str, PrototypeBundle] = {}
    by_folder: dict[Path, tuple[PrototypeBundle, list[str]]] = {}
    needed: list[str] = []
    for route, folder in camera_map.folders().items():
        key = Path(folder).resolve()
        try:
            if key not in by_folder:
                bundle = load_bundle(key, artifacts)
                by_folder[key] = bundle, artifact_files(artifacts, folder, bundle.info)
        except (BundleError, ArtifactError, OSError) as error:
            raise RouteError(f"camera {route!r} ({folder}): {error}") from error
        bundles[route] = by_folder[key][0]
        needed += by_folder[key][1]
    _check_one_encoder(manifest, bundles)
    artifacts_id, artifacts_sha, artifacts_part = _pack_part(ARTIFACTS, artifacts, needed)
    tables = {artifacts_id: {"kind": ARTIFACTS, "sha256": artifacts_sha}}
    parts, bundle_ids, routes = {artifacts_id: artifacts_part}, {}, {}
    folder_ids: dict[Path, str] = {}
    for route, folder in camera_map.folders().items():
        key = Path(folder).resolve()
        if key not in folder_ids:
            bundle = by_folder[key][0]
            part_id, sha256, packed = _pack_part(BUNDLE, key, bundle_files(bundle.info))
            folder_ids[key], tables[part_id], parts[part_id] = part_id, {"kind": BUNDLE, "sha256": sha256}, packed
            bundle_ids[part_id] = bundle_id_of(bundle)
        routes[route] = folder_ids[key]
    index = msgpack.packb({"format": FORMAT, "artifacts": artifacts_id, "parts": tables,
                           "bundle_ids": bundle_ids, "routes": routes, "order": list(parts)}, use_bin_type=True)
    key = MAP_KEY_PREFIX + hashlib.sha256(index).hexdigest()[:16]
    return MapPayload(key, index, parts), bundles


def _check_one_encoder(manifest: dict, bundles: dict[str, PrototypeBundle]) -> None:
    """Every bundle on the same image encoder files (as :class:`RoutedScorer` requires), else one line."""
    primary = DEFAULT_ROUTE if DEFAULT_ROUTE in bundles else next(iter(bundles))

    def encoder(route: str) -> tuple[str, str]:
        precision = bundles[route].info.precision
        sha = engine_sha256(manifest, precision, towers=("image",))["image_encoder"]
        return sha, manifest["precisions"][precision]["files"]["image_encoder"]["file"]

    reference = encoder(primary)
    for route, bundle in bundles.items():
        mine = encoder(route)
        if mine[0] != reference[0]:
            raise RouteError(f"camera {route!r}: its bundle {bundle_id_of(bundle)} was calibrated on image encoder "
                             f"sha256 {mine[0][:12]}... ({mine[1]}), the others on {reference[0][:12]}... "
                             f"({reference[1]}): every bundle of one service must be calibrated on the same encoder "
                             "files; recalibrate it on these artifacts")


def _unpack(data: bytes, what: str):
    def refuse_ext(code, _):
        raise PayloadError(f"{what}: msgpack extension type {code} refused")

    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=refuse_ext)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise PayloadError(f"{what}: not a payload ({type(error).__name__}: {error})") from error


def read_index(data: bytes, key: str) -> dict:
    """The index of the map payload `key`, checked: its sha256, its shape, every content id and file name.

    Raises:
        PayloadError: An index that is not the one `key` names, or not well formed (one line).
    """
    if not isinstance(data, bytes) or not key.startswith(MAP_KEY_PREFIX) or \
            hashlib.sha256(data).hexdigest()[:16] != key[len(MAP_KEY_PREFIX):]:
        raise PayloadError(f"{key}: its index does not hash to its key; refusing it")
    index = _unpack(data, key)
    problem = _index_problem(index)
    if problem:
        raise PayloadError(f"{key}: {problem}; refusing it")
    return index


def _index_problem(index) -> str:
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        return f"not a {FORMAT} index"
    parts, routes, ids = index.get("parts"), index.get("routes"), index.get("bundle_ids")
    if not (isinstance(parts, dict) and isinstance(routes, dict) and isinstance(ids, dict) and routes):
        return "parts, routes and bundle_ids should be maps, with at least one route"
    for part_id, table in parts.items():
        if not (_CONTENT_ID.fullmatch(part_id) and isinstance(table, dict) and table.get("kind") in (ARTIFACTS, BUNDLE)
                and isinstance(table.get("sha256"), dict)):
            return f"part {part_id!r} is not a content id with a kind and file sha256s"
        if any(not (_FILE_NAME.fullmatch(name) and isinstance(sha, str)) for name, sha in table["sha256"].items()):
            return f"part {part_id} names a file that is not one plain file name"
        if content_id(table["kind"], table["sha256"]) != part_id:
            return f"part {part_id} is not the content id of its files"
    def kind(part_id) -> str | None:
        return parts[part_id]["kind"] if isinstance(part_id, str) and part_id in parts else None

    if kind(index.get("artifacts")) != ARTIFACTS:
        return "no artifacts part"
    for route, part_id in routes.items():
        if not (isinstance(route, str) and route and kind(part_id) == BUNDLE and isinstance(ids.get(part_id), str)):
            return f"route {route!r} does not name a bundle part with a bundle id"
    order = index.get("order")
    if not (isinstance(order, list) and all(isinstance(item, str) for item in order)
            and sorted(order) == sorted(parts)):
        return "the order of its parts does not list each part once"
    return ""


def write_part(index: dict, part_id: str, data: bytes, folder: str | os.PathLike) -> Path:
    """Write the part `part_id` of a checked `index` into `folder`, after checking every file's sha256.

    The files are written beside `folder` and moved into place once all of them are there.

    Raises:
        PayloadError: A part whose files are not the ones the index records.
    """
    folder = Path(folder)
    table = index["parts"][part_id]
    part = _unpack(data, f"part {part_id[:12]}")
    files = part.get("files") if isinstance(part, dict) else None
    if not isinstance(files, dict) or part.get("kind") != table["kind"] or set(files) != set(table["sha256"]):
        raise PayloadError(f"part {part_id[:12]}: its files are not the ones its index records; refusing it")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, content in files.items():
        digest = hashlib.sha256(content).hexdigest() if isinstance(content, bytes) else "not bytes"
        if digest != table["sha256"][name]:
            shutil.rmtree(staging, ignore_errors=True)
            raise PayloadError(f"part {part_id[:12]}: {name} has sha256 {digest[:12]}..., the gateway read "
                               f"{table['sha256'][name][:12]}...; refusing it")
        (staging / name).write_bytes(content)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def build_routed_scorer(index: dict, folders: dict[str, Path], config: ScorerConfig,
                        loaded: dict[str, BundleScorer], previous: BundleScorer | None = None
                        ) -> tuple[RoutedScorer, dict[str, BundleScorer]]:
    """The routed scorer of a checked `index` whose parts are written in `folders` (content id -> folder).

    `loaded` holds the scorers of parts already loaded (content id -> scorer; they are reused), and
    `previous` a scorer whose opened image encoder is reused when the same file would be opened.

    Returns:
        The routed scorer, and its scorers by content id.

    Raises:
        RouteError: A bundle that cannot be loaded or served beside the others, naming the camera.
    """
    artifacts = folders[index["artifacts"]]
    scorers: dict[str, BundleScorer] = {}
    for route, part_id in index["routes"].items():
        if part_id in scorers:
            continue
        scorer = loaded.get(part_id)
        if scorer is None:
            try:
                scorer = load_scorer(artifacts, folders[part_id], config, previous=previous)
            except LOAD_ERRORS as error:
                raise RouteError(f"camera {route!r}: {error}") from error
            if scorer.bundle_id != index["bundle_ids"][part_id]:
                raise RouteError(f"camera {route!r}: its bundle loads as {scorer.bundle_id}, the gateway verified "
                                 f"{index['bundle_ids'][part_id]}")
        scorers[part_id] = scorer
        previous = previous or scorer
    routes = index["routes"]
    camera_map = CameraMap({route: folders[part_id] for route, part_id in routes.items() if route != DEFAULT_ROUTE},
                           folders[routes[DEFAULT_ROUTE]] if DEFAULT_ROUTE in routes else None)
    routed = RoutedScorer(camera_map, {route: scorers[part_id] for route, part_id in routes.items()})
    return routed, scorers
