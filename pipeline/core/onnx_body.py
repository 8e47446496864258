"""``Body``: the nodes of a model-local ONNX function being built, with fresh local names.
The export stage's recurrent bodies and the trainable layers' bodies (rebuilt by the
rewrite when a layout moves an axis) are written with it."""

from __future__ import annotations

import numpy as np


class Body:
    """The nodes of one function body; ``body(op, inputs, n_out=1, **attrs)`` adds a node and
    returns its output name (a list for ``n_out > 1``). ``prefix`` keeps a nested graph's
    names (a Scan's step) apart from its parent's."""

    def __init__(self, prefix: str = "t"):
        self.nodes = []
        self.prefix = prefix
        self.n = 0

    def __call__(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str] | str:
        from onnx import helper

        self.n += 1
        outs = [f"{self.prefix}{self.n}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, **attrs))
        return outs if n_out > 1 else outs[0]

    def const(self, value) -> str:
        from onnx import numpy_helper

        return self("Constant", [], value=numpy_helper.from_array(np.asarray(value)))
