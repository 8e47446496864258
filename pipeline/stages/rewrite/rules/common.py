"""Small helpers the rule modules share."""

from __future__ import annotations

from pipeline.stages.rewrite.context import Ctx
from pipeline.core.perm import Perm


def data_perm(ctx: Ctx, node, indices=None) -> Perm | None:
    """The perm of the first transposed input among ``indices`` (default: all)."""
    for i in range(len(node.inputs)) if indices is None else indices:
        if i < len(node.inputs) and node.inputs[i] is not None:
            p = ctx.perm(node.inputs[i])
            if p is not None:
                return p
    return None


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def push_same_layout(ctx: Ctx, node, indices, p: Perm, attrs: dict | None = None, outputs=None):
    """Push through an op whose outputs keep the layout of its inputs (element-wise-like)."""
    if p is None:
        return ctx.fail(node, "the transposed input is not one of the op's data inputs")
    plan = ctx.align(node, p, indices)
    if isinstance(plan, str):
        return plan
    ctx.apply_align(node, plan)
    for k, v in (attrs or {}).items():
        ctx.set_attr(node, k, v)
    for i in range(len(node.outputs)) if outputs is None else outputs:
        ctx.transpose_output(node, i, p)
    return True
