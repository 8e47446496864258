"""``Gen``: the state of one generation (values, submodules, buffers, the lines of
``forward``) and the helpers converters write code with."""

from __future__ import annotations

import keyword
import re

import numpy as np

from pipeline.codegen.values import Const, Shape, Tensor, pyexpr, shape_list
from pipeline.core.names import NameIndex, layer_in_scope

TORCH_DTYPE = {"float32": "torch.float32", "float64": "torch.float64", "float16": "torch.float16",
               "int64": "torch.int64", "int32": "torch.int32", "int8": "torch.int8", "uint8": "torch.uint8",
               "bool": "torch.bool", "int16": "torch.int16", "bfloat16": "torch.bfloat16"}


class Unsupported(Exception):
    """A converter cannot express this node (the message says why)."""


def identifier(text: str) -> str:
    s = re.sub(r"\W", "_", text).strip("_") or "v"
    if s[0].isdigit():
        s = "l_" + s
    return s + "_" if keyword.iskeyword(s) else s


def tuple_(v) -> str:
    v = [int(i) for i in v]
    return f"({v[0]},)" if len(v) == 1 else f"({', '.join(map(str, v))})"


def short(v) -> str:
    """A kernel size as torch writes it: ``3`` for ``(3, 3)``."""
    v = [int(i) for i in v]
    return str(v[0]) if len(set(v)) == 1 else tuple_(v)


def opt(name: str, v, default: int) -> str:
    """``, name=v`` unless every entry is ``default``."""
    return "" if all(int(i) == default for i in v) else f", {name}={short(v)}"


def attrs(node) -> dict:
    """The attributes of a NodeProto as Python values (strings decoded)."""
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


class Gen:
    """State of one generation: values, submodules, buffers and the lines of ``forward``."""

    def __init__(self, proto, model_name: str, keras_layers: list[dict] | None = None):
        import onnx

        self.proto = proto
        self.model_name = model_name
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.layers = {l["name"]: l["class"] for l in (keras_layers or [])}
        self.keras = {l["name"]: l for l in (keras_layers or [])}   # export's facts (variables, trainable, ...)
        self.sources: dict[str, str | None] = {}    # submodule -> the Keras layer whose weights it holds
        self.added_bias: dict[str, str] = {}        # Keras layer -> state key of the zero bias added for it
        self.reg_terms: list[str] = []              # Keras' kernel/bias regularizers as torch expressions
        self._pending_bias: str | None = None
        self.values: dict[str, object] = {}
        self.init_lines: list[str] = []
        self.lines: list[str] = []
        self.state: dict[str, np.ndarray] = {}
        self.modules: dict[str, str] = {}
        self.helpers: dict[str, str] = {}   # name -> source of a module-level helper (class, table)
        self.used: set[str] = {"self", "torch", "nn", "F", "forward"}
        self.const_names: dict[int, str] = {}
        self.n_var = 0
        self.var_kinds: dict[str, str] = {}   # variable made by ``var`` -> its hint (``liveness``)
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        self.shapes: dict[str, list] = {}
        self.dtypes: dict[str, str] = {}
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if t.elem_type:
                self.dtypes[vi.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        self.producers = {o: n for n in proto.graph.node for o in n.output}
        self.names = NameIndex(proto.graph, self.layers)

    # ---- naming -------------------------------------------------------------------------
    def keras_layer(self, node_name: str) -> str | None:
        """The Keras layer a tf2onnx node name comes from (``functional_1/conv_1/...`` -> ``conv``)."""
        return layer_in_scope(node_name, self.layers)

    def unique(self, base: str) -> str:
        base = identifier(base)
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
        return self.unique(self.owner(node) or node.op_type.lower())

    def owner(self, node) -> str | None:
        """The Keras layer whose weights ``node`` holds (see ``module_name``), or None."""
        weight = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1, "Linear": 1, "Gather": 0}.get(node.op_type)
        owner = self.keras_layer(node.input[weight]) if weight is not None and len(node.input) > weight else None
        return owner or self.layer_of(node)

    def missing_bias(self, node, n: int) -> np.ndarray | None:
        """Zeros ``(n,)`` for a node without a bias whose Keras layer has an all-zero bias
        variable of that size (tf2onnx folded the ``Add`` of zeros away), once per layer;
        else None. A non-zero bias is never missing: it is an ``Add`` the rewrite folds in."""
        layer = self.owner(node)
        variables = (self.keras.get(layer) or {}).get("variables", [])
        if layer in self.added_bias or not any(v["path"].rsplit("/", 1)[-1] == "bias" and v.get("zero")
                                               and v["shape"] == [n] for v in variables):
            return None
        self._pending_bias = layer
        return np.zeros(n, np.float32)

    def const_hint(self, node) -> str:
        """The name of a buffer a node's constant operand becomes (``<layer>_<op>``)."""
        layer = self.keras_layer(node.name)
        return f"{layer or 'c'}_{node.op_type.lower()}"

    def var(self, hint: str = "x") -> str:
        while True:
            self.n_var += 1
            name = f"{identifier(hint)}_{self.n_var}" if hint != "x" else f"x{self.n_var}"
            if name not in self.used:
                self.used.add(name)
                self.var_kinds[name] = identifier(hint)
                return name

    # ---- values -------------------------------------------------------------------------
    def const(self, name: str):
        """The constant value of ``name`` (an ndarray), or None."""
        v = self.values.get(name)
        return v.value if isinstance(v, Const) else None

    def opt_const(self, node, i: int):
        """Input ``i`` of ``node`` as a constant, None when absent or computed."""
        return self.const(node.input[i]) if len(node.input) > i and node.input[i] else None

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
        arr = np.ascontiguousarray(arr).reshape(arr.shape)   # ascontiguousarray makes a 0-d array 1-d
        name = self.unique(hint)
        self.state[name] = arr
        self.init_lines.append(f"self.register_buffer({name!r}, torch.empty({shape_list(arr.shape)}, "
                               f"dtype={TORCH_DTYPE[arr.dtype.name]}))")
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
        cast = ".bool()" if v.boolean else ""
        if v.scalar:
            return f"torch.tensor({pyexpr(v.items[0])}){cast}"
        return f"torch.tensor({shape_list(v.items)}){cast}"

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

    # ---- writing ------------------------------------------------------------------------
    def emit(self, node, expr: str, out: int = 0, dtype: str | None = None, hint: str = "x") -> str:
        """``<var> = expr`` in ``forward``; the var becomes output ``out`` of ``node``."""
        v = self.var(hint)
        self.lines.append(f"{v} = {expr}")
        name = node.output[out]
        self.values[name] = Tensor(v, dtype or self.dtypes.get(name))
        return v

    def alias(self, node, src: str, out: int = 0) -> None:
        """Output ``out`` of ``node`` is value ``src`` (no code)."""
        self.values[node.output[out]] = self.values[src]

    def set_tensor(self, name: str, expr: str) -> None:
        self.values[name] = Tensor(expr, self.dtypes.get(name))

    def set_shape(self, node, items: list, scalar: bool = False, out: int = 0, boolean: bool = False) -> None:
        """Output ``out`` of ``node`` is a shape value (no code); a constant when every entry
        is a static int, so that the nodes it feeds fold (``fold``)."""
        name = node.output[out]
        if all(isinstance(i, (int, np.integer)) for i in items):
            arr = np.array([int(i) for i in items], dtype=self.dtypes.get(name) or "int64")
            self.values[name] = Const(arr.reshape(()) if scalar else arr)
            return
        self.values[name] = Shape(items, scalar, boolean)

    def helper(self, name: str, source: str) -> None:
        """Put ``source`` (a class or table named ``name``) at module level in ``model.py``, once."""
        self.helpers.setdefault(name, source.strip("\n"))

    def submodule(self, node, ctor: str, params: dict[str, np.ndarray], name: str | None = None) -> str:
        """``self.<keras layer>`` (or ``self.<name>``) built by ``ctor``; ``params`` go to its state_dict."""
        name = self.unique(name) if name else self.module_name(node)
        self.init_lines.append(f"self.{name} = {ctor}")
        for k, arr in params.items():
            self.state[f"{name}.{k}"] = np.ascontiguousarray(arr).reshape(np.shape(arr))
        self.modules[name] = node.name
        layer = self.sources[name] = self.owner(node)
        if self._pending_bias is not None and "bias" in params:
            self.added_bias[self._pending_bias] = f"{name}.bias"
        self._pending_bias = None
        self._keras_training_facts(name, layer, params)
        return f"self.{name}"

    def _keras_training_facts(self, name: str, layer: str | None, params: dict) -> None:
        """A frozen Keras layer's module gets ``requires_grad_(False)``; a trainable one's
        kernel/recurrent/bias regularizers become terms of ``regularization_loss()`` (Keras counts
        the regularizers of trainable weights only; a Bidirectional's, both directions')."""
        entry = self.keras.get(layer) or {}
        variables = entry.get("variables", [])
        if params and (entry.get("trainable") is False or (variables and not any(v["trainable"] for v in variables))):
            why = "trainable=False" if entry.get("trainable") is False else "its variables are not trainable"
            self.init_lines.append(f"self.{name}.requires_grad_(False)  # Keras: {why}")
            return
        gru = "GRU" in (entry.get("class"), entry.get("wrapped_class"))
        roles = {"kernel": ["weight", "weight_ih_l0", "kernel"], "recurrent": ["weight_hh_l0", "recurrent_kernel"],
                 "bias": ["bias", "bias_ih_l0"] + (["bias_hh_l0"] if gru else [])}
        # a Bidirectional: nn.GRU/LSTM/RNN's ``*_reverse`` parameters, or the ``<layer>_backward`` cell module
        sides = [("", entry.get("regularizers", {}))]
        if entry.get("class") == "Bidirectional":
            back = ("", entry.get("backward_regularizers", {})) if name.endswith("_backward") else \
                ("_reverse", entry.get("backward_regularizers", {}))
            sides = [back] if name.endswith("_backward") else sides + [back]
        for sfx, regs in sides:
            for role, reg in regs.items():
                keys = [k + sfx for k in roles.get(role, []) if k + sfx in params][:1 if role == "kernel" else None]
                for k in keys:
                    p = f"self.{name}.{k}"
                    if reg.get("l1"):
                        self.reg_terms.append(f"{reg['l1']!r} * {p}.abs().sum()")
                    if reg.get("l2"):
                        self.reg_terms.append(f"{reg['l2']!r} * {p}.square().sum()")
