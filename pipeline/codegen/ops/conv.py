"""Conv and ConvTranspose of every spatial rank, in one converter: ``nn.Conv{1,2,3}d`` /
``nn.ConvTranspose{1,2,3}d`` named after the Keras layer that owns the kernel.

Padding torch cannot express in the module: asymmetric pads become an explicit ``F.pad``
before a Conv, and a crop after a ConvTranspose; ``auto_pad`` SAME and a ConvTranspose's
``output_shape`` are resolved to explicit pads (they need static spatial dims).

A bias ``Add`` after a bias-free conv is folded into the conv by the rewrite
(``fold_affine_into_conv``, ``fold_bias_add``), not here: this converter reads only its node.
"""

from __future__ import annotations

import numpy as np

from pipeline.codegen.gen import Gen, Unsupported, attrs, opt, short, tuple_
from pipeline.codegen.ops.padding import padded, spatial_pads, symmetric
from pipeline.core.registry import handles


def _transposed_pads(gen: Gen, node, a: dict, n: int, kernel, strides, dil) -> list[int]:
    """A ConvTranspose's pads, with ``output_shape`` / ``auto_pad`` SAME resolved."""
    out_pad = list(a.get("output_padding", [0] * n))
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if "output_shape" not in a and not auto.startswith("SAME"):
        return list(a.get("pads", [0] * 2 * n))
    dims = gen.dims(node.input[0])[2:]
    if "output_shape" not in a:   # SAME: the output is d * s, so the total pad does not depend on d
        dims = [1] * n
    elif not all(isinstance(d, int) for d in dims):
        raise Unsupported("output_shape on a dynamic spatial dimension")
    target = list(a["output_shape"])[-n:] if "output_shape" in a else [d * s for d, s in zip(dims, strides)]
    begin, end = [], []
    for d, k, s, dl, op, t in zip(dims, kernel, strides, dil, out_pad, target):
        total = s * (d - 1) + op + (k - 1) * dl + 1 - t
        if total < 0:
            raise Unsupported("an output_shape larger than the full transposed convolution")
        lo, hi = total // 2, total - total // 2
        # ONNX spec: SAME_UPPER pads total//2 at the start and the rest at the end; otherwise
        # (SAME_LOWER, or an output_shape with NOTSET) the reverse
        begin.append(lo if auto == "SAME_UPPER" else hi)
        end.append(hi if auto == "SAME_UPPER" else lo)
    return begin + end


@handles("Conv", "ConvTranspose")
def conv(gen: Gen, node):
    a = attrs(node)
    transposed = node.op_type == "ConvTranspose"
    w = gen.const(node.input[1])
    if w is None:
        raise Unsupported(f"a {node.op_type} with a computed (non-constant) kernel")
    n = w.ndim - 2
    kernel, groups = list(w.shape[2:]), a.get("group", 1)
    strides, dil = list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))
    # weight (out, in/groups, *k) for Conv, (in, out/groups, *k) for ConvTranspose
    in_ch, out_ch = (w.shape[0], w.shape[1] * groups) if transposed else (w.shape[1] * groups, w.shape[0])
    pads = (_transposed_pads(gen, node, a, n, kernel, strides, dil) if transposed
            else spatial_pads(gen, node, kernel, strides, dil))
    out_pad = list(a.get("output_padding", [0] * n)) if transposed else [0] * n
    bias = gen.opt_const(node, 2)
    if bias is None:   # Keras' all-zero bias, which tf2onnx dropped: a parameter again
        bias = gen.missing_bias(node, out_ch)
    x = gen.t(node.input[0])
    padding, crop = "0", None
    if any(not isinstance(p, int) or p for p in pads):
        if symmetric(pads):
            padding = short(pads[:n])
        elif transposed:
            crop = pads     # cut from the full output
        else:
            x = padded(gen, x, pads)
    ctor = (f"nn.{node.op_type}{n}d({in_ch}, {out_ch}, {short(kernel)}" + opt("stride", strides, 1)
            + ("" if padding == "0" else f", padding={padding}")
            + (f", output_padding={tuple_(out_pad)}" if any(out_pad) else "")
            + (f", dilation={tuple_(dil)}" if any(d != 1 for d in dil) else "")
            + (f", groups={groups}" if groups != 1 else "") + (", bias=False" if bias is None else "") + ")")
    params = {"weight": w} | ({"bias": bias.reshape(-1).astype(np.float32)} if bias is not None else {})
    expr = f"{gen.submodule(node, ctor, params)}({x})"
    if crop is not None:
        idx = [":", ":"] + [f"{b}:{(-e) if e else ''}" for b, e in zip(crop[:n], crop[n:])]
        expr = f"{expr}[{', '.join(idx)}]"
    gen.emit(node, expr)
