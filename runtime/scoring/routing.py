"""One service, many cameras: each camera's frames scored against its own bundle, the image encoder run once.

``serve --bundles cameras.toml`` reads a camera map (:mod:`trustvlm.contract.camera_map`) and loads
one :class:`~trustvlm.runtime.scoring.scorer.BundleScorer` per bundle folder. Every bundle must have been
calibrated on the same image encoder files (the same sha256, precision and preprocessing): the
scorers then share one encoder session (:func:`~trustvlm.runtime.scoring.towers.open_tower` reuses it), and
each adds only its trust head and gate (a few small matrix products).

:class:`RoutedScorer` scores a batch of frames of several cameras in three steps: each frame's
route (the camera map's most specific entry; a camera without one is deferred ``no_bundle``), the
image encoder once over every frame, then each bundle's trust head, gate and threshold over its
own rows. A batch whose frames all go to one bundle takes that bundle's own path (on a GPU, the
IOBinding path that keeps embeddings on the device); a mixed batch brings the embeddings (a few
hundred floats a frame) to the host between the encoder and the heads, and runs the heads and gates of
every bundle in one call of the stacked graph (:mod:`~trustvlm.runtime.scoring.stacked_heads`: bundles of
one structure share one head and gate whose rows each take their own bundle's constants), or, where the
heads cannot be stacked (no onnx package, ``stack_heads`` off), one head and one gate call per bundle.

:class:`RoutedLoader` builds routed scorers at start and on reload: a bundle folder whose files
did not change keeps its scorer object; a changed one is loaded and self-checked first; a refused
one keeps the old scorer for its cameras (at start it refuses the service, naming the camera).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from trustvlm.contract.bundle import BUNDLE_JSON, PROTOTYPES_FILE, TRUST_HEAD_FILE, BundleMismatchError
from trustvlm.contract.camera_map import DEFAULT_ROUTE, CameraMap, read_camera_map
from trustvlm.contract.scores import HEAD_INPUT
from trustvlm.runtime.decode.decode_pool import FramePreparer
from trustvlm.runtime.frames import Notice, ReceivedFrame
from trustvlm.runtime.messages import Decision, DecisionMessage, Reason, bundle_entry
from trustvlm.runtime.scoring.onnx_engine import EngineError
from trustvlm.runtime.scoring.scorer import BundleScorer, ScorerConfig, TrustHeadOutput, load_scorer
from trustvlm.runtime.scoring.stacked_heads import StackedHeads, stack_heads

__all__ = ["CameraRoutes", "RoutedScorer", "RoutedLoader", "RouteError", "MapWatch"]

log = logging.getLogger("trustvlm.serve")

#: Camera ids whose route is remembered (the buffer bounds the cameras it keeps; past this, routes are looked up).
ROUTE_CACHE_SIZE = 4096


class RouteError(BundleMismatchError):
    """A camera's bundle that cannot be served beside the others (one line, naming the camera)."""


class CameraRoutes:
    """Each camera's bundle through a camera map (the part a scorer over many bundles shares, here or on a cluster).

    Needs ``camera_map``, ``scorers`` (``{route: scorer}``), ``model_id`` and ``_routes`` (a dict, the cache).
    """

    camera_map: CameraMap
    scorers: dict
    model_id: str
    _routes: dict

    def scorer_for(self, camera_id: str):
        """The scorer of `camera_id`'s frames (None: no entry of the map and no default)."""
        try:
            return self._routes[camera_id]
        except KeyError:
            route = self.camera_map.route(camera_id)
            scorer = None if route is None else self.scorers.get(route)
            if len(self._routes) < ROUTE_CACHE_SIZE:
                self._routes[camera_id] = scorer
            return scorer

    def bundles(self) -> list[dict]:
        """Each bundle in use: its id, score, threshold and the map entries (routes) it scores."""
        by_bundle: dict[int, dict] = {}
        for route, scorer in self.scorers.items():
            by_bundle.setdefault(id(scorer), bundle_entry(scorer))["cameras"].append(route)
        return list(by_bundle.values())

    def defer(self, notice: Notice) -> DecisionMessage:
        """The decision of a frame decided before scoring, stamped with its camera's bundle."""
        scorer = self.scorer_for(notice.camera_id)
        if scorer is not None:
            return scorer.defer(notice)
        return DecisionMessage(notice.camera_id, notice.seq, notice.capture_ts_ns, notice.receipt_ts_ns,
                               Decision.DEFER, notice.reason, float("inf"), "", self.model_id, "",
                               detail=notice.detail, seq_last=notice.seq_last, frames=notice.frames)

    def no_bundle(self, frame: ReceivedFrame) -> DecisionMessage:
        """The deferral of a frame whose camera has no bundle (``no_bundle``)."""
        return self.defer(Notice.for_frame(frame, Reason.NO_BUNDLE, f"camera {frame.header.camera_id!r} matches no "
                                           "entry of the camera map, and the map has no default"))


class RoutedScorer(CameraRoutes):
    """Frames -> each camera's own bundle (see the module docstring); the scorer protocol of the service.

    Attributes:
        camera_map: The camera map.
        scorers: ``{route: scorer}`` (routes of one folder share one scorer object).
        primary: The default route's scorer, else the first one: its model, bundle and threshold are
            the heartbeat's single-bundle fields.
        stacked: Every bundle's head and gate as one graph (None: one call per bundle), and why not.
    """

    decodes_own_frames = False

    def __init__(self, camera_map: CameraMap, scorers: dict[str, BundleScorer]):
        if not scorers:
            raise RouteError("no bundle could be loaded for any camera of the camera map")
        self.camera_map, self.scorers = camera_map, dict(scorers)
        self.primary = scorers.get(DEFAULT_ROUTE) or next(iter(scorers.values()))
        self.towers = self.primary.towers
        for route, scorer in scorers.items():
            _check_same_encoder(route, scorer, self.primary)
        self.model_id, self.bundle_id = self.primary.model_id, self.primary.bundle_id
        self.threshold, self.score_name = self.primary.threshold, self.primary.score_name
        self._routes: dict[str, BundleScorer | None] = {}
        self._prepare = FramePreparer()
        distinct = list({id(scorer): scorer for scorer in scorers.values()}.values())
        self._stack_index = {id(scorer): index for index, scorer in enumerate(distinct)}
        self.stacked: StackedHeads | None = None
        self.stacked_why_not = "one bundle" if len(distinct) == 1 else "stack_heads is off"
        config = self.primary.config
        if len(distinct) > 1 and config.stack_heads:
            self.stacked, self.stacked_why_not = stack_heads(
                [_verified(scorer, scorer.bundle.trust_head_path) for scorer in distinct],
                [_verified(scorer, scorer.bundle.ood_gate_path) for scorer in distinct],
                config.providers, config.allow_fallback, config.max_batch, config.spin)

    def tower_preprocess(self):
        """The shared image towers' preprocessing (what the decode pool resizes every frame to)."""
        return self.primary.tower_preprocess()

    def decide(self, frames: list[ReceivedFrame], prepared: list | None = None) -> list[DecisionMessage]:
        """One decision per frame, in order (see the module docstring); never raises for a frame or engine failure."""
        if prepared is None:
            towers = self.tower_preprocess()
            prepared = [self._prepare(frame, towers) for frame in frames]
        decisions: list[DecisionMessage | None] = [None] * len(frames)
        groups: dict[int, tuple[BundleScorer, list[int]]] = {}
        for index, (frame, item) in enumerate(zip(frames, prepared)):
            scorer = self.scorer_for(frame.header.camera_id)
            if scorer is None:
                decisions[index] = self.no_bundle(frame)
            elif isinstance(item, Notice):
                decisions[index] = scorer.defer(item)
            else:
                groups.setdefault(id(scorer), (scorer, []))[1].append(index)
        if len(groups) == 1:
            ((scorer, rows),) = groups.values()
            for index, decision in zip(rows, scorer.decide([frames[i] for i in rows], [prepared[i] for i in rows])):
                decisions[index] = decision
        elif groups:
            self._decide_groups(frames, prepared, list(groups.values()), decisions)
        return decisions

    def _decide_groups(self, frames, prepared, groups: list[tuple[BundleScorer, list[int]]], decisions: list) -> None:
        """The encoder once over every group's frames, then each group's head, gate and threshold."""
        order = [index for _, rows in groups for index in rows]
        batches = {name: np.stack([prepared[index][name] for index in order]) for name in self.towers}
        try:
            feed = self.primary.encode(batches)
            stacked = self._run_stacked(batches, feed, groups) if self.stacked is not None else None
        except EngineError as error:
            for scorer, rows in groups:
                _defer_engine_error(scorer, frames, rows, error, decisions)
            return
        start = 0
        for scorer, rows in groups:
            part = slice(start, start + len(rows))
            start += len(rows)
            try:
                if stacked is None:
                    output, typicality = scorer.run_head({k: v[part] for k, v in batches.items()},
                                                         {k: v[part] for k, v in feed.items()})
                else:
                    output, typicality = self._stacked_part(stacked, scorer, part)
            except EngineError as error:
                _defer_engine_error(scorer, frames, rows, error, decisions)
                continue
            for row, index in enumerate(rows):
                decisions[index] = scorer.decision_for(frames[index], output, row, float(typicality[row]))

    def _run_stacked(self, batches: dict[str, np.ndarray], feed: dict[str, np.ndarray], groups: list) -> list:
        """The stacked graph over every row, in chunks of the engines' batch limit: per bundle, outputs, typicality."""
        route = np.concatenate([np.full(len(rows), self._stack_index[id(scorer)], np.int64) for scorer, rows in groups])
        rows = len(feed[HEAD_INPUT])
        step = max(1, int(min(rows, self.primary.batch_limit)))
        runs = [self.stacked.run(batches[HEAD_INPUT][start:start + step],
                                 {name: value[start:start + step] for name, value in feed.items()},
                                 route[start:start + step])
                for start in range(0, rows, step)]
        if len(runs) == 1:
            return list(zip(runs[0].heads, runs[0].typicality))
        return [([np.concatenate([run.heads[k][i] for run in runs]) for i in range(len(runs[0].heads[k]))],
                 None if runs[0].typicality[k] is None else np.concatenate([run.typicality[k] for run in runs]))
                for k in range(len(runs[0].heads))]

    def _stacked_part(self, stacked: list, scorer: BundleScorer, part: slice) -> tuple[TrustHeadOutput, np.ndarray]:
        """`scorer`'s outputs and typicality for the rows of `part`, out of the stacked run."""
        values, typicality = stacked[self._stack_index[id(scorer)]]
        output = TrustHeadOutput(**{name: value[part] for name, value in zip(scorer.head_outputs, values)})
        rows = part.stop - part.start
        return output, np.full(rows, np.inf, np.float32) if typicality is None else typicality[part]


def _verified(scorer: BundleScorer, path: Path | None) -> tuple[Path, str] | None:
    """A bundle file with the sha256 its bundle.json records (what load_bundle verified), None for no file."""
    return None if path is None else (path, scorer.bundle.info.files[Path(path).name])


def _defer_engine_error(scorer: BundleScorer, frames, rows: list[int], error: EngineError, decisions: list) -> None:
    """Every frame of `rows` deferred ``engine_error`` by `scorer` (as BundleScorer.decide does for its batch)."""
    for index in rows:
        decisions[index] = scorer.defer(Notice.for_frame(frames[index], Reason.ENGINE_ERROR, str(error)[:500]))


def _check_same_encoder(route: str, scorer: BundleScorer, reference: BundleScorer) -> None:
    if set(scorer.towers) != set(reference.towers):
        raise RouteError(f"camera {route!r}: its bundle {scorer.bundle_id} takes the image encoders "
                         f"{sorted(scorer.towers)}, the others {sorted(reference.towers)}: every bundle of one "
                         "service must be calibrated on the same image encoders")
    for name, tower in scorer.towers.items():
        other = reference.towers[name]
        if tower.engine is not other.engine:
            raise RouteError(f"camera {route!r}: its bundle {scorer.bundle_id} was calibrated on image encoder "
                             f"sha256 {tower.source[3][:12]}... ({tower.source[1]}), the others on "
                             f"{other.source[3][:12]}... ({other.source[1]}): every bundle of one service must be "
                             "calibrated on the same encoder files; recalibrate it on these artifacts")


def folder_signature(folder: Path) -> tuple:
    """(inode, size, mtime) of a bundle's three files; None entries for missing ones."""
    return tuple(_file_signature(folder / name) for name in (BUNDLE_JSON, PROTOTYPES_FILE, TRUST_HEAD_FILE))


class MapWatch:
    """Notices a changed camera map: its file or one of its bundle folders, changed and then unchanged for one poll.

    Subclasses set ``map_file``, list the loaded folders in :meth:`watched_folders` and call :meth:`mark_loaded`
    after each load (or refused reload: the change is then taken as seen).
    """

    map_file: Path
    _seen = _current = None

    def watched_folders(self) -> list[Path]:
        raise NotImplementedError

    def signature(self) -> tuple:
        return (_file_signature(self.map_file), *(folder_signature(folder) for folder in self.watched_folders()))

    def mark_loaded(self) -> None:
        self._seen = self._current = self.signature()

    def changed(self) -> bool:
        """True when the map file or a bundle folder changed since the last load, and stayed so since the last poll."""
        current = self.signature()
        stable, self._seen = current == self._seen, current
        return stable and current != self._current


class RoutedLoader(MapWatch):
    """Builds :class:`RoutedScorer` objects from a camera map, reusing the scorers of unchanged bundle folders.

    It is also the service's reloader for a camera map (the interface of
    :class:`~trustvlm.runtime.reload.BundleReloader`): :meth:`changed` polls the map file and the
    bundle folders, :meth:`reload` re-reads the map and swaps the result into the slot.

    Args:
        artifacts: The model's export folder (every bundle must match it).
        map_file: The camera map file (read again on every reload: cameras may come and go).
        config: How the sessions run.
        aux_artifacts: The auxiliary encoder's export folder, for bundles calibrated with one.
        load: Builds one bundle's scorer (default: sessions on this machine).
    """

    def __init__(self, artifacts: Path, map_file: Path, config: ScorerConfig, aux_artifacts: Path | None = None,
                 load=load_scorer):
        self.artifacts, self.map_file, self.config, self.aux_artifacts, self.load = (
            artifacts, map_file, config, aux_artifacts, load)
        self.slot = self.observer = None
        self._loaded: dict[Path, tuple[tuple, BundleScorer]] = {}

    def load_all(self, previous: RoutedScorer | None = None) -> tuple[RoutedScorer, list[str]]:
        """A routed scorer for the current camera map, and what was refused (one line each).

        At start (`previous` None) any refusal raises instead. A refused folder keeps its previous
        scorer for the routes that had one; a refused new route is left out (its cameras go to the
        default, or are deferred ``no_bundle``).

        Raises:
            trustvlm.contract.camera_map.CameraMapError: An unreadable camera map.
            RouteError: At start, a bundle that cannot be served (naming the camera).
        """
        camera_map = read_camera_map(self.map_file)
        scorers: dict[str, BundleScorer] = {}
        refused: list[str] = []
        loaded: dict[Path, tuple[tuple, BundleScorer]] = {}
        any_scorer = previous.primary if previous is not None else None
        for route, folder in camera_map.folders().items():
            key = Path(folder).resolve()
            signature = folder_signature(key)
            known = loaded.get(key) or self._loaded.get(key)
            if known is not None and known[0] == signature:
                scorers[route], loaded[key] = known[1], known
                continue
            try:
                scorer = self.load(self.artifacts, key, self.config, previous=any_scorer,
                                   aux_artifacts_dir=self.aux_artifacts)
                if any_scorer is not None:
                    _check_same_encoder(route, scorer, any_scorer)
            except Exception as error:  # noqa: BLE001 - every refusal is reported the same way
                line = f"camera {route!r} ({folder}): {error}"
                if previous is None:
                    raise RouteError(line) from error
                refused.append(line)
                if route in previous.scorers:
                    scorers[route] = previous.scorers[route]
                continue
            any_scorer = any_scorer or scorer
            scorers[route], loaded[key] = scorer, (signature, scorer)
        self._loaded = loaded
        self.mark_loaded()
        routed = RoutedScorer(camera_map, scorers)
        if routed.stacked is None and len(loaded) > 1:
            log.info("the bundles' trust heads run one call per bundle in a mixed batch: %s", routed.stacked_why_not)
        return routed, refused

    def watched_folders(self) -> list[Path]:
        return list(self._loaded)

    def reload(self, trigger: str) -> bool:
        """Re-read the map, load what changed, swap it in; True when nothing was refused."""
        old = self.slot.current()
        try:
            new, refused = self.load_all(old)
        except Exception as error:  # noqa: BLE001 - an unreadable map keeps every camera as it was
            self.mark_loaded()
            log.error("camera map reload refused (%s): %s; keeping every bundle", trigger, error)
            self.observer.on_reload(False, str(error))
            return False
        self.slot.swap(new)
        for line in refused:
            log.error("bundle reload refused (%s): %s; that camera keeps its bundle", trigger, line)
            self.observer.on_reload(False, line)
        swapped = [f"{b['bundle_id']} for {', '.join(b['cameras'])}" for b in new.bundles()]
        log.info("camera map reloaded (%s): %s", trigger, "; ".join(swapped))
        if not refused:
            self.observer.on_reload(True, new.bundle_id)
        return not refused


def _file_signature(path: Path) -> tuple | None:
    try:
        stat = os.stat(path)
        return stat.st_ino, stat.st_size, stat.st_mtime_ns
    except OSError:
        return None
