"""Reductions: axes remapped; with keepdims=0 the output perm loses the reduced axes."""

from __future__ import annotations

import numpy as np

from pipeline.core.perm import after_removing
from pipeline.core.registry import handles
from pipeline.stages.rewrite.rules.common import data_perm, norm_axis

REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


@handles(*REDUCE)
def reduce(ctx, node):
    p = data_perm(ctx, node, [0])
    if p is None:
        return ctx.fail(node, "the transposed input is not the data input")
    r = len(p)
    from_input = "axes" not in node.attributes
    if from_input:
        v = node.inputs[1] if len(node.inputs) > 1 else None
        axes = ctx.const(v) if v is not None else None
        if v is not None and axes is None:
            return ctx.fail(node, "axes are not a constant")
    else:
        axes = np.array(ctx.attr(node, "axes"), dtype=np.int64)
    if axes is None or axes.size == 0:
        if ctx.attr(node, "noop_with_empty_axes", 0):
            return ctx.fail(node, "noop_with_empty_axes")
        reduced = set(range(r))
    else:
        reduced = {norm_axis(int(a), r) for a in axes.reshape(-1)}
    new_axes = sorted(p[a] for a in reduced)
    keep = ctx.attr(node, "keepdims", 1)
    ctx.bypass(node, 0)
    if axes is not None and axes.size:
        if from_input:
            node.replace_input_with(1, ctx.new_const(np.array(new_axes, dtype=np.int64), "axes"))
        else:
            ctx.set_attr(node, "axes", new_axes)
    ctx.transpose_output(node, 0, p if keep else after_removing(p, reduced))
    return True
