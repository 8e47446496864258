"""Shape and indexing ops: Shape, Size, Transpose, Flatten, Reshape, Expand,
ConstantOfShape, Squeeze/Unsqueeze, Concat, Split, Slice, Gather (an Embedding when the
table is constant), Tile, Range, Pad.

Shape, Size, and Concat/Slice/Gather/Squeeze/Unsqueeze of shape values give shape values.
Squeeze, Unsqueeze and Split read their axes/sizes from an attribute before opset 13 and
from an input since; Pad its pads from an attribute before opset 11.
"""

from __future__ import annotations

import numpy as np

from pipeline.codegen.gen import TORCH_DTYPE, Gen, Unsupported, attrs, tuple_
from pipeline.codegen.ops.padding import torch_pad
from pipeline.codegen.values import Shape, any_shape, as_shape, pyexpr, shape_like, shape_list
from pipeline.core.registry import handles


@handles("Shape")
def shape(gen: Gen, node):
    a = attrs(node)
    dims = gen.dims(node.input[0])
    gen.set_shape(node, dims[a.get("start", 0):a.get("end", len(dims))])


@handles("Size")
def size(gen: Gen, node):
    gen.set_shape(node, [f"{gen.t(node.input[0])}.numel()"], scalar=True)


@handles("Transpose")
def transpose(gen: Gen, node):
    perm = attrs(node).get("perm")
    if perm is None:
        perm = list(reversed(range(gen.rank(node.input[0]))))
    gen.emit(node, f"{gen.t(node.input[0])}.permute{tuple_(perm)}")


@handles("Flatten")
def flatten(gen: Gen, node):
    axis = attrs(node).get("axis", 1)
    x = gen.t(node.input[0])
    if axis == 0:
        gen.emit(node, f"{x}.reshape(1, -1)")
    elif axis == 1:
        gen.emit(node, f"torch.flatten({x}, 1)")
    else:
        axis %= gen.rank(node.input[0])
        gen.emit(node, f"torch.flatten(torch.flatten({x}, {axis}), 0, {axis - 1})")


def _target_shape(gen: Gen, node, items: list) -> list:
    """ONNX Reshape's target with 0 (copy) resolved; the batch dim becomes -1 when it can."""
    in_dims = gen.dims(node.input[0])
    out = [in_dims[i] if (isinstance(v, int) and v == 0) else v for i, v in enumerate(items)]
    if -1 not in out and out and isinstance(out[0], str) and in_dims and out[0] == in_dims[0]:
        out[0] = -1 if all(isinstance(v, int) for v in out[1:]) else out[0]
    return out


def _shape_input(gen: Gen, node, i: int, what: str) -> list:
    """The entries of a shape input: ints, ``x.shape`` expressions, or, where it is computed
    from tensor values (a bincount's ``max(minlength, ...)``), ``int(v[k])`` of that tensor
    (eager only: torch.export cannot trace a size read from data)."""
    items = gen.shape_items(node.input[i])
    if items is None:
        dims = gen.shapes.get(node.input[i])
        if dims is None or len(dims) > 1 or (dims and dims[0] is None):
            raise Unsupported(f"{what} computed from tensor values of unknown length")
        v = gen.t(node.input[i])
        items = [f"int({v})"] if not dims else [f"int({v}[{k}])" for k in range(dims[0])]
    return items


@handles("Reshape")
def reshape(gen: Gen, node):
    items = _shape_input(gen, node, 1, "the target shape is")
    gen.emit(node, f"{gen.t(node.input[0])}.reshape{shape_list(_target_shape(gen, node, items))}")


@handles("Expand")
def expand(gen: Gen, node):
    items = _shape_input(gen, node, 1, "the target shape is")
    c = gen.const(node.input[0])
    if c is not None and c.size and np.all(c == c.reshape(-1)[0]) and c.ndim <= len(items):
        gen.emit(node, f"torch.full({shape_list(items)}, {c.reshape(-1)[0].item()!r}, dtype={TORCH_DTYPE[c.dtype.name]})")
        return
    x = gen.t(node.input[0], hint=gen.const_hint(node))
    gen.emit(node, f"{x}.expand(torch.broadcast_shapes({x}.shape, {shape_list(items)}))")


@handles("ConstantOfShape")
def constant_of_shape(gen: Gen, node):
    import onnx

    items = _shape_input(gen, node, 0, "the shape is")
    val = attrs(node).get("value")
    arr = onnx.numpy_helper.to_array(val) if val is not None else np.zeros(1, np.float32)
    gen.emit(node, f"torch.full({shape_list(items)}, {arr.reshape(-1)[0].item()!r}, dtype={TORCH_DTYPE[arr.dtype.name]})")


@handles("Tile")
def tile(gen: Gen, node):
    reps = _shape_input(gen, node, 1, "repeats")
    gen.emit(node, f"{gen.t(node.input[0])}.repeat{shape_list(reps)}")


@handles("Range")
def range_(gen: Gen, node):
    args = []
    for i in node.input:
        s = gen.shape_items(i) if shape_like(gen.values, i) else None
        args.append(pyexpr(s[0]) if s is not None else f"{gen.t(i)}.item()")
    gen.emit(node, f"torch.arange({', '.join(args)})")


# ---- Squeeze / Unsqueeze: axes an attribute before opset 13, an input since ----------------
def _of_shape_value(gen: Gen, node, scalar: bool) -> bool:
    """(Un)squeezing a shape value gives a shape value: a scalar, or a vector."""
    if not isinstance(gen.values.get(node.input[0]), Shape):
        return False
    gen.set_shape(node, as_shape(gen.values, node.input[0]).items, scalar=scalar)
    return True


def _squeeze(gen: Gen, node, axes) -> None:
    x = gen.t(node.input[0])
    if axes is None:
        gen.emit(node, f"torch.squeeze({x})")
        return
    r = gen.rank(node.input[0])
    axes = sorted((a % r for a in axes), reverse=True) if r is not None else axes
    expr = x
    for a in axes:
        expr = f"{expr}.squeeze({a})"
    gen.emit(node, expr)


def _unsqueeze(gen: Gen, node, axes) -> None:
    out_r = gen.rank(node.input[0]) + len(axes)
    expr = gen.t(node.input[0], hint=gen.const_hint(node))
    for a in sorted(a % out_r for a in axes):
        expr = f"{expr}.unsqueeze({a})"
    gen.emit(node, expr)


@handles("Squeeze", opsets=(13, None))
def squeeze(gen: Gen, node):
    if not _of_shape_value(gen, node, scalar=True):
        _squeeze(gen, node, gen.ints(node, 1))


@handles("Squeeze", opsets=(1, 12))
def squeeze_v1(gen: Gen, node):
    if not _of_shape_value(gen, node, scalar=True):
        _squeeze(gen, node, attrs(node).get("axes"))


@handles("Unsqueeze", opsets=(13, None))
def unsqueeze(gen: Gen, node):
    if not _of_shape_value(gen, node, scalar=False):
        _unsqueeze(gen, node, gen.ints(node, 1))


@handles("Unsqueeze", opsets=(1, 12))
def unsqueeze_v1(gen: Gen, node):
    if not _of_shape_value(gen, node, scalar=False):
        _unsqueeze(gen, node, attrs(node)["axes"])


# ---- joining, splitting, indexing ---------------------------------------------------------
@handles("Concat")
def concat(gen: Gen, node):
    """Shape values joined: a shape value (``(x.shape[0], 4)``)."""
    if any_shape(gen.values, node) and all(shape_like(gen.values, i) for i in node.input):
        gen.set_shape(node, [item for i in node.input for item in as_shape(gen.values, i).items])
        return
    args = ", ".join(gen.t(i, hint=gen.const_hint(node)) for i in node.input)
    gen.emit(node, f"torch.cat([{args}], {attrs(node)['axis']})")


def _split(gen: Gen, node, sizes) -> None:
    """A split of a shape value gives shape values (``Shape -> Split -> ConstantOfShape``)."""
    axis = attrs(node).get("axis", 0)
    if isinstance(gen.values.get(node.input[0]), Shape):
        items = as_shape(gen.values, node.input[0]).items
        sizes = sizes or [len(items) // len(node.output)] * len(node.output)
        start = 0
        for k, n in enumerate(sizes):
            gen.set_shape(node, items[start:start + n], out=k)
            start += n
        return
    x = gen.t(node.input[0])
    if sizes is None:
        dim = gen.dims(node.input[0])[axis]
        if not isinstance(dim, int) or dim % len(node.output):
            raise Unsupported("an even split of a dynamic or indivisible axis")
        sizes = [dim // len(node.output)] * len(node.output)
    v = gen.var("parts")
    gen.lines.append(f"{v} = torch.split({x}, {list(sizes)}, {axis})")
    for k, o in enumerate(node.output):
        gen.set_tensor(o, f"{v}[{k}]")


@handles("Split", opsets=(13, None))
def split(gen: Gen, node):
    """Sizes from input 1, else equal parts (one per output)."""
    _split(gen, node, gen.ints(node, 1))


@handles("Split", opsets=(1, 12))
def split_v1(gen: Gen, node):
    _split(gen, node, attrs(node).get("split"))


def _bounds(gen: Gen, node, i: int) -> list:
    """Slice input ``i`` (starts or ends): constant ints, or the entries of a shape value
    computed from dynamic dims (``x.shape[1] + 1``: a position embedding cut to the sequence
    length); anything else is Unsupported."""
    try:
        return gen.ints(node, i)
    except Unsupported:
        v = gen.values.get(node.input[i])
        if isinstance(v, Shape):
            return list(v.items)
        raise


@handles("Slice", opsets=(10, None))
def slice_(gen: Gen, node):
    """Starts and ends as constant inputs or shape values (int expressions of dynamic dims),
    axes and steps as constant inputs; a negative step only as a full reversal
    (``torch.flip``). A slice of a shape value is a shape value."""
    if any_shape(gen.values, node) and shape_like(gen.values, node.input[0]):
        starts, ends = gen.ints(node, 1), gen.ints(node, 2)
        s = as_shape(gen.values, node.input[0])
        steps = gen.ints(node, 4) or [1]
        gen.set_shape(node, s.items[slice(starts[0], min(ends[0], 2**31), steps[0])])
        return
    starts, ends = _bounds(gen, node, 1), _bounds(gen, node, 2)
    r = gen.rank(node.input[0])
    axes = gen.ints(node, 3) or list(range(len(starts)))
    steps = gen.ints(node, 4) or [1] * len(starts)
    idx = [":"] * r
    flips = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= r
        if not (isinstance(s, int) and isinstance(e, int)):   # a bound computed from dims
            if st < 0:
                raise Unsupported("a negative-step Slice with bounds computed from dims")
            idx[ax] = f"{'' if s == 0 else pyexpr(s)}:{'' if e == 2**63 - 1 else pyexpr(e)}" + (f":{st}" if st != 1 else "")
            continue
        if st < 0:
            if s < -(2**31) or e > 2**31 or st != -1 or s not in (-1, 2**63 - 1) or e > -(2**31):
                raise Unsupported("a negative-step Slice other than a full reversal")
            flips.append(ax)
            continue
        lo = "" if s == 0 else str(max(s, -(2**31)))
        hi = "" if e >= 2**31 - 1 else str(e)
        idx[ax] = f"{lo}:{hi}" + (f":{st}" if st != 1 else "")
    while idx and idx[-1] == ":":
        idx.pop()
    expr = gen.t(node.input[0]) + (f"[{', '.join(idx)}]" if idx else "")
    if flips:
        expr = f"torch.flip({expr}, {tuple_(flips)})"
    gen.emit(node, expr)


@handles("Gather")
def gather(gen: Gen, node):
    """A constant 2-D table gathered on axis 0 by computed indices is an ``nn.Embedding``;
    a shape value indexed by constants is a shape value."""
    axis = attrs(node).get("axis", 0)
    data, idx = node.input
    c_data, c_idx = gen.const(data), gen.const(idx)
    if isinstance(gen.values.get(data), Shape) and c_idx is not None:
        s = as_shape(gen.values, data)
        if c_idx.ndim == 0:
            gen.set_shape(node, [s.items[int(c_idx)]], scalar=True)
        else:
            gen.set_shape(node, [s.items[int(i)] for i in c_idx.reshape(-1)])
        return
    if c_data is not None and axis == 0 and c_data.ndim == 2 and c_idx is None:
        mod = gen.submodule(node, f"nn.Embedding({c_data.shape[0]}, {c_data.shape[1]})", {"weight": c_data})
        gen.emit(node, f"{mod}({gen.t(idx)}.long())")
        return
    x = gen.t(data, hint=gen.const_hint(node))
    axis %= gen.rank(data)
    if c_idx is not None and c_idx.ndim == 0:
        gen.emit(node, f"{x}.select({axis}, {int(c_idx)})")
        return
    i = gen.t(idx, hint=gen.const_hint(node))
    gen.emit(node, f"{x}[{', '.join([':'] * axis + [f'{i}.long()'])}]")


# ---- Pad: pads an attribute before opset 11, an input since ---------------------------------
def _pad(gen: Gen, node, pads: list[int], value: float, axes: list[int] | None) -> None:
    mode = attrs(node).get("mode", "constant")
    r = gen.rank(node.input[0])
    if axes is not None:
        axes = [ax % r for ax in axes]
        full = [0] * (2 * r)
        for k, ax in enumerate(axes):
            full[ax], full[ax + r] = pads[k], pads[k + len(axes)]
        pads = full
    if not any(pads):
        gen.alias(node, node.input[0])
        return
    tp = torch_pad(pads)
    while tp[-2:] == [0, 0] and len(tp) > 2:
        tp = tp[:-2]
    x = gen.t(node.input[0])
    if mode == "constant":
        gen.emit(node, f"F.pad({x}, {tp}, value={value!r})")
        return
    if mode not in _MODES:
        raise Unsupported(f"Pad mode {mode!r}")
    if any(not isinstance(p, int) or p < 0 for p in pads):
        raise Unsupported(f"{mode} padding by negative or computed amounts")
    k = len(tp) // 2   # F.pad's own modes: the last k dims of a rank k+1 or k+2 tensor, k <= 3
    if r - 2 >= k and r - 2 <= 3:
        tp = tp + [0, 0] * (r - 2 - k)
        k = r - 2
    if k <= 3 and r in (k + 1, k + 2):
        gen.emit(node, f"F.pad({x}, {tp}, mode={_MODES[mode]!r})")
        return
    gen.helper("pad_mode", _PAD_MODE)   # any rank, any axes: one slice-and-cat per padded axis
    per_axis = [(pads[ax], pads[ax + r]) for ax in range(r)]
    while per_axis and per_axis[-1] == (0, 0):
        per_axis.pop()
    gen.emit(node, f"pad_mode({x}, {per_axis}, {mode!r})")


_MODES = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}
_PAD_MODE = '''
def pad_mode(x, pads, mode):
    """ONNX Pad's reflect/edge/wrap on any rank: ``pads[axis] = (before, after)``, each axis
    padded by slices of ``x`` joined on it (F.pad's modes take only certain ranks)."""
    for ax, (lo, hi) in enumerate(pads):
        if not (lo or hi):
            continue
        n = x.shape[ax]
        if mode == "reflect":
            parts = [x.narrow(ax, 1, lo).flip(ax), x, x.narrow(ax, n - 1 - hi, hi).flip(ax)]
        elif mode == "wrap":
            parts = [x.narrow(ax, n - lo, lo), x, x.narrow(ax, 0, hi)]
        else:   # edge
            parts = [x.narrow(ax, 0, 1).expand(*x.shape[:ax], lo, *x.shape[ax + 1:]), x,
                     x.narrow(ax, n - 1, 1).expand(*x.shape[:ax], hi, *x.shape[ax + 1:])]
        x = torch.cat(parts, ax)
    return x
'''


@handles("Pad", opsets=(11, None))
def pad(gen: Gen, node):
    """Pads, the constant value and (opset 18) the axes as constant inputs."""
    value = gen.opt_const(node, 2)
    _pad(gen, node, gen.ints(node, 1), float(value.reshape(-1)[0]) if value is not None else 0.0, gen.ints(node, 3))


@handles("Pad", opsets=(2, 10))
def pad_v2(gen: Gen, node):
    a = attrs(node)
    _pad(gen, node, list(a["pads"]), float(a.get("value", 0.0)), None)
