"""Normalisation: BatchNormalization (``nn.BatchNorm{1,2,3}d`` with its statistics) and
LayerNormalization (``F.layer_norm``)."""

from __future__ import annotations

import numpy as np

from pipeline.codegen.gen import Gen, Unsupported, attrs
from pipeline.codegen.values import shape_list
from pipeline.core.registry import handles


@handles("BatchNormalization", opsets=(7, None))
def batchnorm(gen: Gen, node):
    """Inference form: constant scale, bias, mean and variance (per channel: ``spatial=1``)."""
    scale, b, mean, var = (gen.const(i) for i in node.input[1:5])
    if any(v is None for v in (scale, b, mean, var)):
        raise Unsupported("BatchNormalization with computed statistics")
    if not attrs(node).get("spatial", 1):
        raise Unsupported("BatchNormalization with spatial=0 (statistics per position)")
    r = gen.rank(node.input[0]) or 4
    kind = {2: 1, 3: 1, 4: 2, 5: 3}[r]
    eps = attrs(node).get("epsilon", 1e-5)
    mod = gen.submodule(node, f"nn.BatchNorm{kind}d({scale.shape[0]}, eps={float(eps)!r})",
                        {"weight": scale, "bias": b, "running_mean": mean, "running_var": var,
                         "num_batches_tracked": np.array(0, dtype=np.int64)})
    gen.emit(node, f"{mod}({gen.t(node.input[0])})")


@handles("LayerNormalization", opsets=(17, None))
def layernorm(gen: Gen, node):
    """Over the axes from ``axis`` on; scale and bias are buffers (any shape ONNX allows)."""
    a = attrs(node)
    axis = a.get("axis", -1) % gen.rank(node.input[0])
    shape = gen.dims(node.input[0])[axis:]
    scale = gen.t(node.input[1], hint=gen.const_hint(node))
    bias = gen.t(node.input[2], hint=gen.const_hint(node)) if len(node.input) > 2 and node.input[2] else "None"
    gen.emit(node, f"F.layer_norm({gen.t(node.input[0])}, {shape_list(shape)}, {scale}, {bias}, "
                   f"{float(a.get('epsilon', 1e-5))!r})")
