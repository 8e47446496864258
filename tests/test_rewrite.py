"""The channels-first rewrite: perm algebra, each rule on a tiny hand-built graph, each
Keras layer kind (``tests/layers.py``, exported once in one TensorFlow process), torch
import with a dynamic batch, the boundary-layout flags and keras.applications models.

Every layer case checks numbers against onnxruntime on the raw graph, the Transposes
left (the count the semantics need) and that a second run changes nothing."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from conftest import ENV, REPO, TESTS, cli, report
from pipeline.core.config import Settings
from pipeline.core.reference import inputs_for, load_reference, output_to_keras
from pipeline.stages.rewrite import fold_for_torch, graph_signature, layout, passes, rerun, rewrite_file, \
    to_channels_first
from pipeline.core.perm import after_inserting, after_removing, compose, inverse, to_first, to_last
from pipeline.stages.rewrite.rules.shape import reshape_blocks, unsqueeze_layout

RTOL, ATOL = 1e-5, 1e-6   # |rewritten - raw| <= RTOL * max|raw| + ATOL, both on onnxruntime


def close(ref: np.ndarray, got: np.ndarray) -> bool:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return ref.shape == got.shape and bool(np.all(np.abs(ref - got) <= RTOL * scale + ATOL))


def run_ort(proto, feeds: dict) -> dict:
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


# -- perm algebra -------------------------------------------------------------------------
PERMS = [p for r in (2, 3, 4) for p in itertools.permutations(range(r))]


@pytest.mark.parametrize("p", PERMS, ids=str)
def test_perm_algebra(p):
    rng = np.random.default_rng(0)
    x = rng.normal(size=tuple(range(2, 2 + len(p))))
    for q in itertools.permutations(range(len(p))):
        assert np.array_equal(np.transpose(np.transpose(x, p), q), np.transpose(x, compose(p, q)))
    assert np.array_equal(np.transpose(np.transpose(x, p), inverse(p)), x)
    for a in range(len(p)):       # Op dropping axis a of T(x, p) == T(Op' dropping p[a] of x)
        ref = np.take(np.transpose(x, p), 0, axis=a)
        assert np.array_equal(np.transpose(np.take(x, 0, axis=p[a]), after_removing(p, {a})), ref)
    for axes in ([0], [len(p)], [1, len(p) + 1]):
        ref = np.expand_dims(np.transpose(x, p), axes)
        assert np.array_equal(np.transpose(np.expand_dims(x, axes), after_inserting(p, axes)), ref)
        new_axes, q = unsqueeze_layout(p, axes)
        assert np.array_equal(np.transpose(np.expand_dims(x, new_axes), q), ref)


def test_to_first_to_last_are_inverse():
    for r in (3, 4, 5):
        assert compose(to_last(r), to_first(r)) == tuple(range(r))
        assert to_first(4) == (0, 3, 1, 2) and to_last(4) == (0, 2, 3, 1)


@pytest.mark.parametrize("src, dst, blocks", [
    ([None, 8, 6, 4], [None, 8, 6, 2, 2], [([0], [0]), ([1], [1]), ([2], [2]), ([3], [3, 4])]),
    ([None, 8, 6, 4], [None, 48, 4], [([0], [0]), ([1, 2], [1]), ([3], [2])]),
    ([None, 8, 6, 4], [None, 24, 8], None),            # many -> many: mixes axes
    ([None, 10, 4], [None, 40], [([0], [0]), ([1, 2], [1])]),
    ([None, 10, 4], [None, None], None),               # batch merged: not per sample
], ids=["split-channels", "merge-hw", "mixed", "flatten", "batch-merge"])
def test_reshape_blocks(src, dst, blocks):
    assert reshape_blocks(src, dst) == blocks


# -- single rules on hand-built graphs ------------------------------------------------------
N, H, W, C = 2, 5, 4, 3


def _const(name, array):
    kind = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}.get(array.dtype,
                                                                                                 TensorProto.INT64)
    return helper.make_tensor(name, kind, array.shape, array.reshape(-1).tolist())


def _graph(nodes, out_shape, inits=(), out_type=TensorProto.FLOAT, x_shape=(N, H, W, C)):
    """A channels-last graph: x (NHWC) -> Conv as tf2onnx writes it -> nodes -> y."""
    w = np.linspace(-1, 1, C * C, dtype=np.float32).reshape(C, C, 1, 1)
    r = len(x_shape)
    head = [helper.make_node("Transpose", ["x"], ["xt"], perm=list(to_first(r))),
            helper.make_node("Conv", ["xt", "w"], ["ct"]),
            helper.make_node("Transpose", ["ct"], ["f"], perm=list(to_last(r)))]
    if r == 3:
        w = w[..., 0]
    g = helper.make_graph(head + nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", out_type, out_shape)],
                          [_const("w", w), *[_const(k, v) for k, v in inits]])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _i64(*v):
    return np.array(v, dtype=np.int64)


_TIME_STEP_INITS = [("st0", _i64(0)), ("en0", _i64(1)), ("st1", _i64(1)), ("en1", _i64(2)), ("ax", _i64(1)),
                    ("ax0", _i64(0))]


def _time_steps(out):
    """Steps 0 and 1 of axis 1 of f, each through a Relu, stacked on axis 0 and moved back to axis 1."""
    nodes = []
    for i in (0, 1):
        nodes += [helper.make_node("Slice", ["f", f"st{i}", f"en{i}", "ax"], [f"s{i}"]),
                  helper.make_node("Squeeze", [f"s{i}", "ax"], [f"q{i}"]),
                  helper.make_node("Relu", [f"q{i}"], [f"r{i}"]),
                  helper.make_node("Unsqueeze", [f"r{i}", "ax0"], [f"u{i}"])]
    return nodes + [helper.make_node("Concat", ["u0", "u1"], ["st"], axis=0),
                    helper.make_node("Transpose", ["st"], out, perm=[1, 0, 2, 3])]


RULE_CASES = {
    # id: (nodes, output shape, initializers, Transposes the semantics need)
    "softmax-channels": ([helper.make_node("Softmax", ["f"], ["y"], axis=-1)], (N, H, W, C), [], 0),
    "softmax-h": ([helper.make_node("Softmax", ["f"], ["y"], axis=1)], (N, H, W, C), [], 0),
    "logsoftmax-w": ([helper.make_node("LogSoftmax", ["f"], ["y"], axis=2)], (N, H, W, C), [], 0),
    "concat-const": ([helper.make_node("Concat", ["f", "k"], ["y"], axis=3)], (N, H, W, C + 2),
                     [("k", np.ones((N, H, W, 2), np.float32))], 0),
    "add-broadcast-const": ([helper.make_node("Add", ["f", "k"], ["y"])], (N, H, W, C),
                            [("k", np.linspace(0, 1, W * C, dtype=np.float32).reshape(W, C))], 0),
    "prelu-shared": ([helper.make_node("PRelu", ["f", "k"], ["y"])], (N, H, W, C),
                     [("k", np.linspace(0.1, 0.3, C, dtype=np.float32).reshape(1, 1, C))], 0),
    "split": ([helper.make_node("Split", ["f", "s"], ["a", "b"], axis=2),
               helper.make_node("Concat", ["b", "a"], ["y"], axis=2)], (N, H, W, C), [("s", _i64(1, 3))], 0),
    "reduce-mean-keepdims0": ([helper.make_node("ReduceMean", ["f"], ["y"], axes=[1, 2], keepdims=0)], (N, C), [], 0),
    "reduce-sum-channels": ([helper.make_node("ReduceSum", ["f", "ax"], ["y"], keepdims=1)], (N, H, W, 1),
                            [("ax", _i64(-1))], 0),
    "reduce-max-h-keepdims0": ([helper.make_node("ReduceMax", ["f"], ["y"], axes=[1], keepdims=0)], (N, W, C), [], 0),
    "argmax": ([helper.make_node("ArgMax", ["f"], ["y"], axis=3, keepdims=1)], (N, H, W, 1), [], 0),
    "argmin-w": ([helper.make_node("ArgMin", ["f"], ["y"], axis=2, keepdims=0)], (N, H, C), [], 0),
    "gather-channels": ([helper.make_node("Gather", ["f", "i"], ["y"], axis=3)], (N, H, W, 2), [("i", _i64(2, 0))], 0),
    "slice": ([helper.make_node("Slice", ["f", "st", "en", "ax"], ["y"])], (N, H - 1, W, 2),
              [("st", _i64(1, 1)), ("en", _i64(H, 3)), ("ax", _i64(1, 3))], 0),
    # tf2onnx's strided slice with a computed int32 begin (Resizing(crop_to_aspect_ratio=True)):
    # the moved axes must stay int32, Slice takes one index type
    "slice-computed-int32-starts": ([helper.make_node("Add", ["st", "z"], ["st2"]),
                                     helper.make_node("Slice", ["f", "st2", "en", "ax"], ["y"])], (N, H - 1, W, 2),
                                    [("st", np.array([1, 1], np.int32)), ("z", np.array([0, 0], np.int32)),
                                     ("en", np.array([H, 3], np.int32)), ("ax", np.array([1, 3], np.int32))], 0),
    "pad": ([helper.make_node("Pad", ["f", "pd"], ["y"])], (N, H + 1, W + 2, C + 1),
            [("pd", _i64(0, 1, 0, 1, 0, 0, 2, 0))], 0),
    "tile": ([helper.make_node("Tile", ["f", "rp"], ["y"])], (N, H, 2 * W, 3 * C), [("rp", _i64(1, 1, 2, 3))], 0),
    "expand": ([helper.make_node("Expand", ["f", "sh"], ["y"])], (N, H, W, C), [("sh", _i64(1, 1, 1))], 0),
    "squeeze-unsqueeze": ([helper.make_node("Slice", ["f", "st", "en", "ax"], ["s"]),
                           helper.make_node("Squeeze", ["s", "ax"], ["q"]),
                           helper.make_node("Unsqueeze", ["q", "ax"], ["y"])], (N, 1, W, C),
                          [("st", _i64(0)), ("en", _i64(1)), ("ax", _i64(1))], 0),
    "cumsum": ([helper.make_node("CumSum", ["f", "a"], ["y"])], (N, H, W, C), [("a", np.array(2, np.int64))], 0),
    "matmul-dense-on-features": ([helper.make_node("MatMul", ["f", "m"], ["y"])], (N, H, W, 2),
                                 [("m", np.linspace(-1, 1, C * 2, dtype=np.float32).reshape(C, 2))], 0),
    "einsum": ([helper.make_node("Einsum", ["f", "m"], ["y"], equation="nhwc,cd->nhwd")], (N, H, W, 2),
               [("m", np.linspace(-1, 1, C * 2, dtype=np.float32).reshape(C, 2))], 0),
    "reshape-split-merge": ([helper.make_node("Reshape", ["f", "s1"], ["r"]),
                             helper.make_node("Reshape", ["r", "s2"], ["y"])], (N, H, W, C),
                            [("s1", _i64(-1, H * W, C)), ("s2", _i64(-1, H, W, C))], 0),
    "resize-nearest": ([helper.make_node("Resize", ["f", "", "sc"], ["y"], mode="nearest")], (N, 2 * H, 2 * W, C),
                       [("sc", np.array([1, 2, 2, 1], np.float32))], 0),
    "layernorm-all-features": ([helper.make_node("LayerNormalization", ["f", "g", "b"], ["y"], axis=1)],
                               (N, H, W, C), [("g", np.linspace(0.5, 1.5, H * W * C, dtype=np.float32).reshape(H, W, C)),
                                              ("b", np.linspace(-1, 1, H * W * C, dtype=np.float32).reshape(H, W, C))], 0),
    "layernorm-channels-barrier": ([helper.make_node("LayerNormalization", ["f", "g"], ["y"], axis=-1)], (N, H, W, C),
                                   [("g", np.linspace(0.5, 1.5, C, dtype=np.float32))], 1),
    "transpose-hw": ([helper.make_node("Transpose", ["f"], ["y"], perm=[0, 2, 1, 3])], (N, W, H, C), [], 1),
    "flatten": ([helper.make_node("Flatten", ["f"], ["y"], axis=1)], (N, H * W * C), [], 1),
    "topk-barrier": ([helper.make_node("TopK", ["f", "k"], ["y", "idx"], axis=1)], (N, 2, W, C),
                     [("k", _i64(2))], 1),
    # TimeDistributed as Keras 3 unrolls it: each time step sliced, run, stacked on a new
    # axis 0 (Unsqueeze -> Concat) and moved back after the batch: the stack absorbs it
    "stack-time-steps": (_time_steps(["y"]), (N, 2, W, C), _TIME_STEP_INITS, 0),
    "stack-time-steps-then-conv": (_time_steps(["z"]) + [
        helper.make_node("Transpose", ["z"], ["zt"], perm=[0, 3, 1, 2]), helper.make_node("Conv", ["zt", "w"], ["zc"]),
        helper.make_node("Transpose", ["zc"], ["y"], perm=[0, 2, 3, 1])], (N, 2, W, C), _TIME_STEP_INITS, 0),
    # the same value stacked twice: its Unsqueeze cannot take two layouts, one Transpose stays
    "stack-shared-step": ([helper.make_node("Slice", ["f", "st0", "en0", "ax"], ["s0"]),
                           helper.make_node("Squeeze", ["s0", "ax"], ["q0"]),
                           helper.make_node("Unsqueeze", ["q0", "ax0"], ["u0"]),
                           helper.make_node("Concat", ["u0", "u0"], ["st"], axis=0),
                           helper.make_node("Transpose", ["st"], ["y"], perm=[1, 0, 2, 3])],
                          (N, 2, W, C), _TIME_STEP_INITS, 1),
}


@pytest.mark.parametrize("op", ["MatMul", "Gemm", "Gemm-transB"])
def test_flatten_fold_permutes_dense_rows(op):
    """Transpose -> Flatten -> Dense: the torch graph has no Transpose and the same numbers."""
    k, d = H * W * C, 4
    wt = np.linspace(-1, 1, k * d, dtype=np.float32).reshape(k, d)
    if op == "MatMul":
        dense = helper.make_node("MatMul", ["fl", "m"], ["y"])
    else:
        dense = helper.make_node("Gemm", ["fl", "m"], ["y"], transB=int(op.endswith("transB")))
        wt = wt.T.copy() if op.endswith("transB") else wt
    proto = _graph([helper.make_node("Flatten", ["f"], ["fl"], axis=1), dense], (N, d), [("m", wt)])
    x = np.random.default_rng(0).normal(size=(N, H, W, C)).astype(np.float32)
    ref = run_ort(proto, {"x": x})["y"]
    model = ir.serde.deserialize_model(proto)
    facts = to_channels_first(model, ["x"], Settings())
    assert len(layout.transposes(model.graph)) == 1     # nchw.onnx keeps it, for inspection
    assert fold_for_torch(model, Settings())["into_dense"]
    assert not layout.transposes(model.graph)
    assert close(ref, run_ort(ir.serde.serialize_model(model), inputs_for(facts, {"x": x}))["y"])


@pytest.mark.parametrize("perm", [(0, 2, 1, 3), (0, 3, 2, 1), (0, 1, 3, 2), (0, 3, 1, 2)], ids=str)
def test_permute_flatten_fold_permutes_dense_rows(perm):
    """A Keras Permute (a Transpose of the model's own, on NHWC) -> Flatten -> Dense: nchw.onnx
    keeps one Transpose (none where the Permute is NHWC -> NCHW, which the rewrite cancels),
    the torch graph none, with the same numbers (rtol 1e-5 of max, atol 1e-6)."""
    k, d = H * W * C, 4
    wt = np.linspace(-1, 1, k * d, dtype=np.float32).reshape(k, d)
    nodes = [helper.make_node("Transpose", ["f"], ["pt"], perm=list(perm)),
             helper.make_node("Flatten", ["pt"], ["fl"], axis=1), helper.make_node("MatMul", ["fl", "m"], ["y"])]
    proto = _graph(nodes, (N, d), [("m", wt)])
    x = np.random.default_rng(0).normal(size=(N, H, W, C)).astype(np.float32)
    ref = run_ort(proto, {"x": x})["y"]
    model = ir.serde.deserialize_model(proto)
    facts = to_channels_first(model, ["x"], Settings())
    cancels = perm == (0, 3, 1, 2)
    assert len(layout.transposes(model.graph)) == (0 if cancels else 1), facts["remaining"]
    assert bool(fold_for_torch(model, Settings())["into_dense"]) != cancels
    assert not layout.transposes(model.graph)
    assert close(ref, run_ort(ir.serde.serialize_model(model), inputs_for(facts, {"x": x}))["y"])


def test_head_transposes_are_told_apart():
    """heads.classify: the q/k split (Reshape -> Transpose -> MatMul of two activations) and the
    merge (MatMul -> Transpose -> Reshape) are the attention's own; the same Transpose before a
    Dense (a constant weight) is a layout one."""
    from pipeline.stages.rewrite import heads

    nodes = [helper.make_node("Reshape", ["x", "s4"], ["r"]),
             helper.make_node("Transpose", ["r"], ["q"], perm=[0, 2, 1, 3], name="q_split"),
             helper.make_node("Transpose", ["r"], ["kt"], perm=[0, 2, 3, 1], name="k_split"),
             helper.make_node("Mul", ["q", "scale"], ["qs"]),
             helper.make_node("MatMul", ["qs", "kt"], ["sc"]),
             helper.make_node("MatMul", ["sc", "q"], ["o"]),
             helper.make_node("Transpose", ["o"], ["m"], perm=[0, 2, 1, 3], name="merge"),
             helper.make_node("Reshape", ["m", "s3"], ["y"]),
             helper.make_node("Transpose", ["r"], ["d"], perm=[0, 2, 1, 3], name="before_dense"),
             helper.make_node("MatMul", ["d", "w"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 5, 4))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 5, 4)),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, (2, 2, 5, 3))],
                          [_const("s4", _i64(2, 5, 2, 2)), _const("s3", _i64(2, 5, 4)),
                           _const("scale", np.array(0.7, np.float32)), _const("w", np.ones((2, 3), np.float32))])
    model = ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    kinds = heads.classify(model.graph)
    assert kinds == {"q_split": {"kind": "attention_heads", "role": "split"},
                     "k_split": {"kind": "attention_heads", "role": "split"},
                     "merge": {"kind": "attention_heads", "role": "merge"},
                     "before_dense": {"kind": "layout"}}, kinds
    assert heads.counts(model.graph) == {"attention_heads": 3, "layout": 1}


def test_einsum_head_split_with_rotary_is_told_apart():
    """Llama's queries: EinsumDense ``abc,cde->abde`` makes (N, L, heads, d) itself, the rotary
    embedding (``q * cos + rotate_half(q) * sin``, two computed terms, cos/sin broadcast) runs
    on it, then Transpose -> MatMul by the keys: a head split, whose reason names the Einsum.
    The same Transpose after an Einsum that does not add the heads axis stays layout."""
    from pipeline.stages.rewrite import heads

    nodes = [helper.make_node("Einsum", ["x", "wq"], ["q"], equation="abc,cde->abde", name="query"),
             helper.make_node("Einsum", ["x", "wq"], ["k"], equation="abc,cde->abde", name="key"),
             helper.make_node("ConstantOfShape", ["four"], ["ones"], value=helper.make_tensor("", 1, [1], [1.0])),
             helper.make_node("Reshape", ["ones", "s_cos"], ["cos"]),   # computed, (1, L, 1, d)
             helper.make_node("Mul", ["q", "cos"], ["qc"]),
             helper.make_node("Neg", ["q"], ["qr"]),
             helper.make_node("Mul", ["qr", "cos"], ["qs"]),
             helper.make_node("Add", ["qc", "qs"], ["qrot"]),
             helper.make_node("Transpose", ["qrot"], ["qt"], perm=[0, 2, 1, 3], name="q_split"),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1], name="k_split"),
             helper.make_node("MatMul", ["qt", "kt"], ["y"]),
             helper.make_node("Einsum", ["y", "wo"], ["z"], equation="abcd,de->abce", name="same_rank"),
             helper.make_node("Transpose", ["z"], ["zt"], perm=[0, 2, 1, 3], name="after_same_rank"),
             helper.make_node("MatMul", ["zt", "y"], ["w"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 5, 4))],
                          [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
                          [_const("wq", np.ones((4, 2, 2), np.float32)), _const("wo", np.ones((5, 5), np.float32)),
                           _const("four", _i64(20)), _const("s_cos", _i64(1, 5, 1, 2))])
    model = ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    passes.infer_shapes(model)
    kinds = heads.classify(model.graph)
    assert kinds == {"q_split": {"kind": "attention_heads", "role": "split"},
                     "k_split": {"kind": "attention_heads", "role": "split"},
                     "after_same_rank": {"kind": "layout"}}, kinds
    remaining = [{"node": "q_split", "reasons": []}]
    heads.annotate(model.graph, remaining)
    assert remaining[0]["reasons"][0].startswith("attention head split: Einsum 'query' (abc,cde->abde)")


# -- per-channel Mul/Add after a Conv (an unfolded batch norm) folded into the Conv ---------
AFFINE_CASES = {   # case: (constants after the conv as (op, shape), conv has bias, conv output read twice, folds)
    "bn_after_depthwise": ([("Mul", (1, C, 1, 1)), ("Add", (C, 1, 1))], True, False, 2),
    "no_bias": ([("Mul", (C, 1, 1)), ("Add", (1, C, 1, 1))], False, False, 2),
    "scalar": ([("Mul", ())], True, False, 1),
    "per_position_not_channel": ([("Mul", (1, 1, H, W))], True, False, 0),
    "conv_output_read_twice": ([("Mul", (1, C, 1, 1))], True, True, 0),
}


@pytest.mark.parametrize("case", list(AFFINE_CASES))
def test_affine_folds_into_conv(case):
    """The folded graph computes the same (rtol 1e-5 of max, atol 1e-6) with fewer nodes."""
    consts, bias, twice, n_folded = AFFINE_CASES[case]
    rng = np.random.default_rng(1)
    inits = [("w", rng.normal(size=(C, 1, 3, 3)).astype(np.float32))]
    if bias:
        inits.append(("b", rng.normal(size=(C,)).astype(np.float32)))
    nodes = [helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["c"], group=C, pads=[1, 1, 1, 1])]
    prev = "c"
    for i, (op, shape) in enumerate(consts):
        inits.append((f"k{i}", rng.uniform(0.5, 2, size=shape).astype(np.float32)))
        nodes.append(helper.make_node(op, [prev, f"k{i}"], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(helper.make_node("Add", [prev, "c"] if twice else [prev, prev], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (N, C, H, W))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (N, C, H, W))],
                          [_const(k, v) for k, v in inits])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.normal(size=(N, C, H, W)).astype(np.float32)
    ref = run_ort(proto, {"x": x})["y"]
    model = ir.serde.deserialize_model(proto)
    folded = fold_for_torch(model, Settings())["into_conv"]
    assert len(folded) == n_folded
    ops = [n.op_type for n in model.graph]
    assert ops.count("Conv") == 1 and len(ops) == len(nodes) - n_folded
    got = run_ort(ir.serde.serialize_model(model), {"x": x})["y"]
    assert np.allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max() + 1e-6)


# -- a bias Add after a bias-free ConvTranspose, or a rank-2 Dense, made the op's bias ---------
BIAS_CASES = {   # case: (op, input rank, bias shape, op has a bias already, op output read twice, folds)
    "convtranspose": ("ConvTranspose", 4, (1, C, 1, 1), False, False, 1),
    "convtranspose_bias_chw": ("ConvTranspose", 4, (C, 1, 1), False, False, 1),
    "convtranspose_1d": ("ConvTranspose", 3, (C, 1), False, False, 1),
    "convtranspose_has_bias": ("ConvTranspose", 4, (1, C, 1, 1), True, False, 0),
    "convtranspose_read_twice": ("ConvTranspose", 4, (1, C, 1, 1), False, True, 0),
    "dense": ("MatMul", 2, (C,), False, False, 1),
    "dense_row": ("MatMul", 2, (1, C), False, False, 1),
    "dense_read_twice": ("MatMul", 2, (C,), False, True, 0),
    "dense_rank3": ("MatMul", 3, (C,), False, False, 0),          # ONNX Gemm is rank 2 only
    "dense_bias_adds_an_axis": ("MatMul", 2, (1, 1, C), False, False, 0),
}


def _bias_graph(case: str):
    op, rank, bias_shape, has_bias, twice, _ = BIAS_CASES[case]
    rng = np.random.default_rng(2)
    k = 4
    if op == "ConvTranspose":
        x_shape, y_shape = (N, k, H, W)[:rank], (N, C, 2 * H + 1, 2 * W + 1)[:rank]
        inits = [("w", rng.normal(size=(k, C, *[3] * (rank - 2))).astype(np.float32))]
        attrs = {"strides": [2] * (rank - 2)}
    else:
        x_shape, y_shape = (N, H, k)[-rank:], (N, H, C)[-rank:]
        inits, attrs = [("w", rng.normal(size=(k, C)).astype(np.float32))], {}
    if has_bias:
        inits.append(("b", rng.normal(size=(C,)).astype(np.float32)))
    inits.append(("k", rng.uniform(0.5, 2, size=bias_shape).astype(np.float32)))
    nodes = [helper.make_node(op, ["x", "w"] + (["b"] if has_bias else []), ["c"], name="layer/op", **attrs),
             helper.make_node("Add", ["c", "k"], ["t"], name="layer/bias_add"),
             helper.make_node("Add", ["t", "c"] if twice else ["t", "t"], ["y"])]
    out_shape = (1, *y_shape) if len(bias_shape) > len(y_shape) else y_shape
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [_const(n, v) for n, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), x_shape


@pytest.mark.parametrize("case", list(BIAS_CASES))
def test_bias_add_folds_into_op(case):
    """The folded graph (a ConvTranspose with its bias, a Gemm for the Dense) computes the
    same as the unfused one on onnxruntime (rtol 1e-5 of max, atol 1e-6), with no Transpose,
    and a second run folds nothing."""
    op, _, _, _, _, n_folded = BIAS_CASES[case]
    proto, x_shape = _bias_graph(case)
    x = np.random.default_rng(3).normal(size=x_shape).astype(np.float32)
    ref = run_ort(proto, {"x": x})["y"]
    model = ir.serde.deserialize_model(proto)
    passes.infer_shapes(model)
    folded = fold_for_torch(model, Settings())
    assert folded["bias_add"] == ["layer/bias_add"] * n_folded and not folded["into_conv"]
    ops = [n.op_type for n in model.graph]
    fused = {"ConvTranspose": "ConvTranspose", "MatMul": "Gemm"}[op] if n_folded else op
    assert ops.count(fused) == 1 and ops.count("Add") == 2 - n_folded, ops
    if n_folded:
        node = next(n for n in model.graph if n.op_type == fused)
        assert node.name == "layer/op" and len(node.inputs) == 3 and node.outputs[0].name == "t"
    assert not layout.transposes(model.graph)
    got_proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(got_proto, full_check=True)
    assert close(ref, run_ort(got_proto, {"x": x})["y"])
    before = graph_signature(model)
    assert fold_for_torch(model, Settings()) == {"into_dense": [], "into_conv": [], "bias_add": []}
    assert graph_signature(model) == before


def test_bias_add_after_channels_last_deconv_folds():
    """Keras' Conv2DTranspose as tf2onnx writes it (Transposes around the op, the bias Add on
    channels-last data): after the rewrite the bias is the ConvTranspose's, no Transpose left."""
    rng = np.random.default_rng(4)
    w = rng.normal(size=(C, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["f"], ["ft"], perm=[0, 3, 1, 2]),
             helper.make_node("ConvTranspose", ["ft", "dw"], ["d"], name="deconv_1/conv2d_transpose", strides=[2, 2]),
             helper.make_node("Transpose", ["d"], ["dl"], perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["dl", "db"], ["y"], name="deconv_1/BiasAdd")]
    proto = _graph(nodes, (N, 2 * H + 1, 2 * W + 1, 2), [("dw", w), ("db", rng.normal(size=(2,)).astype(np.float32))])
    x = rng.normal(size=(N, H, W, C)).astype(np.float32)
    ref = run_ort(proto, {"x": x})["y"]
    model = ir.serde.deserialize_model(proto)
    facts = to_channels_first(model, ["x"], Settings())
    assert fold_for_torch(model, Settings())["bias_add"] == ["deconv_1/BiasAdd"]
    assert not layout.transposes(model.graph)
    assert [n.op_type for n in model.graph] == ["Conv", "ConvTranspose"]
    got = run_ort(ir.serde.serialize_model(model), inputs_for(facts, {"x": x}))["y"]
    assert close(ref, output_to_keras(facts, "y", got))
    assert not rerun(model, Settings()).modified


@pytest.mark.parametrize("case", list(RULE_CASES))
def test_rule_on_tiny_graph(case):
    nodes, out_shape, inits, expected = RULE_CASES[case]
    out_type = TensorProto.INT64 if case.startswith("arg") else TensorProto.FLOAT
    proto = _graph(nodes, out_shape, inits, out_type)
    onnx.checker.check_model(proto)
    x = np.random.default_rng(0).normal(size=(N, H, W, C)).astype(np.float32)
    ref = run_ort(proto, {"x": x})["y"]
    model = ir.serde.deserialize_model(proto)
    facts = to_channels_first(model, ["x"], Settings())
    got_proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(got_proto)
    got = run_ort(got_proto, inputs_for(facts, {"x": x}))["y"]
    assert close(ref, output_to_keras(facts, "y", got)), case
    assert len(layout.transposes(model.graph)) == expected, facts["remaining"]
    assert not rerun(model, Settings()).modified
    if case == "topk-barrier":
        reasons = " ".join(r for t in facts["remaining"] for r in t["reasons"])
        assert "no layout rule for TopK" in reasons


# -- Keras layers, exported once -----------------------------------------------------------
def _layer_names() -> list[str]:
    """tests/layers.py's own list (imports Keras, so in a subprocess)."""
    proc = subprocess.run([sys.executable, "-c", "import runpy; m = runpy.run_path('tests/layers.py'); "
                           "print(' '.join(m['LAYERS']))"], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


# Transposes the semantics need; every other layer converts with none left.
NEEDED = {
    "flatten_dense1d": (1, "Flatten mixes channel and spatial axes"),
    "flatten_dense2d": (1, "Flatten mixes channel and spatial axes"),
    "flatten_dense3d": (1, "Flatten mixes channel and spatial axes"),
    "reshape": (1, "Reshape mixes channel and spatial axes"),              # (8, 6, 4) -> (24, 8)
    "reshape_split_channels": (1, "kept in Keras' layout"),                # output (N, H, W, 2, 2)
    "permute": (1, "transpose of the model's own"),
    "op_transpose_hw": (1, "transpose of the model's own"),
    "lstm_conv_features": (1, "the recurrent layer reads (batch, steps, features)"),
}
# Where the rewrite leaves more than the semantics need (expected to fail until fixed).
# time_distributed needs none: Keras 3 unrolls TimeDistributed(Conv1D) on (N, T, W, C) into
# one Conv1D per time step stacked on a new axis 0 (Unsqueeze -> Concat) and moved back after
# the batch; the Transpose to channels-first (N, C, T, W) folds into that stack.
KNOWN_GAPS: dict[str, str] = {}
# repeat_vector needs none either: RepeatVector makes channels-last data from a rank-2
# tensor (Unsqueeze -> Tile -> Reshape); the Conv1D's Transpose is pulled up through it.
ONE_D = ("conv1d", "conv1d_strided", "maxpool1d", "avgpool1d", "conv1d_transpose", "separable_conv1d",
         "depthwise_conv1d")
# rank >= 3 outputs that stay in Keras' layout: ArgMax over channels leaves (N, H, W);
# attention's output projection is a MatMul on (N, L, C) with no Transpose to drop.
KERAS_LAYOUT_OUTPUTS = {"op_argmax", "mha_conv_features"}


@pytest.fixture(scope="session")
def layer_exports(tmp_path_factory):
    """Every builder of tests/layers.py exported in ONE subprocess (TensorFlow imports once)."""
    out = tmp_path_factory.mktemp("layers")
    proc = subprocess.run([sys.executable, str(TESTS / "export_many.py"), str(out), "tests/layers.py", *ALL_LAYERS],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1200)
    return out, proc


def _all_layer_names() -> list[str]:
    """The names tests/layers.py defines, without importing Keras here (mirrors its loops)."""
    names = []
    for d in (1, 2, 3):
        names += [f"conv{d}d", f"conv{d}d_strided", f"maxpool{d}d", f"avgpool{d}d", f"cropping{d}d",
                  f"zeropadding{d}d", f"upsampling{d}d", f"conv{d}d_transpose", f"global_avgpool{d}d",
                  f"global_maxpool{d}d_keepdims", f"dense_rank{d + 2}", f"flatten_dense{d}d"]
    for d in (1, 2):
        names += [f"separable_conv{d}d", f"depthwise_conv{d}d"]
    for tag in ("m1", 1, 2):
        names += [f"concat_axis{tag}", f"softmax_axis{tag}"]
    src = (TESTS / "layers.py").read_text()
    names += re.findall(r'^layer\("([a-z0-9_]+)"', src, flags=re.M)
    names.append("multi_branch")
    return names


ALL_LAYERS = _all_layer_names()


def test_layer_list_matches_builders(layer_exports):
    assert sorted(ALL_LAYERS) == sorted(_layer_names())


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[n]))
                                  if n in KNOWN_GAPS else n for n in ALL_LAYERS])
def test_layer_rewrite(layer_exports, name):
    out, proc = layer_exports
    raw = out / name / "export" / "raw.onnx"
    err = out / name / "export_error.txt"
    assert raw.is_file(), err.read_text()[-3000:] if err.exists() else proc.stderr[-3000:]
    ins, _ = load_reference(out / name / "export" / "reference.npz")
    model, facts = rewrite_file(raw, Settings())
    ir.external_data.load_to_model(model)   # big Dense kernels live in raw.onnx.data
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto)
    ref = run_ort(onnx.load(str(raw)), ins)
    got = run_ort(proto, inputs_for(facts, ins))
    for k in ref:
        assert close(ref[k], output_to_keras(facts, k, got[k])), (name, k)
    assert facts["inputs_channels_first"] == ["x"]
    assert not rerun(model, Settings()).modified
    if name in ONE_D:   # Conv1D/pooling come back 1-D, without the fake axis
        if name != "conv1d_transpose":   # its 'same' crop is a computed Slice/Pad on the 4-D tensor
            assert not [n.op_type for n in model.graph if n.op_type in ("Unsqueeze", "Squeeze")]
        for node in model.graph:
            if node.op_type in ("Conv", "ConvTranspose", "MaxPool", "AveragePool"):
                w = node.inputs[1] if len(node.inputs) > 1 else None
                assert (len(node.attributes["kernel_shape"].value) if "kernel_shape" in node.attributes
                        else len(w.shape) - 2) == 1, node.name
    left = facts["remaining"]
    n, reason = NEEDED.get(name, (0, None))
    if reason:
        assert all(any(reason in r for r in t["reasons"]) for t in left), left
    carries_channels = ref[next(iter(ref))].ndim >= 3 and name not in KERAS_LAYOUT_OUTPUTS
    if name not in NEEDED:
        assert len(facts["outputs_channels_first"]) == int(carries_channels), facts
    assert len(left) == n, left


# -- torch: static Flatten, torch.export and torch.compile with a dynamic batch ----------------
TORCH_CASES = ["flatten_dense2d", "conv1d", "dense_rank4", "groupnorm", "upsampling2d", "mha_conv_features"]


def _torch_module(out, name, tmp_path):
    from pipeline.runners import convert_onnx

    model, facts = rewrite_file(out / name / "export" / "raw.onnx", Settings())
    nchw = ir.serde.serialize_model(model)
    fold_for_torch(model, Settings())
    assert not layout.transposes(model.graph), name   # the Flatten Transpose folds into the Dense
    path = tmp_path / f"{name}.onnx"
    onnx.save(ir.serde.serialize_model(model), str(path))
    return convert_onnx(path, name).eval(), nchw, facts


@pytest.mark.parametrize("name", TORCH_CASES)
def test_torch_export_dynamic_batch(layer_exports, tmp_path, name):
    import torch

    from pipeline.stages.importer import export_program

    out, _ = layer_exports
    module, nchw, facts = _torch_module(out, name, tmp_path)
    ins, _ = load_reference(out / name / "export" / "reference.npz")
    x = inputs_for(facts, ins)["x"]
    program = export_program(module, (torch.from_numpy(x),))
    for batch in (3, 5):
        xb = np.random.default_rng(batch).normal(size=(batch, *x.shape[1:])).astype(np.float32)
        ref = next(iter(run_ort(nchw, {"x": xb}).values()))
        got = program.module()(torch.from_numpy(xb))
        got = got[0] if isinstance(got, (tuple, list)) else got
        assert close(ref, got.detach().numpy()), (name, batch)


@pytest.mark.parametrize("name", ["flatten_dense2d", "groupnorm"])
def test_torch_compile_dynamic_batch(layer_exports, tmp_path, name):
    import torch

    out, _ = layer_exports
    module, nchw, facts = _torch_module(out, name, tmp_path)
    # aot_eager: Dynamo's capture and AOT tracing with a symbolic batch, without the
    # minutes of C++ code generation that inductor costs on this 2-core machine
    compiled = torch.compile(module, dynamic=True, fullgraph=True, backend="aot_eager")
    x = inputs_for(facts, load_reference(out / name / "export" / "reference.npz")[0])["x"]
    for batch in (3, 5):
        xb = np.random.default_rng(batch).normal(size=(batch, *x.shape[1:])).astype(np.float32)
        ref = next(iter(run_ort(nchw, {"x": xb}).values()))
        with torch.no_grad():
            got = compiled(torch.from_numpy(xb))
        assert close(ref, got.numpy()), batch


# -- the CLI: layout flags, summary, keras.applications --------------------------------------
def test_channels_last_flags_keep_keras_layout(tmp_path):
    proc = cli("convert", "--model", "tests/models.py:multi_io", "--out", tmp_path,
               "--channels-last-inputs", "--channels-last-outputs")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rep = report(tmp_path, "multi_io")
    assert rep["status"] == "ok"
    assert rep["layout"]["inputs_channels_first"] == [] and rep["layout"]["outputs_channels_first"] == []
    reasons = [r for t in rep["remaining_transposes"] for r in t["reasons"]]
    # image -> two convs, signal -> conv1d: one Transpose per input; head2 back to NHWC;
    # the Transpose before flatten_b (folded into head1 in the torch graph)
    assert sum("model input" in r and "asked for" in r for r in reasons) == 2, reasons
    assert sum("model output" in r and "asked for" in r for r in reasons) == 1, reasons
    assert rep["transposes"] == 4 and rep["transposes_torch"] == 3, rep["remaining_transposes"]
    assert "removed, 4 left in nchw.onnx, 3 in the torch graph" in proc.stdout, proc.stdout
    assert proc.stdout.count("  kept ") == 4


@pytest.mark.parametrize("app", ["MobileNetV2", "ResNet50", "EfficientNetB0"])
def test_keras_applications_end_to_end(tmp_path, app):
    proc = cli("convert", "--model", f"keras.applications.{app}", "--out", tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rep = report(tmp_path, app)
    assert rep["status"] == "ok", rep
    assert rep["transposes"] == 0 and rep["transposes_torch"] == 0, rep["remaining_transposes"]
    assert rep["layout"]["inputs_channels_first"]
