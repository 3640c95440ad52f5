"""Write the image and text encoders of a torch model to ONNX (dynamic batch), and fp16 copies."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from trustvlm.export.torch_wrappers import ImageEncoderForExport, TextEncoderForExport

OPSET = 17
IMAGE_INPUT, TEXT_INPUT, EMBEDDING_OUTPUT = "pixels", "tokens", "embedding"


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str) -> None:
    # Grad mode stays on: under no_grad, nn.MultiheadAttention takes its fused fast path
    # (aten::_native_multi_head_attention), which has no ONNX export.
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow in open_clip
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[input_name], output_names=[EMBEDDING_OUTPUT],
            dynamic_axes={input_name: {0: "batch"}, EMBEDDING_OUTPUT: {0: "batch"}},
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))


def export_image_encoder(model: nn.Module, mean, std, size: int, path: Path) -> None:
    """uint8 pixels (batch x size x size x 3, RGB) -> float32 embedding (batch x D)."""
    wrapper = ImageEncoderForExport(model, mean, std).eval()
    example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    _export(wrapper, example, path, IMAGE_INPUT)


def export_text_encoder(model: nn.Module, tokens: torch.Tensor, path: Path) -> None:
    """int64 token ids (batch x context) -> float32 embedding (batch x D)."""
    _export(TextEncoderForExport(model).eval(), tokens[:2].long(), path, TEXT_INPUT)


def convert_to_fp16(source: Path, target: Path) -> None:
    """fp16 weights and compute, float32 inputs/outputs kept (callers need no change)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    converted = convert_float_to_float16(model, keep_io_types=True)
    # The converter appends the casts it inserts around blocked ops (CumSum, ...) at the end of
    # the node list; the ONNX checker and TensorRT's parser want nodes in topological order.
    sort_nodes_topologically(converted.graph)
    onnx.save(converted, str(target))
    onnx.checker.check_model(str(target))


def sort_nodes_topologically(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` so that every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a dangling input near node {pending[0].name!r}")
        for node in ready:
            available.update(node.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)
