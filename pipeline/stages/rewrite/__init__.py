"""Stage 2, rewrite: ``raw.onnx`` (channels-last) -> ``nchw.onnx`` (channels-first).

Writes ``rewrite/nchw.onnx`` (explicit Transposes where the semantics need them, for
inspection and onnxruntime), ``rewrite/torch.onnx`` (the same graph with each
``Transpose -> Flatten -> Dense`` folded into the Dense weights and bias ``Add``s into the
op before them, ``folds``; the input of the import stage) and ``rewrite/rewrite.json``
(layouts, Transposes removed and left, and why; which of those left are attention's head
split/merge and which layout left-overs, ``heads``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir

from pipeline.core.artifacts import ModelDir, StageClock, atomic_dir, read_json, write_json
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.stages.rewrite import folds, heads, layout, passes
from pipeline.stages.rewrite.context import Ctx
from pipeline.core.untrusted import check_onnx


def _opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.graph.opset_imports.get("", 17))


def to_channels_first(model: ir.Model, channels_first_inputs: list[str], settings: Settings) -> dict:
    """Rewrite ``model`` in place; returns the facts for ``rewrite.json``."""
    ctx = Ctx(model.graph, _opset(model))
    passes.infer_shapes(model)
    before = len(layout.transposes(model.graph))
    static = passes.static_reshapes(ctx)
    dense = passes.collapse_tensordot(ctx)
    ins = layout.inputs_to_channels_first(ctx, channels_first_inputs)
    sweeps = layout.push_transposes(ctx)
    outs = [] if settings.channels_last_outputs else layout.outputs_to_channels_first(ctx)
    conv1d = passes.conv1d(ctx)
    passes.cleanup(model)
    sweeps += layout.push_transposes(ctx)   # conv1d and outputs can expose more work
    pulled = layout.pull_up(ctx)
    unit = passes.unit_transposes_to_reshapes(ctx)   # before a push could move them back down
    if pulled:
        sweeps += layout.push_transposes(ctx)        # merges and folds where they cancel
        unit += passes.unit_transposes_to_reshapes(ctx)
    passes.cleanup(model)
    bodies = passes.keras_functions(model, ctx.opset)
    remaining = layout.explain(ctx, outs, settings.channels_last_inputs, settings.channels_last_outputs)
    by_kind = heads.annotate(model.graph, remaining)   # attention's own Transposes vs layout left-overs
    return {
        "inputs_channels_first": ins,
        "outputs_channels_first": outs,
        "transposes_in_raw": before,
        "static_reshapes": static,
        "dense_on_features": dense,
        "conv1d": conv1d,
        "unit_transposes_as_reshapes": unit,
        "pulled_up": pulled,
        "keras_bodies_rebuilt": bodies,
        "sweeps": sweeps,
        "remaining": remaining,
        "transposes_by_kind": by_kind,
        "barriers": {k: {"op_type": v[0], "reason": v[1]} for k, v in ctx.barriers.items()
                     if any(n.name == k for n in model.graph)},
    }


@dataclass(frozen=True)
class PassResult:
    """What a pass returns (as in onnx_ir): the model, and whether the pass changed it."""
    model: ir.Model
    modified: bool


def graph_signature(model: ir.Model) -> list:
    """Nodes (op, inputs, outputs, attributes), inputs, outputs and initializers by name."""
    g = model.graph
    nodes = [(n.op_type, n.domain, tuple(v.name if v is not None else "" for v in n.inputs),
              tuple(v.name for v in n.outputs), tuple(sorted((k, repr(a.value)) for k, a in n.attributes.items())))
             for n in g]
    return [nodes, [v.name for v in g.inputs], [v.name for v in g.outputs], sorted(g.initializers)]


def rerun(model: ir.Model, settings: Settings) -> PassResult:
    """The rewrite run again on a copy of its own result (inputs as they are now).

    ``modified`` is False at a fixpoint: the rewrite is idempotent on ``model``."""
    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    before = graph_signature(copy)
    to_channels_first(copy, [], settings)
    return PassResult(copy, graph_signature(copy) != before)


def rewrite_file(raw: Path, settings: Settings) -> tuple[ir.Model, dict]:
    """Inputs that may carry channels become channels-first, each unless keeping it
    channels-last leaves strictly fewer Transposes (an input that feeds a Flatten
    directly, say): ties go to channels-first."""
    probe = ir.load(raw)
    candidates = [] if settings.channels_last_inputs else layout.channel_candidates(probe.graph)
    del probe

    def trial(choice):
        model = ir.load(raw)
        facts = to_channels_first(model, choice, settings)
        return len(facts["remaining"]), model, facts

    best = trial(candidates)
    chosen = list(candidates)
    for name in candidates:
        if best[0] == 0:
            break
        fewer = [c for c in chosen if c != name]
        t = trial(fewer)
        if t[0] < best[0]:
            best, chosen = t, fewer
    return best[1], best[2]


def fold_for_torch(model: ir.Model, settings: Settings) -> dict:
    """In place: each ``Transpose -> Flatten -> MatMul`` folded into the weights (if asked),
    constant per-channel ``Mul``/``Add`` after a ``Conv`` folded into its weights and bias,
    and a bias ``Add`` after a ``ConvTranspose`` or a rank-2 ``MatMul`` made the op's bias
    (a ``Gemm`` for the MatMul). Returns the names of what was folded, by kind."""
    ctx = Ctx(model.graph, _opset(model))
    dense = folds.fold_flatten_transposes(ctx) if settings.fold_flatten_transpose else []
    conv = folds.fold_affine_into_conv(ctx)
    bias = folds.fold_bias_add(ctx)
    passes.cleanup(model)
    return {"into_dense": dense, "into_conv": conv, "bias_add": bias}


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
    check_onnx(src / "raw.onnx", "rewrite", meta["model"])
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
        folded = fold_for_torch(model, settings)
        _save(model, d / "torch.onnx", external)
        facts["folded_into_dense"] = folded["into_dense"]
        facts["folded_into_conv"] = folded["into_conv"]
        facts["folded_bias_add"] = folded["bias_add"]
        facts["transposes_torch"] = len(layout.transposes(model.graph))
        facts["transposes_torch_by_kind"] = heads.counts(model.graph)
        record = {"stage": "rewrite", **clock.record()}
        write_json(d / "rewrite.json", {**facts, "stage": record})
    return record
