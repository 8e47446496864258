"""Graph passes around the layout pass: shape inference, static reshapes, Dense on features,
unit Transposes as Reshapes, 1-D convs. The folds for the torch graph are in ``folds``."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass, TopologicalSortPass

from pipeline.stages.rewrite.context import Ctx, dims


def infer_shapes(model: ir.Model) -> None:
    """ONNX shape inference (with data propagation) where it succeeds; a no-op otherwise."""
    import logging

    log = logging.getLogger("onnx_ir.passes.common.shape_inference")
    level = log.level
    log.setLevel(logging.ERROR)   # its failure warning prints a traceback
    try:
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    except Exception:  # inference is an aid for the passes, never a requirement
        pass
    finally:
        log.setLevel(level)


def keras_functions(model: ir.Model, opset: int) -> list[str]:
    """The function body of each ``ai.keras2torch`` batch norm or dropout node built again
    from its spec (``core.trainable.function``), so that a body follows an axis a layout
    rule moved (``rules/keras_nodes.py``); returns the layers whose body changed."""
    from pipeline.core.trainable import DOMAIN, KINDS, from_json, function

    changed = []
    for node in model.graph:
        if node.domain != DOMAIN or node.op_type not in KINDS or "keras" not in node.attributes:
            continue
        spec = from_json(node.attributes["keras"].value)
        key = (DOMAIN, node.op_type, spec.layer)
        new = ir.serde.deserialize_function(function(spec, opset))
        old = model.functions.get(key)
        if old is None or ir.serde.serialize_function(old) != ir.serde.serialize_function(new):
            model.functions[key] = new
            changed.append(spec.layer)
    return changed


def cleanup(model: ir.Model) -> None:
    RemoveUnusedNodesPass()(model)
    TopologicalSortPass()(model)


def static_reshapes(ctx: Ctx) -> list[str]:
    """Reshapes with a computed shape (tf2onnx's ``Shape->...->Concat`` chain for Flatten)
    and a known non-batch output shape become static: ``Flatten(axis=1)`` for rank 2,
    ``Reshape(x, [-1, d1, ...])`` otherwise. The batch dimension stays dynamic."""
    changed = []
    for node in list(ctx.graph):
        if node.op_type != "Reshape" or ctx.const(node.inputs[1]) is not None:
            continue
        x, y = node.inputs[0], node.outputs[0]
        xd, yd = dims(x), dims(y)
        if not xd or not yd or xd[0] is not None or yd[0] is not None or any(d is None for d in yd[1:]):
            continue
        if any(d is None for d in xd[1:]) or int(np.prod(xd[1:])) != int(np.prod(yd[1:])):
            continue
        if len(yd) == 2:
            new = ir.node("Flatten", [x], {"axis": 1}, name=node.name)
        else:
            shape = ctx.new_const(np.array([-1, *yd[1:]], dtype=np.int64), f"{node.name}/shape")
            new = ir.node("Reshape", [x, shape], name=node.name)
        ctx.graph.insert_before(node, new)
        new.outputs[0].type, new.outputs[0].shape = y.type, y.shape
        ctx.redirect(y, new.outputs[0])
        ctx.remove(node)
        changed.append(node.name)
    return changed


def collapse_tensordot(ctx: Ctx) -> list[str]:
    """tf2onnx's Dense on a rank-3..5 tensor, ``Reshape(x, [-1, C]) -> MatMul(W) -> Reshape``
    back to ``(N, *S, D)``, becomes one ``MatMul(x, W)`` (ONNX MatMul broadcasts), which the
    MatMul rule turns into a 1x1 convolution on channels-first data."""
    changed = []
    for mm in list(ctx.graph):
        if mm.op_type != "MatMul" or mm.graph is not ctx.graph:
            continue
        r1, w = mm.inputs[0].producer(), ctx.const(mm.inputs[1])
        uses = list(mm.outputs[0].uses())
        if r1 is None or r1.op_type != "Reshape" or w is None or w.ndim != 2 or len(uses) != 1:
            continue
        r2 = uses[0].node
        if r2.op_type != "Reshape" or len(mm.inputs[0].uses()) != 1 or mm.outputs[0].is_graph_output():
            continue
        x, y = r1.inputs[0], r2.outputs[0]
        xd, yd = dims(x), dims(y)
        if not xd or not yd or len(xd) < 3 or len(yd) != len(xd) or None in xd[1:] or None in yd[1:]:
            continue
        if xd[-1] != w.shape[0] or yd[1:] != [*xd[1:-1], w.shape[1]] or len(dims(r1.outputs[0]) or []) != 2:
            continue
        new = ir.node("MatMul", [x, mm.inputs[1]], name=mm.name)
        ctx.graph.insert_before(r2, new)
        new.outputs[0].type, new.outputs[0].shape = y.type, y.shape
        ctx.redirect(y, new.outputs[0])
        for n in (r2, mm, r1):
            ctx.remove(n)
        changed.append(mm.name)
    return changed


def unit_transposes_to_reshapes(ctx: Ctx) -> list[str]:
    """A Transpose left after the push that only moves unit axes (``(N, 1, 1, C) ->
    (N, C, 1, 1)``, squeeze-excite blocks) moves no data: it becomes a static Reshape,
    merged into the Reshape before it when that is its only user."""
    from pipeline.stages.rewrite.rules.shape import moves_only_unit_dims

    changed = []
    for t in list(ctx.graph):
        if t.op_type != "Transpose" or t.domain != "" or t.graph is not ctx.graph:
            continue
        x, y = t.inputs[0], t.outputs[0]
        p = tuple(t.attributes["perm"].as_ints())
        xd = dims(x)
        if not moves_only_unit_dims(xd, p) or None in xd[1:] or (xd[0] is None and p[0] != 0):
            continue
        if x.is_graph_input() and y.is_graph_output():
            continue
        shape = ctx.new_const(np.array([-1 if xd[i] is None else xd[i] for i in p], dtype=np.int64),
                              f"{t.name}/shape")
        src = x.producer()
        if src is not None and src.op_type == "Reshape" and len(x.uses()) == 1 and not x.is_graph_output():
            x = src.inputs[0]
        new = ir.node("Reshape", [x, shape], name=ctx.name(f"{t.name}/as_reshape"))
        ctx.graph.insert_before(t, new)
        new.outputs[0].type, new.outputs[0].shape = y.type, y.shape
        ctx.redirect(y, new.outputs[0])
        ctx.remove(t)
        if src is not None and not src.outputs[0].uses() and not src.outputs[0].is_graph_output():
            ctx.remove(src)
        changed.append(t.name)
    return changed


_SPATIAL_1D = ("Conv", "ConvTranspose", "MaxPool", "AveragePool")


def _lift_transpose_above_unsqueeze(ctx: Ctx, node: ir.Node) -> None:
    """``Transpose(Unsqueeze(x, a), p) -> node`` becomes ``Unsqueeze(Transpose(x, p'), a')``.

    Channels-last data that did not come from a model input (an Embedding, say) reaches
    a Conv1D as ``Unsqueeze(1) -> Transpose``; this puts it in the 1-D conv pattern."""
    t = node.inputs[0].producer()
    if t is None or t.op_type != "Transpose" or len(t.outputs[0].uses()) != 1:
        return
    u = t.inputs[0].producer()
    if u is None or u.op_type != "Unsqueeze" or len(u.outputs[0].uses()) != 1 or len(u.inputs) < 2:
        return
    axes = ctx.const(u.inputs[1])
    p = tuple(t.attributes["perm"].as_ints())
    if axes is None:
        return
    axes = {int(a) % len(p) for a in axes.reshape(-1)}
    inserted = [j for j in range(len(p)) if p[j] in axes]
    small = [k - sum(1 for a in axes if a < k) for k in (p[j] for j in range(len(p)) if p[j] not in axes)]
    x = u.inputs[0]
    new_t = ctx.transposed(x, tuple(small), node)
    new_u = ir.node("Unsqueeze", [new_t, ctx.new_const(np.array(inserted, dtype=np.int64), "unsqueeze_axes")],
                    name=ctx.name(f"{u.name}/lifted"))
    ctx.graph.insert_before(node, new_u)
    new_u.outputs[0].type, new_u.outputs[0].shape = t.outputs[0].type, t.outputs[0].shape
    node.replace_input_with(0, new_u.outputs[0])
    ctx.remove(t)
    ctx.remove(u)


def _axes_const(ctx: Ctx, node: ir.Node) -> list | None:
    c = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    return None if c is None else [int(a) for a in c.reshape(-1)]


def _as_1d(ctx: Ctx, node: ir.Node) -> ir.Node | None:
    """A 2-D Conv/ConvTranspose/pool on ``(N, C, 1, W)`` whose window does not move along
    the unit axis (kernel, stride, dilation 1, no padding there) as the 1-D op on
    ``Squeeze(x, [2])``, followed by ``Unsqueeze([2])``; None if it does not qualify."""
    x, y = node.inputs[0], node.outputs[0]
    xd, yd = dims(x), dims(y)
    if len(node.outputs) != 1 or not xd or len(xd) != 4 or xd[2] != 1 or (yd and (len(yd) != 4 or yd[2] != 1)):
        return None
    a = {k: v.value for k, v in node.attributes.items()}
    ks = a.get("kernel_shape")
    w = ctx.const(node.inputs[1]) if node.op_type.startswith("Conv") else None
    if node.op_type.startswith("Conv"):
        if w is None or w.ndim != 4 or w.shape[2] != 1:
            return None
        ks = ks or list(w.shape[2:])
    if not ks or len(ks) != 2 or ks[0] != 1:
        return None
    if any(list(a.get(k, [1, 1]))[0] != 1 for k in ("strides", "dilations")):
        return None
    pads = list(a.get("pads", [0, 0, 0, 0]))
    auto_pad = a.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if pads[0] or pads[2] or auto_pad not in ("NOTSET", "VALID"):
        return None
    if list(a.get("output_padding", [0, 0]))[0] != 0 or ("output_shape" in a and list(a["output_shape"])[0] != 1):
        return None
    attrs = {}
    for k, v in a.items():
        if k in ("kernel_shape", "strides", "dilations", "output_padding", "output_shape"):
            attrs[k] = list(v)[1:]
        elif k == "pads":
            attrs[k] = [pads[1], pads[3]]
        else:
            attrs[k] = v
    sq = ir.node("Squeeze", [x, ctx.new_const(np.array([2], dtype=np.int64), "axes")], name=ctx.name(f"{node.name}/squeeze"))
    inputs = [sq.outputs[0]]
    if w is not None:
        inputs.append(ctx.new_const(w[:, :, 0, :], f"{node.name}/kernel1d"))
        inputs.extend(node.inputs[2:])
    new = ir.node(node.op_type, inputs, attrs, name=node.name)
    un = ir.node("Unsqueeze", [new.outputs[0], ctx.new_const(np.array([2], dtype=np.int64), "axes")],
                 name=ctx.name(f"{node.name}/unsqueeze"))
    for n in (sq, new, un):
        ctx.graph.insert_before(node, n)
    sq.outputs[0].type, sq.outputs[0].shape = x.type, ir.Shape([x.shape[0], x.shape[1], x.shape[3]])
    new.outputs[0].type = y.type
    if y.shape is not None:
        new.outputs[0].shape = ir.Shape([y.shape[0], y.shape[1], y.shape[3]])
    un.outputs[0].type, un.outputs[0].shape = y.type, y.shape
    ctx.redirect(y, un.outputs[0])
    ctx.remove(node)
    return new


def _cancel_squeezes(ctx: Ctx) -> None:
    """``Squeeze(Unsqueeze(v, a), a) -> v`` (the unit axis between two 1-D ops)."""
    for s in list(ctx.graph):
        if s.op_type != "Squeeze" or s.graph is not ctx.graph:
            continue
        u = s.inputs[0].producer()
        if u is None or u.op_type != "Unsqueeze" or (sa := _axes_const(ctx, s)) is None:
            continue
        ua = _axes_const(ctx, u)
        r = len(dims(s.inputs[0]) or [])
        if ua is None or not r or sorted(a % r for a in sa) != sorted(a % r for a in ua):
            continue
        ctx.redirect(s.outputs[0], u.inputs[0])
        ctx.remove(s)
        if not u.outputs[0].uses() and not u.outputs[0].is_graph_output():
            ctx.remove(u)


def conv1d(ctx: Ctx) -> list[str]:
    """Conv1D as tf2onnx writes it, ``Unsqueeze(x, [2]) -> Conv2D(kernel 1xk) -> ...
    -> Squeeze([2])``, becomes 1-D ops (Conv, ConvTranspose, pooling; a separable conv's
    two convs too), so torch gets ``Conv1d``, not a fake extra axis. Each such 2-D op
    becomes ``Squeeze -> op1d -> Unsqueeze`` and adjacent ``Unsqueeze -> Squeeze`` pairs
    cancel; what the 1-D op does not cover (a Slice between two convs) keeps its axis."""
    changed = []
    for node in list(ctx.graph):
        if node.op_type in _SPATIAL_1D and node.graph is ctx.graph:
            _lift_transpose_above_unsqueeze(ctx, node)
    for node in list(ctx.graph):
        if node.op_type not in _SPATIAL_1D or node.graph is not ctx.graph:
            continue
        if _as_1d(ctx, node) is not None:
            changed.append(node.name)
    _cancel_squeezes(ctx)
    return changed
