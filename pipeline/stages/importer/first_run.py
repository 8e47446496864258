"""The generated module's first run: once on the reference inputs, before ``torch.export``.

Code that generates but that torch refuses at run time (``F.pad`` with a padding size its
rank does not take, a reshape that does not fit) stops the import stage here, with the
line of ``model.py`` that raised, the ONNX node whose converter wrote that line, its op
type and Keras layer (``codegen.Generated.line_nodes``), rather than at compare time as a
runner's failure. Only exceptions count: outputs with NaN or inf are the compare stage's
to judge.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

from pipeline.core.errors import PipelineError


def run_once(module, args: tuple, gen, path: Path, model: str, layer_classes: dict | None = None) -> None:
    """Call ``module(*args)`` (no grad); an exception becomes a ``PipelineError`` of the
    import stage naming the line of ``path`` (the ``model.py`` ``module`` was loaded from)
    and the node of ``gen`` (a ``codegen.Generated``) that line came from."""
    import torch

    try:
        with torch.no_grad():
            module(*args)
    except Exception as e:  # any failure of the generated code; the cause stays chained
        raise failure(e, gen, path, model, layer_classes or {}) from e


def failed_line(exc: BaseException, path: Path) -> int | None:
    """The line of ``path`` in ``exc``'s traceback nearest to where it was raised."""
    target = os.path.abspath(path)
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == target]
    return lines[-1] if lines else None


def failure(exc: BaseException, gen, path: Path, model: str, layer_classes: dict) -> PipelineError:
    """The import stage's error for ``exc``, raised by the generated module of ``gen``."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    raised = f"{type(exc).__name__}" + (f": {first}" if first else "")
    what = "running the generated model.py on the reference inputs failed"
    line = failed_line(exc, path)
    if line is None:
        return PipelineError("import", f"{what}: {raised}", model=model,
                             hint="the traceback does not pass through model.py: see its forward")
    at = f"{what} at model.py line {line}, `{gen.source.splitlines()[line - 1].strip()}`"
    origin = gen.origin(line)
    if origin is None:
        return PipelineError("import", f"{at}: {raised}", model=model,
                             hint="that line is not the code of one ONNX node: see pipeline/codegen/render.py")
    layer = f" of Keras layer {origin.layer!r}" if origin.layer else ""
    if origin.layer and layer_classes.get(origin.layer):
        layer += f" ({layer_classes[origin.layer]})"
    return PipelineError(
        "import", f"{at}, the code of ONNX {origin.op_type} node {origin.node!r}{layer}: {raised}",
        model=model, node=origin.node, op_type=origin.op_type, layer=origin.layer,
        hint=f"the {origin.op_type} converter ({origin.converter}) writes code torch cannot run for this node: "
             "make it emit code that works for this node's ranks and attributes, or raise Unsupported there",
    )
