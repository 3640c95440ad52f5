"""Hot reload of one bundle for every camera: load, verify and self-check the new bundle, then swap it in.

:class:`BundleReloader` is what the service's reload thread calls on SIGHUP or when the bundle's files changed
and stayed unchanged for one poll (a camera map has its own loader,
:class:`~trustvlm.runtime.scoring.routing.RoutedLoader`, with the same ``changed`` / ``reload``). A bad bundle is
refused with one log line and the old one stays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from trustvlm.contract.bundle import BundleError
from trustvlm.contract.manifest import ArtifactError
from trustvlm.runtime.metrics import Observer
from trustvlm.runtime.scoring.onnx_engine import EngineError
from trustvlm.runtime.scoring.routing import folder_signature
from trustvlm.runtime.scoring.scorer import (
    Scorer,
    ScorerConfig,
    ScorerSlot,
    load_scorer,
)

__all__ = ["RELOAD_ERRORS", "BundleReloader", "ScorerLoader"]

log = logging.getLogger("trustvlm.runtime.service")

#: Loads, verifies and self-checks a bundle into a scorer: :func:`~trustvlm.runtime.scoring.scorer.load_scorer`'s signature.
#: The default scores on this machine; another may score elsewhere, with the same decide/defer/ids.
ScorerLoader = Callable[..., Scorer]

#: What a bundle reload may raise for a bad bundle (anything else is a bug and is logged as such).
RELOAD_ERRORS = (BundleError, ArtifactError, EngineError, ValueError, OSError)


class BundleReloader:
    """Loads, checks and swaps in a new bundle; refuses a bad one and keeps the old."""

    def __init__(self, slot: ScorerSlot, artifacts: Path, bundle_dir: Path, config: ScorerConfig,
                 observer: Observer, aux_artifacts: Path | None = None, load: ScorerLoader = load_scorer):
        self.slot, self.artifacts, self.bundle_dir, self.aux_artifacts = slot, artifacts, bundle_dir, aux_artifacts
        self.config, self.observer, self.load = config, observer, load
        self._loaded = self._last_seen = self.signature()

    def signature(self) -> tuple:
        """(inode, size, mtime) of the bundle's three files; None entries for missing ones."""
        return folder_signature(self.bundle_dir)

    def changed(self) -> bool:
        """True when the files differ from the loaded ones and stayed the same since the last poll."""
        current = self.signature()
        stable, self._last_seen = current == self._last_seen, current
        return stable and current != self._loaded

    def reload(self, trigger: str) -> bool:
        """Try the bundle folder now; True when it was swapped in."""
        self._loaded = self._last_seen = self.signature()
        old = self.slot.current()
        try:
            new = self.load(self.artifacts, self.bundle_dir, self.config, previous=old,
                            aux_artifacts_dir=self.aux_artifacts)
        except RELOAD_ERRORS as error:
            log.error("bundle reload refused (%s): %s; keeping %s", trigger, error, old.bundle_id)
            self.observer.on_reload(False, str(error))
            return False
        self.slot.swap(new)
        log.info("bundle reloaded (%s): %s -> %s, accept %s >= %s", trigger, old.bundle_id, new.bundle_id,
                 new.score_name, new.threshold)
        self.observer.on_reload(True, new.bundle_id)
        return True
