"""Graph rules the generator applies to its own node list, for what ONNX has no single op for.

The rewrite fuses what ONNX can express (``fold_bias_add``: a rank-2 ``MatMul -> Add`` is a
``Gemm``). A Keras Dense on a rank-3+ tensor (sequences, attention) is ``MatMul -> Add``
in ONNX, whose ``Gemm`` is rank 2 only; torch's ``nn.Linear`` takes any rank. So here,
and only in the generator's memory (``torch.onnx`` stays valid ONNX for onnxruntime and
onnx2torch), the pair becomes one node ``ai.keras2torch::Linear(x, W, b)`` named after
the MatMul, which the ``linear`` converters turn into one ``nn.Linear`` with its bias as
a parameter, as a hand-written port has it. A converter still reads only its node.
"""

from __future__ import annotations

import numpy as np

DOMAIN = "ai.keras2torch"


def fuse_dense_bias(nodes: list, gen, outputs=()) -> list:
    """``nodes`` with each ``MatMul(x, W) -> Add(b)`` of a Dense replaced by a ``Linear``
    node: ``W`` a constant float32 matrix, ``x`` of rank 3 or more, the Add the MatMul's
    only use, ``b`` a float32 constant of shape ``(C,)`` or ``(1, ..., 1, C)``. The sum is
    the same, in the same order (``x @ W + b``). ``outputs``: the graph's output names (a
MatMul result the graph returns is not fused away)."""
    from onnx import helper

    users: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            users.setdefault(i, []).append(n)
    fused, out = {}, []
    for n in nodes:
        if n.op_type != "MatMul" or n.domain not in ("", "ai.onnx") or len(users.get(n.output[0], [])) != 1 \
                or n.output[0] in outputs:
            continue
        w = gen.const(n.input[1])
        rank = len(gen.shapes.get(n.input[0]) or [])
        add = (users.get(n.output[0]) or [None])[0]
        if w is None or w.ndim != 2 or w.dtype != np.float32 or rank < 3 or add is None or add.op_type != "Add":
            continue
        b_name = add.input[1] if add.input[0] == n.output[0] else add.input[0]
        b = gen.const(b_name)
        if b is None or b.dtype != np.float32 or b.size != w.shape[1] or b.shape[-1:] != (w.shape[1],) \
                or b.ndim > rank:
            continue
        fused[id(n)] = helper.make_node("Linear", [n.input[0], n.input[1], b_name], [add.output[0]], name=n.name,
                                        domain=DOMAIN)
        fused[id(add)] = None
    for n in nodes:
        if id(n) in fused:
            if fused[id(n)] is not None:
                out.append(fused[id(n)])
        else:
            out.append(n)
    return out
