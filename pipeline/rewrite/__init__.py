"""Stage 2, rewrite: ``raw.onnx`` (channels-last) -> ``nchw.onnx`` (channels-first).

Writes ``rewrite/nchw.onnx`` (explicit Transposes where the semantics need them, for
inspection and onnxruntime), ``rewrite/torch.onnx`` (the same graph with each
``Transpose -> Flatten -> Dense`` folded into the Dense weights, the input of the import
stage) and ``rewrite/rewrite.json`` (layouts, Transposes removed and left, and why).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir

from pipeline.artifacts import ModelDir, StageClock, atomic_dir, read_json, write_json
from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.rewrite import layout, passes
from pipeline.rewrite.context import Ctx


def _opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.graph.opset_imports.get("", 17))


def to_channels_first(model: ir.Model, channels_first_inputs: list[str], settings: Settings) -> dict:
    """Rewrite ``model`` in place; returns the facts for ``rewrite.json``."""
    ctx = Ctx(model.graph, _opset(model))
    passes.infer_shapes(model)
    before = len(layout.transposes(model.graph))
    static = passes.static_reshapes(ctx)
    ins = layout.inputs_to_channels_first(ctx, channels_first_inputs)
    sweeps = layout.push_transposes(ctx)
    outs = [] if settings.channels_last_outputs else layout.outputs_to_channels_first(ctx)
    conv1d = passes.conv1d(ctx)
    passes.cleanup(model)
    layout.push_transposes(ctx)   # conv1d can expose more work; a no-op otherwise
    passes.cleanup(model)
    return {
        "inputs_channels_first": ins,
        "outputs_channels_first": outs,
        "transposes_in_raw": before,
        "static_reshapes": static,
        "conv1d": conv1d,
        "sweeps": sweeps,
        "remaining": layout.explain(ctx, [], []),
        "barriers": {k: {"op_type": v[0], "reason": v[1]} for k, v in ctx.barriers.items()
                     if any(n.name == k for n in model.graph)},
    }


def rewrite_file(raw: Path, settings: Settings) -> tuple[ir.Model, dict]:
    """Try channels-first inputs and keep them only where they leave fewer Transposes."""
    probe = ir.load(raw)
    candidates = [] if settings.channels_last_inputs else layout.channel_candidates(probe.graph)
    del probe
    trials = [candidates] + ([[]] if candidates else [])
    best = None
    for choice in trials:
        model = ir.load(raw)
        facts = to_channels_first(model, choice, settings)
        n = len(facts["remaining"])
        if best is None or n <= best[0] and not (n == best[0] and choice):
            best = (n, model, facts)
        else:
            del model
    return best[1], best[2]


def _save(model: ir.Model, path: Path, external: bool) -> None:
    """Write ``path`` (with its weights in ``path`` + ``.data`` when ``external``) and check it.

    onnx_ir streams lazily loaded tensors into the file: no second copy of the weights.
    """
    try:
        ir.save(model, path, external_data=path.name + ".data" if external else None)
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise PipelineError("rewrite", f"{path.name} is not a valid ONNX model: {type(e).__name__}: {e}") from e


def run(mdir: ModelDir, settings: Settings) -> dict:
    clock = StageClock()
    src = mdir.require("export", "raw.onnx", "meta.json")
    meta = read_json(src / "meta.json")
    external = (src / "raw.onnx.data").exists()   # a big model: keep the weights out of the protos
    try:
        model, facts = rewrite_file(src / "raw.onnx", settings)
        n_left = len(facts["remaining"])
    except PipelineError as e:
        e.info.model = e.info.model or meta["model"]
        raise
    except Exception as e:
        raise PipelineError("rewrite", f"{type(e).__name__}: {e}", model=meta["model"]) from e
    facts["transposes"] = n_left
    with atomic_dir(mdir.stage("rewrite")) as d:
        _save(model, d / "nchw.onnx", external)
        ctx = Ctx(model.graph, _opset(model))
        folded = passes.fold_flatten_transposes(ctx) if settings.fold_flatten_transpose else []
        passes.cleanup(model)
        _save(model, d / "torch.onnx", external)
        facts["folded_into_dense"] = folded
        facts["transposes_torch"] = len(layout.transposes(model.graph))
        record = {"stage": "rewrite", **clock.record()}
        write_json(d / "rewrite.json", {**facts, "stage": record})
    return record
