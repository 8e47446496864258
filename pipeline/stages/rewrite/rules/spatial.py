"""Ops with per-axis parameters: Resize (scales/sizes/roi) and LayerNormalization (a
trailing block of axes with its scale and bias)."""

from __future__ import annotations

import numpy as np

from pipeline.core.perm import inverse
from pipeline.core.registry import handles
from pipeline.stages.rewrite.rules.common import data_perm, norm_axis


def _per_axis(values: np.ndarray, p) -> np.ndarray:
    """values[i] belongs to axis i of T(x, p), i.e. to axis p[i] of x."""
    return values.reshape(-1)[list(inverse(p))]


@handles("Resize", opsets=(11, None))
def resize(ctx, node):
    """Resize interpolates each axis on its own: scales/sizes (and roi) follow the axes."""
    p = data_perm(ctx, node, [0])
    if p is None:
        return ctx.fail(node, "the transposed input is not the data input")
    if "axes" in node.attributes:
        return ctx.fail(node, "Resize with explicit axes")
    r = len(p)
    new = {}
    for i in (1, 2, 3):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is None or (v.shape is not None and len(v.shape) == 1 and v.shape[0] == 0):
            continue
        c = ctx.const(v)
        if c is None:
            return ctx.fail(node, f"input {i} of Resize is not a constant")
        if c.size == 0:
            continue
        if i == 1:
            if c.size != 2 * r:
                return ctx.fail(node, "roi of unexpected length")
            new[i] = np.concatenate([_per_axis(c[:r], p), _per_axis(c[r:], p)]).astype(c.dtype)
        else:
            new[i] = _per_axis(c, p).astype(c.dtype)
    ctx.bypass(node, 0)
    for i, c in new.items():
        node.replace_input_with(i, ctx.new_const(c, "resize_param"))
    ctx.transpose_output(node, 0, p)
    return True


@handles("LayerNormalization", opsets=(17, None))
def layer_norm(ctx, node):
    """Normalises axes [axis, r) of T(x, p); on x those must again be a trailing block."""
    p = data_perm(ctx, node, [0])
    if p is None:
        return ctx.fail(node, "the transposed input is not the data input")
    if any(v.uses() or v.is_graph_output() for v in node.outputs[1:]):
        return ctx.fail(node, "the Mean/InvStdDev outputs are used")
    r = len(p)
    a = norm_axis(ctx.attr(node, "axis", -1), r)
    axes = sorted(p[i] for i in range(a, r))
    if axes != list(range(r - len(axes), r)):
        return ctx.fail(node, "the normalised axes are not trailing in channels-first order")
    sub = [p[i] - axes[0] for i in range(a, r)]          # order of the normalised axes in x
    plan = []
    for i in (1, 2):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is None:
            continue
        c = ctx.const(v)
        if c is None:
            return ctx.fail(node, f"input {i} of LayerNormalization is not a constant")
        if c.ndim == len(sub):
            c = np.transpose(c, inverse(tuple(sub)))
        elif c.size != 1:
            return ctx.fail(node, f"input {i} of LayerNormalization does not cover the normalised axes")
        plan.append((i, c))
    ctx.bypass(node, 0)
    ctx.set_attr(node, "axis", axes[0])
    for i, c in plan:
        node.replace_input_with(i, ctx.new_const(np.ascontiguousarray(c), "layer_norm_param"))
    ctx.transpose_output(node, 0, p)
    return True
