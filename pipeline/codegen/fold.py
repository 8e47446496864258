"""Constant folding: the first step of the walk for every node.

A node whose inputs are all constants (a ``Constant`` node included) is evaluated once,
with ``onnx.reference``, and its outputs become constants. This is one step of the walk,
not a per-converter helper, because any op can meet constant inputs (tf2onnx leaves
``Shape -> Cast -> Mul`` chains on static shapes, ``Transpose`` of a weight, ...): folding
them here means a converter only ever sees a node with at least one runtime input, and
ops with no converter still work where they only touch constants.

Not folded: random ops, weighted ops (a Conv, LSTM or Dense keeps its weights in a named
submodule even when its data input is constant), and inputs over 10M elements.
"""

from __future__ import annotations

import numpy as np

from pipeline.codegen.values import Const

_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
WEIGHTED = {"Conv", "ConvTranspose", "LSTM", "GRU", "RNN", "BatchNormalization", "MatMul", "Gemm", "Linear"}
_MAX_ELEMENTS = 10_000_000


def fold(gen, node) -> bool:
    """Evaluate ``node`` if its inputs are all constants; True when its outputs are now constants."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    ins = [i for i in node.input if i]
    if node.op_type in _NO_FOLD or node.op_type in WEIGHTED:
        return False
    if any(not isinstance(gen.values.get(i), Const) for i in ins) or (not ins and node.op_type != "Constant"):
        return False
    if sum(gen.values[i].value.size for i in ins) > _MAX_ELEMENTS:
        return False
    feeds = {f"i{k}": gen.values[i].value for k, i in enumerate(node.input) if i}
    names = [f"i{k}" if i else "" for k, i in enumerate(node.input)]
    inputs = [onnx.helper.make_tensor_value_info(f"i{k}", onnx.helper.np_dtype_to_tensor_dtype(gen.values[i].value.dtype),
                                                 None) for k, i in enumerate(node.input) if i]
    outs = [f"o{k}" for k in range(len(node.output))]
    n = onnx.helper.make_node(node.op_type, names, outs, domain=node.domain)
    n.attribute.extend(node.attribute)
    g = onnx.helper.make_graph([n], "fold", inputs, [onnx.helper.make_value_info(o, onnx.TypeProto()) for o in outs])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", gen.opset)])
    try:
        res = ReferenceEvaluator(m).run(None, feeds)
    except Exception:  # the reference runtime lacks some ops; the converter handles the node then
        return False
    for name, r in zip(node.output, res):
        if name:
            gen.values[name] = Const(np.asarray(r))
    return True
