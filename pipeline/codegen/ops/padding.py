"""Padding helpers shared by the conv, pool and Pad converters (no converters here)."""

from __future__ import annotations

from pipeline.codegen.gen import Gen, attrs
from pipeline.codegen.values import pyexpr


def spatial_pads(gen: Gen, node, kernel: list[int], strides: list[int], dilations: list[int]) -> list:
    """ONNX pads ``[b1.., e1..]`` with ``auto_pad`` resolved. A strided SAME on a dynamic
    spatial dim pads by an amount that depends on the size: those entries are Python int
    expressions (a ``pad_total`` line computed from ``x.shape`` first), the others ints."""
    a = attrs(node)
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID") or not auto:
        return list(a.get("pads", [0] * 2 * n)) if auto != "VALID" else [0] * 2 * n
    dims = gen.dims(node.input[0])[2:]
    begin, end = [], []
    for d, k, s, dl in zip(dims, kernel, strides, dilations):
        eff = (k - 1) * dl + 1
        if isinstance(d, int) or s == 1:   # stride 1: the total is eff - 1 whatever the size
            total = max((-(-d // s) - 1) * s + eff - d, 0) if isinstance(d, int) else max(eff - 1, 0)
            small, big = total // 2, total - total // 2
        else:
            expr = f"(-(-{d} // {s}) - 1) * {s} + {eff} - {d}"   # (ceil(d / s) - 1) * s + eff - d
            total = gen.var("pad_total")   # >= eff - s: clamped at 0 only where that can be negative
            gen.lines.append(f"{total} = {expr if eff >= s else f'torch.sym_max({expr}, 0)'}")
            small, big = f"{total} // 2", f"{total} - {total} // 2"
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def torch_pad(pads: list) -> list:
    """ONNX ``[b1, b2, e1, e2]`` -> F.pad's ``(b_last, e_last, ..., b1, e1)``."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def symmetric(pads: list) -> bool:
    """Static pads, the same at both ends of each axis."""
    n = len(pads) // 2
    return all(isinstance(p, int) for p in pads) and pads[:n] == pads[n:]


def pad_list(pads: list) -> str:
    """F.pad's pad argument (ints or int expressions) as code."""
    return "[" + ", ".join(pyexpr(p) for p in torch_pad(pads)) + "]"


def padded(gen: Gen, x: str, pads: list, value: str = "0.0") -> str:
    """``x`` padded explicitly (a separate line, so forward stays readable)."""
    v = gen.var("padded")
    gen.lines.append(f"{v} = F.pad({x}, {pad_list(pads)}, value={value})")
    return v
