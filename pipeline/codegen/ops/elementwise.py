"""Element-wise ops and activations: binary and unary math, comparisons, logic, variadic
Min/Max/Sum/Mean, activations with parameters, Clip, Where, Cast, Softmax/LogSoftmax.

Add/Sub/Mul/Div, comparisons, Neg/Abs, Min/Max, Cast and Identity on shape values give shape values
(``x.shape[0] * 4``), so shapes computed in the graph stay Python ints in ``forward``.
"""

from __future__ import annotations

import re

import numpy as np

from pipeline.codegen.gen import TORCH_DTYPE, Gen, Unsupported, attrs
from pipeline.codegen.values import Shape, Tensor, any_shape, as_shape, broadcast, pyexpr, shape_like, sym
from pipeline.core.registry import handles

BINARY = {"Add": "{0} + {1}", "Sub": "{0} - {1}", "Mul": "{0} * {1}", "Div": "{0} / {1}",
          "Pow": "torch.pow({0}, {1})", "Equal": "torch.eq({0}, {1})", "Less": "torch.lt({0}, {1})",
          "Greater": "torch.gt({0}, {1})", "LessOrEqual": "torch.le({0}, {1})",
          "GreaterOrEqual": "torch.ge({0}, {1})", "And": "torch.logical_and({0}, {1})",
          "Or": "torch.logical_or({0}, {1})", "Xor": "torch.logical_xor({0}, {1})"}
UNARY = {"Relu": "F.relu({0})", "Sigmoid": "torch.sigmoid({0})", "Tanh": "torch.tanh({0})",
         "Exp": "torch.exp({0})", "Log": "torch.log({0})", "Sqrt": "torch.sqrt({0})", "Abs": "torch.abs({0})",
         "Neg": "-{0}", "Reciprocal": "torch.reciprocal({0})", "Erf": "torch.erf({0})",
         "Floor": "torch.floor({0})", "Ceil": "torch.ceil({0})", "Round": "torch.round({0})",
         "Sign": "torch.sign({0})", "Softplus": "F.softplus({0})", "Softsign": "F.softsign({0})",
         "Not": "torch.logical_not({0})", "HardSwish": "F.hardswish({0})",
         "Sin": "torch.sin({0})", "Cos": "torch.cos({0})", "IsNaN": "torch.isnan({0})",
         "Mish": "F.mish({0})"}
_ARITH = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "//"}
_INT_TYPES = (6, 7, 12, 13)   # ONNX int32, int64, uint32, uint64


def _operand(gen: Gen, node, i: int) -> str:
    name = node.input[i]
    c = gen.const(name)
    if c is not None and c.size == 1 and c.dtype.kind == "f":
        other = node.input[1 - i]
        orank = gen.rank(other)
        # a scalar constant against a tensor of at least its rank: a Python float keeps the dtype
        if orank is not None and orank >= c.ndim and c.dtype == np.float32 and gen.dtypes.get(other) == "float32":
            return repr(float(c.reshape(())))
    return gen.t(name, hint=gen.const_hint(node))


def _operands(gen: Gen, node) -> tuple[str, str]:
    a, b = _operand(gen, node, 0), _operand(gen, node, 1)
    if not isinstance(gen.values[node.input[0]], Tensor) and not isinstance(gen.values[node.input[1]], Tensor):
        a = gen.t(node.input[0], hint=gen.const_hint(node))
    return a, b


_COMPARE = {"Equal": "==", "Less": "<", "Greater": ">", "LessOrEqual": "<=", "GreaterOrEqual": ">="}
_DIM = re.compile(r"^[A-Za-z_]\w*\.shape\[\d+\]$")


def _compare(op: str, a, b):
    """``int(a op b)`` on ints (evaluated) or int expressions; a dimension (``x.shape[1]``) is
    never negative, so ``dim == -1`` is 0 (tf2onnx's test for ``tf.slice``'s size -1)."""
    if isinstance(a, int) and isinstance(b, int):
        return int(eval(f"{a} {op} {b}"))   # noqa: S307  (two ints and a comparison)
    if op == "==" and any(isinstance(v, int) and v < 0 for v in (a, b)) and \
            any(isinstance(v, str) and _DIM.match(v) for v in (a, b)):
        return 0
    return f"int({pyexpr(a)} {op} {pyexpr(b)})"


@handles(*(op for op in BINARY if op not in _ARITH))
def binary(gen: Gen, node):
    """Comparisons of shape values: a shape value of 0/1 ints (cast to an int type, as
    tf2onnx's slice-end arithmetic does)."""
    if node.op_type in _COMPARE and any_shape(gen.values, node) and all(shape_like(gen.values, i) for i in node.input):
        a, b = as_shape(gen.values, node.input[0]), as_shape(gen.values, node.input[1])
        items = [_compare(_COMPARE[node.op_type], x, y) for x, y in zip(*broadcast([a, b]))]
        gen.set_shape(node, items, scalar=a.scalar and b.scalar, boolean=True)
        return
    gen.emit(node, BINARY[node.op_type].format(*_operands(gen, node)))


@handles("Mod")
def mod(gen: Gen, node):
    """``fmod=1``: the sign of the dividend (C's fmod); ``fmod=0`` (integers only): the sign
    of the divisor (Python's %)."""
    a, b = _operands(gen, node)
    gen.emit(node, f"{'torch.fmod' if attrs(node).get('fmod', 0) else 'torch.remainder'}({a}, {b})")


@handles(*_ARITH)
def arithmetic(gen: Gen, node):
    """On shape values: a shape value (``//`` for Div: shapes are ints). Integer Div
    truncates, as ONNX's does."""
    if any_shape(gen.values, node) and all(shape_like(gen.values, i) for i in node.input):
        a, b = as_shape(gen.values, node.input[0]), as_shape(gen.values, node.input[1])
        items = [sym(_ARITH[node.op_type], x, y) for x, y in zip(*broadcast([a, b]))]
        gen.set_shape(node, items, scalar=a.scalar and b.scalar)
        return
    if node.op_type == "Div" and gen.dtypes.get(node.output[0], "float32").startswith("int"):
        gen.emit(node, f"torch.div({gen.t(node.input[0])}, {gen.t(node.input[1])}, rounding_mode='trunc')")
        return
    binary(gen, node)


@handles(*UNARY)
def unary(gen: Gen, node):
    """Neg and Abs of a shape value: a shape value."""
    if node.op_type in ("Neg", "Abs") and any_shape(gen.values, node):
        a = as_shape(gen.values, node.input[0])
        f = (lambda x: -x if isinstance(x, int) else f"(-{x})") if node.op_type == "Neg" else \
            (lambda x: abs(x) if isinstance(x, int) else f"abs({x})")
        gen.set_shape(node, [f(x) for x in a.items], scalar=a.scalar)
        return
    gen.emit(node, UNARY[node.op_type].format(gen.t(node.input[0])))


@handles("Gelu")
def gelu(gen: Gen, node):
    """Exact (erf) or, with ``approximate="tanh"``, the tanh approximation."""
    tanh = attrs(node).get("approximate", "none") == "tanh"
    gen.emit(node, f"F.gelu({gen.t(node.input[0])}" + (", approximate='tanh')" if tanh else ")"))


@handles("Identity")
def identity(gen: Gen, node):
    gen.alias(node, node.input[0])


@handles("Min", "Max", "Sum", "Mean")
def variadic(gen: Gen, node):
    """Min/Max of shape values: a shape value (``max(x.shape[1], 3)``)."""
    if node.op_type in ("Max", "Min") and any_shape(gen.values, node) and \
            all(shape_like(gen.values, i) for i in node.input):
        parts = [as_shape(gen.values, i) for i in node.input]
        fn = max if node.op_type == "Max" else min
        items = []
        for vals in zip(*broadcast(parts)):
            if all(isinstance(v, int) for v in vals):
                items.append(fn(vals))
            else:
                items.append(f"{fn.__name__}({', '.join(pyexpr(v) for v in vals)})")
        gen.set_shape(node, items, scalar=all(p.scalar for p in parts))
        return
    fn = {"Min": "torch.minimum", "Max": "torch.maximum", "Sum": "torch.add"}.get(node.op_type)
    args = [gen.t(i, hint=gen.const_hint(node)) for i in node.input]
    if node.op_type == "Mean":
        gen.emit(node, f"({' + '.join(args)}) / {len(args)}")
        return
    expr = args[0]
    for a in args[1:]:
        expr = f"{fn}({expr}, {a})"
    gen.emit(node, expr)


@handles("Cast")
def cast(gen: Gen, node):
    """A shape value cast to an int type stays a shape value."""
    to = attrs(node)["to"]
    if any_shape(gen.values, node) and to in _INT_TYPES:
        v = gen.values[node.input[0]]
        if isinstance(v, Shape) and v.boolean:   # a comparison's 0/1 as ints
            gen.set_shape(node, v.items, scalar=v.scalar)
        else:
            gen.alias(node, node.input[0])
        return
    import onnx

    dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to)).name
    gen.emit(node, f"{gen.t(node.input[0])}.to({TORCH_DTYPE[dt]})", dtype=dt)


# ---- activations with parameters --------------------------------------------------------------
@handles("LeakyRelu")
def leaky_relu(gen: Gen, node):
    gen.emit(node, f"F.leaky_relu({gen.t(node.input[0])}, {float(attrs(node).get('alpha', 0.01))!r})")


@handles("Elu")
def elu(gen: Gen, node):
    gen.emit(node, f"F.elu({gen.t(node.input[0])}, {float(attrs(node).get('alpha', 1.0))!r})")


@handles("Selu")
def selu(gen: Gen, node):
    a = attrs(node)
    if abs(a.get("alpha", 1.67326319) - 1.6732632) > 1e-6 or abs(a.get("gamma", 1.05070102) - 1.0507010) > 1e-6:
        raise Unsupported("Selu with non-default alpha/gamma")
    gen.emit(node, f"F.selu({gen.t(node.input[0])})")


@handles("HardSigmoid")
def hard_sigmoid(gen: Gen, node):
    a = attrs(node)
    gen.emit(node, f"torch.clamp({gen.t(node.input[0])} * {float(a.get('alpha', 0.2))!r} + "
                   f"{float(a.get('beta', 0.5))!r}, 0.0, 1.0)")


def _clamp(gen: Gen, node, lo, hi) -> None:
    args = [gen.t(node.input[0])]
    args.append(f"min={float(lo)!r}" if lo is not None else "")
    args.append(f"max={float(hi)!r}" if hi is not None else "")
    gen.emit(node, f"torch.clamp({', '.join(a for a in args if a)})")


@handles("Clip", opsets=(11, None))
def clip(gen: Gen, node):
    """Bounds as (optional, constant) inputs."""
    _clamp(gen, node, gen.opt_const(node, 1), gen.opt_const(node, 2))


@handles("Clip", opsets=(6, 10))
def clip_v6(gen: Gen, node):
    """Bounds as attributes (default: the float range, i.e. none)."""
    a = attrs(node)
    _clamp(gen, node, a.get("min"), a.get("max"))


@handles("PRelu")
def prelu(gen: Gen, node):
    x, slope = gen.t(node.input[0]), gen.t(node.input[1], hint=gen.const_hint(node))
    gen.emit(node, f"torch.where({x} >= 0, {x}, {x} * {slope})")


@handles("Where")
def where(gen: Gen, node):
    gen.emit(node, f"torch.where({', '.join(gen.t(i, hint=gen.const_hint(node)) for i in node.input)})")


_SOFTMAX = {"Softmax": "torch.softmax", "LogSoftmax": "torch.log_softmax"}


@handles("Softmax", "LogSoftmax", opsets=(13, None))
def softmax(gen: Gen, node):
    """Along one axis (default the last)."""
    gen.emit(node, f"{_SOFTMAX[node.op_type]}({gen.t(node.input[0])}, {attrs(node).get('axis', -1)})")


@handles("Softmax", "LogSoftmax", opsets=(1, 12))
def softmax_v1(gen: Gen, node):
    """Over all axes from ``axis`` on (default 1), as one: the input is read as 2-D."""
    x, r = gen.t(node.input[0]), gen.rank(node.input[0])
    axis = attrs(node).get("axis", 1)
    if r is None:
        raise Unsupported("a Softmax before opset 13 on an input of unknown rank")
    if axis % r == r - 1:
        gen.emit(node, f"{_SOFTMAX[node.op_type]}({x}, {axis})")
        return
    axis %= r
    gen.emit(node, f"{_SOFTMAX[node.op_type]}(torch.flatten({x}, {axis}), -1).reshape({x}.shape)")
