"""Fused TrustVLM trust head as a standalone ONNX graph (built with ``onnx.helper``).

The head takes raw image embeddings from the encoder and returns, in one graph,
the zero-shot prediction, its TrustVLM score and the TrustVLM* variant:

==============  =======  ============  ==========================================
output          dtype    shape         value
==============  =======  ============  ==========================================
``pred``        int64    ``[B]``       ``argmax(logits)``
``kappa``       float32  ``[B]``       ``msp + lam * s_ii``
``msp``         float32  ``[B]``       ``max softmax(logits)``
``s_ii``        float32  ``[B]``       ``cos(f, P[pred])``
``pred_star``   int64    ``[B]``       ``argmax(q)``, ``q = p + lam * softmax(f @ P.T / T)``
``kappa_star``  float32  ``[B]``       ``max q + lam * cos(f, P[pred_star])``
``topk_ids``    int64    ``[B, k]``    classes of the ``k`` largest logits, best first
``topk_probs``  float32  ``[B, k]``    their softmax probabilities
==============  =======  ============  ==========================================

with ``f`` the L2-normalized embedding, ``logits = s * f @ T.T``, ``p =
softmax(logits)``, ``T`` / ``P`` the L2-normalized text / image prototypes
(``C x D``). It matches :func:`trustvlm.calibration.scores.compute_scores`,
which is the float64 reference.

Float32 caveats (the head computes in float32):

* ``msp`` saturates to exactly 1.0 once the top-2 logit gap exceeds about 17
  (a cosine gap of 0.17 at ``s = 100``), and the other probabilities underflow
  towards 0. Confident samples then tie on ``msp``; ``kappa`` still ranks them
  through ``lam * s_ii`` unless ``lam == 0``. The same holds for ``max q`` in
  ``kappa_star`` (the prototype softmax at ``T = 0.01`` saturates the same way).
* ``pred`` and ``topk_ids`` rank the *logits*, not the probabilities, so they
  stay well defined where probabilities tie at 1.0 or 0.0. ``pred_star`` ranks
  ``q``, whose saturated entries can tie; ties resolve to the lowest class index
  (ONNX ``ArgMax`` default), as in the numpy reference. Predictions may differ
  from the float64 reference when the top-2 gap is within float32 rounding
  (about 1e-5 in logits at ``s = 100``).
* An all-zero embedding is mapped to a zero vector (no NaN): uniform ``p``,
  ``msp = 1 / C`` and ``s_ii = 0``. NaN/inf embeddings propagate NaN.

With ``aux_embedding=True`` (image prototypes from an auxiliary image encoder,
TrustVLM's DINOv2 option) the head takes a second input ``aux_embedding``,
float32 ``[B, D_aux]``: that encoder's embedding of the same images. ``P`` is
then ``C x D_aux`` and every image-prototype cosine (``s_ii``, the prototype
softmax of TrustVLM*, ``kappa_star``'s cosine) uses the normalized
``aux_embedding`` instead of ``f``; logits, ``pred`` and ``msp`` still come
from ``embedding``. This matches ``compute_scores(..., aux_embeddings=...)``.

With ``prototypes_as_inputs=True`` the two prototype matrices become graph
inputs ``text_prototypes`` / ``image_prototypes`` (float32 ``[C, D]``), so a
runtime can bind device-resident buffers; the graph L2-normalizes them on every
run (cheap next to the ``B x C x D`` products). The logit scale, ``lam`` and
``T`` stay constants of the graph in both modes.

With ``fused`` (fitted fused scores, :mod:`trustvlm.contract.fused`) the head has one more
float32 ``[B]`` output per model after those above, in ``FUSED_OUTPUTS`` order: the model's
log-odds that its prediction is right, from the features the table of
:mod:`trustvlm.contract.fused` lists (``fused_star`` with its own lambda and T). It matches
:func:`trustvlm.calibration.fused_score.fused_confidence`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trustvlm.calibration.numerics import check_scalar
from trustvlm.calibration.scores import DEFAULT_TEMPERATURE, check_prototype_shapes, check_prototypes
from trustvlm.contract.fused import FusedModel
from trustvlm.contract.scores import (AUX_HEAD_INPUT, FLOAT_OUTPUTS, FUSED_OUTPUTS, HEAD_INPUT, HEAD_OUTPUTS,
                                      IMAGE_PROTOTYPES_INPUT, SCORES, STAR_PREDICTION, TEXT_PROTOTYPES_INPUT,
                                      VLM_PREDICTION)

__all__ = [
    "OPSET",
    "IR_VERSION",
    "build_trust_head",
    "save_trust_head",
]

#: ONNX default-domain opset of the head.
OPSET = 17
#: IR version pinned so older onnxruntime builds load the model (IR 8 carries opset 17).
IR_VERSION = 8
_F32 = TensorProto.FLOAT
_I64 = TensorProto.INT64
_TINY = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)


class _GraphBuilder:
    """Collects nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        """Adds an initializer and returns its name."""
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name=name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: object) -> str:
        """Adds a single-output node and returns the output name."""
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def normalize_rows(self, x: str, prefix: str) -> str:
        """Adds row-wise L2 normalization of a 2-D tensor; zero rows stay zero.

        Rows are first divided by their largest absolute entry so squaring can
        neither overflow nor underflow in float32.
        """
        peak = self.op("ReduceMax", [self.op("Abs", [x], f"{prefix}_abs")], f"{prefix}_peak",
                       axes=[1], keepdims=1)
        scaled = self.op("Div", [x, self.op("Max", [peak, "tiny"], f"{prefix}_peak_safe")],
                         f"{prefix}_scaled")
        norm = self.op("ReduceL2", [scaled], f"{prefix}_norm", axes=[1], keepdims=1)
        return self.op("Div", [scaled, self.op("Max", [norm, "tiny"], f"{prefix}_norm_safe")],
                       f"{prefix}_unit")

    def gather_rows(self, values: str, idx: str, prefix: str) -> str:
        """Adds ``values[i, idx[i]]`` for a ``[B, C]`` tensor and ``[B]`` int64 indices."""
        col = self.op("Unsqueeze", [idx, "axis1"], f"{prefix}_col")
        picked = self.op("GatherElements", [values, col], f"{prefix}_picked", axis=1)
        return self.op("Squeeze", [picked, "axis1"], prefix)


def _check_build_args(
    text_prototypes: np.ndarray,
    image_prototypes: np.ndarray,
    logit_scale: float,
    lam: float,
    temperature: float,
    top_k: int,
    prototypes_as_inputs: bool,
    aux_embedding: bool,
) -> tuple[np.ndarray | None, np.ndarray | None, int, int, float, float, float, int]:
    """Validates the build arguments; returns normalized float32 prototypes (or None) and scalars."""
    if prototypes_as_inputs:
        c, d = check_prototype_shapes(np.shape(text_prototypes), np.shape(image_prototypes),
                                      same_dim=not aux_embedding)
        text = image = None
    else:
        t64, p64 = check_prototypes(text_prototypes, image_prototypes, same_dim=not aux_embedding)
        c, d = t64.shape
        text, image = t64.astype(np.float32), p64.astype(np.float32)
    s = check_scalar(logit_scale, "logit_scale", positive=True)
    lam = check_scalar(lam, "lam")
    temp = check_scalar(temperature, "temperature", positive=True)
    for name, v in (("logit_scale", s), ("lam", lam), ("1 / temperature", 1.0 / temp)):
        if v > _F32_MAX:
            raise ValueError(f"{name} = {v} overflows float32 (max {_F32_MAX:.3e})")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    return text, image, c, d, s, lam, temp, min(int(top_k), c)


def build_trust_head(
    text_prototypes: np.ndarray,
    image_prototypes: np.ndarray,
    logit_scale: float,
    lam: float = 1.0,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int = 5,
    prototypes_as_inputs: bool = False,
    aux_embedding: bool = False,
    fused: dict[str, FusedModel] | None = None,
) -> onnx.ModelProto:
    """Builds the fused trust head (opset 17) and checks it with ``onnx.checker``.

    Args:
        text_prototypes: ``C x D`` text prototypes; normalized here in float64
            and stored as float32. With ``prototypes_as_inputs`` only the shape
            is used.
        image_prototypes: ``C x D`` image prototypes, handled like the text ones
            (``C x D_aux`` with ``aux_embedding``).
        logit_scale: The multiplicative logit scale ``s`` (about 100 for CLIP),
            not its log; must be > 0.
        lam: Weight ``lambda`` of the image-prototype terms; must be >= 0.
        temperature: Temperature ``T`` of the prototype softmax in TrustVLM*; > 0.
        top_k: Number of top classes in ``topk_ids`` / ``topk_probs``; clipped to C.
        prototypes_as_inputs: If True, the prototypes are graph inputs
            ``text_prototypes`` / ``image_prototypes`` (float32 ``[C, D]``,
            normalized in the graph) instead of initializers.
        aux_embedding: If True, the image prototypes come from an auxiliary
            image encoder and the head takes its embedding as a second input
            ``aux_embedding`` (float32 ``[batch, D_aux]``).
        fused: Fitted fused scores by name (keys of ``FUSED_OUTPUTS``); the head gets
            their outputs after ``HEAD_OUTPUTS``. None or empty: none.

    Returns:
        The checked ``onnx.ModelProto`` with input ``embedding`` float32
        ``[batch, D]`` (then ``aux_embedding``, if asked for) and the outputs
        in ``HEAD_OUTPUTS`` (then those of `fused`).

    Raises:
        ValueError: On prototype shape mismatches, NaN/inf or zero-norm
            prototypes (initializer mode), out-of-range scalars or ``top_k < 1``.
    """
    text, image, c, d, s, lam, temp, k = _check_build_args(
        text_prototypes, image_prototypes, logit_scale, lam, temperature, top_k, prototypes_as_inputs,
        aux_embedding,
    )
    d_image = int(np.shape(image_prototypes)[1])
    g = _GraphBuilder()
    g.const("tiny", np.array(_TINY, dtype=np.float32))
    g.const("axis1", np.array([1], dtype=np.int64))
    g.const("logit_scale", np.array(s, dtype=np.float32))
    g.const("lam", np.array(lam, dtype=np.float32))
    g.const("temperature", np.array(temp, dtype=np.float32))
    g.const("k", np.array([k], dtype=np.int64))

    inputs = [helper.make_tensor_value_info(HEAD_INPUT, _F32, ["batch", d])]
    if aux_embedding:
        inputs.append(helper.make_tensor_value_info(AUX_HEAD_INPUT, _F32, ["batch", d_image]))
    if prototypes_as_inputs:
        inputs += [
            helper.make_tensor_value_info(TEXT_PROTOTYPES_INPUT, _F32, [c, d]),
            helper.make_tensor_value_info(IMAGE_PROTOTYPES_INPUT, _F32, [c, d_image]),
        ]
        text_t = g.normalize_rows(TEXT_PROTOTYPES_INPUT, "text_proto")
        image_t = g.normalize_rows(IMAGE_PROTOTYPES_INPUT, "image_proto")
    else:
        text_t = g.const(TEXT_PROTOTYPES_INPUT, text)
        image_t = g.const(IMAGE_PROTOTYPES_INPUT, image)

    f = g.normalize_rows(HEAD_INPUT, "f")
    # Zero-shot branch: logits, softmax, prediction, MSP, top-k.
    cos_text = g.op("Gemm", [f, text_t], "cos_text", transB=1)
    logits = g.op("Mul", [cos_text, "logit_scale"], "logits")
    probs = g.op("Softmax", [logits], "probs", axis=1)
    pred = g.op("ArgMax", [logits], VLM_PREDICTION, axis=1, keepdims=0)
    msp = g.op("ReduceMax", [probs], "msp", axes=[1], keepdims=0)
    g.nodes.append(helper.make_node("TopK", [logits, "k"], ["topk_logits", "topk_ids"],
                                    name="topk", axis=1, largest=1, sorted=1))
    g.op("GatherElements", [probs, "topk_ids"], "topk_probs", axis=1)
    # Image-prototype branch: TrustVLM (in the auxiliary encoder's space when it has one).
    f_image = g.normalize_rows(AUX_HEAD_INPUT, "g") if aux_embedding else f
    sims = g.op("Gemm", [f_image, image_t], "cos_image", transB=1)
    s_ii = g.gather_rows(sims, pred, "s_ii")
    g.op("Add", [msp, g.op("Mul", [s_ii, "lam"], "lam_s_ii")], SCORES["trustvlm"].output)
    # TrustVLM*: fuse the prototype classifier's softmax into the probabilities.
    proto_probs = g.op("Softmax", [g.op("Div", [sims, "temperature"], "proto_logits")],
                       "proto_probs", axis=1)
    q = g.op("Add", [probs, g.op("Mul", [proto_probs, "lam"], "lam_proto_probs")], "q")
    pred_star = g.op("ArgMax", [q], STAR_PREDICTION, axis=1, keepdims=0)
    q_max = g.op("ReduceMax", [q], "q_max", axes=[1], keepdims=0)
    s_star = g.gather_rows(sims, pred_star, "s_star")
    g.op("Add", [q_max, g.op("Mul", [s_star, "lam"], "lam_s_star")], SCORES["trustvlm_star"].output)
    fused_names = _add_fused_outputs(g, logits, probs, pred, sims, fused or {})

    outputs = [
        helper.make_tensor_value_info(
            name, _F32 if name in FLOAT_OUTPUTS + FUSED_OUTPUTS else _I64,
            ["batch", k] if name.startswith("topk") else ["batch"]
        )
        for name in HEAD_OUTPUTS + fused_names
    ]
    graph = helper.make_graph(g.nodes, "trustvlm_trust_head", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="trustvlm-edge",
        doc_string="TrustVLM trust head: zero-shot prediction, MSP, TrustVLM and TrustVLM* scores.",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {
        "num_classes": str(c),
        "embedding_dim": str(d),
        "aux_embedding": str(bool(aux_embedding)).lower(),
        "image_prototype_dim": str(d_image),
        "logit_scale": repr(s),
        "lam": repr(lam),
        "temperature": repr(temp),
        "top_k": str(k),
        "prototypes_as_inputs": str(bool(prototypes_as_inputs)).lower(),
        "fused": ",".join(fused_names),
    })
    onnx.checker.check_model(model, full_check=True)
    return model


def _add_fused_outputs(g: _GraphBuilder, logits: str, probs: str, pred: str, sims: str,
                       models: dict[str, FusedModel]) -> tuple[str, ...]:
    """Adds the fused scores' outputs (``FUSED_OUTPUTS`` order); returns their names."""
    unknown = sorted(set(models) - set(FUSED_OUTPUTS))
    if unknown:
        raise ValueError(f"fused scores should be some of {FUSED_OUTPUTS}, but got {unknown}")
    names = tuple(name for name in FUSED_OUTPUTS if name in models)
    if not names:
        return names
    proto_pred = g.op("ArgMax", [sims], "proto_pred", axis=1, keepdims=0)
    log_probs = g.op("LogSoftmax", [logits], "log_probs", axis=1)
    common = {"max_logit": g.op("ReduceMax", [logits], "max_logit", axes=[1], keepdims=0),
              "neg_entropy": g.op("ReduceSum", [g.op("Mul", [probs, log_probs], "p_log_p"), "axis1"],
                                  "neg_entropy", keepdims=0)}

    def agree(a: str, b: str, name: str) -> str:
        return g.op("Cast", [g.op("Equal", [a, b], f"{name}_eq")], name, to=_F32)

    for name in names:
        model = models[name]
        if name == "fused":
            features = {**common, "msp": "msp", "s_ii": "s_ii", "agree_proto": agree(pred, proto_pred, "f_agree")}
        else:
            lam = g.const(f"{name}_lam", np.array(model.lam, dtype=np.float32))
            temp = g.const(f"{name}_temperature", np.array(model.temperature, dtype=np.float32))
            proto = g.op("Softmax", [g.op("Div", [sims, temp], f"{name}_proto_logits")], f"{name}_proto_probs",
                         axis=1)
            q = g.op("Add", [probs, g.op("Mul", [proto, lam], f"{name}_lam_proto")], f"{name}_q")
            rated = g.op("ArgMax", [q], f"{name}_pred", axis=1, keepdims=0)
            features = {**common, "q_max": g.op("ReduceMax", [q], f"{name}_q_max", axes=[1], keepdims=0),
                        "s_star": g.gather_rows(sims, rated, f"{name}_s_star"),
                        "p_star": g.gather_rows(probs, rated, f"{name}_p_star"),
                        "agree_vlm": agree(rated, pred, f"{name}_agree_vlm"),
                        "agree_proto": agree(rated, proto_pred, f"{name}_agree_proto")}
        columns = [g.op("Unsqueeze", [features[feature], "axis1"], f"{name}_x_{feature}")
                   for feature in model.features]
        x = g.op("Concat", columns, f"{name}_x", axis=1)
        standard = g.op("Div", [g.op("Sub", [x, g.const(f"{name}_mean", np.asarray(model.mean, np.float32))],
                                     f"{name}_centred"), g.const(f"{name}_scale", np.asarray(model.scale, np.float32))],
                        f"{name}_standard")
        z = g.op("MatMul", [standard, g.const(f"{name}_coef", np.asarray(model.coef, np.float32))], f"{name}_z")
        g.op("Add", [z, g.const(f"{name}_intercept", np.array(model.intercept, dtype=np.float32))], name)
    return names


def save_trust_head(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Writes ``model`` atomically: to a temporary file beside ``path``, then ``os.replace``.

    Args:
        model: The model from :func:`build_trust_head`.
        path: Destination ``.onnx`` file; its directory must exist.

    Returns:
        The destination path.
    """
    dest = Path(path)
    data = model.SerializeToString()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return dest
