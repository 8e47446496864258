"""Dense on conv features (MatMul over the channel axis) and Einsum."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from pipeline.core.perm import to_last
from pipeline.core.registry import handles


@handles("MatMul")
def matmul(ctx, node):
    """MatMul(T(x, to_last), W) with constant 2-D W == T(Conv1x1(x, W^T), to_last).

    A Keras Dense on a rank-3..5 channels-last tensor contracts the channel axis; on
    channels-first data that is a 1x1 convolution (``nn.Conv1d/2d/3d`` in torch).
    """
    p = ctx.perm(node.inputs[0])
    w = ctx.const(node.inputs[1])
    if p is None or w is None or w.ndim != 2:
        return ctx.fail(node, "needs MatMul(Transpose(x), constant 2-D weight)")
    r = len(p)
    if r < 3 or p != to_last(r):
        return ctx.fail(node, f"MatMul over the last axis of Transpose(perm={list(p)}) is not over channels")
    x = node.inputs[0].producer().inputs[0]
    kernel = np.ascontiguousarray(w.T).reshape(w.shape[1], w.shape[0], *([1] * (r - 2)))
    conv = ir.node("Conv", [x, ctx.new_const(kernel, f"{node.name}/kernel")],
                   {"kernel_shape": [1] * (r - 2)}, name=ctx.name(f"{node.name}/dense_as_conv"))
    ctx.graph.insert_before(node, conv)
    y = node.outputs[0]
    conv.outputs[0].type = y.type
    if y.shape is not None:
        conv.outputs[0].shape = y.shape
    ctx.redirect(y, conv.outputs[0])
    ctx.remove(node)
    ctx.transpose_output(conv, 0, p)
    return True


@handles("Einsum")
def einsum(ctx, node):
    """Einsum absorbs Transposes of its inputs by renaming their subscripts."""
    eq = ctx.attr(node, "equation")
    eq = eq.decode() if isinstance(eq, bytes) else eq
    lhs, arrow, rhs = eq.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if "." in eq or not arrow:
        return ctx.fail(node, "Einsum with ellipsis or implicit output")
    for i, v in enumerate(node.inputs):
        p = ctx.perm(v)
        if p is None:
            continue
        if len(terms[i]) != len(p):
            return ctx.fail(node, "subscripts do not match the rank")
        s = [""] * len(p)
        for j, src in enumerate(p):
            s[src] = terms[i][j]
        terms[i] = "".join(s)
        ctx.bypass(node, i)
    ctx.set_attr(node, "equation", f"{','.join(terms)}->{rhs}")
    return True
