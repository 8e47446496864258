"""Indexing by tensor values: OneHot, Unique, Compress, ScatterND, ScatterElements
(tf2onnx's CategoryEncoding: ``one_hot`` as OneHot, ``multi_hot``/``count`` as a
DenseBincount built from Unique, Compress and ScatterND; symmetric padding's mask).

Unique and Compress by a computed mask have sizes that depend on the data: ``model.py``
runs them eagerly; torch.export refuses them (``import.json`` says so)."""

from __future__ import annotations

from pipeline.codegen.fusions import DOMAIN
from pipeline.codegen.gen import TORCH_DTYPE, Gen, Unsupported, attrs
from pipeline.core.registry import handles


@handles("OneHot", opsets=(11, None))
def one_hot(gen: Gen, node):
    """``values[1]`` where ``indices`` (negative from the end) equals the position on ``axis``,
    ``values[0]`` elsewhere (out of range: all ``values[0]``, as ONNX)."""
    depth = gen.ints(node, 1)
    values = gen.const(node.input[2])
    if depth is None or values is None:
        raise Unsupported("a depth or on/off values computed from tensor values")
    d = depth[0]
    r = gen.rank(node.input[0])
    axis = attrs(node).get("axis", -1) % (r + 1)
    i = gen.var("idx")
    gen.lines.append(f"{i} = {gen.t(node.input[0])}.long()")
    gen.lines.append(f"{i} = torch.where({i} < 0, {i} + {d}, {i})")
    view = ", ".join("-1" if k == axis else "1" for k in range(r + 1))
    hot = f"{i}.unsqueeze({axis}) == torch.arange({d}, device={i}.device).view({view})"
    off, on = values.reshape(-1)[:2].tolist()
    dtype = TORCH_DTYPE[values.dtype.name]
    if (off, on) == (0, 1):
        gen.emit(node, f"({hot}).to({dtype})")
    else:
        gen.emit(node, f"torch.where({hot}, torch.tensor({on!r}, dtype={dtype}), torch.tensor({off!r}, dtype={dtype}))")


@handles("Unique", opsets=(11, None))
def unique(gen: Gen, node):
    """Sorted unique values (or rows, with ``axis``), the index of each one's first
    occurrence (the smallest position its inverse index points from), the inverse indices
    and the counts."""
    a = attrs(node)
    if not a.get("sorted", 1):
        raise Unsupported("unsorted Unique (torch.unique sorts)")
    axis = a.get("axis")
    x = gen.t(node.input[0])
    dim = f", dim={axis}" if axis is not None else ""
    v = gen.var("unique")
    gen.lines.append(f"{v} = torch.unique({x}, sorted=True, return_inverse=True, return_counts=True{dim})")
    gen.set_tensor(node.output[0], f"{v}[0]")
    if len(node.output) > 1 and node.output[1]:
        n = f"{x}.shape[{axis}]" if axis is not None else f"{x}.numel()"
        gen.emit(node, f"torch.full(({v}[2].shape[0],), {n}, dtype=torch.int64).scatter_reduce("
                       f"0, {v}[1].reshape(-1), torch.arange({n}), 'amin')", out=1, hint="first")
    for k, o in ((2, 1), (3, 2)):
        if len(node.output) > k and node.output[k]:
            gen.set_tensor(node.output[k], f"{v}[{o}].reshape(-1)" if k == 2 else f"{v}[{o}]")


@handles("Compress", opsets=(11, None))
def compress(gen: Gen, node):
    """The slices of ``axis`` where ``condition`` is true (a constant condition: a slice or an
    index_select with fixed indices)."""
    import numpy as np

    axis = attrs(node).get("axis")
    x = gen.t(node.input[0])
    if axis is None:
        x, axis = f"{x}.reshape(-1)", 0
    axis %= max(gen.rank(node.input[0]) if "axis" in attrs(node) else 1, 1)
    cond = gen.const(node.input[1])
    if cond is not None:
        idx = np.flatnonzero(cond.astype(bool))
        if idx.size and np.all(np.diff(idx) == 1):
            gen.emit(node, f"{x}.narrow({axis}, {int(idx[0])}, {idx.size})")
            return
        gen.emit(node, f"{x}.index_select({axis}, {gen.buffer(idx.astype(np.int64), gen.const_hint(node))})")
        return
    c = gen.t(node.input[1])
    gen.emit(node, f"{x}.index_select({axis}, torch.nonzero({c}.reshape(-1)).reshape(-1))")


@handles("ScatterND", opsets=(11, None))
def scatter_nd(gen: Gen, node):
    """``data`` with ``data[indices[..., :]] = updates`` (reduction none/add)."""
    red = attrs(node).get("reduction", "none")
    if red not in ("none", "add"):
        raise Unsupported(f"ScatterND reduction {red!r}")
    v = gen.var("scattered")
    idx = gen.t(node.input[1])
    gen.lines.append(f"{v} = {gen.t(node.input[0])}.clone()")
    key = f"tuple({idx}.long().unbind(-1))"
    if red == "none":
        gen.lines.append(f"{v}[{key}] = {gen.t(node.input[2])}.to({v}.dtype)")
    else:
        gen.lines.append(f"{v} = {v}.index_put({key}, {gen.t(node.input[2])}.to({v}.dtype), accumulate=True)")
    gen.set_tensor(node.output[0], v)


@handles("ScatterElements", opsets=(11, None))
def scatter_elements(gen: Gen, node):
    """``torch.scatter`` (reduction none/add/mul) on ``axis``, negative indices from the end."""
    a = attrs(node)
    red = {"none": None, "add": "add", "mul": "multiply"}.get(a.get("reduction", "none"), "?")
    if red == "?":
        raise Unsupported(f"ScatterElements reduction {a['reduction']!r}")
    axis = a.get("axis", 0) % gen.rank(node.input[0])
    x = gen.t(node.input[0])
    i = gen.var("idx")
    gen.lines.append(f"{i} = {gen.t(node.input[1])}.long()")
    gen.lines.append(f"{i} = torch.where({i} < 0, {i} + {x}.shape[{axis}], {i})")
    upd = f"{gen.t(node.input[2])}.to({x}.dtype)"
    reduce = f", reduce={red!r}" if red else ""
    gen.emit(node, f"torch.scatter({x}, {axis}, {i}, {upd}{reduce})")


@handles(f"{DOMAIN}::Bincount")
def bincount(gen: Gen, node):
    """Per row of a ``(batch, n)`` int tensor, how often each value in ``[0, depth)`` occurs
    (``binary``: whether it occurs), int64 ``(batch, depth)``: Keras' CategoryEncoding
    ``count``/``multi_hot`` (``fusions.fuse_bincount``)."""
    a = attrs(node)
    x = gen.t(node.input[0])
    hits = f"{x}.long().unsqueeze(-1) == torch.arange({a['depth']}, device={x}.device)"
    gen.emit(node, f"({hits}).{'any' if a['binary'] else 'sum'}(1).to(torch.int64)", hint="counts")
