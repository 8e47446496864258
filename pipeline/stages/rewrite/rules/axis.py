"""Ops with an axis: the axis is remapped, ``a -> p[a]``, where Transpose(x, p) fed them."""

from __future__ import annotations

import numpy as np

from pipeline.stages.rewrite.context import rank
from pipeline.core.perm import after_removing
from pipeline.core.registry import handles
from pipeline.stages.rewrite.rules.common import data_perm, norm_axis, push_same_layout


@handles("Concat")
def concat(ctx, node):
    p = data_perm(ctx, node)
    if p is None:
        return ctx.fail(node, "no transposed input")
    a = norm_axis(ctx.attr(node, "axis"), len(p))
    return push_same_layout(ctx, node, range(len(node.inputs)), p, {"axis": p[a]})


@handles("Split")
def split(ctx, node):
    p = data_perm(ctx, node, [0])
    if p is None:
        return ctx.fail(node, "the transposed input is not the data input")
    a = norm_axis(ctx.attr(node, "axis", 0), len(p))
    return push_same_layout(ctx, node, [0], p, {"axis": p[a]})


@handles("Softmax", "LogSoftmax", "Hardmax", opsets=(13, None))
def softmax(ctx, node):
    """Opset >= 13: one axis. (Older opsets flatten from the axis on: not remappable.)"""
    p = data_perm(ctx, node, [0])
    if p is None:
        return ctx.fail(node, "the transposed input is not the data input")
    a = norm_axis(ctx.attr(node, "axis", -1), len(p))
    return push_same_layout(ctx, node, [0], p, {"axis": p[a]})


@handles("LpNormalization")
def lp_norm(ctx, node):
    p = data_perm(ctx, node, [0])
    if p is None:
        return ctx.fail(node, "the transposed input is not the data input")
    a = norm_axis(ctx.attr(node, "axis", -1), len(p))
    return push_same_layout(ctx, node, [0], p, {"axis": p[a]})


@handles("ArgMax", "ArgMin")
def argmax(ctx, node):
    p = data_perm(ctx, node, [0])
    if p is None:
        return ctx.fail(node, "the transposed input is not the data input")
    a = norm_axis(ctx.attr(node, "axis", 0), len(p))
    keep = ctx.attr(node, "keepdims", 1)
    ctx.bypass(node, 0)
    ctx.set_attr(node, "axis", p[a])
    ctx.transpose_output(node, 0, p if keep else after_removing(p, {a}))
    return True


@handles("CumSum")
def cumsum(ctx, node):
    p = data_perm(ctx, node, [0])
    axis = ctx.const(node.inputs[1])
    if p is None or axis is None:
        return ctx.fail(node, "needs a transposed data input and a constant axis")
    a = norm_axis(int(axis.reshape(-1)[0]), len(p))
    ctx.bypass(node, 0)
    node.replace_input_with(1, ctx.new_const(np.array(p[a], dtype=axis.dtype).reshape(axis.shape), "cumsum_axis"))
    ctx.transpose_output(node, 0, p)
    return True


@handles("Gather")
def gather(ctx, node):
    """Scalar indices drop the axis, 1-D indices keep it; higher ranks stay barriers."""
    p = data_perm(ctx, node, [0])
    if p is None:
        return ctx.fail(node, "the transposed input is the indices, not the data")
    ind = ctx.const(node.inputs[1])
    q = ind.ndim if ind is not None else rank(node.inputs[1])
    if q not in (0, 1):
        return ctx.fail(node, f"indices of rank {q} (only 0 and 1 are remapped)")
    a = norm_axis(ctx.attr(node, "axis", 0), len(p))
    ctx.bypass(node, 0)
    ctx.set_attr(node, "axis", p[a])
    ctx.transpose_output(node, 0, p if q == 1 else after_removing(p, {a}))
    return True
