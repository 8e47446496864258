"""Reductions (ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceL2,
ReduceSumSquare, ReduceLogSumExp) and ArgMax/ArgMin.

The axes of a reduction are an attribute until ReduceSum moved them to an input at
opset 13 and the other reductions at opset 18: two registrations each.
"""

from __future__ import annotations

from pipeline.codegen.gen import Gen, Unsupported, attrs, tuple_
from pipeline.codegen.values import Shape, sym
from pipeline.core.registry import handles

REDUCE = {"ReduceMean": "torch.mean", "ReduceSum": "torch.sum", "ReduceMax": "torch.amax",
          "ReduceMin": "torch.amin", "ReduceProd": "torch.prod", "ReduceL2": "torch.linalg.vector_norm",
          "ReduceSumSquare": "torch.sum", "ReduceLogSumExp": "torch.logsumexp"}
_OTHERS = [op for op in REDUCE if op != "ReduceSum"]


def _reduce(gen: Gen, node, axes) -> None:
    a = attrs(node)
    keep = bool(a.get("keepdims", 1))
    v = gen.values.get(node.input[0])
    if isinstance(v, Shape) and not v.scalar and node.op_type in ("ReduceProd", "ReduceSum") \
            and (axes is None or [int(i) for i in axes] in ([0], [-1])):
        # shape arithmetic (tf2onnx's Tensordot: the product of the free dims), kept as an int expression
        op = "*" if node.op_type == "ReduceProd" else "+"
        acc = v.items[0] if v.items else (1 if op == "*" else 0)
        for item in v.items[1:]:
            acc = sym(op, acc, item)
        gen.set_shape(node, [acc], scalar=not keep)
        return
    x = gen.t(node.input[0])
    if node.op_type == "ReduceSumSquare":
        x = f"({x} * {x})"
    r = gen.rank(node.input[0])
    if axes is None:
        if a.get("noop_with_empty_axes", 0):
            gen.alias(node, node.input[0])
            return
        axes = list(range(r))
    axes = [int(v) % r for v in axes]
    if node.op_type == "ReduceProd":   # torch.prod takes one dim
        expr = x
        for ax in sorted(axes, reverse=True):
            expr = f"torch.prod({expr}, {ax}, keepdim={keep})"
        gen.emit(node, expr)
        return
    order = ", 2" if node.op_type == "ReduceL2" else ""    # vector_norm(x, ord, dim)
    gen.emit(node, f"{REDUCE[node.op_type]}({x}{order}, {tuple_(axes)}, keepdim={keep})")


@handles("ReduceSum", opsets=(13, None))
@handles(*_OTHERS, opsets=(18, None))
def reduce_axes_input(gen: Gen, node):
    """Axes from input 1 (none: all axes, or nothing with ``noop_with_empty_axes``)."""
    _reduce(gen, node, gen.ints(node, 1))


@handles("ReduceSum", opsets=(1, 12))
@handles(*_OTHERS, opsets=(1, 17))
def reduce_axes_attribute(gen: Gen, node):
    _reduce(gen, node, attrs(node).get("axes"))


@handles("ArgMax", "ArgMin")
def argmax(gen: Gen, node):
    a = attrs(node)
    if a.get("select_last_index", 0):
        raise Unsupported("select_last_index=1")
    fn = "torch.argmax" if node.op_type == "ArgMax" else "torch.argmin"
    gen.emit(node, f"{fn}({gen.t(node.input[0])}, {a.get('axis', 0)}, keepdim={bool(a.get('keepdims', 1))})")
