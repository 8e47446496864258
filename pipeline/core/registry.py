"""Handlers keyed by ONNX op type and opset range: the rewrite's layout rules and the code
generator's converters both use it (as onnxscript's ``@register("Softmax", version=(13, None))``
and onnx2torch's ``(domain, op type, version)`` registry do).

A module of one op family marks its handlers with ``@handles("Conv", "ConvTranspose",
opsets=(11, None))``; marking has no side effect. The package of the family modules builds
its registry explicitly from the list of modules (``Registry.collect``), so what is
registered is what that list names, and an overlapping registration fails at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MAX_OPSET = 10**6
_MARK = "__handles__"


class Fail(str):
    """Why a handler does not apply to a node (shown to the user); no side effect."""


@dataclass(frozen=True)
class Entry:
    op_type: str
    opsets: tuple[int, int]       # inclusive range
    fn: Callable
    family: str                   # the module that defines it

    def applies(self, opset: int) -> bool:
        return self.opsets[0] <= opset <= self.opsets[1]


def handles(*op_types: str, opsets: tuple[int, int | None] = (1, None)):
    """Mark ``fn`` as the handler of ``op_types`` for an inclusive opset range."""
    lo, hi = opsets[0], opsets[1] if opsets[1] is not None else MAX_OPSET

    def deco(fn):
        getattr(fn, _MARK, None) or setattr(fn, _MARK, [])
        getattr(fn, _MARK).extend((op, lo, hi) for op in op_types)
        return fn

    return deco


class Registry:
    """Op type -> handlers with disjoint opset ranges."""

    def __init__(self, what: str):
        self.what = what
        self._by_op: dict[str, list[Entry]] = {}

    @classmethod
    def collect(cls, what: str, modules) -> "Registry":
        """Every handler marked with ``handles`` in ``modules``, in their order."""
        reg = cls(what)
        for mod in modules:
            for fn in vars(mod).values():
                if not callable(fn) or getattr(fn, "__module__", None) != mod.__name__:
                    continue   # only the module's own handlers, not ones it imported
                for op, lo, hi in getattr(fn, _MARK, ()):
                    reg.add(Entry(op, (lo, hi), fn, mod.__name__.rsplit(".", 1)[-1]))
        return reg

    def add(self, entry: Entry) -> None:
        for r in self._by_op.get(entry.op_type, []):
            if not (entry.opsets[1] < r.opsets[0] or entry.opsets[0] > r.opsets[1]):
                raise ValueError(f"{self.what} for {entry.op_type} opsets {entry.opsets[0]}-{entry.opsets[1]} "
                                 f"already registered by {r.family}")
        self._by_op.setdefault(entry.op_type, []).append(entry)

    def lookup(self, op_type: str, opset: int) -> Entry | None:
        return next((e for e in self._by_op.get(op_type, []) if e.applies(opset)), None)

    def entries(self) -> dict[str, list[Entry]]:
        return {k: list(v) for k, v in self._by_op.items()}

    def op_types(self) -> list[str]:
        return sorted(self._by_op)
