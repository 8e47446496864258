"""Pooling: MaxPool and AveragePool of every spatial rank (``F.max_pool{n}d`` /
``F.avg_pool{n}d``), GlobalAveragePool and GlobalMaxPool.

Pads torch's pooling cannot take (asymmetric, or over half the kernel) become an explicit
``F.pad`` (``-inf`` for MaxPool); an AveragePool that leaves such pads out of the count
divides by a pooled mask of ones.
"""

from __future__ import annotations

from pipeline.codegen.gen import Gen, Unsupported, attrs, tuple_
from pipeline.codegen.ops.padding import pad_list, padded, spatial_pads, symmetric
from pipeline.core.registry import handles


@handles("MaxPool", "AveragePool")
def pool(gen: Gen, node):
    a = attrs(node)
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("MaxPool with an indices output")
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    pads = spatial_pads(gen, node, kernel, strides, dil)
    ceil = bool(a.get("ceil_mode", 0))
    x = gen.t(node.input[0])
    opts = f"{tuple_(kernel)}, stride={tuple_(strides)}" + (", ceil_mode=True" if ceil else "")
    fits = symmetric(pads) and all(2 * p <= k for p, k in zip(pads[:n], kernel))
    pads_any = any(not isinstance(p, int) or p for p in pads)
    if node.op_type == "MaxPool":
        if any(d != 1 for d in dil):
            opts += f", dilation={tuple_(dil)}"
        if pads_any and fits:
            opts += f", padding={tuple_(pads[:n])}"
        elif pads_any:
            x = padded(gen, x, pads, value="float('-inf')")
        gen.emit(node, f"F.max_pool{n}d({x}, {opts})")
        return
    if any(d != 1 for d in dil):
        raise Unsupported("a dilated AveragePool")
    include = bool(a.get("count_include_pad", 0))
    if not pads_any:
        gen.emit(node, f"F.avg_pool{n}d({x}, {opts})")
    elif fits:
        gen.emit(node, f"F.avg_pool{n}d({x}, {opts}, padding={tuple_(pads[:n])}, count_include_pad={include})")
    elif include:
        gen.emit(node, f"F.avg_pool{n}d({padded(gen, x, pads)}, {opts})")
    else:
        # asymmetric pads, pads left out of the count: sum over the window / number of real cells
        ones = gen.var("ones")
        gen.lines.append(f"{ones} = F.pad(torch.ones_like({x}[:1, :1]), {pad_list(pads)})")
        gen.emit(node, f"F.avg_pool{n}d({padded(gen, x, pads)}, {opts}) / F.avg_pool{n}d({ones}, {opts})")


@handles("GlobalAveragePool", "GlobalMaxPool")
def global_pool(gen: Gen, node):
    r = gen.rank(node.input[0])
    fn = "torch.mean" if node.op_type == "GlobalAveragePool" else "torch.amax"
    gen.emit(node, f"{fn}({gen.t(node.input[0])}, {tuple_(range(2, r))}, keepdim=True)")
