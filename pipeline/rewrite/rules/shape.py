"""Shape ops: Squeeze/Unsqueeze, Reshape/Flatten, Shape, Slice, Pad, Tile, Expand."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from pipeline.rewrite.context import dims
from pipeline.rewrite.perm import after_inserting, after_removing
from pipeline.rewrite.registry import register
from pipeline.rewrite.rules.common import data_perm, norm_axis


def _axes(ctx, node, attr="axes", index=1):
    """Constant axes from the attribute or the input; (None, reason) if not constant."""
    if attr in node.attributes:
        return list(ctx.attr(node, attr)), None
    if len(node.inputs) > index and node.inputs[index] is not None:
        c = ctx.const(node.inputs[index])
        if c is None:
            return None, f"{attr} are not a constant"
        return [int(a) for a in c.reshape(-1)], None
    return None, f"no {attr}"


def _set_axes(ctx, node, values, attr="axes", index=1, hint="axes"):
    if attr in node.attributes:
        ctx.set_attr(node, attr, list(values))
    else:
        node.replace_input_with(index, ctx.new_const(np.array(values, dtype=np.int64), hint))


@register("Squeeze")
def squeeze(ctx, node):
    p = data_perm(ctx, node, [0])
    axes, why = _axes(ctx, node)
    if p is None or axes is None:
        return ctx.fail(node, why or "the transposed input is not the data input")
    removed = {norm_axis(a, len(p)) for a in axes}
    ctx.bypass(node, 0)
    _set_axes(ctx, node, sorted(p[a] for a in removed))
    ctx.transpose_output(node, 0, after_removing(p, removed))
    return True


@register("Unsqueeze")
def unsqueeze(ctx, node):
    p = data_perm(ctx, node, [0])
    axes, why = _axes(ctx, node)
    if p is None or axes is None:
        return ctx.fail(node, why or "the transposed input is not the data input")
    n = len(p) + len(axes)
    axes = sorted(norm_axis(a, n) for a in axes)
    ctx.bypass(node, 0)
    _set_axes(ctx, node, axes)
    ctx.transpose_output(node, 0, after_inserting(p, axes))
    return True


def moves_only_unit_dims(x_dims, p) -> bool:
    """True when Transpose(x, p) keeps the order of x's non-unit axes (a pure reshape)."""
    if x_dims is None:
        return False
    order = [p[j] for j in range(len(p)) if x_dims[p[j]] != 1]
    return order == sorted(order)


@register("Reshape", "Flatten")
def reshape(ctx, node):
    """Only where the Transpose moves unit axes alone; otherwise the data order matters.

    A Flatten/Reshape of channels-first data orders features ``c*H*W + ...`` where Keras
    has ``... + c``: the Transpose back to channels-last must stay before it.
    """
    p = data_perm(ctx, node, [0])
    if p is None:
        return ctx.fail(node, "the transposed input is the shape, not the data")
    x = node.inputs[0].producer().inputs[0]
    if not moves_only_unit_dims(dims(x), p):
        return ctx.fail(node, f"{node.op_type} mixes channel and spatial axes: "
                              "channels-last order must be restored before it")
    shape = ctx.const(node.inputs[1]) if node.op_type == "Reshape" else None
    if node.op_type == "Reshape" and (shape is None or (shape == 0).any()):
        return ctx.fail(node, "Reshape with a dynamic shape or 0 (copy) entries")
    ctx.bypass(node, 0)
    return True


@register("Shape")
def shape(ctx, node):
    """Shape(T(x, p)) == Gather(Shape(x), p)."""
    if "start" in node.attributes or "end" in node.attributes:
        return ctx.fail(node, "Shape with start/end")
    p = ctx.perm(node.inputs[0])
    ctx.bypass(node, 0)
    y = node.outputs[0]
    g = ir.node("Gather", [y, ctx.new_const(np.array(p, dtype=np.int64), "perm")], {"axis": 0},
                name=ctx.name(f"{node.name}/gather"))
    ctx.graph.insert_after(node, g)
    g.outputs[0].type, g.outputs[0].shape = y.type, y.shape
    ctx.redirect(y, g.outputs[0], exclude=g)
    return True


@register("Slice")
def slice_(ctx, node):
    p = data_perm(ctx, node, [0])
    if p is None:
        return ctx.fail(node, "the transposed input is not the data input")
    starts = ctx.const(node.inputs[1])
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        axes, why = _axes(ctx, node, index=3)
        if axes is None:
            return ctx.fail(node, why)
    elif starts is not None:
        axes = list(range(len(starts.reshape(-1))))
    else:
        return ctx.fail(node, "no constant axes or starts")
    new_axes = [p[norm_axis(a, len(p))] for a in axes]
    ctx.bypass(node, 0)
    axes_v = ctx.new_const(np.array(new_axes, dtype=np.int64), "slice_axes")
    if len(node.inputs) > 3:
        node.replace_input_with(3, axes_v)
    else:
        node.resize_inputs(4)
        node.replace_input_with(3, axes_v)
    ctx.transpose_output(node, 0, p)
    return True


def _permute_per_axis(values: np.ndarray, p) -> np.ndarray:
    out = values.copy()
    for i, src in enumerate(p):
        out[src] = values[i]
    return out


@register("Pad")
def pad(ctx, node):
    p = data_perm(ctx, node, [0])
    pads = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
    if p is None or pads is None:
        return ctx.fail(node, "needs a transposed data input and constant pads")
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        return ctx.fail(node, "Pad with explicit axes")
    r = len(p)
    pads = pads.reshape(-1)
    new = np.concatenate([_permute_per_axis(pads[:r], p), _permute_per_axis(pads[r:], p)])
    ctx.bypass(node, 0)
    node.replace_input_with(1, ctx.new_const(new.astype(pads.dtype), "pads"))
    ctx.transpose_output(node, 0, p)
    return True


@register("Tile")
def tile(ctx, node):
    p = data_perm(ctx, node, [0])
    reps = ctx.const(node.inputs[1])
    if p is None or reps is None:
        return ctx.fail(node, "needs a transposed data input and constant repeats")
    ctx.bypass(node, 0)
    node.replace_input_with(1, ctx.new_const(_permute_per_axis(reps.reshape(-1), p), "repeats"))
    ctx.transpose_output(node, 0, p)
    return True


@register("Expand")
def expand(ctx, node):
    p = data_perm(ctx, node, [0])
    shp = ctx.const(node.inputs[1])
    if p is None or shp is None or shp.size > len(p):
        return ctx.fail(node, "needs a transposed data input and a constant shape of at most its rank")
    shp = np.concatenate([np.ones(len(p) - shp.size, dtype=shp.dtype), shp.reshape(-1)])
    ctx.bypass(node, 0)
    node.replace_input_with(1, ctx.new_const(_permute_per_axis(shp, p), "expand_shape"))
    ctx.transpose_output(node, 0, p)
    return True
