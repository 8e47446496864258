"""The three kinds of value the generator tracks, and arithmetic on shape values.

- ``Const``: known at generation time (an initializer, or a node folded by ``fold``);
- ``Shape``: a small int vector (or scalar) computed from tensor shapes, kept as Python int
  expressions (``x.shape[0]``) so that the batch dimension stays symbolic;
- ``Tensor``: a variable (or expression) in ``forward``.

A converter whose op also works on shape values (Add, Gather, Concat, ...) asks
``shape_like``/``as_shape`` here and stores a ``Shape`` result instead of emitting code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Const:
    value: np.ndarray


@dataclass
class Shape:
    """An int64 vector (or scalar) whose entries are Python int expressions; ``boolean``:
    a comparison's 0/1 entries, a bool tensor where it becomes one."""
    items: list
    scalar: bool = False
    boolean: bool = False


@dataclass
class Tensor:
    expr: str
    dtype: str | None = None   # numpy dtype name when known


def pyexpr(v) -> str:
    return str(int(v)) if isinstance(v, (int, np.integer)) else str(v)


def shape_list(items) -> str:
    """``(a, b)``, ``(a,)``: a tuple of ints or int expressions."""
    return "(" + ", ".join(pyexpr(i) for i in items) + ("," if len(items) == 1 else "") + ")"


def any_shape(values: dict, node) -> bool:
    """Does any input of ``node`` hold a ``Shape`` value?"""
    return any(isinstance(values.get(i), Shape) for i in node.input if i)


def shape_like(values: dict, name: str) -> bool:
    """A ``Shape``, or a small constant int vector that can join shape arithmetic."""
    v = values.get(name)
    return isinstance(v, Shape) or (isinstance(v, Const) and v.value.dtype.kind in "iu" and v.value.ndim <= 1
                                    and v.value.size <= 8)


def as_shape(values: dict, name: str) -> Shape:
    v = values[name]
    if isinstance(v, Shape):
        return v
    return Shape([int(i) for i in v.value.reshape(-1)], scalar=v.value.ndim == 0)


def broadcast(parts: list[Shape]) -> list[list]:
    """The entries of each shape value, a one-entry vector repeated to the longest length."""
    n = max(len(p.items) for p in parts)
    return [p.items * n if len(p.items) == 1 else p.items for p in parts]


def sym(op: str, a, b):
    """``a op b`` on ints (evaluated) or int expressions (a Python expression)."""
    if isinstance(a, int) and isinstance(b, int):
        return {"+": a + b, "-": a - b, "*": a * b, "//": a // b if b else 0}[op]
    return f"({pyexpr(a)} {op} {pyexpr(b)})"
