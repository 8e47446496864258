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

from pipeline.artifacts import ModelDir, StageClock, atomic_dir, read_json, write_json
from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.layouts import inputs_for, load_reference


def convert_onnx(path: Path, model_name: str):
    """onnx2torch on ``path``; a missing converter names the node, op type and opset."""
    import onnx
    from onnx2torch import convert

    proto = onnx.load(str(path))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return convert(proto)
    except NotImplementedError as e:
        node, op = _node_of(proto, str(e))
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        raise PipelineError("import", f"onnx2torch has no converter: {e}", model=model_name, node=node,
                            op_type=op, hint=f"register one for opset {opset} with "
                            "onnx2torch.node_converters.add_converter(operation_type=..., version=...)") from e


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
    proto = onnx.load(str(src / "torch.onnx"))
    gen = codegen.generate(proto, meta["model"], meta.get("keras_layers"))
    del proto
    args = _example_args(mdir)
    info = {"torch": torch.__version__, "onnx2torch": getattr(onnx2torch, "__version__", "1.5.15"),
            "input_names": [i["name"] for i in meta["inputs"]], "modules": gen.modules}
    try:
        convert_onnx(src / "torch.onnx", meta["model"])
        info["onnx2torch_status"] = "ok"
    except PipelineError as e:   # the generated module does not need it; compare skips the onnx2torch port
        info["onnx2torch_status"] = e.info.message
    with atomic_dir(mdir.stage("import")) as d:
        (d / "model.py").write_text(gen.source)
        save_file({k: np.ascontiguousarray(v) for k, v in gen.state.items()}, str(d / "model.safetensors"))
        module = codegen.load_generated(d / "model.py")
        try:
            with torch.no_grad(), _quiet():
                program = export_program(module, args)
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
    """``import/model.pt2`` as a module (``torch.export.load``, no full pickle)."""
    import torch

    return torch.export.load(str(mdir.stage("import") / "model.pt2")).module()


def load_generated(mdir: ModelDir):
    """The generated ``import/model.py`` with ``model.safetensors`` loaded."""
    from pipeline import codegen

    d = mdir.require("import", "model.py", "model.safetensors")
    return codegen.load_generated(d / "model.py").eval()


def load_onnx2torch(mdir: ModelDir):
    """onnx2torch's port of ``rewrite/torch.onnx`` (a torch.fx module), for comparison."""
    return convert_onnx(mdir.stage("rewrite") / "torch.onnx", mdir.root.name).eval()
