"""Many bundles' trust heads and gates as one graph: a batch of many cameras costs one call, not one per bundle.

A camera map's bundles share the image encoder; what differs is each bundle's ``trust_head.onnx``
and ``ood_gate.onnx`` (:mod:`trustvlm.contract.scores`, :mod:`trustvlm.contract.ood_gate`), graphs of
a few small matrix products. Run one by one, a batch that mixes 8 bundles makes 16 ONNX Runtime calls,
and with a small encoder their fixed cost (tens of microseconds a call, about half a microsecond a node)
outweighs the encoder. :func:`stack_heads` has one graph built for them all, in a child process
(:mod:`.stack_graph`: the ``onnx`` package it needs takes about 16 MiB that would otherwise stay with
the service), and opens it:

* bundles of one structure (the usual case: the same classes, score and gate components) are
  vectorized (:mod:`.vectorize_graph`): one head and one gate, fed each row's ``bundle_index``, compute
  every row with its own bundle's constants; a batch costs about what one bundle's does;
* others are joined side by side (``b0/head/kappa``, ``b0/gate/typicality``, ``b1/head/kappa``, ...):
  every bundle's head and gate over every row, the work they share (the gate's frame statistics, the
  normalised embedding) done once.

Where the graph cannot be built (no onnx package, a bundle file changed since it was verified), the
reason is returned and the routed scorer calls each bundle's head and gate in turn: the same decisions
(``tests/runtime/test_camera_routing.py`` compares them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trustvlm.contract.ood_gate import GATE_OUTPUT, GATE_PIXELS_INPUT
from trustvlm.runtime.scoring.onnx_engine import EngineError, OnnxEncoder
from trustvlm.runtime.scoring.stack_graph import CANNOT_STACK, head_prefix
from trustvlm.runtime.scoring.vectorize_graph import BUNDLE_INDEX_INPUT
from trustvlm.runtime.scoring.ort_providers import TensorRTProviderSettings

__all__ = ["StackedHeads", "stack_heads", "head_prefix"]

#: Intra-op threads of the stacked graph (as each bundle's own head: microseconds of work per call).
STACKED_THREADS = 1


@dataclass(frozen=True)
class StackedOutputs:
    """One run of the stacked graph: per bundle (in the order given), its head outputs and gate typicality."""

    heads: list[list[np.ndarray]]
    typicality: list[np.ndarray | None]


class StackedHeads:
    """The stacked graph's session; :meth:`run` gives every bundle's outputs over the whole batch.

    Args:
        session: The stacked graph, on the trust heads' providers.
        head_outputs: Per bundle, its head's output names (unprefixed, in its head's order).
        gated: Per bundle, whether it has a gate (its typicality output).
        nodes: (nodes of the stacked graph, nodes of the bundles' graphs together).
        vectorized: One head and gate for every bundle, fed ``bundle_index`` (else one per bundle, side by side).
        bundles: How many bundles were stacked.
        why_not_vectorized: Why the graphs were joined side by side ("" when vectorized).
        folder: The temporary folder of the graph file, kept while the session lives (engine caches).
    """

    def __init__(self, session: OnnxEncoder, head_outputs: list[tuple[str, ...]], gated: list[bool],
                 nodes: tuple[int, int] = (0, 0), vectorized: bool = False, bundles: int = 1,
                 why_not_vectorized: str = "", folder: tempfile.TemporaryDirectory | None = None):
        self.session, self.head_outputs, self.gated = session, head_outputs, gated
        self.nodes, self.vectorized, self.bundles = nodes, vectorized, bundles
        self.why_not_vectorized, self.folder = why_not_vectorized, folder
        self.inputs = [item.name for item in session.session.get_inputs()]
        self._names = [f"{head_prefix(k)}{name}" for k, names in enumerate(head_outputs) for name in names]
        self._names += [f"{head_prefix(k, 'gate')}{GATE_OUTPUT}" for k, gate in enumerate(gated) if gate]

    def run(self, pixels: np.ndarray, feed: dict[str, np.ndarray], route: np.ndarray) -> StackedOutputs:
        """Every bundle's head and gate over the batch: `pixels` the head input's uint8 pixels (the gates'
        frame statistics), `feed` the embeddings by head input, `route` each row's bundle (its position in
        the list the graph was stacked from). A vectorized graph computes each row with its own bundle
        only, and every bundle's entry holds those rows. Raises EngineError."""
        inputs = {name: feed[name] for name in self.inputs if name not in (GATE_PIXELS_INPUT, BUNDLE_INDEX_INPUT)}
        if GATE_PIXELS_INPUT in self.inputs:
            inputs[GATE_PIXELS_INPUT] = pixels
        if self.vectorized:
            inputs[BUNDLE_INDEX_INPUT] = np.ascontiguousarray(route, dtype=np.int64)
        try:
            values = iter(self.session.session.run(self._names, inputs))
        except Exception as error:  # onnxruntime raises its own exception types
            shapes = {name: value.shape for name, value in inputs.items()}
            raise EngineError(f"stacked trust heads failed on inputs of shapes {shapes}: {error}") from error
        heads = [[next(values) for _ in names] for names in self.head_outputs]
        typicality = [next(values) if gate else None for gate in self.gated]
        if self.vectorized:
            return StackedOutputs(heads * self.bundles, typicality * self.bundles)
        return StackedOutputs(heads, typicality)


#: A graph file and the sha256 its bundle recorded (and its scorer verified).
VerifiedFile = tuple[Path, str]

#: How long building the stacked graph may take (seconds; a guard: it takes well under a second for 8 bundles).
STACK_TIMEOUT_S = 120.0


def stacker_command() -> list[str]:
    """The child process that writes the stacked graph (:mod:`.stack_graph`: onnx stays out of the service)."""
    return [sys.executable, "-m", "trustvlm.runtime.scoring.stack_graph"]


def stack_heads(head_files: list[VerifiedFile], gate_files: list[VerifiedFile | None], providers: tuple[str, ...],
                allow_fallback: bool, max_batch: int, spin: bool) -> tuple[StackedHeads | None, str]:
    """One session over every bundle's head and gate, or (None, why not) where they cannot be stacked.

    Each file must still have the sha256 its bundle recorded (a file replaced since its scorer verified it is
    not stacked: the bundles' own sessions score instead, until the reload).
    """
    folder = tempfile.TemporaryDirectory(prefix="trustvlm-stacked-")
    path = Path(folder.name) / "stacked_heads.onnx"
    job = {"heads": [[str(p), sha] for p, sha in head_files],
           "gates": [[str(item[0]), item[1]] if item else None for item in gate_files],
           "out": str(path)}
    try:
        done = subprocess.run(stacker_command(), input=json.dumps(job), capture_output=True, text=True,
                              timeout=STACK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"the stacked graph could not be built: {error}"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return None, lines[-1] if done.returncode == CANNOT_STACK else f"building the stacked graph failed: {lines[-1]}"
    written = json.loads(done.stdout)
    session = OnnxEncoder(path, providers, allow_fallback, STACKED_THREADS,
                          tensorrt=TensorRTProviderSettings(max_batch=max_batch), spin=spin, arena=False)
    graphs = 1 if written["kind"] == "vectorized" else len(head_files)
    return StackedHeads(session, [_head_outputs(session, index) for index in range(graphs)],
                        [item is not None for item in gate_files][:graphs], tuple(written["nodes"]),
                        vectorized=written["kind"] == "vectorized", bundles=len(head_files),
                        why_not_vectorized=written["why"], folder=folder), ""


def _head_outputs(session: OnnxEncoder, index: int) -> tuple[str, ...]:
    """The `index`-th bundle's head outputs, unprefixed, in its head's order (as the stacked graph lists them)."""
    prefix = head_prefix(index)
    return tuple(item.name[len(prefix):] for item in session.session.get_outputs() if item.name.startswith(prefix))
