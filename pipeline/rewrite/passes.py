"""Graph passes around the layout pass: static reshapes, 1-D convs, the Flatten fold."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass, TopologicalSortPass

from pipeline.rewrite.context import Ctx, dims
from pipeline.rewrite.perm import inverse, to_last


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


def conv1d(ctx: Ctx) -> list[str]:
    """``Unsqueeze(x, [2]) -> Conv2D(kernel 1xk) -> Squeeze([2])`` becomes a 1-D Conv
    (also pooling and ConvTranspose), so torch gets ``Conv1d``, not a fake extra axis."""
    changed = []
    for node in list(ctx.graph):
        if node.op_type in _SPATIAL_1D and node.graph is ctx.graph:
            _lift_transpose_above_unsqueeze(ctx, node)
    for node in list(ctx.graph):
        if node.op_type not in _SPATIAL_1D or node.graph is not ctx.graph:
            continue
        u = node.inputs[0].producer()
        y = node.outputs[0]
        uses = list(y.uses())
        if u is None or u.op_type != "Unsqueeze" or len(uses) != 1 or y.is_graph_output() or len(node.outputs) != 1:
            continue
        s = uses[0].node
        if s.op_type != "Squeeze":
            continue
        ua = ctx.const(u.inputs[1]) if len(u.inputs) > 1 else None
        sa = ctx.const(s.inputs[1]) if len(s.inputs) > 1 else None
        if ua is None or sa is None or list(ua.reshape(-1)) != [2] or list(sa.reshape(-1)) != [2]:
            continue
        a = {k: v.value for k, v in node.attributes.items()}
        ks = a.get("kernel_shape")
        w = ctx.const(node.inputs[1]) if node.op_type.startswith("Conv") else None
        if node.op_type.startswith("Conv"):
            if w is None or w.ndim != 4 or w.shape[2] != 1:
                continue
            ks = ks or list(w.shape[2:])
        if not ks or len(ks) != 2 or ks[0] != 1:
            continue
        if any(a.get(k, [1, 1])[0] != 1 for k in ("strides", "dilations")):
            continue
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if pads[0] or pads[2] or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
            continue
        if "output_padding" in a and list(a["output_padding"])[0] != 0:
            continue
        attrs = {}
        for k, v in a.items():
            if k in ("kernel_shape", "strides", "dilations", "output_padding"):
                attrs[k] = list(v)[1:]
            elif k == "pads":
                attrs[k] = [pads[1], pads[3]]
            elif k == "output_shape":
                attrs[k] = list(v)[1:]
            else:
                attrs[k] = v
        inputs = [u.inputs[0]]
        if w is not None:
            inputs.append(ctx.new_const(w[:, :, 0, :], f"{node.name}/kernel1d"))
            inputs.extend(node.inputs[2:])
        new = ir.node(node.op_type, inputs, attrs, name=node.name)
        ctx.graph.insert_before(node, new)
        out = s.outputs[0]
        new.outputs[0].type, new.outputs[0].shape = out.type, out.shape
        ctx.redirect(out, new.outputs[0])
        for n in (s, node):
            ctx.remove(n)
        if not u.outputs[0].uses():
            ctx.remove(u)
        changed.append(node.name)
    return changed


def fold_flatten_transposes(ctx: Ctx) -> list[str]:
    """``Transpose(x, to_last) -> Flatten -> MatMul(W)`` with constant W: the rows of W are
    permuted once into channels-first order and the runtime Transpose goes away."""
    folded = []
    for t in list(ctx.graph):
        if t.op_type != "Transpose" or t.graph is not ctx.graph:
            continue
        p = tuple(t.attributes["perm"].as_ints())
        x, ty = t.inputs[0], t.outputs[0]
        xd = dims(x)
        if len(p) < 3 or p != to_last(len(p)) or not xd or any(d is None for d in xd[1:]):
            continue
        uses = list(ty.uses())
        if len(uses) != 1 or ty.is_graph_output():
            continue
        f = uses[0].node
        is_flat = (f.op_type == "Flatten" and ctx.attr(f, "axis", 1) == 1) or (
            f.op_type == "Reshape" and (c := ctx.const(f.inputs[1])) is not None and c.size == 2)
        if not is_flat or f.outputs[0].is_graph_output():
            continue
        fuses = list(f.outputs[0].uses())
        mats = [u.node for u in fuses]
        ok = all(m.op_type == "MatMul" and m.inputs[0] is f.outputs[0] and ctx.const(m.inputs[1]) is not None
                 and ctx.const(m.inputs[1]).ndim == 2 for m in mats)
        if not fuses or not ok:
            continue
        k = int(np.prod(xd[1:]))
        keras_index = np.arange(k).reshape([xd[i] for i in p[1:]])          # (*S, C) order
        order = np.transpose(keras_index, inverse(tuple(i - 1 for i in p[1:]))).reshape(-1)
        for m in mats:
            w = ctx.const(m.inputs[1])
            m.replace_input_with(1, ctx.new_const(w[order], f"{m.name}/kernel_channels_first"))
        f.replace_input_with(0, x)
        ctx.remove(t)
        folded.append(t.name)
    return folded
