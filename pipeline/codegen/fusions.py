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


def fuse_bincount(nodes: list, gen, outputs=()) -> list:
    """``nodes`` with tf2onnx's DenseBincount (Keras' CategoryEncoding ``multi_hot``/``count``
    on a ``(batch, n)`` int input) as one node ``ai.keras2torch::Bincount(values)``
    (attributes ``depth``, ``binary``), and the nodes only it used dropped. tf2onnx builds it
    from ``Unique`` of (row, value) pairs, a ``Compress`` to the values in ``[0, depth)``
    and a ``ScatterND`` into zeros of ``(batch, depth)``, whose sizes depend on the data
    (torch.export refuses them); the count of each value per row is the same numbers."""
    from onnx import helper

    prod = {o: n for n in nodes for o in n.output}

    def src(name, op):
        n = prod.get(name)
        return n if n is not None and n.op_type == op and n.domain in ("", "ai.onnx") else None

    fused = {}
    for n in nodes:
        if n.op_type != "ScatterND" or len(n.input) != 3:
            continue
        zeros, comp = src(n.input[0], "ConstantOfShape"), src(n.input[1], "Compress")
        uniq = src(comp.input[0], "Unique") if comp is not None else None
        reshape = src(uniq.input[0], "Reshape") if uniq is not None else None
        pairs = src(reshape.input[0], "Concat") if reshape is not None else None
        shape_cat = src(zeros.input[0], "Concat") if zeros is not None else None
        if pairs is None or shape_cat is None or len(pairs.input) != 2:
            continue
        unsq = src(pairs.input[1], "Unsqueeze")
        depth = _bound(shape_cat.input[-1], src, gen)
        upd_comp = src(n.input[2], "Compress")
        binary = upd_comp is None
        if unsq is None or depth is None or (not binary and upd_comp.input[0] != uniq.output[3]):
            continue
        if len(gen.shapes.get(unsq.input[0]) or []) != 2:
            continue
        fused[id(n)] = helper.make_node("Bincount", [unsq.input[0]], [n.output[0]], name=n.name, domain=DOMAIN,
                                        depth=int(depth), binary=int(binary))
    if not fused:
        return nodes
    out = [fused.get(id(n), n) for n in nodes]
    return _live(out, outputs)


def _bound(name, src, gen):
    """The constant ``maxlength`` of ``Min(maxlength, ...)`` behind ``Unsqueeze(Cast(...))``."""
    for op in ("Unsqueeze", "Cast"):
        n = src(name, op)
        if n is None:
            return None
        name = n.input[0]
    m = src(name, "Min")
    consts = [gen.const(i) for i in m.input] if m is not None else []
    c = next((c for c in consts if c is not None and c.size == 1), None)
    return None if c is None else int(c.reshape(-1)[0])


def _live(nodes: list, outputs) -> list:
    """``nodes`` without those whose outputs nothing reads (the graph's outputs are read)."""
    while True:
        used = set(outputs) | {i for n in nodes for i in n.input}
        keep = [n for n in nodes if any(o in used for o in n.output if o)]
        if len(keep) == len(nodes):
            return nodes
        nodes = keep
