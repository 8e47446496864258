"""ONNX (``rewrite/torch.onnx``) -> readable PyTorch source + weights a user can keep.

``generate`` walks the graph in topological order and writes one ``nn.Module``: weighted
ops become submodules named after the Keras layer they came from (``self.conv1d =
nn.Conv1d(1, 2, 2)``), constants become buffers, everything else is a plain torch call in
``forward``. The result imports with torch and safetensors alone and traces with
``torch.compile`` / ``torch.export`` with a dynamic batch dimension.

Values are tracked in three kinds: constants (folded at generation time), *shape* values
(small int vectors computed from tensor shapes, kept as Python int expressions so the batch
dimension stays symbolic) and tensors (a variable in ``forward``).

Converters live in ``CONVERTERS`` keyed by ONNX op type; an op with no converter stops
with a ``PipelineError`` that names the node, op type, opset and Keras layer. Add one with
``@converter("OpType")`` on a function ``(gen, node) -> None``.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.names import NameIndex, layer_in_scope

CONVERTERS: dict[str, Callable] = {}


def converter(*op_types: str):
    """Register a converter for ``op_types``; a second registration for an op is refused."""
    def deco(fn):
        for op in op_types:
            if op in CONVERTERS:
                raise ValueError(f"a converter for {op} is already registered")
            CONVERTERS[op] = fn
        return fn
    return deco


class Unsupported(Exception):
    """A converter cannot express this node (the message says why)."""


@dataclass
class Const:
    value: np.ndarray


@dataclass
class Shape:
    """An int64 vector (or scalar) whose entries are Python int expressions."""
    items: list
    scalar: bool = False


@dataclass
class Tensor:
    expr: str
    dtype: str | None = None   # numpy dtype name when known


@dataclass
class Generated:
    source: str
    state: dict = field(default_factory=dict)   # state_dict name -> np.ndarray
    modules: dict = field(default_factory=dict)  # submodule name -> ONNX node name
    input_names: list = field(default_factory=list)
    output_names: list = field(default_factory=list)


_TORCH_DTYPE = {"float32": "torch.float32", "float64": "torch.float64", "float16": "torch.float16",
                "int64": "torch.int64", "int32": "torch.int32", "int8": "torch.int8", "uint8": "torch.uint8",
                "bool": "torch.bool", "int16": "torch.int16", "bfloat16": "torch.bfloat16"}


def _identifier(text: str) -> str:
    s = re.sub(r"\W", "_", text).strip("_") or "v"
    if s[0].isdigit():
        s = "l_" + s
    return s + "_" if keyword.iskeyword(s) else s


def _tuple(v) -> str:
    v = [int(i) for i in v]
    return f"({v[0]},)" if len(v) == 1 else f"({', '.join(map(str, v))})"


def _short(v) -> str:
    """A kernel size as torch writes it: ``3`` for ``(3, 3)``."""
    v = [int(i) for i in v]
    return str(v[0]) if len(set(v)) == 1 else _tuple(v)


def _opt(name: str, v, default: int) -> str:
    return "" if all(int(i) == default for i in v) else f", {name}={_short(v)}"


def _pyexpr(v) -> str:
    return str(int(v)) if isinstance(v, (int, np.integer)) else str(v)


def _shape_list(items) -> str:
    return "(" + ", ".join(_pyexpr(i) for i in items) + ("," if len(items) == 1 else "") + ")"


class Gen:
    """State of one generation: values, submodules, buffers and the lines of ``forward``."""

    def __init__(self, proto, model_name: str, keras_layers: list[dict] | None = None):
        import onnx

        self.proto = proto
        self.model_name = model_name
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.layers = {l["name"]: l["class"] for l in (keras_layers or [])}
        self.values: dict[str, object] = {}
        self.init_lines: list[str] = []
        self.lines: list[str] = []
        self.state: dict[str, np.ndarray] = {}
        self.modules: dict[str, str] = {}
        self.used: set[str] = {"self", "torch", "nn", "F", "forward"}
        self.const_names: dict[int, str] = {}
        self.n_var = 0
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        self.shapes: dict[str, list] = {}
        self.dtypes: dict[str, str] = {}
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if t.elem_type:
                self.dtypes[vi.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        self.uses: dict[str, int] = {}
        for n in proto.graph.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in proto.graph.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1
        self.consumers: dict[str, list] = {}
        for n in proto.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.skip: set[str] = set()     # nodes fused into an earlier one
        self.producers = {o: n for n in proto.graph.node for o in n.output}
        self.initializers = {t.name for t in proto.graph.initializer}
        self.names = NameIndex(proto.graph, self.layers)

    # ---- naming -------------------------------------------------------------------------
    def keras_layer(self, node_name: str) -> str | None:
        """The Keras layer a tf2onnx node name comes from (``functional_1/conv_1/...`` -> ``conv``)."""
        return layer_in_scope(node_name, self.layers)

    def unique(self, base: str) -> str:
        base = _identifier(base)
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def layer_of(self, node) -> str | None:
        """The Keras layer of ``node``, or of its nearest scoped neighbour (``core.names``)."""
        return self.names.layer_of(node)

    def module_name(self, node) -> str:
        """The Keras layer that owns the weights (tf2onnx names a Conv with a folded
        BatchNormalization after the BN, its kernel after the conv), else the node's layer."""
        weight = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1, "Gather": 0}.get(node.op_type)
        owner = self.keras_layer(node.input[weight]) if weight is not None and len(node.input) > weight else None
        return self.unique(owner or self.layer_of(node) or node.op_type.lower())

    def var(self, hint: str = "x") -> str:
        while True:
            self.n_var += 1
            name = f"{_identifier(hint)}_{self.n_var}" if hint != "x" else f"x{self.n_var}"
            if name not in self.used:
                self.used.add(name)
                return name

    # ---- values -------------------------------------------------------------------------
    def const(self, name: str):
        v = self.values.get(name)
        return v.value if isinstance(v, Const) else None

    def rank(self, name: str) -> int | None:
        v = self.values.get(name)
        if isinstance(v, Const):
            return v.value.ndim
        if isinstance(v, Shape):
            return 0 if v.scalar else 1
        s = self.shapes.get(name)
        return len(s) if s is not None else None

    def dims(self, name: str) -> list:
        """Dims of a value: ints where static, Python expressions where dynamic."""
        v = self.values[name]
        if isinstance(v, Const):
            return list(v.value.shape)
        if isinstance(v, Shape):
            return [] if v.scalar else [len(v.items)]
        s = self.shapes.get(name)
        if s is None:
            raise Unsupported(f"the shape of {name!r} is unknown")
        return [d if d is not None else f"{v.expr}.shape[{i}]" for i, d in enumerate(s)]

    def buffer(self, arr: np.ndarray, hint: str) -> str:
        """``self.<name>``: a buffer holding ``arr`` (one buffer per distinct constant)."""
        key = id(arr)
        if key in self.const_names:
            return self.const_names[key]
        arr = np.ascontiguousarray(arr)
        name = self.unique(hint)
        self.state[name] = arr
        self.init_lines.append(f"self.register_buffer({name!r}, torch.empty({_shape_list(arr.shape)}, "
                               f"dtype={_TORCH_DTYPE[arr.dtype.name]}))")
        self.const_names[key] = f"self.{name}"
        return f"self.{name}"

    def t(self, name: str, hint: str = "const") -> str:
        """An expression for value ``name`` as a tensor."""
        v = self.values[name]
        if isinstance(v, Tensor):
            return v.expr
        if isinstance(v, Const):
            arr = v.value
            if arr.ndim == 0 and arr.dtype.kind == "f" and arr.dtype == np.float32:
                return f"torch.tensor({float(arr)!r})"
            return self.buffer(arr, hint)
        if v.scalar:
            return f"torch.tensor({_pyexpr(v.items[0])})"
        return f"torch.tensor({_shape_list(v.items)})"

    def shape_items(self, name: str) -> list | None:
        """Entries of an int vector known at generation time (ints or expressions)."""
        v = self.values[name]
        if isinstance(v, Const) and v.value.dtype.kind in "iu":
            return [int(i) for i in v.value.reshape(-1)]
        if isinstance(v, Shape):
            return list(v.items)
        return None

    def ints(self, node, i: int) -> list[int] | None:
        """Input ``i`` of ``node`` as constant ints (None when absent)."""
        if len(node.input) <= i or not node.input[i]:
            return None
        c = self.const(node.input[i])
        if c is not None:
            return [int(v) for v in c.reshape(-1)]
        v = self.values.get(node.input[i])
        if isinstance(v, Shape) and all(isinstance(k, int) for k in v.items):
            return list(v.items)   # computed from static dims only
        raise Unsupported(f"input {i} ({node.input[i]!r}) must be a constant")

    def emit(self, node, expr: str, out: int = 0, dtype: str | None = None, hint: str = "x") -> str:
        v = self.var(hint)
        self.lines.append(f"{v} = {expr}")
        name = node.output[out]
        self.values[name] = Tensor(v, dtype or self.dtypes.get(name))
        return v

    def set_tensor(self, name: str, expr: str) -> None:
        self.values[name] = Tensor(expr, self.dtypes.get(name))

    def submodule(self, node, ctor: str, params: dict[str, np.ndarray]) -> str:
        """``self.<keras layer>`` built by ``ctor``; ``params`` go to its state_dict."""
        name = self.module_name(node)
        self.init_lines.append(f"self.{name} = {ctor}")
        for k, arr in params.items():
            self.state[f"{name}.{k}"] = np.ascontiguousarray(arr)
        self.modules[name] = node.name
        return f"self.{name}"


def _attrs(node) -> dict:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


# ---- constant folding -----------------------------------------------------------------------
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def _fold(gen: Gen, node) -> bool:
    """Evaluate a node whose inputs are all constants; True when folded."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    ins = [i for i in node.input if i]
    if node.op_type in _NO_FOLD or any(not isinstance(gen.values.get(i), Const) for i in ins):
        return False
    if not ins and node.op_type != "Constant":
        return False
    total = sum(gen.values[i].value.size for i in ins)
    if total > 10_000_000:
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


# ---- shape arithmetic -------------------------------------------------------------------------
def _is_shape_like(gen: Gen, name: str) -> bool:
    v = gen.values.get(name)
    return isinstance(v, Shape) or (isinstance(v, Const) and v.value.dtype.kind in "iu" and v.value.ndim <= 1
                                    and v.value.size <= 8)


def _as_shape(gen: Gen, name: str) -> Shape:
    v = gen.values[name]
    if isinstance(v, Shape):
        return v
    return Shape([int(i) for i in v.value.reshape(-1)], scalar=v.value.ndim == 0)


def _sym(op: str, a, b):
    if isinstance(a, int) and isinstance(b, int):
        return {"+": a + b, "-": a - b, "*": a * b, "//": a // b if b else 0}[op]
    return f"({_pyexpr(a)} {op} {_pyexpr(b)})"


@converter("Shape")
def _shape(gen: Gen, node):
    a = _attrs(node)
    dims = gen.dims(node.input[0])
    start, end = a.get("start", 0), a.get("end", len(dims))
    gen.values[node.output[0]] = Shape(dims[start:end])


@converter("Size")
def _size(gen: Gen, node):
    gen.values[node.output[0]] = Shape([f"{gen.t(node.input[0])}.numel()"], scalar=True)


def _shape_op(gen: Gen, node) -> bool:
    """Ops on shape values stay shape values; True when handled here."""
    op, ins = node.op_type, [i for i in node.input]
    if not ins or not any(isinstance(gen.values.get(i), Shape) for i in ins if i):
        return False
    if op == "Cast":
        to = _attrs(node)["to"]
        if to in (6, 7, 12, 13):   # int32/int64/uint32/uint64
            gen.values[node.output[0]] = gen.values[ins[0]]
            return True
        return False
    if op in ("Identity",):
        gen.values[node.output[0]] = gen.values[ins[0]]
        return True
    if op in ("Add", "Sub", "Mul", "Div") and all(_is_shape_like(gen, i) for i in ins):
        a, b = _as_shape(gen, ins[0]), _as_shape(gen, ins[1])
        n = max(len(a.items), len(b.items))
        ai = a.items * n if len(a.items) == 1 else a.items
        bi = b.items * n if len(b.items) == 1 else b.items
        sym = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "//"}[op]
        gen.values[node.output[0]] = Shape([_sym(sym, x, y) for x, y in zip(ai, bi)], scalar=a.scalar and b.scalar)
        return True
    if op in ("Neg", "Abs"):
        a = _as_shape(gen, ins[0])
        f = (lambda x: -x if isinstance(x, int) else f"(-{x})") if op == "Neg" else \
            (lambda x: abs(x) if isinstance(x, int) else f"abs({x})")
        gen.values[node.output[0]] = Shape([f(x) for x in a.items], scalar=a.scalar)
        return True
    if op in ("Max", "Min") and all(_is_shape_like(gen, i) for i in ins):
        parts = [_as_shape(gen, i) for i in ins]
        n = max(len(p.items) for p in parts)
        cols = [p.items * n if len(p.items) == 1 else p.items for p in parts]
        fn = max if op == "Max" else min
        items = []
        for vals in zip(*cols):
            if all(isinstance(v, int) for v in vals):
                items.append(fn(vals))
            else:
                items.append(f"{fn.__name__}({', '.join(_pyexpr(v) for v in vals)})")
        gen.values[node.output[0]] = Shape(items, scalar=all(p.scalar for p in parts))
        return True
    if op == "Concat" and all(_is_shape_like(gen, i) for i in ins):
        items = []
        for i in ins:
            items += _as_shape(gen, i).items
        gen.values[node.output[0]] = Shape(items)
        return True
    if op == "Slice" and _is_shape_like(gen, ins[0]):
        s = _as_shape(gen, ins[0])
        starts, ends = gen.ints(node, 1), gen.ints(node, 2)
        steps = gen.ints(node, 4) or [1]
        gen.values[node.output[0]] = Shape(s.items[slice(starts[0], min(ends[0], 2**31), steps[0])])
        return True
    if op == "Gather" and isinstance(gen.values.get(ins[0]), Shape):
        s = _as_shape(gen, ins[0])
        idx = gen.const(ins[1])
        if idx is None:
            return False
        if idx.ndim == 0:
            gen.values[node.output[0]] = Shape([s.items[int(idx)]], scalar=True)
        else:
            gen.values[node.output[0]] = Shape([s.items[int(i)] for i in idx.reshape(-1)])
        return True
    if op == "Squeeze" and isinstance(gen.values.get(ins[0]), Shape):
        s = _as_shape(gen, ins[0])
        gen.values[node.output[0]] = Shape(s.items, scalar=True)
        return True
    if op == "Unsqueeze" and isinstance(gen.values.get(ins[0]), Shape):
        s = _as_shape(gen, ins[0])
        gen.values[node.output[0]] = Shape(s.items, scalar=False)
        return True
    return False


# ---- element-wise -------------------------------------------------------------------------
_BINARY = {"Add": "{0} + {1}", "Sub": "{0} - {1}", "Mul": "{0} * {1}", "Div": "{0} / {1}",
           "Pow": "torch.pow({0}, {1})", "Equal": "torch.eq({0}, {1})", "Less": "torch.lt({0}, {1})",
           "Greater": "torch.gt({0}, {1})", "LessOrEqual": "torch.le({0}, {1})",
           "GreaterOrEqual": "torch.ge({0}, {1})", "And": "torch.logical_and({0}, {1})",
           "Or": "torch.logical_or({0}, {1})", "Xor": "torch.logical_xor({0}, {1})",
           "Mod": "torch.fmod({0}, {1})"}
_UNARY = {"Relu": "F.relu({0})", "Sigmoid": "torch.sigmoid({0})", "Tanh": "torch.tanh({0})",
          "Exp": "torch.exp({0})", "Log": "torch.log({0})", "Sqrt": "torch.sqrt({0})", "Abs": "torch.abs({0})",
          "Neg": "-{0}", "Reciprocal": "torch.reciprocal({0})", "Erf": "torch.erf({0})",
          "Floor": "torch.floor({0})", "Ceil": "torch.ceil({0})", "Round": "torch.round({0})",
          "Sign": "torch.sign({0})", "Softplus": "F.softplus({0})", "Softsign": "F.softsign({0})",
          "Not": "torch.logical_not({0})", "Identity": "{0}", "HardSwish": "F.hardswish({0})",
          "Sin": "torch.sin({0})", "Cos": "torch.cos({0})", "IsNaN": "torch.isnan({0})",
          "Mish": "F.mish({0})", "Gelu": "F.gelu({0})"}


def _binary_operand(gen: Gen, node, i: int) -> str:
    name = node.input[i]
    c = gen.const(name)
    if c is not None and c.size == 1 and c.dtype.kind == "f":
        other = node.input[1 - i]
        orank = gen.rank(other)
        # a scalar constant against a tensor of at least its rank: a Python float keeps the dtype
        if orank is not None and orank >= c.ndim and c.dtype == np.float32 and gen.dtypes.get(other) == "float32":
            return repr(float(c.reshape(())))
    return gen.t(name, hint=_const_hint(gen, node))


def _const_hint(gen: Gen, node) -> str:
    layer = gen.keras_layer(node.name)
    return f"{layer or 'c'}_{node.op_type.lower()}"


@converter(*_BINARY)
def _binary(gen: Gen, node):
    if node.op_type == "Div" and gen.dtypes.get(node.output[0], "float32").startswith("int"):
        gen.emit(node, f"torch.div({gen.t(node.input[0])}, {gen.t(node.input[1])}, rounding_mode='trunc')")
        return
    a, b = _binary_operand(gen, node, 0), _binary_operand(gen, node, 1)
    if not isinstance(gen.values[node.input[0]], Tensor) and not isinstance(gen.values[node.input[1]], Tensor):
        a = gen.t(node.input[0], hint=_const_hint(gen, node))
    gen.emit(node, _BINARY[node.op_type].format(a, b))


@converter(*_UNARY)
def _unary(gen: Gen, node):
    if node.op_type == "Identity":
        gen.values[node.output[0]] = gen.values[node.input[0]]
        return
    gen.emit(node, _UNARY[node.op_type].format(gen.t(node.input[0])))


@converter("Min", "Max", "Sum", "Mean")
def _variadic(gen: Gen, node):
    fn = {"Min": "torch.minimum", "Max": "torch.maximum", "Sum": "torch.add"}.get(node.op_type)
    args = [gen.t(i, hint=_const_hint(gen, node)) for i in node.input]
    if node.op_type == "Mean":
        gen.emit(node, f"({' + '.join(args)}) / {len(args)}")
        return
    expr = args[0]
    for a in args[1:]:
        expr = f"{fn}({expr}, {a})"
    gen.emit(node, expr)


@converter("LeakyRelu")
def _leaky(gen: Gen, node):
    gen.emit(node, f"F.leaky_relu({gen.t(node.input[0])}, {float(_attrs(node).get('alpha', 0.01))!r})")


@converter("Elu")
def _elu(gen: Gen, node):
    gen.emit(node, f"F.elu({gen.t(node.input[0])}, {float(_attrs(node).get('alpha', 1.0))!r})")


@converter("Selu")
def _selu(gen: Gen, node):
    a = _attrs(node)
    if abs(a.get("alpha", 1.67326319) - 1.6732632) > 1e-6 or abs(a.get("gamma", 1.05070102) - 1.0507010) > 1e-6:
        raise Unsupported("Selu with non-default alpha/gamma")
    gen.emit(node, f"F.selu({gen.t(node.input[0])})")


@converter("HardSigmoid")
def _hard_sigmoid(gen: Gen, node):
    a = _attrs(node)
    gen.emit(node, f"torch.clamp({gen.t(node.input[0])} * {float(a.get('alpha', 0.2))!r} + "
                   f"{float(a.get('beta', 0.5))!r}, 0.0, 1.0)")


@converter("Clip")
def _clip(gen: Gen, node):
    lo = gen.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    hi = gen.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    args = [gen.t(node.input[0])]
    args.append(f"min={float(lo)!r}" if lo is not None else "")
    args.append(f"max={float(hi)!r}" if hi is not None else "")
    gen.emit(node, f"torch.clamp({', '.join(a for a in args if a)})")


@converter("PRelu")
def _prelu(gen: Gen, node):
    x, slope = gen.t(node.input[0]), gen.t(node.input[1], hint=_const_hint(gen, node))
    gen.emit(node, f"torch.where({x} >= 0, {x}, {x} * {slope})")


@converter("Where")
def _where(gen: Gen, node):
    gen.emit(node, f"torch.where({', '.join(gen.t(i, hint=_const_hint(gen, node)) for i in node.input)})")


@converter("Softmax", "LogSoftmax")
def _softmax(gen: Gen, node):
    axis = _attrs(node).get("axis", -1)
    fn = "torch.softmax" if node.op_type == "Softmax" else "torch.log_softmax"
    gen.emit(node, f"{fn}({gen.t(node.input[0])}, {axis})")


@converter("Cast")
def _cast(gen: Gen, node):
    import onnx

    dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(_attrs(node)["to"])).name
    gen.emit(node, f"{gen.t(node.input[0])}.to({_TORCH_DTYPE[dt]})", dtype=dt)


# ---- shapes and indexing -------------------------------------------------------------------
@converter("Transpose")
def _transpose(gen: Gen, node):
    perm = _attrs(node).get("perm")
    if perm is None:
        perm = list(reversed(range(gen.rank(node.input[0]))))
    gen.emit(node, f"{gen.t(node.input[0])}.permute{_tuple(perm)}")


@converter("Flatten")
def _flatten(gen: Gen, node):
    axis = _attrs(node).get("axis", 1)
    x = gen.t(node.input[0])
    if axis == 0:
        gen.emit(node, f"{x}.reshape(1, -1)")
    elif axis == 1:
        gen.emit(node, f"torch.flatten({x}, 1)")
    else:
        r = gen.rank(node.input[0])
        axis = axis % r
        gen.emit(node, f"torch.flatten(torch.flatten({x}, {axis}), 0, {axis - 1})")


def _target_shape(gen: Gen, node, items: list) -> list:
    """ONNX Reshape's target with 0 (copy) resolved; the batch dim becomes -1 when it can."""
    in_dims = gen.dims(node.input[0])
    out = [in_dims[i] if (isinstance(v, int) and v == 0) else v for i, v in enumerate(items)]
    if -1 not in out and out and isinstance(out[0], str) and in_dims and out[0] == in_dims[0]:
        out[0] = -1 if all(isinstance(v, int) for v in out[1:]) else out[0]
    return out


@converter("Reshape")
def _reshape(gen: Gen, node):
    items = gen.shape_items(node.input[1])
    if items is None:
        raise Unsupported("the target shape is computed from tensor values")
    gen.emit(node, f"{gen.t(node.input[0])}.reshape{_shape_list(_target_shape(gen, node, items))}")


@converter("Expand")
def _expand(gen: Gen, node):
    items = gen.shape_items(node.input[1])
    if items is None:
        raise Unsupported("the target shape is computed from tensor values")
    c = gen.const(node.input[0])
    if c is not None and c.size and np.all(c == c.reshape(-1)[0]) and c.ndim <= len(items):
        gen.emit(node, f"torch.full({_shape_list(items)}, {c.reshape(-1)[0].item()!r}, dtype={_TORCH_DTYPE[c.dtype.name]})")
        return
    x = gen.t(node.input[0], hint=_const_hint(gen, node))
    gen.emit(node, f"{x}.expand(torch.broadcast_shapes({x}.shape, {_shape_list(items)}))")


@converter("ConstantOfShape")
def _constant_of_shape(gen: Gen, node):
    import onnx

    items = gen.shape_items(node.input[0])
    if items is None:
        raise Unsupported("the shape is computed from tensor values")
    val = _attrs(node).get("value")
    arr = onnx.numpy_helper.to_array(val) if val is not None else np.zeros(1, np.float32)
    gen.emit(node, f"torch.full({_shape_list(items)}, {arr.reshape(-1)[0].item()!r}, dtype={_TORCH_DTYPE[arr.dtype.name]})")


@converter("Squeeze")
def _squeeze(gen: Gen, node):
    axes = gen.ints(node, 1) if gen.opset >= 13 else _attrs(node).get("axes")
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


@converter("Unsqueeze")
def _unsqueeze(gen: Gen, node):
    axes = gen.ints(node, 1) if gen.opset >= 13 else _attrs(node).get("axes")
    r = gen.rank(node.input[0])
    out_r = r + len(axes)
    expr = gen.t(node.input[0], hint=_const_hint(gen, node))
    for a in sorted(a % out_r for a in axes):
        expr = f"{expr}.unsqueeze({a})"
    gen.emit(node, expr)


@converter("Concat")
def _concat(gen: Gen, node):
    args = ", ".join(gen.t(i, hint=_const_hint(gen, node)) for i in node.input)
    gen.emit(node, f"torch.cat([{args}], {_attrs(node)['axis']})")


@converter("Split")
def _split(gen: Gen, node):
    a = _attrs(node)
    axis = a.get("axis", 0)
    sizes = gen.ints(node, 1) if gen.opset >= 13 else a.get("split")
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


@converter("Slice")
def _slice(gen: Gen, node):
    starts, ends = gen.ints(node, 1), gen.ints(node, 2)
    r = gen.rank(node.input[0])
    axes = gen.ints(node, 3) or list(range(len(starts)))
    steps = gen.ints(node, 4) or [1] * len(starts)
    idx = [":"] * r
    flips = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= r
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
        expr = f"torch.flip({expr}, {_tuple(flips)})"
    gen.emit(node, expr)


@converter("Gather")
def _gather(gen: Gen, node):
    axis = _attrs(node).get("axis", 0)
    data, idx = node.input
    c_data, c_idx = gen.const(data), gen.const(idx)
    if c_data is not None and axis == 0 and c_data.ndim == 2 and c_idx is None:
        # an embedding table
        mod = gen.submodule(node, f"nn.Embedding({c_data.shape[0]}, {c_data.shape[1]})", {"weight": c_data})
        gen.emit(node, f"{mod}({gen.t(idx)}.long())")
        return
    x = gen.t(data, hint=_const_hint(gen, node))
    r = gen.rank(data)
    axis %= r
    if c_idx is not None and c_idx.ndim == 0:
        gen.emit(node, f"{x}.select({axis}, {int(c_idx)})")
        return
    i = gen.t(idx, hint=_const_hint(gen, node))
    gen.emit(node, f"{x}[{', '.join([':'] * axis + [f'{i}.long()'])}]")


def _uniform_length(gen: Gen, name: str):
    """The one value of a lengths vector built as ``Expand(scalar, [batch])`` or a constant."""
    c = gen.const(name)
    if c is not None:
        return int(c.reshape(-1)[0]) if c.size and np.all(c == c.reshape(-1)[0]) else None
    p = gen.producers.get(name)
    if p is not None and p.op_type == "Expand":
        v = gen.values.get(p.input[0])
        if isinstance(v, Shape) and len(v.items) == 1:
            return v.items[0]
        if isinstance(v, Const) and v.value.size == 1:
            return int(v.value.reshape(-1)[0])
    return None


@converter("ReverseSequence")
def _reverse_sequence(gen: Gen, node):
    """Keras go_backwards / Bidirectional: every sequence has the full length -> a flip."""
    a = _attrs(node)
    time_axis = a.get("time_axis", 0)
    length = _uniform_length(gen, node.input[1])
    full = gen.dims(node.input[0])[time_axis]
    if length is None or str(length) != str(full):
        raise Unsupported("sequence lengths other than the full time axis (masked sequences)")
    gen.emit(node, f"torch.flip({gen.t(node.input[0])}, ({time_axis},))")


@converter("Tile")
def _tile(gen: Gen, node):
    reps = gen.shape_items(node.input[1])
    if reps is None:
        raise Unsupported("repeats computed from tensor values")
    gen.emit(node, f"{gen.t(node.input[0])}.repeat{_shape_list(reps)}")


@converter("Range")
def _range(gen: Gen, node):
    args = []
    for i in node.input:
        s = gen.shape_items(i) if _is_shape_like(gen, i) else None
        args.append(_pyexpr(s[0]) if s is not None else f"{gen.t(i)}.item()")
    gen.emit(node, f"torch.arange({', '.join(args)})")


@converter("Einsum")
def _einsum(gen: Gen, node):
    eq = _attrs(node)["equation"]
    gen.emit(node, f"torch.einsum({eq!r}, {', '.join(gen.t(i, hint=_const_hint(gen, node)) for i in node.input)})")


@converter("DepthToSpace", "SpaceToDepth")
def _depth_space(gen: Gen, node):
    a = _attrs(node)
    b = a["blocksize"]
    x = gen.t(node.input[0])
    if node.op_type == "SpaceToDepth":
        # ONNX orders the new channels (i, j, c); F.pixel_unshuffle orders them (c, i, j)
        gen.emit(node, f"{x}.reshape({x}.shape[0], {x}.shape[1], {x}.shape[2] // {b}, {b}, {x}.shape[3] // {b}, {b})"
                 f".permute(0, 3, 5, 1, 2, 4).reshape({x}.shape[0], -1, {x}.shape[2] // {b}, {x}.shape[3] // {b})")
    elif a.get("mode", "DCR") == "CRD":
        gen.emit(node, f"F.pixel_shuffle({x}, {b})")
    else:
        gen.emit(node, f"{x}.reshape({x}.shape[0], {b}, {b}, -1, {x}.shape[2], {x}.shape[3])"
                       f".permute(0, 3, 4, 1, 5, 2).reshape({x}.shape[0], -1, {x}.shape[2] * {b}, {x}.shape[3] * {b})")


# ---- reductions -------------------------------------------------------------------------
_REDUCE = {"ReduceMean": "torch.mean", "ReduceSum": "torch.sum", "ReduceMax": "torch.amax",
           "ReduceMin": "torch.amin", "ReduceProd": "torch.prod", "ReduceL2": "torch.linalg.vector_norm",
           "ReduceSumSquare": "torch.sum", "ReduceLogSumExp": "torch.logsumexp"}


@converter(*_REDUCE)
def _reduce(gen: Gen, node):
    a = _attrs(node)
    axes_from_input = node.op_type == "ReduceSum" and gen.opset >= 13 or gen.opset >= 18
    axes = gen.ints(node, 1) if axes_from_input else a.get("axes")
    keep = bool(a.get("keepdims", 1))
    x = gen.t(node.input[0])
    if node.op_type == "ReduceSumSquare":
        x = f"({x} * {x})"
    r = gen.rank(node.input[0])
    if axes is None:
        if a.get("noop_with_empty_axes", 0):
            gen.values[node.output[0]] = gen.values[node.input[0]]
            return
        axes = list(range(r))
    axes = [int(v) % r for v in axes]
    fn = _REDUCE[node.op_type]
    if node.op_type == "ReduceProd":
        expr = x
        for ax in sorted(axes, reverse=True):
            expr = f"torch.prod({expr}, {ax}, keepdim={keep})"
        gen.emit(node, expr)
        return
    gen.emit(node, f"{fn}({x}, {_tuple(axes)}, keepdim={keep})")


@converter("ArgMax", "ArgMin")
def _argmax(gen: Gen, node):
    a = _attrs(node)
    if a.get("select_last_index", 0):
        raise Unsupported("select_last_index=1")
    fn = "torch.argmax" if node.op_type == "ArgMax" else "torch.argmin"
    gen.emit(node, f"{fn}({gen.t(node.input[0])}, {a.get('axis', 0)}, keepdim={bool(a.get('keepdims', 1))})")


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(gen: Gen, node):
    r = gen.rank(node.input[0])
    fn = "torch.mean" if node.op_type == "GlobalAveragePool" else "torch.amax"
    gen.emit(node, f"{fn}({gen.t(node.input[0])}, {_tuple(range(2, r))}, keepdim=True)")


# ---- padding -------------------------------------------------------------------------------
def spatial_pads(gen: Gen, node, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX pads ``[b1.., e1..]`` with ``auto_pad`` resolved (needs static spatial dims for SAME)."""
    a = _attrs(node)
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


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX ``[b1, b2, e1, e2]`` -> F.pad's ``(b_last, e_last, ..., b1, e1)``."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _symmetric(pads: list[int]) -> bool:
    n = len(pads) // 2
    return pads[:n] == pads[n:]


def _padded(gen: Gen, x: str, pads: list[int], value: str = "0.0") -> str:
    """``x`` padded explicitly (a separate line, so forward stays readable)."""
    v = gen.var("padded")
    gen.lines.append(f"{v} = F.pad({x}, {_torch_pad(pads)}, value={value})")
    return v


# ---- weighted layers -------------------------------------------------------------------------
def _bias_after(gen: Gen, node, out_channels: int, spatial: int | None):
    """A constant per-channel bias ``Add`` that is the only consumer of ``node``'s output:
    shaped ``(C, 1, ...)``/``(1, C, 1, ...)`` after a conv with ``spatial`` dims, ``(C,)``/``(1, C)``
    after a Linear (``spatial`` None). Returns (the Add node, the bias as a vector)."""
    out = node.output[0]
    users = gen.consumers.get(out, [])
    if len(users) != 1 or gen.uses.get(out, 0) != 1 or users[0].op_type != "Add":
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    c = gen.const(other)
    if c is None or c.size != out_channels or c.dtype != np.float32:
        return None
    shape = list(c.shape)
    if spatial is None:
        ok = bool(shape) and shape[-1] == out_channels and int(np.prod(shape[:-1])) == 1
    else:
        rank = spatial + 2
        ok = len(shape) <= rank and [1] * (rank - len(shape)) + shape == [1, out_channels] + [1] * spatial
    return (add, c.reshape(-1)) if ok else None


def _conv_geometry(gen: Gen, node):
    """(attributes, constant kernel, spatial rank, kernel size, strides, dilations, groups)."""
    a = _attrs(node)
    w = gen.const(node.input[1])
    if w is None:
        raise Unsupported(f"a {node.op_type} with a computed (non-constant) kernel")
    n = w.ndim - 2
    return (a, w, n, list(w.shape[2:]), list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n)),
            a.get("group", 1))


@converter("Conv")
def _conv(gen: Gen, node):
    a, w, n, kernel, strides, dil, groups = _conv_geometry(gen, node)
    pads = spatial_pads(gen, node, kernel, strides, dil)
    bias = gen.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    fused = None
    if bias is None:
        fused = _bias_after(gen, node, w.shape[0], n)
        if fused is not None:
            bias = fused[1]
    x = gen.t(node.input[0])
    padding = "0"
    if any(pads):
        if _symmetric(pads):
            padding = _short(pads[:n])
        else:
            x = _padded(gen, x, pads)
    in_ch = w.shape[1] * groups
    ctor = (f"nn.Conv{n}d({in_ch}, {w.shape[0]}, {_short(kernel)}" + _opt("stride", strides, 1)
            + ("" if padding == "0" else f", padding={padding}")
            + (f", dilation={_tuple(dil)}" if any(d != 1 for d in dil) else "")
            + (f", groups={groups}" if groups != 1 else "") + (", bias=False" if bias is None else "") + ")")
    params = {"weight": w} | ({"bias": bias.reshape(-1).astype(np.float32)} if bias is not None else {})
    mod = gen.submodule(node, ctor, params)
    v = gen.emit(node, f"{mod}({x})")
    if fused is not None:
        gen.set_tensor(fused[0].output[0], v)
        gen.skip.add(id(fused[0]))


@converter("ConvTranspose")
def _conv_transpose(gen: Gen, node):
    a, w, n, kernel, strides, dil, groups = _conv_geometry(gen, node)
    out_pad = list(a.get("output_padding", [0] * n))
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if "output_shape" in a or auto.startswith("SAME"):
        dims = gen.dims(node.input[0])[2:]
        if not all(isinstance(d, int) for d in dims):
            raise Unsupported("output_shape/auto_pad on a dynamic spatial dimension")
        target = list(a["output_shape"])[-n:] if "output_shape" in a else [d * s for d, s in zip(dims, strides)]
        begin, end = [], []
        for d, k, s, dl, op, t in zip(dims, kernel, strides, dil, out_pad, target):
            total = s * (d - 1) + op + (k - 1) * dl + 1 - t
            if total < 0:
                raise Unsupported("an output_shape larger than the full transposed convolution")
            lo, hi = total // 2, total - total // 2
            # ONNX spec: SAME_UPPER pads total//2 at the start and the rest at the end; SAME_LOWER the reverse
            begin.append(lo if auto != "SAME_LOWER" else hi)
            end.append(hi if auto != "SAME_LOWER" else lo)
        pads = begin + end
    else:
        pads = list(a.get("pads", [0] * 2 * n))
    bias = gen.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    fused = None
    if bias is None:
        fused = _bias_after(gen, node, w.shape[1] * groups, n)
        if fused is not None:
            bias = fused[1]
    padding, crop = "0", None
    if any(pads):
        if _symmetric(pads):
            padding = _short(pads[:n])
        else:
            crop = pads
    ctor = (f"nn.ConvTranspose{n}d({w.shape[0]}, {w.shape[1] * groups}, {_short(kernel)}" + _opt("stride", strides, 1)
            + ("" if padding == "0" else f", padding={padding}") + (f", output_padding={_tuple(out_pad)}" if any(out_pad) else "")
            + (f", dilation={_tuple(dil)}" if any(d != 1 for d in dil) else "")
            + (f", groups={groups}" if groups != 1 else "") + (", bias=False" if bias is None else "") + ")")
    params = {"weight": w} | ({"bias": bias.reshape(-1).astype(np.float32)} if bias is not None else {})
    mod = gen.submodule(node, ctor, params)
    expr = f"{mod}({gen.t(node.input[0])})"
    if crop is not None:
        idx = [":", ":"] + [f"{b}:{(-e) if e else ''}" for b, e in zip(crop[:n], crop[n:])]
        expr = f"{expr}[{', '.join(idx)}]"
    v = gen.emit(node, expr)
    if fused is not None:
        gen.set_tensor(fused[0].output[0], v)
        gen.skip.add(id(fused[0]))


@converter("MatMul", "Gemm")
def _matmul(gen: Gen, node):
    a = _attrs(node)
    w = gen.const(node.input[1])
    if node.op_type == "Gemm":
        if a.get("transA", 0) or w is None:
            x, y = gen.t(node.input[0]), gen.t(node.input[1])
            x = f"{x}.t()" if a.get("transA", 0) else x
            y = f"{y}.t()" if a.get("transB", 0) else y
            expr = f"{float(a.get('alpha', 1.0))!r} * ({x} @ {y})"
            if len(node.input) > 2 and node.input[2]:
                expr += f" + {float(a.get('beta', 1.0))!r} * {gen.t(node.input[2], hint=_const_hint(gen, node))}"
            gen.emit(node, expr)
            return
        w = w.T if not a.get("transB", 0) else w      # -> (out, in)
        w = w * a.get("alpha", 1.0)
        bias = gen.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if bias is not None:
            bias = np.broadcast_to(bias * a.get("beta", 1.0), (w.shape[0],)).astype(np.float32)
        fused = None
    else:
        if w is None or w.ndim != 2 or gen.const(node.input[0]) is not None:
            gen.emit(node, f"torch.matmul({gen.t(node.input[0], hint=_const_hint(gen, node))}, "
                           f"{gen.t(node.input[1], hint=_const_hint(gen, node))})")
            return
        w = w.T
        fused = _bias_after(gen, node, w.shape[0], None)
        bias = fused[1] if fused is not None else None
    ctor = f"nn.Linear({w.shape[1]}, {w.shape[0]}" + (", bias=False" if bias is None else "") + ")"
    params = {"weight": np.ascontiguousarray(w.astype(np.float32))} | ({"bias": bias} if bias is not None else {})
    mod = gen.submodule(node, ctor, params)
    v = gen.emit(node, f"{mod}({gen.t(node.input[0])})")
    if fused is not None:
        gen.set_tensor(fused[0].output[0], v)
        gen.skip.add(id(fused[0]))


@converter("BatchNormalization")
def _batchnorm(gen: Gen, node):
    scale, b, mean, var = (gen.const(i) for i in node.input[1:5])
    if any(v is None for v in (scale, b, mean, var)):
        raise Unsupported("BatchNormalization with computed statistics")
    r = gen.rank(node.input[0]) or 4
    kind = {2: 1, 3: 1, 4: 2, 5: 3}[r]
    eps = _attrs(node).get("epsilon", 1e-5)
    mod = gen.submodule(node, f"nn.BatchNorm{kind}d({scale.shape[0]}, eps={float(eps)!r})",
                        {"weight": scale, "bias": b, "running_mean": mean, "running_var": var,
                         "num_batches_tracked": np.array(0, dtype=np.int64)})
    gen.emit(node, f"{mod}({gen.t(node.input[0])})")


@converter("LayerNormalization")
def _layernorm(gen: Gen, node):
    a = _attrs(node)
    r = gen.rank(node.input[0])
    axis = a.get("axis", -1) % r
    shape = gen.dims(node.input[0])[axis:]
    scale = gen.t(node.input[1], hint=_const_hint(gen, node))
    bias = gen.t(node.input[2], hint=_const_hint(gen, node)) if len(node.input) > 2 and node.input[2] else "None"
    gen.emit(node, f"F.layer_norm({gen.t(node.input[0])}, {_shape_list(shape)}, {scale}, {bias}, "
                   f"{float(a.get('epsilon', 1e-5))!r})")


# ---- pooling ---------------------------------------------------------------------------------
@converter("MaxPool", "AveragePool")
def _pool(gen: Gen, node):
    a = _attrs(node)
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("MaxPool with an indices output")
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    pads = spatial_pads(gen, node, kernel, strides, dil)
    ceil = bool(a.get("ceil_mode", 0))
    x = gen.t(node.input[0])
    opts = f"{_tuple(kernel)}, stride={_tuple(strides)}" + (", ceil_mode=True" if ceil else "")
    fits = _symmetric(pads) and all(2 * p <= k for p, k in zip(pads[:n], kernel))
    if node.op_type == "MaxPool":
        if any(d != 1 for d in dil):
            opts += f", dilation={_tuple(dil)}"
        if any(pads) and fits:
            opts += f", padding={_tuple(pads[:n])}"
        elif any(pads):
            x = _padded(gen, x, pads, value="float('-inf')")
        gen.emit(node, f"F.max_pool{n}d({x}, {opts})")
        return
    if any(d != 1 for d in dil):
        raise Unsupported("a dilated AveragePool")
    include = bool(a.get("count_include_pad", 0))
    if not any(pads):
        gen.emit(node, f"F.avg_pool{n}d({x}, {opts})")
    elif fits:
        gen.emit(node, f"F.avg_pool{n}d({x}, {opts}, padding={_tuple(pads[:n])}, count_include_pad={include})")
    elif include:
        gen.emit(node, f"F.avg_pool{n}d({_padded(gen, x, pads)}, {opts})")
    else:
        # asymmetric pads, pads left out of the count: sum over the window / number of real cells
        ones = gen.var("ones")
        gen.lines.append(f"{ones} = F.pad(torch.ones_like({x}[:1, :1]), {_torch_pad(pads)})")
        gen.emit(node, f"F.avg_pool{n}d({_padded(gen, x, pads)}, {opts}) / F.avg_pool{n}d({ones}, {opts})")


@converter("Pad")
def _pad(gen: Gen, node):
    a = _attrs(node)
    pads = gen.ints(node, 1) if gen.opset >= 11 else a["pads"]
    value = gen.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    mode = a.get("mode", "constant")
    r = gen.rank(node.input[0])
    if len(node.input) > 3 and node.input[3]:
        axes = [ax % r for ax in gen.ints(node, 3)]
        full = [0] * (2 * r)
        for k, ax in enumerate(axes):
            full[ax], full[ax + r] = pads[k], pads[k + len(axes)]
        pads = full
    if not any(pads):
        gen.values[node.output[0]] = gen.values[node.input[0]]
        return
    torch_pads = _torch_pad(pads)
    while torch_pads[-2:] == [0, 0] and len(torch_pads) > 2:
        torch_pads = torch_pads[:-2]
    x = gen.t(node.input[0])
    if mode == "constant":
        v = float(value.reshape(-1)[0]) if value is not None else 0.0
        gen.emit(node, f"F.pad({x}, {torch_pads}, value={v!r})")
    else:
        tmode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
        gen.emit(node, f"F.pad({x}, {torch_pads}, mode={tmode!r})")


@converter("Resize", "Upsample")
def _resize(gen: Gen, node):
    a = _attrs(node)
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    r = gen.rank(node.input[0])
    x = gen.t(node.input[0])
    scales = sizes = None
    if node.op_type == "Upsample":
        scales = gen.const(node.input[1])
    else:
        if len(node.input) > 2 and node.input[2]:
            scales = gen.const(node.input[2])
        if len(node.input) > 3 and node.input[3]:
            sizes = gen.shape_items(node.input[3])
        if (scales is None or scales.size == 0) and sizes is None:
            raise Unsupported("Resize with computed scales")
    if scales is not None and scales.size and list(scales[:2]) != [1.0, 1.0]:
        raise Unsupported("Resize that scales batch or channels")
    size_arg = (f"size={_shape_list(sizes[2:])}" if sizes is not None
                else f"scale_factor={tuple(float(s) for s in scales[2:])}")
    if mode == "nearest":
        nm = a.get("nearest_mode", "round_prefer_floor")
        if ctm == "asymmetric" and nm == "floor":
            gen.emit(node, f"F.interpolate({x}, {size_arg}, mode='nearest')")
        elif ctm in ("half_pixel", "tf_half_pixel_for_nn") and nm in ("round_prefer_ceil", "round_prefer_floor"):
            gen.emit(node, f"F.interpolate({x}, {size_arg}, mode='nearest-exact')")
        else:
            raise Unsupported(f"nearest Resize with coordinate_transformation_mode={ctm}, nearest_mode={nm}")
        return
    kind = {3: "linear", 4: "bilinear", 5: "trilinear"}[r] if mode == "linear" else ("bicubic" if mode == "cubic" else None)
    if kind is None or (mode == "cubic" and abs(a.get("cubic_coeff_a", -0.75) + 0.75) > 1e-6):
        raise Unsupported(f"Resize mode {mode}")
    if ctm in ("half_pixel", "pytorch_half_pixel"):
        gen.emit(node, f"F.interpolate({x}, {size_arg}, mode={kind!r}, align_corners=False)")
    elif ctm == "align_corners":
        gen.emit(node, f"F.interpolate({x}, {size_arg}, mode={kind!r}, align_corners=True)")
    else:
        raise Unsupported(f"{mode} Resize with coordinate_transformation_mode={ctm}")


# ---- recurrent ----------------------------------------------------------------------------
# ONNX gate order -> torch gate order (indices into ONNX's blocks)
_LSTM_GATES = [0, 2, 3, 1]   # ONNX i o f c -> torch i f g o
_GRU_GATES = [1, 0, 2]       # ONNX z r h -> torch r z n


def _reorder(m: np.ndarray, order: list[int], hidden: int) -> np.ndarray:
    return np.concatenate([m[k * hidden:(k + 1) * hidden] for k in order], axis=0)


@converter("LSTM", "GRU", "RNN")
def _recurrent(gen: Gen, node):
    a = _attrs(node)
    op = node.op_type
    hidden = a["hidden_size"]
    direction = a.get("direction", "forward")
    acts = [s.decode() if isinstance(s, bytes) else s for s in a.get("activations", [])]
    default = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[op]
    dirs = 2 if direction == "bidirectional" else 1
    if acts and acts != default * dirs:
        raise Unsupported(f"{op} with activations {acts} (torch's {op} has {default})")
    if a.get("clip") is not None or a.get("input_forget", 0) or a.get("layout", 0):
        raise Unsupported(f"{op} with clip, input_forget or layout=1")
    if op == "GRU" and not a.get("linear_before_reset", 0):
        raise Unsupported("GRU with linear_before_reset=0 (Keras reset_after=False): torch's GRU resets after")
    w, r = gen.const(node.input[1]), gen.const(node.input[2])
    b = gen.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if w is None or r is None:
        raise Unsupported(f"{op} with computed weights")
    if len(node.input) > 4 and node.input[4]:
        raise Unsupported(f"{op} with sequence_lens (masking)")
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    order = {"LSTM": _LSTM_GATES, "GRU": _GRU_GATES, "RNN": [0]}[op]
    if b is None:
        b = np.zeros((dirs, 2 * gates * hidden), np.float32)
    params = {}
    for d in range(dirs):
        sfx = "_reverse" if d == 1 else ""
        params[f"weight_ih_l0{sfx}"] = _reorder(w[d], order, hidden)
        params[f"weight_hh_l0{sfx}"] = _reorder(r[d], order, hidden)
        params[f"bias_ih_l0{sfx}"] = _reorder(b[d][:gates * hidden], order, hidden)
        params[f"bias_hh_l0{sfx}"] = _reorder(b[d][gates * hidden:], order, hidden)
    cls = {"LSTM": "nn.LSTM", "GRU": "nn.GRU", "RNN": "nn.RNN"}[op]
    mod = gen.submodule(node, f"{cls}({w.shape[2]}, {hidden}" + (", bidirectional=True" if dirs == 2 else "") + ")",
                        params)
    x = gen.t(node.input[0])
    if direction == "reverse":
        x = f"torch.flip({x}, (0,))"
    states = [i for i in node.input[5:8]]
    h0 = gen.t(states[0]) if len(states) > 0 and states[0] else None
    c0 = gen.t(states[1]) if op == "LSTM" and len(states) > 1 and states[1] else None
    if op == "LSTM" and (h0 is None) != (c0 is None):
        raise Unsupported("an LSTM with only one of initial_h / initial_c")
    state_arg = "" if h0 is None else (f", ({h0}, {c0})" if op == "LSTM" else f", {h0}")
    y = gen.var(gen.keras_layer(node.name) or op)
    hs = f"{y}_h"
    gen.lines.append(f"{y}, {hs} = {mod}({x}{state_arg})" if op != "LSTM" else
                     f"{y}, ({hs}, {y}_c) = {mod}({x}{state_arg})")
    if direction == "reverse":
        gen.lines.append(f"{y} = torch.flip({y}, (0,))")
    outs = list(node.output) + [""] * 3
    if outs[0]:
        # torch (seq, batch, dirs*H) -> ONNX (seq, dirs, batch, H)
        gen.lines.append(f"{y} = {y}.reshape({y}.shape[0], {y}.shape[1], {dirs}, {hidden}).permute(0, 2, 1, 3)")
        gen.set_tensor(outs[0], y)
    if outs[1]:
        gen.set_tensor(outs[1], hs)
    if op == "LSTM" and outs[2]:
        gen.set_tensor(outs[2], f"{y}_c")


# ---- the walk -------------------------------------------------------------------------------
_WEIGHTED = {"Conv", "ConvTranspose", "LSTM", "GRU", "RNN", "BatchNormalization", "MatMul", "Gemm"}


def generate(proto, model_name: str, keras_layers: list[dict] | None = None, class_name: str = "Model") -> Generated:
    """PyTorch source for ``proto``; raises PipelineError on an op it cannot express."""
    import onnx

    gen = Gen(proto, model_name, keras_layers)
    for t in proto.graph.initializer:
        gen.values[t.name] = Const(onnx.numpy_helper.to_array(t))
    inputs = [i.name for i in proto.graph.input if i.name not in gen.values]
    arg_names = []
    for name in inputs:
        arg = gen.unique(name)
        arg_names.append(arg)
        gen.values[name] = Tensor(arg, gen.dtypes.get(name))
    for node in proto.graph.node:
        if id(node) in gen.skip:
            continue
        if node.op_type not in _WEIGHTED and _fold(gen, node):
            continue
        if _shape_op(gen, node):
            continue
        fn = CONVERTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        layer = gen.keras_layer(node.name)
        where = dict(model=model_name, node=node.name, op_type=node.op_type, layer=layer)
        if fn is None:
            raise PipelineError("import", f"no PyTorch converter for ONNX op {node.op_type} (opset {gen.opset})"
                                + (f", from Keras layer {layer!r} ({gen.layers.get(layer)})" if layer else ""),
                                hint=f'register one in pipeline/codegen.py: @converter("{node.op_type}") on a function '
                                     "(gen, node) that emits torch code with gen.emit(node, expr)", **where)
        try:
            fn(gen, node)
        except Unsupported as e:
            raise PipelineError("import", f"cannot convert {node.op_type} (opset {gen.opset}): {e}"
                                + (f", from Keras layer {layer!r} ({gen.layers.get(layer)})" if layer else ""),
                                hint="extend its converter in pipeline/codegen.py", **where) from e
    outputs = []
    for o in proto.graph.output:
        outputs.append(gen.t(o.name, hint=f"{o.name}_const"))
    src = _render(gen, class_name, arg_names, outputs, model_name)
    return Generated(src, gen.state, gen.modules, inputs, [o.name for o in proto.graph.output])


def _render(gen: Gen, class_name: str, args: list[str], outputs: list[str], model_name: str) -> str:
    ret = outputs[0] if len(outputs) == 1 else "(" + ", ".join(outputs) + ",)"
    body = "\n".join(f"        {l}" for l in gen.init_lines) or "        pass"
    fwd = "\n".join(f"        {l}" for l in gen.lines)
    return f'''"""PyTorch port of the Keras model {model_name!r}, generated by keras2torch.

Needs torch and safetensors only. Channels-first layout: see report.json["layout"].

    from model import load
    model = load()            # reads model.safetensors next to this file
"""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class {class_name}(nn.Module):
    def __init__(self):
        super().__init__()
{body}

    def forward(self, {", ".join(args)}):
{fwd}
        return {ret}


def load(weights=None) -> {class_name}:
    """The model with its weights (``model.safetensors`` beside this file by default), in eval mode."""
    from safetensors.torch import load_file

    model = {class_name}()
    model.load_state_dict(load_file(str(weights or Path(__file__).with_name("model.safetensors"))))
    return model.eval()
'''


def load_generated(path, weights=None):
    """Import a generated ``model.py`` from ``path`` (a fresh module object) and load its weights."""
    import importlib.util
    import sys

    name = f"_keras2torch_generated_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, str(path))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod.load(weights)
