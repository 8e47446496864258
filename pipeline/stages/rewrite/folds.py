"""The folds that make ``rewrite/torch.onnx`` from ``nchw.onnx`` (``fold_for_torch``): each
moves work into a weighted op's constants, so torch gets one module where ONNX has several
nodes. Each returns the names of what it folded (empty when nothing applies, so a second
run changes nothing).

- ``fold_flatten_transposes``: ``Transpose -> Flatten -> Dense`` (the rewrite's own before a
  Flatten, or a Keras ``Permute``): the Dense rows permuted;
- ``fold_affine_into_conv``: per-channel ``Mul``/``Add`` after a Conv: into its weights/bias;
- ``fold_bias_add``: a bias ``Add`` after a bias-free ConvTranspose or rank-2 Dense: its bias.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from pipeline.core.perm import inverse
from pipeline.stages.rewrite.context import Ctx, dims


def _is_dense(ctx: Ctx, m: ir.Node, v: ir.Value) -> bool:
    w = ctx.const(m.inputs[1]) if len(m.inputs) > 1 else None
    return (m.op_type in ("MatMul", "Gemm") and m.inputs[0] is v and w is not None and w.ndim == 2
            and not ctx.attr(m, "transA", 0))


def _dense_users(ctx: Ctx, v: ir.Value) -> list | None:
    """Every user of the flat features ``v`` as (Dense node, first row of v in its weights):
    a MatMul/Gemm on v, or on a ``Concat(axis=1)`` of v with other features of known width;
    None if some user is anything else."""
    out = []
    for use in v.uses():
        n = use.node
        if _is_dense(ctx, n, v):
            out.append((n, 0))
            continue
        if n.op_type != "Concat" or ctx.attr(n, "axis") not in (1, -1) or n.outputs[0].is_graph_output():
            return None
        widths = [(dims(i) or [None, None])[1] for i in n.inputs[:use.idx]]
        cu = list(n.outputs[0].uses())
        if None in widths or not cu or not all(_is_dense(ctx, u.node, n.outputs[0]) for u in cu):
            return None
        out.extend((u.node, int(sum(widths))) for u in cu)
    return out or None


def fold_flatten_transposes(ctx: Ctx) -> list[str]:
    """``Transpose(x, p) -> Flatten -> MatMul/Gemm(W)`` with constant W (also through a
    ``Concat`` of flat features), for any ``p`` that keeps the batch first: ``to_last`` (the
    channels-last order restored before a Flatten) or a Keras ``Permute``'s. The rows of W are
    permuted once into the order of x's features and the runtime Transpose goes away."""
    folded = []
    for t in list(ctx.graph):
        if t.op_type != "Transpose" or t.graph is not ctx.graph:
            continue
        p = tuple(t.attributes["perm"].as_ints())
        x, ty = t.inputs[0], t.outputs[0]
        xd = dims(x)
        if len(p) < 3 or p[0] != 0 or not xd or any(d is None for d in xd[1:]):
            continue
        uses = list(ty.uses())
        if len(uses) != 1 or ty.is_graph_output():
            continue
        f = uses[0].node
        is_flat = (f.op_type == "Flatten" and ctx.attr(f, "axis", 1) == 1) or (
            f.op_type == "Reshape" and (c := ctx.const(f.inputs[1])) is not None and c.size == 2)
        if not is_flat or f.outputs[0].is_graph_output():
            continue
        denses = _dense_users(ctx, f.outputs[0])
        if not denses:
            continue
        k = int(np.prod(xd[1:]))
        keras_index = np.arange(k).reshape([xd[i] for i in p[1:]])          # the flattened order (to_last: (*S, C))
        order = np.transpose(keras_index, inverse(tuple(i - 1 for i in p[1:]))).reshape(-1)
        for m, offset in denses:
            w = ctx.const(m.inputs[1])
            trans_b = m.op_type == "Gemm" and ctx.attr(m, "transB", 0)
            rows = np.arange(w.shape[1] if trans_b else w.shape[0])
            rows[offset:offset + k] = offset + order
            w = w[:, rows] if trans_b else w[rows]
            m.replace_input_with(1, ctx.new_const(w, f"{m.name}/kernel_channels_first"))
        f.replace_input_with(0, x)
        ctx.remove(t)
        folded.append(t.name)
    return folded


def _per_channel(c: np.ndarray, out_rank: int, channels: int) -> np.ndarray | None:
    """``c`` as a (channels,) vector if it broadcasts along axis 1 of a rank ``out_rank``
    output only (a scalar included); None otherwise."""
    if c.ndim > out_rank or not np.issubdtype(c.dtype, np.floating):
        return None
    full = c.reshape((1,) * (out_rank - c.ndim) + c.shape)
    if any(d != 1 for i, d in enumerate(full.shape) if i != 1) or full.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1), (channels,))


def fold_affine_into_conv(ctx: Ctx) -> list[str]:
    """``Conv(W, b) -> Mul(s)`` / ``-> Add(a)`` with constant per-channel ``s``/``a`` (a batch
    norm grappler left unfolded, after a depthwise conv): one Conv with ``W·s``, ``b·s + a``.
    Equal up to float rounding (the product is taken once, on the weights)."""
    folded = []
    for node in list(ctx.graph):
        if node.op_type not in ("Mul", "Add") or node.graph is not ctx.graph or len(node.inputs) != 2:
            continue
        for i in (0, 1):
            conv, c = node.inputs[i].producer(), ctx.const(node.inputs[1 - i])
            if conv is not None and conv.op_type == "Conv" and c is not None:
                break
        else:
            continue
        y = conv.outputs[0]
        if len(list(y.uses())) != 1 or y.is_graph_output() or len(conv.inputs) < 2:
            continue
        w = ctx.const(conv.inputs[1])
        bias_in = conv.inputs[2] if len(conv.inputs) > 2 else None
        b = ctx.const(bias_in)   # None for a missing input too
        if w is None or (bias_in is not None and b is None):
            continue
        v = _per_channel(c, w.ndim, w.shape[0])
        if v is None or v.dtype != w.dtype:
            continue
        b = np.zeros(w.shape[0], w.dtype) if b is None else b
        if node.op_type == "Mul":
            w, b = w * v.reshape((-1,) + (1,) * (w.ndim - 1)), b * v
        else:
            b = b + v
        new = ir.node("Conv", [conv.inputs[0], ctx.new_const(w, f"{conv.name}/W_folded"),
                               ctx.new_const(b.astype(w.dtype, copy=False), f"{conv.name}/B_folded")],
                      {k: a.value for k, a in conv.attributes.items()}, name=conv.name)
        ctx.graph.insert_before(node, new)
        out = node.outputs[0]
        new.outputs[0].type, new.outputs[0].shape = out.type, out.shape
        if not out.is_graph_output():   # the layer's output keeps its name (redirect does it for outputs)
            name, out.name = out.name, ctx.name(out.name)
            new.outputs[0].name = name
        ctx.redirect(out, new.outputs[0])
        ctx.remove(node)
        ctx.remove(conv)
        folded.append(node.name)
    return folded


def _bias_of(ctx: Ctx, add: ir.Node, channels: int, rank: int | None) -> tuple[ir.Node, np.ndarray] | None:
    """(the producer of the other operand, the constant as a ``(channels,)`` vector) if
    ``add`` adds a float32 constant that only varies along the channel axis of the output
    of its other operand, a node's only use: axis 1 for ``rank`` (a conv output's rank),
    the last axis when ``rank`` is None (a Dense output; at most rank 2, so that the Add
    does not broadcast the output to a higher rank)."""
    if add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
        return None
    for i in (0, 1):
        node, c = add.inputs[i].producer(), ctx.const(add.inputs[1 - i])
        if node is not None and c is not None:
            break
    else:
        return None
    y = add.inputs[i]
    if len(list(y.uses())) != 1 or y.is_graph_output() or c.dtype != np.float32 or c.size != channels:
        return None
    shape = list(c.shape)
    if rank is None:
        ok = 1 <= len(shape) <= 2 and shape[-1] == channels
    else:
        ok = len(shape) <= rank and [1] * (rank - len(shape)) + shape == [1, channels] + [1] * (rank - 2)
    return (node, c.reshape(-1)) if ok else None


def _fused(ctx: Ctx, add: ir.Node, node: ir.Node, op_type: str, inputs: list, attributes: dict) -> None:
    """Replace ``node -> add`` by one ``op_type`` node named as ``node``, whose output keeps
    the Add output's name (and its place among the graph outputs)."""
    new = ir.node(op_type, inputs, attributes, name=node.name)
    ctx.graph.insert_before(add, new)
    out = add.outputs[0]
    new.outputs[0].type, new.outputs[0].shape = out.type, out.shape
    if not out.is_graph_output():
        name, out.name = out.name, ctx.name(out.name)
        new.outputs[0].name = name
    ctx.redirect(out, new.outputs[0])
    ctx.remove(add)
    ctx.remove(node)


def fold_bias_add(ctx: Ctx) -> list[str]:
    """A float32 constant ``Add`` along the output channels after an op with no bias, the
    op's only use, becomes the op's bias (tf2onnx writes Keras' bias as a separate Add):

    1. ``ConvTranspose(x, W) -> Add(b)``, ``b`` of shape ``(1, C, 1, ...)`` or a suffix of
       it: ``ConvTranspose(x, W, b)``;
    2. ``MatMul(x, W) -> Add(b)`` with a constant ``(K, C)`` matrix ``W``, ``x`` of rank 2
       and ``b`` of shape ``(C,)`` or ``(1, C)``: ``Gemm(x, W, b)`` (an ``nn.Linear`` with bias
       in torch). ONNX's Gemm is rank 2 only: a Dense on a rank-3+ tensor keeps its Add.

    A Conv's Add is ``fold_affine_into_conv``'s. The sum is the same, in the same order.
    """
    folded = []
    for add in list(ctx.graph):
        if add.op_type != "Add" or add.graph is not ctx.graph:
            continue
        for node in (v.producer() for v in add.inputs):
            if node is None or node.op_type not in ("ConvTranspose", "MatMul") or node.domain != "":
                continue
            w = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
            if w is None:
                continue
            if node.op_type == "ConvTranspose":
                if len(node.inputs) > 2 and node.inputs[2] is not None:
                    continue
                fit = _bias_of(ctx, add, w.shape[1] * ctx.attr(node, "group", 1), w.ndim)
                if fit is None or fit[0] is not node:
                    continue
                bias = ctx.new_const(fit[1], f"{node.name}/bias")
                _fused(ctx, add, node, "ConvTranspose", [node.inputs[0], node.inputs[1], bias],
                       {k: a.value for k, a in node.attributes.items()})
            else:
                x = node.inputs[0]
                if w.ndim != 2 or ctx.const(x) is not None or len(dims(x) or []) != 2:
                    continue
                fit = _bias_of(ctx, add, w.shape[1], None)
                if fit is None or fit[0] is not node:
                    continue
                _fused(ctx, add, node, "Gemm", [x, node.inputs[1], ctx.new_const(fit[1], f"{node.name}/bias")], {})
            folded.append(add.name)
            break
    return folded
