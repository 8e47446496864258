"""The walk: every node in topological order, folded if it can be, else converted by the
converter registered for its op type at the model's opset. Each line a converter writes
into ``forward`` is recorded with its node (``Generated.line_nodes``, by line of
``model.py``), so that a failure of the generated code names the node and its Keras layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from pipeline.codegen import liveness
from pipeline.codegen.fold import fold
from pipeline.codegen.fusions import DOMAIN, fuse_bincount, fuse_dense_bias
from pipeline.codegen.gen import Gen, Unsupported
from pipeline.codegen.ops import CONVERTERS
from pipeline.codegen.render import render
from pipeline.codegen.values import Const, Tensor
from pipeline.core.errors import PipelineError
from pipeline.core.registry import MAX_OPSET, Registry

_HOME = "pipeline/codegen/ops/"


class LineOrigin(NamedTuple):
    """Where a line of ``forward`` comes from: the ONNX node whose converter wrote it, the
    node's op type, its Keras layer (``core.names``; None when no layer is near), and the
    converter that wrote it (``"pad in pipeline/codegen/ops/shape.py"``)."""

    node: str
    op_type: str
    layer: str | None
    converter: str


@dataclass
class Generated:
    source: str
    state: dict = field(default_factory=dict)   # state_dict name -> np.ndarray
    modules: dict = field(default_factory=dict)  # submodule name -> ONNX node name
    input_names: list = field(default_factory=list)
    output_names: list = field(default_factory=list)
    line_nodes: dict = field(default_factory=dict)  # model.py line number (from 1) -> LineOrigin
    sources: dict = field(default_factory=dict)     # submodule name -> the Keras layer whose weights it holds
    added_bias: dict = field(default_factory=dict)  # Keras layer -> state key of the zero bias added for it

    def origin(self, line: int) -> LineOrigin | None:
        """The node that line ``line`` of ``model.py`` is the code of (None outside ``forward``)."""
        return self.line_nodes.get(line)


def generate(proto, model_name: str, keras_layers: list[dict] | None = None, class_name: str = "Model",
             converters: Registry | None = None, reuse_names: bool = True) -> Generated:
    """PyTorch source for ``proto``; raises PipelineError on an op it cannot express.

    ``reuse_names=False`` keeps every value of ``forward`` under the fresh name its converter
    gave it (alive until ``forward`` returns; ``liveness``): the form before names were
    reused, for ``bench/eager_forward.py``.

    ``converters``: the registry to use (default ``CONVERTERS``)."""
    import onnx

    converters = CONVERTERS if converters is None else converters
    gen = Gen(proto, model_name, keras_layers)
    for t in proto.graph.initializer:
        gen.values[t.name] = Const(onnx.numpy_helper.to_array(t))
    inputs = [i.name for i in proto.graph.input if i.name not in gen.values]
    arg_names = []
    for name in inputs:
        arg = gen.unique(name)
        arg_names.append(arg)
        gen.values[name] = Tensor(arg, gen.dtypes.get(name))
    origins: dict[int, LineOrigin] = {}   # index in gen.lines -> the node whose converter wrote it
    graph_outputs = {o.name for o in proto.graph.output}
    nodes = fuse_bincount(fuse_dense_bias(list(proto.graph.node), gen, graph_outputs), gen, graph_outputs)
    for node in nodes:
        if not fold(gen, node):
            start = len(gen.lines)
            entry = _convert(gen, converters, node)
            if len(gen.lines) > start:
                where = f"{entry.fn.__name__} in {entry.fn.__module__.replace('.', '/')}.py"
                origin = LineOrigin(node.name, node.op_type, gen.layer_of(node), where)
                origins.update(dict.fromkeys(range(start, len(gen.lines)), origin))
    outputs = [gen.t(o.name, hint=f"{o.name}_const") for o in proto.graph.output]
    lines, index = gen.lines, range(len(gen.lines))   # index: line of forward -> the line of gen.lines it is
    if reuse_names:
        lines, outputs, index = liveness.reuse_names(gen.lines, outputs, gen.var_kinds)
    src, first = render(gen.init_lines, lines, class_name, arg_names, outputs, model_name, gen.helpers,
                        gen.reg_terms)
    return Generated(src, gen.state, gen.modules, inputs, [o.name for o in proto.graph.output],
                     {first + k: origins[i] for k, i in enumerate(index) if i in origins}, gen.sources, gen.added_bias)


def _convert(gen: Gen, converters: Registry, node):
    """Run the converter of ``node``; returns its registry entry."""
    key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    entry = converters.lookup(key, gen.opset) if node.domain in ("", "ai.onnx", DOMAIN) else None
    layer = gen.keras_layer(node.name)
    where = dict(model=gen.model_name, node=node.name, op_type=node.op_type, layer=layer)
    of_layer = f", from Keras layer {layer!r} ({gen.layers.get(layer)})" if layer else ""
    if entry is None:
        ranges = sorted(e.opsets for e in converters.entries().get(node.op_type, []))
        known = f" (converters exist for opsets {', '.join(_range(r) for r in ranges)})" if ranges else ""
        hi = min((lo - 1 for lo, _ in ranges if lo > gen.opset), default=None)
        raise PipelineError("import", f"no PyTorch converter for ONNX op {node.op_type} (opset {gen.opset}){known}"
                            + of_layer,
                            hint=f"register one in {_HOME}<family>.py: @handles(\"{node.op_type}\", opsets=({gen.opset}, "
                                 f"{hi})) on a function (gen, node) that emits torch code with gen.emit(node, expr)",
                            **where)
    try:
        entry.fn(gen, node)
        return entry
    except Unsupported as e:
        raise PipelineError("import", f"cannot convert {node.op_type} (opset {gen.opset}): {e}" + of_layer,
                            hint=f"extend its converter, {entry.fn.__name__} in {_HOME}{entry.family}.py",
                            **where) from e


def _range(r: tuple[int, int]) -> str:
    return f"{r[0]}+" if r[1] >= MAX_OPSET else str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"
