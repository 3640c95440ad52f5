"""The gateway side of a camera map in cluster mode: ``trustvlm serve --cluster ... --bundles cameras.toml``.

:class:`ClusterMapLoader` is the service's loader and reloader of a camera map (the interface of
:class:`~trustvlm.runtime.scoring.routing.RoutedLoader`): it reads the map, verifies every bundle here
and packs the map with all its bundles (:func:`trustvlm.cluster.map_payload.collect_map_payload`),
puts into Ray's object store the parts the replicas do not hold yet (an unchanged bundle, or the
encoder, is not sent again), and has every replica build the single-machine routing from it. A
reload (SIGHUP, or a changed map file or bundle folder) is swapped in only once every running
replica has loaded it; one refusal, here or on any replica, refuses the whole reload and every
camera keeps its bundle everywhere (one log line, naming the camera).

:class:`ClusterRoutedScorer` is the service's scorer: it sends each frame of a camera with an entry
(or a default) to the replicas, which score it with that camera's bundle; it defers the frames of a
camera without one ``no_bundle`` itself, and stamps every decision it makes itself (deferred before
scoring, lost on the cluster, a replica's refusal) with the camera's own bundle, as
:meth:`RoutedScorer.defer <trustvlm.runtime.scoring.routing.RoutedScorer.defer>` does.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trustvlm.cluster.gateway import ClusterBackend, ClusterScorer
from trustvlm.cluster.map_payload import collect_map_payload
from trustvlm.contract.camera_map import DEFAULT_ROUTE, CameraMap, read_camera_map
from trustvlm.contract.manifest import read_manifest
from trustvlm.runtime.frames import ReceivedFrame
from trustvlm.runtime.messages import DecisionMessage
from trustvlm.runtime.scoring.routing import CameraRoutes, MapWatch
from trustvlm.runtime.scoring.scorer import ScorerConfig
from trustvlm.runtime.reload import RELOAD_ERRORS

__all__ = ["ClusterRoutedScorer", "ClusterMapLoader"]

log = logging.getLogger("trustvlm.cluster")


class ClusterRoutedScorer(CameraRoutes):
    """A camera map served by the cluster; see the module docstring.

    Attributes:
        camera_map: The camera map (its folders are the gateway's; the replicas never see them).
        scorers: ``{route: ClusterScorer}`` (routes of one folder share one), each the bundle's ids and threshold.
        primary: The default route's, else the first one's: the heartbeat's single-bundle fields.
        replica_key, payload_ref: What the replicas load and cache the map under, and its object refs.
    """

    decodes_own_frames = True

    def __init__(self, backend: ClusterBackend, camera_map: CameraMap, scorers: dict[str, ClusterScorer], key: str,
                 payload_ref: list):
        self.backend, self.camera_map, self.scorers = backend, camera_map, dict(scorers)
        self.primary = scorers.get(DEFAULT_ROUTE) or next(iter(scorers.values()))
        self.model_id, self.bundle_id = self.primary.model_id, self.primary.bundle_id
        self.threshold, self.score_name = self.primary.threshold, self.primary.score_name
        self.replica_key, self.payload_ref = key, payload_ref
        self._routes: dict[str, ClusterScorer | None] = {}

    def decide(self, frames: list[ReceivedFrame], prepared: list | None = None) -> list[DecisionMessage]:
        """One decision per frame, in order: a camera without a bundle ``no_bundle`` here, the rest on the replicas."""
        decisions: list[DecisionMessage | None] = [None] * len(frames)
        routed = []
        for index, frame in enumerate(frames):
            if self.scorer_for(frame.header.camera_id) is None:
                decisions[index] = self.no_bundle(frame)
            else:
                routed.append(index)
        if routed:
            for index, decision in zip(routed, self.backend.decide(self, [frames[i] for i in routed])):
                decisions[index] = decision
        return decisions

    def tower_preprocess(self) -> dict:
        """Nothing: the replicas decode and resize the frames they score."""
        return {}


class ClusterMapLoader(MapWatch):
    """Loads a camera map onto the replicas at start and on reload; see the module docstring.

    Args:
        backend: The connected cluster backend.
        artifacts: The model's export folder (every bundle must match it).
        map_file: The camera map file (read again on every reload).
        config: How the replicas run the encoder and the trust heads (providers, threads, ...).
        aux_artifacts: Unused: cluster mode serves bundles of the model's own prototypes (others are refused).
    """

    def __init__(self, backend: ClusterBackend, artifacts: Path, map_file: Path, config: ScorerConfig,
                 aux_artifacts: Path | None = None):
        self.backend, self.artifacts, self.map_file, self.config = backend, Path(artifacts), Path(map_file), config
        self.slot = self.observer = None
        self._refs: dict[str, object] = {}  # content id -> object ref of the parts the replicas hold now
        self._folders: list[Path] = []

    def load_all(self, previous: ClusterRoutedScorer | None = None) -> tuple[ClusterRoutedScorer, list[str]]:
        """Verify the map here, ship it, and have every replica load it; (scorer, []) or an exception.

        All or nothing (unlike :class:`~trustvlm.runtime.scoring.routing.RoutedLoader`, nothing is refused
        camera by camera); `previous` is not needed: each replica keeps the scorers of unchanged bundles itself.

        Raises:
            trustvlm.contract.camera_map.CameraMapError: An unreadable camera map.
            trustvlm.runtime.scoring.routing.RouteError: A bundle that does not verify here, naming the camera.
            EngineError: Replicas that cannot start, or one that refused the map (its reason names the camera).
        """
        import ray  # noqa: PLC0415 - cluster mode only

        camera_map = read_camera_map(self.map_file)
        self._folders = sorted({Path(folder).resolve() for folder in camera_map.folders().values()})
        self.mark_loaded()
        payload, bundles = collect_map_payload(self.artifacts, camera_map)
        sent = sum(len(data) for part_id, data in payload.parts.items() if part_id not in self._refs)
        refs = {part_id: self._refs[part_id] if part_id in self._refs else ray.put(data)
                for part_id, data in payload.parts.items()}
        payload_ref = [ray.put(payload.index), *refs.values()]
        self.backend.ship(payload.key, payload_ref, self.config)
        self._refs = refs
        manifest = read_manifest(self.artifacts)
        by_folder: dict[Path, ClusterScorer] = {}
        scorers = {}
        for route, folder in camera_map.folders().items():
            key = Path(folder).resolve()
            if key not in by_folder:
                by_folder[key] = ClusterScorer(self.backend, bundles[route], manifest, payload_ref)
            scorers[route] = by_folder[key]
        log.info("%s: %d bundles verified on the replicas (%.1f MB sent of %.1f MB)", payload.key, len(by_folder),
                 (sent + len(payload.index)) / 1e6, payload.size_bytes / 1e6)
        return ClusterRoutedScorer(self.backend, camera_map, scorers, payload.key, payload_ref), []

    def watched_folders(self) -> list[Path]:
        return self._folders

    def reload(self, trigger: str) -> bool:
        """Re-read the map and swap it in once every replica loaded it; True when it was swapped in."""
        old = self.slot.current()
        try:
            new, _ = self.load_all(old)
        except RELOAD_ERRORS as error:
            self.mark_loaded()
            line = " ".join(str(error).split())
            log.error("camera map reload refused (%s): %s; every camera keeps its bundle on every replica", trigger,
                      line)
            self.observer.on_reload(False, line)
            return False
        self.slot.swap(new)
        log.info("camera map reloaded on every replica (%s): %s", trigger,
                 "; ".join(f"{b['bundle_id']} for {', '.join(b['cameras'])}" for b in new.bundles()))
        self.observer.on_reload(True, new.bundle_id)
        return True
