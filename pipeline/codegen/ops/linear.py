"""MatMul and Gemm (``nn.Linear`` when the weight is a constant matrix, else a plain
matmul) and Einsum.

A Dense layer's bias ``Add`` becomes the Linear's bias through graph rules, never by a
converter looking ahead: the rewrite's ``fold_bias_add`` turns a rank-2 ``MatMul -> Add``
into a ``Gemm``; for rank 3 and more, which ONNX's Gemm does not take, the generator's own
``fusions.fuse_dense_bias`` makes an ``ai.keras2torch::Linear(x, W, b)`` node.
"""

from __future__ import annotations

import numpy as np

from pipeline.codegen.gen import Gen, attrs
from pipeline.core.registry import handles


def _linear(gen: Gen, node, w: np.ndarray, bias: np.ndarray | None) -> None:
    """``nn.Linear`` with weight ``w`` (out, in) and an optional bias (out,); without one, the
    zero bias of its Keras layer that tf2onnx dropped (``Gen.missing_bias``) when it has one."""
    if bias is None:
        bias = gen.missing_bias(node, w.shape[0])
    ctor = f"nn.Linear({w.shape[1]}, {w.shape[0]}" + (", bias=False" if bias is None else "") + ")"
    params = {"weight": np.ascontiguousarray(w.astype(np.float32))} | ({"bias": bias} if bias is not None else {})
    gen.emit(node, f"{gen.submodule(node, ctor, params)}({gen.t(node.input[0])})")


@handles("MatMul")
def matmul(gen: Gen, node):
    w = gen.const(node.input[1])
    if w is None or w.ndim != 2 or gen.const(node.input[0]) is not None:
        gen.emit(node, f"torch.matmul({gen.t(node.input[0], hint=gen.const_hint(node))}, "
                       f"{gen.t(node.input[1], hint=gen.const_hint(node))})")
        return
    _linear(gen, node, w.T, None)


@handles("Gemm")
def gemm(gen: Gen, node):
    """``alpha * A' @ B' + beta * C``: a Linear (alpha and beta folded into its weights)
    when B is constant, A not transposed and C (if any) a constant that does not vary
    along the rows."""
    a = attrs(node)
    w, bias = gen.const(node.input[1]), gen.opt_const(node, 2)
    has_c = len(node.input) > 2 and node.input[2]
    per_row = bias is not None and bias.ndim == 2 and bias.shape[0] != 1    # C varies along M: not a bias
    if a.get("transA", 0) or w is None or (has_c and bias is None) or per_row:
        x, y = gen.t(node.input[0]), gen.t(node.input[1])
        x = f"{x}.t()" if a.get("transA", 0) else x
        y = f"{y}.t()" if a.get("transB", 0) else y
        expr = f"{float(a.get('alpha', 1.0))!r} * ({x} @ {y})"
        if len(node.input) > 2 and node.input[2]:
            expr += f" + {float(a.get('beta', 1.0))!r} * {gen.t(node.input[2], hint=gen.const_hint(node))}"
        gen.emit(node, expr)
        return
    w = w.T if not a.get("transB", 0) else w      # -> (out, in)
    w = w * a.get("alpha", 1.0)
    if bias is not None:
        bias = np.broadcast_to((bias * a.get("beta", 1.0)).reshape(-1), (w.shape[0],)).astype(np.float32)
    _linear(gen, node, w, bias)


@handles("ai.keras2torch::Linear")
def dense(gen: Gen, node):
    """``x @ W + b`` on a rank-3+ ``x`` (``fusions.fuse_dense_bias``): ``nn.Linear`` with bias."""
    w, b = gen.const(node.input[1]), gen.const(node.input[2])
    _linear(gen, node, w.T, np.ascontiguousarray(b.reshape(-1)))


@handles("Einsum")
def einsum(gen: Gen, node):
    eq = attrs(node)["equation"]
    gen.emit(node, f"torch.einsum({eq!r}, {', '.join(gen.t(i, hint=gen.const_hint(node)) for i in node.input)})")
