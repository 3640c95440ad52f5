"""The out-of-distribution gate as a small ONNX graph (``ood_gate.onnx``, built with ``onnx.helper``).

Inputs: ``pixels`` (uint8 ``[batch, S, S, 3]``, the frame exactly as the image encoder gets it)
and ``embedding`` (float32 ``[batch, D]``, the encoder's output); output ``typicality`` (float32
``[batch]``), which matches :meth:`trustvlm.calibration.ood_gate.OodGate.typicality`, the float64
reference. Per frame it costs the frame statistics (a few passes over ``S x S x 3`` values) and,
per component, one ``F x F`` product and ``C x F`` differences: next to nothing beside the encoder.

Why a graph of its own and not more outputs of the trust head: it reads the pixels, which the
trust head never sees, and a bundle without it (older bundles, ``--ood-gate off``) simply has no
such file, while the trust head's inputs and outputs stay the same for every bundle.

Float32: the statistics are means of values in [0, 1] (relative error about 1e-7 times the
pixel count's log; the spreads then go through ``log(max(., 1/255))``, whose absolute error is
their relative one); the Mahalanobis distances are sums of squares of whitened differences, with
no cancellation-prone expansion, so the typicality's relative error stays near 1e-6.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from trustvlm.calibration.ood_gate import BORDER_PX, GREY_LEVEL, OodGate, border_mask
from trustvlm.calibration.trust_head import IR_VERSION, OPSET, _GraphBuilder
from trustvlm.contract.ood_gate import GATE_EMBEDDING_INPUT, GATE_OUTPUT, GATE_PIXELS_INPUT

__all__ = ["build_ood_gate_graph"]

_F32 = TensorProto.FLOAT


def _log_spread(g: _GraphBuilder, values: str, name: str) -> str:
    """``log(max(values, GREY_LEVEL))``, as :func:`trustvlm.calibration.ood_gate.log_spread`."""
    return g.op("Log", [g.op("Max", [values, "grey_level"], f"{name}_floored")], f"{name}_log")


def _frame_statistics(g: _GraphBuilder, size: int) -> str:
    """``[B, 11]`` frame statistics (``FRAME_FEATURES`` order) of the ``pixels`` input."""
    x = g.op("Div", [g.op("Cast", [GATE_PIXELS_INPUT], "px_float", to=_F32), "c255"], "px")
    mean = g.op("ReduceMean", [x], "px_mean", axes=[1, 2], keepdims=1)  # [B, 1, 1, 3]
    centred = g.op("Sub", [x, mean], "px_centred")
    var = g.op("ReduceMean", [g.op("Mul", [centred, centred], "px_sq")], "px_var", axes=[1, 2], keepdims=0)
    std = _log_spread(g, g.op("Sqrt", [var], "px_std"), "px_std")

    def channel(i: int) -> str:
        return g.op("Slice", [x, g.const(f"ch{i}_start", np.array([i], np.int64)),
                              g.const(f"ch{i}_end", np.array([i + 1], np.int64)), "axis3"], f"px_ch{i}")

    r, gr, b = channel(0), channel(1), channel(2)
    colour = [g.op("ReduceMean", [g.op("Abs", [g.op("Sub", [p, q], f"{name}_d")], f"{name}_abs")],
                   name, axes=[1, 2, 3], keepdims=0) for p, q, name in ((r, gr, "abs_rg"), (gr, b, "abs_gb"))]
    grey = g.op("ReduceMean", [x], "grey", axes=[3], keepdims=0)  # [B, S, S]

    def shifted_diff(axis: int, name: str) -> str:
        axis_const = g.const(f"{name}_axis", np.array([axis], np.int64))
        ahead = g.op("Slice", [grey, "one", "big", axis_const], f"{name}_ahead")
        behind = g.op("Slice", [grey, "zero", "minus_one", axis_const], f"{name}_behind")
        return g.op("ReduceMean", [g.op("Abs", [g.op("Sub", [ahead, behind], f"{name}_d")], f"{name}_abs")],
                    name, axes=[1, 2], keepdims=0)

    sharp = [_log_spread(g, shifted_diff(axis, name), name) for axis, name in ((2, "sharp_x"), (1, "sharp_y"))]
    mask = border_mask(size, size)
    weights = g.const("border_weights", (mask / mask.sum()).astype(np.float32))
    axes12 = g.const("axes12", np.array([1, 2], np.int64))
    border = g.op("ReduceSum", [g.op("Mul", [grey, weights], "border_w"), axes12], "border", keepdims=0)
    columns = [g.op("ReduceMean", [x], "px_mean2", axes=[1, 2], keepdims=0), std]
    columns += [g.op("Unsqueeze", [name, "axis1"], f"{name}_col") for name in (*colour, *sharp, border)]
    return g.op("Concat", columns, "frame_features", axis=1)


def _distance(g: _GraphBuilder, x: str, component, name: str) -> str:
    """``[B]`` normalized Mahalanobis distance of ``x`` ``[B, F]`` to the component's nearest class mean."""
    centred = g.op("Sub", [x, g.const(f"{name}_center", component.center.astype(np.float32))], f"{name}_centred")
    z = g.op("MatMul", [centred, g.const(f"{name}_whitening", component.whitening.astype(np.float32))], f"{name}_z")
    diff = g.op("Sub", [g.op("Unsqueeze", [z, "axis1"], f"{name}_z3"),
                        g.const(f"{name}_means", component.means.astype(np.float32))], f"{name}_diff")
    squared = g.op("ReduceSum", [g.op("Mul", [diff, diff], f"{name}_sq"), g.const(f"{name}_axis2",
                                                                                  np.array([2], np.int64))],
                   f"{name}_dist", keepdims=0)
    nearest = g.op("ReduceMin", [squared], f"{name}_nearest", axes=[1], keepdims=0)
    return g.op("Div", [nearest, g.const(f"{name}_scale", np.array(component.scale, np.float32))], f"{name}_norm")


def build_ood_gate_graph(gate: OodGate, image_size: int, embed_dim: int) -> onnx.ModelProto:
    """The gate's graph (module docstring), checked with ``onnx.checker``.

    Args:
        gate: The fitted gate.
        image_size: ``S``, the image encoder's input size.
        embed_dim: ``D``, the embedding size.

    Raises:
        ValueError: A frame too small for the border statistic.
    """
    if image_size <= 2 * BORDER_PX:
        raise ValueError(f"the image size {image_size} is too small for the frame statistics")
    g = _GraphBuilder()
    for name, value in (("tiny", np.float32(np.finfo(np.float32).tiny)), ("c255", np.float32(255.0)),
                        ("grey_level", np.float32(GREY_LEVEL)),
                        ("axis1", np.array([1], np.int64)), ("axis3", np.array([3], np.int64)),
                        ("zero", np.array([0], np.int64)), ("one", np.array([1], np.int64)),
                        ("minus_one", np.array([-1], np.int64)), ("big", np.array([2**62], np.int64))):
        g.const(name, np.asarray(value))
    distances = []
    for component in gate.components:
        if component.name == "embedding":
            x = g.normalize_rows(GATE_EMBEDDING_INPUT, "f")
        else:
            x = _frame_statistics(g, image_size)
        distances.append(g.op("Unsqueeze", [_distance(g, x, component, component.name), "axis1"],
                              f"{component.name}_col"))
    stacked = g.op("Concat", distances, "distances", axis=1) if len(distances) > 1 else distances[0]
    worst = g.op("ReduceMax", [stacked], "worst", axes=[1], keepdims=0)
    g.op("Neg", [worst], GATE_OUTPUT)
    inputs = [helper.make_tensor_value_info(GATE_PIXELS_INPUT, TensorProto.UINT8, ["batch", image_size, image_size, 3]),
              helper.make_tensor_value_info(GATE_EMBEDDING_INPUT, _F32, ["batch", embed_dim])]
    outputs = [helper.make_tensor_value_info(GATE_OUTPUT, _F32, ["batch"])]
    graph = helper.make_graph(g.nodes, "trustvlm_ood_gate", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="trustvlm-edge",
                              doc_string="Out-of-distribution gate: typicality of a frame (higher = more typical).")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"components": ",".join(gate.info.components),
                                   "threshold": repr(gate.info.threshold),
                                   "false_reject_rate": repr(gate.info.false_reject_rate)})
    onnx.checker.check_model(model, full_check=True)
    return model
