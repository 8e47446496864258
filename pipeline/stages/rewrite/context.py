"""Graph helpers shared by the layout rules and passes (onnx_ir working representation)."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from pipeline.core.perm import Perm, inverse, is_identity
from pipeline.core.registry import Fail


_ID = re.compile(r"__k2t(\d+)")


def dims(value: ir.Value) -> list | None:
    """Dims of ``value`` (ints, or None where unknown), or None if the rank is unknown."""
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape.dims]


def rank(value: ir.Value) -> int | None:
    d = dims(value)
    return None if d is None else len(d)


@dataclass
class Ctx:
    graph: ir.Graph
    opset: int
    barriers: dict = field(default_factory=dict)     # node name -> (op_type, reason)
    _ids: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self):
        # names made by an earlier Ctx on this graph stay unique: count on from the largest
        taken = [v.name for n in self.graph for v in n.outputs] + list(self.graph.initializers)
        taken += [n.name for n in self.graph] + [v.name for v in self.graph.inputs]
        ids = [int(k) for s in taken if s for k in _ID.findall(s)]
        self._ids = itertools.count(max(ids) + 1 if ids else 0)

    # -- reading -------------------------------------------------------------------------
    @staticmethod
    def perm(value: ir.Value) -> Perm | None:
        """The perm of the Transpose that produces ``value``, else None."""
        p = value.producer() if value is not None else None
        if p is not None and p.op_type == "Transpose" and p.domain == "":
            return tuple(p.attributes["perm"].as_ints())
        return None

    @staticmethod
    def const(value: ir.Value) -> np.ndarray | None:
        if value is None:
            return None
        t = value.const_value
        if t is None:
            p = value.producer()
            if p is not None and p.op_type == "Constant" and "value" in p.attributes:
                t = p.attributes["value"].as_tensor()
        return None if t is None else t.numpy()

    @staticmethod
    def attr(node: ir.Node, name: str, default=None):
        a = node.attributes.get(name)
        return default if a is None else a.value

    def fail(self, node: ir.Node, reason: str) -> Fail:
        self.barriers[node.name] = (node.op_type, reason)
        return Fail(reason)

    # -- writing -------------------------------------------------------------------------
    def name(self, hint: str) -> str:
        return f"{hint}__k2t{next(self._ids)}"

    def new_const(self, array: np.ndarray, hint: str) -> ir.Value:
        array = np.ascontiguousarray(array)
        v = ir.Value(name=self.name(hint), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array))
        v.const_value.name = v.name
        self.graph.register_initializer(v)
        return v

    def set_attr(self, node: ir.Node, name: str, value) -> None:
        node.attributes[name] = ir.convenience.convert_attribute(name, value)

    def bypass(self, node: ir.Node, index: int) -> None:
        """Feed input ``index`` of ``node`` from before its Transpose."""
        t = node.inputs[index].producer()
        node.replace_input_with(index, t.inputs[0])

    def transpose_output(self, node: ir.Node, index: int, q: Perm) -> None:
        """Make output ``index`` of ``node`` pre-transposed: its old users see Transpose(out, q)."""
        y = node.outputs[index]
        old_shape = y.shape
        if old_shape is not None and len(old_shape) == len(q):
            new = [None] * len(q)
            for j, src in enumerate(q):
                new[src] = old_shape[j]
            y.shape = ir.Shape(new)
        if is_identity(q):
            return
        t = ir.node("Transpose", [y], {"perm": list(q)}, name=self.name(f"{node.name}/transpose"))
        self.graph.insert_after(node, t)
        out = t.outputs[0]
        out.type, out.shape = y.type, old_shape
        self.redirect(y, out, exclude=t)

    def redirect(self, old: ir.Value, new: ir.Value, exclude: ir.Node | None = None) -> None:
        """Every use of ``old`` (but ``exclude``) reads ``new``; a graph output keeps its name."""
        for use in list(old.uses()):
            if use.node is not exclude:
                use.node.replace_input_with(use.idx, new)
        outputs = self.graph.outputs
        for i, v in enumerate(outputs):
            if v is old:
                name = old.name
                old.name = self.name(name)
                new.name = name
                outputs[i] = new

    def transposed(self, value: ir.Value, perm: Perm, before: ir.Node) -> ir.Value:
        """A new Transpose(value, perm) inserted before ``before``."""
        if is_identity(perm):
            return value
        t = ir.node("Transpose", [value], {"perm": list(perm)}, name=self.name(f"{before.name}/transpose"))
        self.graph.insert_before(before, t)
        d = dims(value)
        if d is not None:
            t.outputs[0].shape = ir.Shape([d[i] for i in perm])
        t.outputs[0].type = value.type
        return t.outputs[0]

    def remove(self, node: ir.Node) -> None:
        """Remove ``node`` and its uses of its inputs (so use counts stay right)."""
        for i in range(len(node.inputs)):
            node.replace_input_with(i, None)
        self.graph.remove(node, safe=False)

    # -- the common case: element-wise data inputs ----------------------------------------
    def align(self, node: ir.Node, p: Perm, indices) -> list | Fail:
        """New values for the data inputs ``indices`` of a node being pushed through with ``p``.

        Each must be Transpose(x, p) (-> x), a constant (-> permuted once, here), or a
        scalar (unchanged). Anything else is a reason to stay a barrier.
        """
        r = len(p)
        plan = []
        for i in indices:
            v = node.inputs[i] if i < len(node.inputs) else None
            if v is None:
                plan.append((i, None))
                continue
            vp = self.perm(v)
            if vp == p:
                plan.append((i, "bypass"))
                continue
            c = self.const(v)
            if c is not None:
                if c.size == 1 and c.ndim <= r:
                    plan.append((i, None))
                elif c.ndim <= r:
                    full = c.reshape((1,) * (r - c.ndim) + c.shape)
                    plan.append((i, np.transpose(full, inverse(p))))
                else:
                    return self.fail(node, f"constant input {i} has rank {c.ndim} > {r}")
                continue
            if vp is not None:
                return self.fail(node, f"inputs are transposed differently ({vp} vs {p})")
            if rank(v) == 0:
                plan.append((i, None))
                continue
            return self.fail(node, f"input {i} ({v.name}) is not in the transposed layout and not a constant")
        return plan

    def apply_align(self, node: ir.Node, plan: list) -> None:
        for i, what in plan:
            if what is None:
                continue
            if isinstance(what, str):
                self.bypass(node, i)
            else:
                node.replace_input_with(i, self.new_const(what, f"{node.inputs[i].name}_cf"))
