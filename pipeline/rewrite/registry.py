"""Layout rules keyed by ONNX op type and opset range.

A rule moves a ``Transpose`` that feeds a node to the node's outputs, remapping the
node's axes, so that the node runs on the un-transposed (channels-first) data:

    Op(Transpose(x, P), ...)  ==>  Transpose(Op'(x, ...), Q)

A rule gets ``(ctx, node)``, finds the transposed inputs with ``ctx.perm``, and either
rewrites the graph and returns ``True``, or returns a ``Fail`` saying why it cannot
(without touching the graph). An op with no rule is a barrier: the Transpose stays in
front of it, which keeps the result correct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


class Fail(str):
    """Why a rule does not apply; shown in the report for the Transposes that stay."""


@dataclass(frozen=True)
class Rule:
    op_type: str
    opsets: tuple[int, int]       # inclusive range
    fn: Callable
    family: str                   # module that defines it

    def applies(self, opset: int) -> bool:
        return self.opsets[0] <= opset <= self.opsets[1]


_RULES: dict[str, list[Rule]] = {}


def register(*op_types: str, opsets: tuple[int, int | None] = (1, None)):
    """Register ``fn`` for ``op_types``; an overlapping registration is an error."""
    lo, hi = opsets[0], opsets[1] if opsets[1] is not None else 10**6

    def deco(fn):
        for op in op_types:
            for r in _RULES.get(op, []):
                if not (hi < r.opsets[0] or lo > r.opsets[1]):
                    raise ValueError(f"layout rule for {op} opsets {lo}-{hi} already registered by {r.family}")
            _RULES.setdefault(op, []).append(Rule(op, (lo, hi), fn, fn.__module__.rsplit(".", 1)[-1]))
        return fn

    return deco


def lookup(op_type: str, opset: int) -> Rule | None:
    for r in _RULES.get(op_type, []):
        if r.applies(opset):
            return r
    return None


def registered() -> dict[str, list[Rule]]:
    return {k: list(v) for k, v in _RULES.items()}


def load_rules() -> None:
    """Import every rule module once; each registers its rules explicitly."""
    from pipeline.rewrite.rules import axis, elementwise, linear, reduce, shape, spatial  # noqa: F401
