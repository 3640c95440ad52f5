"""Tests for trustvlm.calibration.trust_head (ONNX trust head vs the float64 reference)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trustvlm.calibration.numerics import l2_normalize, softmax
from trustvlm.calibration.scores import compute_scores
from trustvlm.calibration.trust_head import IR_VERSION, OPSET, build_trust_head, save_trust_head
from trustvlm.contract.scores import HEAD_OUTPUTS

LN3 = math.log(3.0)
LN9 = math.log(9.0)
TOL = 1e-5
GAP = 1e-4


def run_head(model: onnx.ModelProto, emb: np.ndarray, text=None, image=None) -> dict[str, np.ndarray]:
    """Runs ``model`` on CPU and returns ``{output_name: array}``."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"embedding": np.asarray(emb, dtype=np.float32)}
    if text is not None:
        feed["text_prototypes"] = np.asarray(text, dtype=np.float32)
        feed["image_prototypes"] = np.asarray(image, dtype=np.float32)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feed)))


def make_problem(c: int, d: int, batch: int, seed: int):
    """Random float32 prototypes and embeddings whose MSP spans (1/C, 1]."""
    rng = np.random.default_rng(seed)
    text = l2_normalize(rng.normal(size=(c, d)))
    image = l2_normalize(text + l2_normalize(rng.normal(size=(c, d))))
    labels = rng.integers(0, c, batch)
    alpha = rng.uniform(0.0, 0.5, (batch, 1))
    noise = l2_normalize(rng.normal(size=(batch, d))) * rng.uniform(0.5, 2.0, (batch, 1))
    emb = alpha * text[labels] + noise
    return text.astype(np.float32), image.astype(np.float32), emb.astype(np.float32)


def top2_gap(values: np.ndarray) -> np.ndarray:
    """Gap between the largest and second largest entry of each row."""
    part = np.sort(values, axis=1)
    return part[:, -1] - part[:, -2]


# --------------------------------------------------------------------------- by hand


@pytest.mark.parametrize("as_inputs", [False, True])
def test_two_classes_by_hand(as_inputs: bool) -> None:
    """T = I, s = ln 3 -> p = (3/4, 1/4); cos(f, P) = (0, 0.8), T = 0.8 / ln 9 -> (0.1, 0.9)."""
    text = np.eye(2)
    image = np.array([[0.0, 1.0], [0.8, 0.6]])
    model = build_trust_head(text, image, logit_scale=LN3, lam=1.0, temperature=0.8 / LN9,
                             top_k=5, prototypes_as_inputs=as_inputs)
    out = run_head(model, np.array([[3.0, 0.0]]), *((text, image) if as_inputs else ()))
    assert out["pred"].tolist() == [0]
    np.testing.assert_allclose(out["msp"], [0.75], atol=1e-6)
    np.testing.assert_allclose(out["s_ii"], [0.0], atol=1e-6)
    np.testing.assert_allclose(out["kappa"], [0.75], atol=1e-6)
    # q = (0.85, 1.15) -> pred* = 1, kappa* = 1.15 + 0.8
    assert out["pred_star"].tolist() == [1]
    np.testing.assert_allclose(out["kappa_star"], [1.95], atol=1e-6)
    assert out["topk_ids"].tolist() == [[0, 1]]  # k = 5 clipped to C = 2
    np.testing.assert_allclose(out["topk_probs"], [[0.75, 0.25]], atol=1e-6)


def test_zero_embedding_gives_uniform_scores_not_nan() -> None:
    text, image, _ = make_problem(4, 8, 1, seed=5)
    out = run_head(build_trust_head(text, image, 100.0), np.zeros((2, 8)))
    for name in ("msp", "kappa", "kappa_star", "s_ii", "topk_probs"):
        assert np.isfinite(out[name]).all(), name
    np.testing.assert_allclose(out["msp"], [0.25, 0.25], atol=1e-7)
    np.testing.assert_allclose(out["s_ii"], [0.0, 0.0], atol=1e-7)
    assert out["pred"].tolist() == [0, 0]


def test_float32_msp_ties_but_kappa_does_not() -> None:
    """Logit gaps of 20 and 25: MSP saturates to 1.0 in float32; s_ii still separates."""
    gaps = np.array([0.20, 0.25])
    a = (gaps + np.sqrt(2.0 - gaps**2)) / 2.0
    emb = np.stack([a, a - gaps], axis=1)
    image = np.array([[0.6, 0.8], [0.0, 1.0]])
    out = run_head(build_trust_head(np.eye(2), image, logit_scale=100.0), emb)
    assert out["msp"].tolist() == [1.0, 1.0]
    ref = compute_scores(emb, np.eye(2), image, logit_scale=100.0)
    assert ref.msp[0] < ref.msp[1] < 1.0
    assert out["kappa"][0] != out["kappa"][1]
    np.testing.assert_allclose(out["kappa"], ref.trustvlm, atol=TOL)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("as_inputs", [False, True], ids=["initializers", "inputs"])
@pytest.mark.parametrize(("c", "d", "lam"), [(10, 128, 0.5), (1000, 512, 1.0)])
def test_parity_with_numpy_reference(c: int, d: int, lam: float, as_inputs: bool) -> None:
    text, image, emb = make_problem(c, d, 64, seed=c + d)
    s, temp, k = 100.0, 0.01, 5
    model = build_trust_head(text, image, s, lam, temp, top_k=k, prototypes_as_inputs=as_inputs)
    out = run_head(model, emb, *((text, image) if as_inputs else ()))
    ref = compute_scores(emb, text, image, s, lam, temp)

    # Near-ties in float64 may flip in float32: compare predictions away from them.
    f64 = l2_normalize(emb.astype(np.float64))
    logits = s * f64 @ l2_normalize(text.astype(np.float64)).T
    q = softmax(logits) + lam * softmax(f64 @ l2_normalize(image.astype(np.float64)).T / temp)
    ok = top2_gap(logits) > GAP
    ok_star = top2_gap(q) > GAP
    assert ok.mean() > 0.9 and ok_star.mean() > 0.9
    # The data exercises unsaturated softmax and TrustVLM* disagreeing with the text head.
    assert (ref.msp < 0.9).sum() >= 5
    assert np.any(ref.pred != ref.pred_star)

    np.testing.assert_array_equal(out["pred"][ok], ref.pred[ok])
    np.testing.assert_array_equal(out["pred_star"][ok_star], ref.pred_star[ok_star])
    np.testing.assert_allclose(out["msp"], ref.msp, rtol=0, atol=TOL)
    np.testing.assert_allclose(out["s_ii"][ok], ref.s_ii[ok], rtol=0, atol=TOL)
    np.testing.assert_allclose(out["kappa"][ok], ref.trustvlm[ok], rtol=0, atol=TOL)
    np.testing.assert_allclose(out["kappa_star"][ok_star], ref.trustvlm_star[ok_star], rtol=0,
                               atol=TOL)

    # Top-k: rows whose k + 1 largest logits are all separated by more than GAP.
    order = np.argsort(-logits, axis=1, kind="stable")[:, : k + 1]
    top = np.take_along_axis(logits, order, axis=1)
    rows = np.all(-np.diff(top, axis=1) > GAP, axis=1)
    assert rows.mean() > 0.8
    np.testing.assert_array_equal(out["topk_ids"][rows], order[rows, :k])
    ref_probs = np.take_along_axis(softmax(logits), order[:, :k], axis=1)
    np.testing.assert_allclose(out["topk_probs"][rows], ref_probs[rows], rtol=0, atol=TOL)
    for name in ("msp", "kappa", "s_ii", "kappa_star", "topk_probs"):
        assert out[name].dtype == np.float32, name
    for name in ("pred", "pred_star", "topk_ids"):
        assert out[name].dtype == np.int64, name


def test_input_mode_uses_the_bound_prototypes() -> None:
    """Built from one prototype set, run with another (unnormalized): follows the bound one."""
    text_a, image_a, emb = make_problem(10, 32, 16, seed=7)
    text_b, image_b, _ = make_problem(10, 32, 1, seed=8)
    model = build_trust_head(text_a, image_a, 50.0, prototypes_as_inputs=True)
    out = run_head(model, emb, text_b * 3.0, image_b * 0.5)
    ref_b = compute_scores(emb, text_b, image_b, 50.0)
    ref_a = compute_scores(emb, text_a, image_a, 50.0)
    np.testing.assert_allclose(out["kappa"], ref_b.trustvlm, atol=TOL)
    np.testing.assert_allclose(out["kappa_star"], ref_b.trustvlm_star, atol=TOL)
    assert np.abs(out["kappa"] - ref_a.trustvlm).max() > 1e-2


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("as_inputs", [False, True])
def test_graph_structure(as_inputs: bool) -> None:
    text, image, _ = make_problem(3, 6, 1, seed=0)
    model = build_trust_head(text, image, 100.0, top_k=5, prototypes_as_inputs=as_inputs)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)] == [("", 17)]
    inputs = [i.name for i in model.graph.input]
    inits = {t.name for t in model.graph.initializer}
    protos = ["text_prototypes", "image_prototypes"]
    if as_inputs:
        assert inputs == ["embedding", *protos]
        assert not inits.intersection(protos)
    else:
        assert inputs == ["embedding"]
        assert inits.issuperset(protos)
    emb_dims = model.graph.input[0].type.tensor_type.shape.dim
    assert (emb_dims[0].dim_param, emb_dims[1].dim_value) == ("batch", 6)
    assert tuple(o.name for o in model.graph.output) == HEAD_OUTPUTS
    topk_dims = model.graph.output[HEAD_OUTPUTS.index("topk_ids")].type.tensor_type.shape.dim
    assert topk_dims[1].dim_value == 3  # top_k = 5 clipped to C = 3
    props = {p.key: p.value for p in model.metadata_props}
    assert props["num_classes"] == "3" and props["top_k"] == "3"


def test_argmax_only_on_float_inputs() -> None:
    text, image, _ = make_problem(4, 6, 1, seed=0)
    inferred = onnx.shape_inference.infer_shapes(build_trust_head(text, image, 100.0),
                                                 strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.output})
    argmax_inputs = [n.input[0] for n in inferred.graph.node if n.op_type in ("ArgMax", "TopK")]
    assert len(argmax_inputs) == 3
    assert all(types[name] == onnx.TensorProto.FLOAT for name in argmax_inputs)


def test_top_k_clipped_and_sorted() -> None:
    text, image, emb = make_problem(3, 8, 5, seed=2)
    out = run_head(build_trust_head(text, image, 20.0, top_k=5), emb)
    assert out["topk_ids"].shape == out["topk_probs"].shape == (5, 3)
    np.testing.assert_array_equal(out["topk_ids"][:, 0], out["pred"])
    assert np.all(np.diff(out["topk_probs"], axis=1) <= 0)
    np.testing.assert_allclose(out["topk_probs"].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.sort(out["topk_ids"], axis=1), np.tile([0, 1, 2], (5, 1)))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("top_k", [0, -1, 2.5, True, None])
def test_rejects_bad_top_k(top_k) -> None:
    with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
        build_trust_head(np.eye(2), np.eye(2), 100.0, top_k=top_k)


@pytest.mark.parametrize("as_inputs", [False, True])
@pytest.mark.parametrize(
    ("text", "image", "match"),
    [
        (np.eye(3), np.eye(2, 3), r"class count mismatch: text_prototypes has 3 classes, "
                                  r"image_prototypes has 2"),
        (np.eye(2), np.eye(2, 3), r"embedding size mismatch: text_prototypes has D=2, "
                                  r"image_prototypes has D=3"),
        (np.ones(3), np.eye(3), r"text_prototypes must be 2-D"),
    ],
)
def test_rejects_prototype_shape_mismatch(text, image, match, as_inputs: bool) -> None:
    with pytest.raises(ValueError, match=match):
        build_trust_head(text, image, 100.0, prototypes_as_inputs=as_inputs)


def test_value_checks_depend_on_mode() -> None:
    zeros = np.zeros((2, 4))
    with pytest.raises(ValueError, match="text_prototypes has 2 zero-norm"):
        build_trust_head(zeros, np.eye(2, 4), 100.0)
    # Input mode only needs the shapes: placeholders are fine.
    model = build_trust_head(zeros, zeros, 100.0, prototypes_as_inputs=True)
    assert [i.name for i in model.graph.input][1:] == ["text_prototypes", "image_prototypes"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logit_scale": -1.0}, "logit_scale must be > 0"),
        ({"logit_scale": 100.0, "lam": -1.0}, "lam must be >= 0"),
        ({"logit_scale": 100.0, "temperature": 0.0}, "temperature must be > 0"),
        ({"logit_scale": 1e39}, "logit_scale = 1e\\+39 overflows float32"),
    ],
)
def test_rejects_bad_scalars(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_trust_head(np.eye(2), np.eye(2), **kwargs)


# --------------------------------------------------------------------------- saving


def test_save_trust_head_atomic(tmp_path: Path) -> None:
    text, image, emb = make_problem(4, 8, 3, seed=4)
    model = build_trust_head(text, image, 100.0)
    dest = tmp_path / "head.onnx"
    dest.write_bytes(b"old contents")
    assert save_trust_head(model, dest) == dest
    assert sorted(os.listdir(tmp_path)) == ["head.onnx"]  # no temp file left behind
    loaded = onnx.load(str(dest))
    assert loaded.SerializeToString() == model.SerializeToString()
    np.testing.assert_array_equal(run_head(loaded, emb)["kappa"], run_head(model, emb)["kappa"])


def test_save_trust_head_missing_dir_leaves_nothing(tmp_path: Path) -> None:
    model = build_trust_head(np.eye(2), np.eye(2), 100.0)
    with pytest.raises(FileNotFoundError):
        save_trust_head(model, tmp_path / "missing" / "head.onnx")
    assert os.listdir(tmp_path) == []
