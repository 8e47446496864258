"""Stage 3, import: ``rewrite/torch.onnx`` -> a PyTorch model a fresh process can load.

Writes ``import/model.py`` (generated PyTorch source, see ``codegen``; it needs torch and
safetensors only), ``import/model.safetensors`` (its weights), ``import/model.pt2`` (a
``torch.export`` program of that module with a dynamic batch dimension) and
``import/import.json``. Loading never uses full pickle: ``load()`` reads the pt2 program,
or the generated module with its safetensors weights when no pt2 could be made.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, StageClock, atomic_dir, read_json, write_json
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.names import NameIndex
from pipeline.core.reference import inputs_for, load_reference


def convert_onnx(path: Path, model_name: str, layers: list[str] | None = None):
    """onnx2torch on ``path``; a missing converter names the node, op type and opset."""
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


def _example_args(mdir: ModelDir):
    import torch

    facts = read_json(mdir.stage("rewrite") / "rewrite.json")
    ins, _ = load_reference(mdir.stage("export") / "reference.npz")
    meta = read_json(mdir.stage("export") / "meta.json")
    feeds = inputs_for(facts, ins)
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[i["name"]])) for i in meta["inputs"])


@contextlib.contextmanager
def _quiet():
    """torch.export logs whole graphs when it fails; the reason goes into import.json."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_program(module, args):
    """torch.export with a dynamic batch dimension on every input."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = tuple({0: batch} for _ in args)
    return torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)


def run(mdir: ModelDir, settings: Settings) -> dict:
    """Generate ``model.py`` + ``model.safetensors`` from ``torch.onnx``, export ``model.pt2``
    from the generated module, and record whether onnx2torch converts the graph too."""
    clock = StageClock()
    import onnx
    import onnx2torch
    import torch
    from safetensors.numpy import save_file

    from pipeline import codegen

    src = mdir.require("rewrite", "torch.onnx", "rewrite.json")
    meta = read_json(mdir.require("export", "meta.json") / "meta.json")
    layers = [entry["name"] for entry in meta.get("keras_layers", [])]
    from pipeline.core.untrusted import load_onnx

    proto = load_onnx(src / "torch.onnx", "import", meta["model"])
    gen = codegen.generate(proto, meta["model"], meta.get("keras_layers"))
    del proto
    args = _example_args(mdir)
    info = {"torch": torch.__version__, "onnx2torch": getattr(onnx2torch, "__version__", "1.5.15"),
            "input_names": [i["name"] for i in meta["inputs"]], "modules": gen.modules}
    try:
        o2t = convert_onnx(src / "torch.onnx", meta["model"], layers)
        info["onnx2torch_status"] = "ok"
    except PipelineError as e:   # the generated module does not need it; compare skips the onnx2torch port
        info["onnx2torch_status"] = e.info.message
        o2t = None
    with atomic_dir(mdir.stage("import")) as d:
        (d / "model.py").write_text(gen.source)
        save_file({k: np.ascontiguousarray(v) for k, v in gen.state.items()}, str(d / "model.safetensors"))
        if o2t is not None:   # onnx2torch's port keeps ONNX node names: the per-layer debugger runs it
            from safetensors.torch import save_file as save_torch

            save_torch({k: v.contiguous() for k, v in o2t.state_dict().items()}, str(d / "onnx2torch.safetensors"))
            del o2t
        module = codegen.load_generated(d / "model.py")
        try:
            with torch.no_grad(), _quiet():
                program = export_program(module, args)
            program.example_inputs = None   # torch.save'd otherwise: the archive then holds no pickle
            torch.export.save(program, str(d / "model.pt2"))
            info["format"] = "pt2"
        except Exception as e:  # torch.export is strict about what it traces; model.py still loads
            info["format"] = "model.py"
            info["pt2_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        record = {"stage": "import", **clock.record()}
        write_json(d / "import.json", {**info, "stage": record})
    return record


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

    path = mdir.stage("import") / "model.pt2"
    check_pt2(path, mdir.root.name)
    return torch.export.load(str(path)).module()


def load_generated(mdir: ModelDir):
    """The generated ``import/model.py`` with ``model.safetensors`` loaded."""
    from pipeline import codegen

    d = mdir.require("import", "model.py", "model.safetensors")
    return codegen.load_generated(d / "model.py").eval()


def load_onnx2torch(mdir: ModelDir):
    """onnx2torch's port of ``rewrite/torch.onnx`` (a torch.fx module), for comparison."""
    return convert_onnx(mdir.stage("rewrite") / "torch.onnx", mdir.root.name).eval()
