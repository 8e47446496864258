"""Padding helpers shared by the conv, pool and Pad converters (no converters here)."""

from __future__ import annotations

from pipeline.codegen.gen import Gen, Unsupported, attrs


def spatial_pads(gen: Gen, node, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX pads ``[b1.., e1..]`` with ``auto_pad`` resolved (needs static spatial dims for SAME)."""
    a = attrs(node)
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID") or not auto:
        return list(a.get("pads", [0] * 2 * n)) if auto != "VALID" else [0] * 2 * n
    dims = gen.dims(node.input[0])[2:]
    begin, end = [], []
    for d, k, s, dl in zip(dims, kernel, strides, dilations):
        if not isinstance(d, int):
            raise Unsupported(f"auto_pad={auto} on a dynamic spatial dimension")
        out = -(-d // s)
        total = max((out - 1) * s + (k - 1) * dl + 1 - d, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def torch_pad(pads: list[int]) -> list[int]:
    """ONNX ``[b1, b2, e1, e2]`` -> F.pad's ``(b_last, e_last, ..., b1, e1)``."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def symmetric(pads: list[int]) -> bool:
    n = len(pads) // 2
    return pads[:n] == pads[n:]


def padded(gen: Gen, x: str, pads: list[int], value: str = "0.0") -> str:
    """``x`` padded explicitly (a separate line, so forward stays readable)."""
    v = gen.var("padded")
    gen.lines.append(f"{v} = F.pad({x}, {torch_pad(pads)}, value={value})")
    return v
