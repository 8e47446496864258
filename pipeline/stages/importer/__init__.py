"""Stage 3, import: ``rewrite/torch.onnx`` -> a PyTorch model a fresh process can load.

Writes ``import/model.py`` (generated PyTorch source, see ``codegen``; it needs torch and
safetensors only), ``import/model.safetensors`` (its weights), ``import/model.pt2`` (a
``torch.export`` program of that module's inference form: in eval(), batch norms folded into
the conv or Dense before them, ``fuse.py``; ``import.json`` ``fused``: what was folded and why
the rest was not; with a dynamic batch dimension and the free dimensions of export dynamic as
far as the graph allows, see ``dynamic.py``) and
``import/import.json`` (``line_nodes``: the ONNX node, op type and Keras layer of each line
of ``forward``, keyed by line of ``model.py``); with onnx2torch's port of the same graph,
``import/onnx2torch.safetensors`` (its weights, for the per-layer debugger) and
``onnx2torch_status`` in ``import.json``; ``import/weights_map.json``: each Keras variable's
state_dict key and transform (``weights_map.py``).
Loading is the runners' part: ``pipeline.runners.load(mdir)`` reads the pt2 program, or the
generated module with its safetensors weights when no pt2 could be made, never full pickle.

Before ``torch.export``, the generated module runs once on the reference inputs
(``first_run``): code torch refuses at run time fails the stage, naming the line of
``model.py``, its ONNX node and the Keras layer.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from pipeline.core.artifacts import ModelDir, StageClock, atomic_dir, read_json, write_json
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.reference import inputs_for, load_reference
from pipeline.runners.pytorch import convert_onnx
from pipeline.stages.importer.dynamic import export_dynamic
from pipeline.stages.importer import weights_map
from pipeline.stages.importer.first_run import run_once
from pipeline.stages.importer.fuse import fuse


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
    from the generated module with its batch norms folded (the inference form), and record whether onnx2torch converts the graph too."""
    clock = StageClock()
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
            "input_names": [i["name"] for i in meta["inputs"]], "modules": gen.modules,
            "line_nodes": {str(line): o._asdict() for line, o in gen.line_nodes.items()}}
    try:
        o2t = convert_onnx(src / "torch.onnx", meta["model"], layers)
        info["onnx2torch_status"] = "ok"
    except PipelineError as e:   # the generated module does not need it; compare skips the onnx2torch port
        info["onnx2torch_status"] = e.info.message
        o2t = None
    with atomic_dir(mdir.stage("import")) as d:
        (d / "model.py").write_text(gen.source)
        save_file({k: np.ascontiguousarray(v).reshape(v.shape) for k, v in gen.state.items()}, str(d / "model.safetensors"))
        module = codegen.load_generated(d / "model.py")
        run_once(module, args, gen, d / "model.py", meta["model"],
                 {entry["name"]: entry["class"] for entry in meta.get("keras_layers", [])})
        if o2t is not None:   # onnx2torch's port keeps ONNX node names: the per-layer debugger runs it
            from safetensors.torch import save_file as save_torch

            save_torch({k: v.contiguous() for k, v in o2t.state_dict().items()}, str(d / "onnx2torch.safetensors"))
            del o2t
        folded = fuse(module, args)   # model.py stays the trainable module; model.pt2 is for inference
        info["fused"] = folded.to_json()
        try:
            with torch.no_grad(), _quiet():   # the batch and the free dims dynamic, as far as the graph allows
                program, dynamic = export_dynamic(folded.module, args, meta, read_json(src / "rewrite.json"))
            info.update(dynamic)
            program.example_inputs = None   # torch.save'd otherwise: the archive then holds no pickle
            torch.export.save(program, str(d / "model.pt2"))
            info["format"] = "pt2"
        except Exception as e:  # torch.export is strict about what it traces; model.py still loads
            info["format"] = "model.py"
            info["pt2_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        keras_npz = mdir.stage("export") / str(meta.get("keras_weights") or "-")
        if keras_npz.is_file():
            with np.load(keras_npz, allow_pickle=False) as z:
                values = {k: z[k] for k in z.files}
        else:
            values = None
        write_json(d / "weights_map.json", weights_map.build(meta.get("keras_layers", []), values, gen.state,
                                                             gen.sources, gen.added_bias))
        record = {"stage": "import", **clock.record()}
        write_json(d / "import.json", {**info, "stage": record})
    return record
