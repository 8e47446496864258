"""Shape ops: Squeeze/Unsqueeze, Reshape/Flatten, Shape, Slice, Pad, Tile, Expand."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from pipeline.stages.rewrite.context import dims
from pipeline.core.perm import after_removing, inverse
from pipeline.core.registry import handles
from pipeline.stages.rewrite.rules.common import data_perm, norm_axis


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


@handles("Squeeze")
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


def unsqueeze_layout(p, axes: list[int]) -> tuple[list[int], tuple[int, ...]]:
    """Unsqueeze(T(x, p), axes) == T(Unsqueeze(x, axes'), q): returns (axes', q).

    Each new unit axis goes right after the axis of x it follows in the transposed
    layout, so an axis inserted to be merged with its neighbour (UpSampling's repeat)
    stays next to it in x too."""
    n = len(p) + len(axes)
    keys, prev, k = [], (-1, 0), 0
    for j in range(n):
        if j in axes:
            k += 1
            keys.append((prev[0], k))
        else:
            i = j - _k_before(j, axes)
            prev = (p[i], 0)
            keys.append(prev)
    order = sorted(range(n), key=lambda j: keys[j])
    q = tuple(order.index(j) for j in range(n))
    return sorted(order.index(j) for j in axes), q


def _k_before(j: int, axes) -> int:
    return sum(1 for a in axes if a < j)


@handles("Unsqueeze")
def unsqueeze(ctx, node):
    p = data_perm(ctx, node, [0])
    axes, why = _axes(ctx, node)
    if p is None or axes is None:
        return ctx.fail(node, why or "the transposed input is not the data input")
    n = len(p) + len(axes)
    axes = sorted(norm_axis(a, n) for a in axes)
    new_axes, q = unsqueeze_layout(p, axes)
    ctx.bypass(node, 0)
    _set_axes(ctx, node, new_axes)
    ctx.transpose_output(node, 0, q)
    return True


def moves_only_unit_dims(x_dims, p) -> bool:
    """True when Transpose(x, p) keeps the order of x's non-unit axes (a pure reshape)."""
    if x_dims is None:
        return False
    order = [p[j] for j in range(len(p)) if x_dims[p[j]] != 1]
    return order == sorted(order)


def reshape_blocks(in_dims: list, out_dims: list) -> list[tuple[list[int], list[int]]] | None:
    """Split a reshape into blocks ``(input axes, output axes)`` with equal sizes, each
    block one axis -> several (a split) or several -> one (a merge) or one -> one.

    Unit axes join the block before them. None when a block is many -> many or a size is
    unknown (the batch axis may be unknown only if it maps to itself)."""
    if not in_dims or not out_dims or None in in_dims[1:] or None in out_dims[1:]:
        return None
    if (in_dims[0] is None) != (out_dims[0] is None) or np.prod(in_dims[1:]) != np.prod(out_dims[1:]):
        return None   # the batch axis is merged or split: not a per-sample reshape
    blocks, i, j = [], 0, 0
    while i < len(in_dims) or j < len(out_dims):
        if i == 0 and j == 0 and (in_dims[0] is None or out_dims[0] is None):
            if in_dims[0] is not None and out_dims[0] is not None:
                return None
            blocks.append(([0], [0]))
            i, j = 1, 1
            continue
        if i >= len(in_dims) or j >= len(out_dims):
            # trailing unit axes
            if any(d != 1 for d in in_dims[i:]) or any(d != 1 for d in out_dims[j:]) or not blocks:
                return None
            blocks[-1][0].extend(range(i, len(in_dims)))
            blocks[-1][1].extend(range(j, len(out_dims)))
            break
        if in_dims[i] is None or out_dims[j] is None:
            return None
        a, b = [i], [j]
        pa, pb = in_dims[i], out_dims[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(in_dims) or in_dims[i] is None:
                    return None
                pa *= in_dims[i]
                a.append(i)
                i += 1
            else:
                if j >= len(out_dims) or out_dims[j] is None:
                    return None
                pb *= out_dims[j]
                b.append(j)
                j += 1
        if len(a) > 1 and len(b) > 1:
            return None
        blocks.append((a, b))
    return blocks


@handles("Reshape", "Flatten")
def reshape(ctx, node):
    """Reshape(T(x, p)) == T(Reshape'(x), q) when the reshape only splits single axes and
    merges axes that are also adjacent, in the same order, in x (GroupNormalization's
    channel split, (N, H, W, C) -> (N, H*W, C)). Otherwise the data order matters.

    A Flatten/Reshape of channels-first data orders features ``c*H*W + ...`` where Keras
    has ``... + c``: the Transpose back to channels-last must stay before it.
    """
    p = data_perm(ctx, node, [0])
    if p is None:
        return ctx.fail(node, "the transposed input is the shape, not the data")
    x = node.inputs[0].producer().inputs[0]
    if moves_only_unit_dims(dims(x), p) and (node.op_type == "Flatten" or (
            (c := ctx.const(node.inputs[1])) is not None and not (c == 0).any())):
        ctx.bypass(node, 0)
        return True
    mixes = ctx.fail(node, f"{node.op_type} mixes channel and spatial axes: "
                           "channels-last order must be restored before it")
    if node.op_type == "Flatten":
        return mixes
    shape = ctx.const(node.inputs[1])
    if shape is None and dims(node.outputs[0]) is None:
        return ctx.fail(node, "Reshape with a dynamic shape and unknown output shape")
    blocks = reshape_blocks(dims(node.inputs[0]), dims(node.outputs[0]))
    if blocks is None:
        return mixes
    # blocks in x's order: a merge block must cover adjacent x axes in the same order
    src = {}
    for a, b in blocks:
        xa = [p[k] for k in a]
        if xa != list(range(xa[0], xa[0] + len(xa))):
            return mixes
        src[xa[0]] = (a, b)
    out_dims = dims(node.outputs[0])
    new_shape, order = [], []
    for k in sorted(src):
        a, b = src[k]
        order.extend(b)
        new_shape.extend(-1 if out_dims[m] is None else out_dims[m] for m in b)
    if new_shape.count(-1) > 1:
        return ctx.fail(node, "Reshape with more than one unknown dimension")
    ctx.bypass(node, 0)
    node.replace_input_with(1, ctx.new_const(np.array(new_shape, dtype=np.int64), "reshape_shape"))
    if "allowzero" in node.attributes:
        del node.attributes["allowzero"]
    # new output axis n holds original output axis order[n]: y == T(y', q), q[m] = order.index(m)
    ctx.transpose_output(node, 0, tuple(order.index(m) for m in range(len(order))))
    return True


@handles("Shape")
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


def _index_dtype(ctx, node) -> np.dtype:
    """The index type of a Slice (starts, ends, axes and steps share one, int32 or int64): the
    first of its index inputs with a constant or a known type decides, else int64. A computed
    int32 ``starts`` (tf2onnx's strided slice with a dynamic begin) needs int32 axes."""
    for v in node.inputs[1:]:
        c = ctx.const(v)
        if c is not None:
            return c.dtype
        if v is not None and v.type is not None:
            return v.type.dtype.numpy()
    return np.dtype(np.int64)


@handles("Slice")
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
    axes_v = ctx.new_const(np.array(new_axes, dtype=_index_dtype(ctx, node)), "slice_axes")
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


@handles("Pad")
def pad(ctx, node):
    p = data_perm(ctx, node, [0])
    pads = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        return ctx.fail(node, "Pad with explicit axes")
    r = len(p) if p is not None else 0
    if p is not None and pads is None and dims(node.inputs[1]) == [2 * r]:
        # computed pads (tf2onnx's ConvTranspose "same"): permuted by a Gather
        _gathered(ctx, node, 1, tuple(p) + tuple(r + a for a in p))
        ctx.bypass(node, 0)
        ctx.transpose_output(node, 0, p)
        return True
    if p is None or pads is None:
        return ctx.fail(node, "needs a transposed data input and constant or per-axis pads")
    pads = pads.reshape(-1)
    new = np.concatenate([_permute_per_axis(pads[:r], p), _permute_per_axis(pads[r:], p)])
    ctx.bypass(node, 0)
    node.replace_input_with(1, ctx.new_const(new.astype(pads.dtype), "pads"))
    ctx.transpose_output(node, 0, p)
    return True


def _gathered(ctx, node, index: int, p) -> bool:
    """Input ``index`` (a computed per-axis vector of length rank) permuted by a Gather."""
    v = node.inputs[index]
    d = dims(v)
    if d is None or d != [len(p)]:
        return False
    g = ir.node("Gather", [v, ctx.new_const(np.array(inverse(p), dtype=np.int64), "perm")], {"axis": 0},
                name=ctx.name(f"{node.name}/per_axis"))
    ctx.graph.insert_before(node, g)
    g.outputs[0].type, g.outputs[0].shape = v.type, v.shape
    node.replace_input_with(index, g.outputs[0])
    return True


@handles("Tile")
def tile(ctx, node):
    p = data_perm(ctx, node, [0])
    reps = ctx.const(node.inputs[1])
    if p is None:
        return ctx.fail(node, "the transposed input is not the data input")
    if reps is None:
        if not _gathered(ctx, node, 1, p):
            return ctx.fail(node, "repeats are neither constant nor a vector of known length")
        ctx.bypass(node, 0)
        ctx.transpose_output(node, 0, p)
        return True
    ctx.bypass(node, 0)
    node.replace_input_with(1, ctx.new_const(_permute_per_axis(reps.reshape(-1), p), "repeats"))
    ctx.transpose_output(node, 0, p)
    return True


@handles("Expand")
def expand(ctx, node):
    p = data_perm(ctx, node, [0])
    shp = ctx.const(node.inputs[1])
    if p is not None and shp is None and _gathered(ctx, node, 1, p):
        ctx.bypass(node, 0)
        ctx.transpose_output(node, 0, p)
        return True
    if p is None or shp is None or shp.size > len(p):
        return ctx.fail(node, "needs a transposed data input and a constant shape of at most its rank")
    shp = np.concatenate([np.ones(len(p) - shp.size, dtype=shp.dtype), shp.reshape(-1)])
    ctx.bypass(node, 0)
    node.replace_input_with(1, ctx.new_const(_permute_per_axis(shp, p), "expand_shape"))
    ctx.transpose_output(node, 0, p)
    return True
