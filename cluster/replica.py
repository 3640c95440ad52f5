"""One scoring replica of a Ray Serve deployment: decode, preprocess, encode and decide, on any node.

:class:`ScorerReplica` is the deployment's class (built into a deployment by
:mod:`trustvlm.cluster.gateway`). Each replica keeps its own ONNX Runtime sessions, opened by
:func:`trustvlm.runtime.scoring.scorer.load_scorer` from a :class:`~trustvlm.cluster.payload.BundlePayload`
it fetched from Ray's object store and verified (sha256 of every byte, then the single-machine
checks). Frames arrive as the encoded bytes the camera sent, so decoding runs here and scales out
with the replicas; Ray Serve's dynamic batching (``@serve.batch``) groups the frames that reach a
replica at about the same time into one encoder run (the gateway sends each batch it takes as one
request per replica, so Ray's cost per request is shared by the frames of a chunk).

Every request names the bundle it must be scored with, or the camera map (``--bundles``): then the
replica builds the single-machine service's routing (:class:`~trustvlm.runtime.scoring.routing.RoutedScorer`:
the image encoder opened once, each camera's frames scored by its own bundle) from the map's payload
(:mod:`trustvlm.cluster.map_payload`), writing and loading only the parts it has not seen before. A
replica keeps the scorers of the last two bundles or maps; one it has not seen (a reload, or a
replica Ray restarted) is fetched, verified and loaded before the frames are scored, and a replica
that cannot verify it answers ``{"refused": ...}`` for those frames instead of scoring them with
another bundle.

What crosses the cluster is plain data: a frame is ``{"header": <schema-1 header map>,
"payload": <bytes>, "receipt_ts_ns": int}``, a decision its ``DecisionMessage.to_dict()`` map.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import ray
from ray import serve

from trustvlm.cluster.map_payload import build_routed_scorer, payload_name, read_index, write_part
from trustvlm.cluster.payload import materialize_payload
from trustvlm.runtime.frames import FrameHeader, ReceivedFrame
from trustvlm.runtime.scoring.routing import RoutedScorer
from trustvlm.runtime.scoring.scorer import BundleScorer, ScorerConfig, load_scorer
from trustvlm.runtime.reload import RELOAD_ERRORS

__all__ = ["ScorerReplica", "frame_to_wire", "frame_from_wire", "REFUSED"]

#: Key of the answer for a frame the replica did not score (its bundle could not be verified here).
REFUSED = "refused"
#: Scorers kept per replica: the current bundle and the one before it (frames in flight during a reload).
CACHED_BUNDLES = 2


#: The folder of a replica's folder where the parts of camera maps are written, each under its content id.
PARTS = "parts"
#: Each replica writes its bundles under ``<temp dir>/trustvlm-replica-<pid>-<random>``.
FOLDER_PREFIX = "trustvlm-replica-"


def remove_stale_folders() -> None:
    """Delete the bundle folders of replicas on this node that were killed before they could (their pid is gone)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        pid = folder.name[len(FOLDER_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def frame_to_wire(frame: ReceivedFrame) -> dict:
    """The plain map a frame crosses the cluster as."""
    return {"header": frame.header.to_dict(), "payload": bytes(frame.payload), "receipt_ts_ns": frame.receipt_ts_ns}


def frame_from_wire(data: dict) -> ReceivedFrame:
    """Inverse of :func:`frame_to_wire` (the header is checked again)."""
    return ReceivedFrame(FrameHeader.from_dict(data["header"]), data["payload"], int(data["receipt_ts_ns"]))


class ScorerReplica:
    """Ray Serve deployment class; see the module docstring.

    Args:
        scorer_config: :class:`~trustvlm.runtime.scoring.scorer.ScorerConfig` fields (providers, threads, ...).
        bundle_id: The bundle (or camera map key) to load now; a replica that cannot verify it fails to start.
        payload_ref: ``[ObjectRef]`` of that bundle's payload (in a list, so Ray passes the reference); for a
            camera map, the refs of its index and then of its parts.
        max_batch_size: Most frames per encoder run (``@serve.batch``).
        batch_wait_ms: How long a batch waits for more frames once one is there.
    """

    def __init__(self, scorer_config: dict, bundle_id: str, payload_ref: list, max_batch_size: int,
                 batch_wait_ms: float):
        values = dict(scorer_config)
        values["providers"] = tuple(values["providers"])
        self.config = ScorerConfig(**values)
        remove_stale_folders()
        self.root = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
        self.scorers: collections.OrderedDict[str, BundleScorer | RoutedScorer] = collections.OrderedDict()
        self.part_scorers: dict[str, BundleScorer] = {}  # camera maps: content id -> the scorer of that bundle
        self.parts_of: dict[str, set[str]] = {}  # camera map key -> the content ids of its parts
        self.written: set[str] = set()  # content ids written under root/parts
        self._loading = threading.Lock()  # prepare and score requests run on worker threads, possibly at once
        context = serve.get_replica_context()
        self.name = f"{context.replica_id.unique_id}@{ray.get_runtime_context().get_node_id()[:8]}"
        self.score.set_max_batch_size(max_batch_size)
        self.score.set_batch_wait_timeout_s(batch_wait_ms / 1e3)
        self._scorer(bundle_id, payload_ref)

    def _scorer(self, bundle_id: str, payload_ref: list) -> BundleScorer:
        with self._loading:
            return self._load(bundle_id, payload_ref)

    def _load(self, key: str, payload_ref: list) -> BundleScorer | RoutedScorer:
        if key in self.scorers:
            self.scorers.move_to_end(key)
            return self.scorers[key]
        head = ray.get(payload_ref[0])
        last = next(reversed(self.scorers.values()), None)
        previous = last.primary if isinstance(last, RoutedScorer) else last
        if isinstance(head, bytes):  # a camera map: its index, then its parts (cluster/map_payload.py)
            scorer = self._load_map(key, head, payload_ref[1:], previous)
        else:
            scorer = self._load_bundle(key, head, previous)
        self.scorers[key] = scorer
        while len(self.scorers) > CACHED_BUNDLES:
            old, _ = self.scorers.popitem(last=False)
            shutil.rmtree(self.root / re.sub(r"[^A-Za-z0-9_.-]", "_", old), ignore_errors=True)
            self.parts_of.pop(old, None)
        in_use = set().union(*self.parts_of.values())
        for part_id in self.written - in_use:  # parts of camera maps no longer cached
            shutil.rmtree(self.root / PARTS / part_id, ignore_errors=True)
            self.part_scorers.pop(part_id, None)
        self.written &= in_use
        return scorer

    def _load_bundle(self, bundle_id: str, payload, previous: BundleScorer | None) -> BundleScorer:
        if payload.bundle_id != bundle_id:
            raise ValueError(f"asked for bundle {bundle_id}, but its payload is {payload.bundle_id}")
        folder = self.root / re.sub(r"[^A-Za-z0-9_.-]", "_", bundle_id)
        shutil.rmtree(folder, ignore_errors=True)
        artifacts, bundle = materialize_payload(payload, folder)
        scorer = load_scorer(artifacts, bundle, self.config, previous=previous)
        if scorer.bundle_id != bundle_id:
            raise ValueError(f"the payload of bundle {bundle_id} loads as {scorer.bundle_id}")
        return scorer

    def _load_map(self, key: str, index_data: bytes, part_refs: list, previous: BundleScorer | None) -> RoutedScorer:
        """Each camera scored by its own bundle: the parts not written here before are fetched and written."""
        index = read_index(index_data, key)
        if len(part_refs) != len(index["order"]):
            raise ValueError(f"{key}: {len(part_refs)} parts sent for the {len(index['order'])} of its index")
        folders = {}
        for part_id, ref in zip(index["order"], part_refs):
            folders[part_id] = self.root / PARTS / part_id  # a content id: 64 hex digits (read_index checked)
            if part_id not in self.written:
                write_part(index, part_id, ray.get(ref), folders[part_id])
                self.written.add(part_id)
        routed, scorers = build_routed_scorer(index, folders, self.config, self.part_scorers, previous)
        self.part_scorers.update(scorers)
        self.parts_of[key] = set(index["order"])
        return routed

    def _refusal(self, key: str, error: Exception) -> str:
        return f"replica {self.name} refused {payload_name(key)}: {error}"[:500]

    async def prepare(self, bundle_id: str, payload_ref: list) -> dict:
        """Fetch, verify and load a bundle ahead of its frames: ``{"replica": name, "error": "" or why not}``."""
        try:
            await asyncio.to_thread(self._scorer, bundle_id, payload_ref)
        except RELOAD_ERRORS as error:
            return {"replica": self.name, "error": self._refusal(bundle_id, error)}
        return {"replica": self.name, "error": ""}

    def _score_group(self, bundle_id: str, payload_ref: list, frames: list[dict]) -> list[dict]:
        try:
            scorer = self._scorer(bundle_id, payload_ref)
        except RELOAD_ERRORS as error:
            return [{REFUSED: self._refusal(bundle_id, error)}] * len(frames)
        return [decision.to_dict() for decision in scorer.decide([frame_from_wire(frame) for frame in frames])]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def score(self, requests: list[tuple[str, list, list[dict]]]) -> list[list[dict]]:
        """Decide a batch of ``(bundle_id, [payload ref], [frame map, ...])`` requests: one answer map per frame."""
        groups: dict[str, list[tuple[int, int]]] = {}  # bundle -> (request, frame) positions
        for index, (bundle_id, _, frames) in enumerate(requests):
            groups.setdefault(bundle_id, []).extend((index, position) for position in range(len(frames)))
        answers: list[list[dict]] = [[{}] * len(frames) for _, _, frames in requests]
        for bundle_id, positions in groups.items():
            payload_ref = requests[positions[0][0]][1]
            results = await asyncio.to_thread(self._score_group, bundle_id, payload_ref,
                                              [requests[index][2][position] for index, position in positions])
            for (index, position), result in zip(positions, results):
                answers[index][position] = result
        return answers

    def __del__(self):  # Ray Serve drops the replica object when it stops the replica
        root = getattr(self, "root", None)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
