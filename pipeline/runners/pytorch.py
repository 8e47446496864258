"""The torch ports of a converted model, and the loaders behind them.

- ``load(mdir)``: the converted model as a ``torch.nn.Module``, without full pickle: the
  ``import/model.pt2`` program, or the generated ``import/model.py`` with its safetensors
  weights when no pt2 could be made. ``load_pt2``, ``load_generated``: each of the two.
- ``convert_onnx(path, ...)``: onnx2torch on an ONNX file (a missing converter names the
  node, op type and opset); ``onnx2torch_module(mdir)``: onnx2torch's port of
  ``rewrite/torch.onnx`` with the import stage's ``onnx2torch.safetensors``, converted
  once per process (compare and debug in one process share it).
- Runners: ``TorchRunner`` (any module), ``GeneratedRunner`` (``torch_codegen``),
  ``Pt2Runner`` (``torch_pt2``), ``OnnxToTorchRunner`` (``torch``).

torch, onnx and onnx2torch are imported on first use only.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, read_json
from pipeline.core.errors import PipelineError
from pipeline.core.names import NameIndex
from pipeline.runners.base import Runner

# ---------------------------------------------------------------- loaders


def load(mdir: ModelDir):
    """The converted torch module, loaded without full pickle: the ``model.pt2`` program,
    or the generated ``model.py`` with its safetensors weights when no pt2 could be made."""
    d = mdir.require("import", "import.json")
    info = read_json(d / "import.json")
    if info["format"] == "pt2":
        return load_pt2(mdir)
    return load_generated(mdir)


def load_pt2(mdir: ModelDir):
    """``import/model.pt2`` as a module; refused if the archive holds any pickled payload
    (``torch.export.load`` would unpickle it)."""
    import torch

    from pipeline.core.untrusted import check_pt2

    path = mdir.require("import", "model.pt2") / "model.pt2"
    check_pt2(path, mdir.root.name)
    return torch.export.load(str(path)).module()


def load_generated(mdir: ModelDir):
    """The generated ``import/model.py`` with ``model.safetensors`` loaded."""
    from pipeline import codegen

    d = mdir.require("import", "model.py", "model.safetensors")
    return codegen.load_generated(d / "model.py").eval()


def convert_onnx(path: Path, model_name: str, layers: list[str] | None = None):
    """onnx2torch on ``path``; a missing converter names the node, op type and opset.
    Every call converts: ``onnx2torch_module`` is the cached port of a model folder."""
    from onnx2torch import convert

    from pipeline.core.untrusted import load_onnx

    proto = load_onnx(path, "import", model_name)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return static_shapes(convert(proto))
    except NotImplementedError as e:
        node, op = _node_of(proto, str(e))
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        raise PipelineError("import", f"onnx2torch has no converter: {e}", model=model_name, node=node,
                            op_type=op, layer=NameIndex(proto.graph, layers).layer_of(node), hint=f"register one for opset {opset} with "
                            "onnx2torch.node_converters.add_converter(operation_type=..., version=...)") from e


def static_shapes(module):
    """Reshape and Tile with a constant shape/repeats read them as Python ints, not from a
    tensor at run time (onnx2torch's ``torch.any(shape == 0)`` is a data-dependent branch
    that stops ``torch.export``/``torch.compile`` with a dynamic batch). In place."""
    import torch
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.tile import OnnxTile

    class StaticReshape(torch.nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = shape

        def forward(self, x, _shape=None):
            return torch.reshape(x, [x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)])

    class StaticTile(torch.nn.Module):
        def __init__(self, repeats):
            super().__init__()
            self.repeats = repeats

        def forward(self, x, _repeats=None):
            return x.repeat(self.repeats)

    graph = getattr(module, "graph", None)
    for node in graph.nodes if graph is not None else []:
        if node.op != "call_module" or len(node.args) != 2 or getattr(node.args[1], "op", None) != "get_attr":
            continue
        sub = module.get_submodule(node.target)
        if not isinstance(sub, (OnnxReshape, OnnxTile)):
            continue
        value = [int(v) for v in module.get_buffer(node.args[1].target).reshape(-1).tolist()]
        parent, _, name = node.target.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        setattr(owner, name, StaticReshape(value) if isinstance(sub, OnnxReshape) else StaticTile(value))
    return module


def _node_of(proto, message: str):
    for n in proto.graph.node:
        if n.op_type in message:
            return n.name, n.op_type
    return None, None


# one entry: (files it was made from, module). One model at a time, so that a process that
# goes through many models (the tests, a zoo worker) does not keep every port in memory.
_PORT: dict = {}
_PORT_LOCK = threading.Lock()


def _stamp(path: Path):
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def onnx2torch_module(mdir: ModelDir):
    """onnx2torch's port of ``rewrite/torch.onnx`` (a torch.fx module, ONNX node names kept),
    with the import stage's ``import/onnx2torch.safetensors`` when it is there, in eval mode.

    Converted once per process for the same files (path, mtime and size of both): compare
    and debug in one process share the module. Shared, so callers must not modify it."""
    src = mdir.require("rewrite", "torch.onnx") / "torch.onnx"
    weights = mdir.stage("import") / "onnx2torch.safetensors"
    key = (_stamp(src), _stamp(weights) if weights.exists() else None)
    with _PORT_LOCK:
        if key not in _PORT:
            _PORT.clear()   # the previous model's port goes before this one is made
            module = convert_onnx(src, mdir.root.name)
            if key[1] is not None:
                from safetensors.torch import load_file

                module.load_state_dict(load_file(str(weights)))
            _PORT[key] = module.eval()
        return _PORT[key]


def clear_cache() -> None:
    """Drop the cached onnx2torch port (``onnx2torch_module``)."""
    with _PORT_LOCK:
        _PORT.clear()


# ---------------------------------------------------------------- runners


class TorchRunner(Runner):
    """A torch module called as ``module(*inputs)`` in ``input_names`` order under
    ``torch.no_grad()``; its result (a tensor, a tuple/list, or a dict by output name) is
    named by ``output_names``. Subclasses load the module on first use (``_load``)."""

    def __init__(self, module=None, input_names: list[str] | None = None, output_names: list[str] | None = None,
                 *, name: str = "torch", model: str | None = None, stage: str = "compare"):
        super().__init__(name, model=model, stage=stage)
        self._module, self._inputs, self._outputs = module, input_names, output_names

    @property
    def module(self):
        if self._module is None:
            self._module = self._load()
        return self._module

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def _load(self):
        raise NotImplementedError(f"{type(self).__name__} has no module")

    def _input_names(self) -> list[str]:
        return list(self._inputs)

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        module = self.module
        xs = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        with torch.no_grad():
            t0 = time.perf_counter()
            res = module(*xs)
            self._inference_time = time.perf_counter() - t0
        names = self.output_names
        if isinstance(res, dict):
            res = [res[k] for k in names]
        elif not isinstance(res, (list, tuple)):
            res = [res]
        if len(res) != len(names):
            raise PipelineError(self.stage, f"runner {self.name!r}: the module returned {len(res)} outputs, "
                                f"the model has {len(names)} ({names})", model=self.model)
        return {n: r.detach().numpy() for n, r in zip(names, res)}


class _ModelDirRunner(TorchRunner):
    """A torch port of the model in ``mdir``: inputs as the import stage recorded them
    (export's order), outputs in ``rewrite/torch.onnx``'s order (the graph it was made from)."""

    default_name = "torch"

    def __init__(self, mdir: ModelDir, *, name: str | None = None, stage: str = "compare"):
        super().__init__(name=name or self.default_name, model=mdir.root.name, stage=stage)
        self.mdir = mdir

    def _input_names(self) -> list[str]:
        if self._inputs is None:
            meta = read_json(self.mdir.require("export", "meta.json") / "meta.json")
            self._inputs = [i["name"] for i in meta["inputs"]]
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        if self._outputs is None:
            import onnx

            path = self.mdir.require("rewrite", "torch.onnx") / "torch.onnx"
            self._outputs = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
        return list(self._outputs)

    def close(self) -> None:
        self._module = None


class GeneratedRunner(_ModelDirRunner):
    """The generated ``import/model.py`` with ``model.safetensors``."""

    default_name = "torch_codegen"

    def _load(self):
        return load_generated(self.mdir)


class Pt2Runner(_ModelDirRunner):
    """``import/model.pt2``; refused (PipelineError) if the archive holds any pickle."""

    default_name = "torch_pt2"

    def _load(self):
        return load_pt2(self.mdir)


class OnnxToTorchRunner(_ModelDirRunner):
    """onnx2torch's port of ``rewrite/torch.onnx`` with the import stage's weights
    (``onnx2torch_module``: converted once per process)."""

    default_name = "torch"

    def _load(self):
        return onnx2torch_module(self.mdir)
