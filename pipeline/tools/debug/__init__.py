"""Per-layer debugging: which Keras layer goes wrong first, and in which step.

Every number comes from ``compare.compare_arrays``. For each Keras layer recorded by
``export --per-layer`` (``export/layers.npz``) this module finds the tensor that carries
that layer's output in each graph and compares it with Keras' activation:

- ``onnx_raw``   onnxruntime on ``export/raw.onnx``      (a failure here blames export)
- ``onnx_nchw``  onnxruntime on ``rewrite/nchw.onnx``    (... the channels-first rewrite)
- ``onnx_torch`` onnxruntime on ``rewrite/torch.onnx``   (... the rewrite's Flatten fold)
- ``torch``      the onnx2torch module with the import stage's weights (... the import)

Matching by name: tf2onnx names nodes after the Keras name scope
(``functional_1/conv_1/BiasAdd`` for layer ``conv``; Keras 3 adds ``_N`` to each scope,
tf.keras does not), and the rewrite keeps those names (new nodes are ``<old>__k2tN``).
A name belongs to the first path component, after the model's own scope, that names a
top-level layer; a node belongs to the layer of its first output's name, else of its own
name (tf2onnx fuses a BatchNormalization into the Conv before it: node ``conv/BiasAdd``,
output ``bn/FusedBatchNormV3:0``; that Conv2D layer then has no tensor of its own).
A layer's tensor in a graph is the last (in graph order) output of its nodes that a node
of another layer, or the graph output, reads; a Transpose of another layer's (or the
model's) tensor is layout plumbing for the next op, not a layer's output.

Layout rule, per tensor: the converted value ``v`` is compared as it is when its shape
is Keras' shape, and as ``transpose(v, (0, 2, ..., r-1, 1))`` (channels-first back to
channels-last) when that shape is. When both fit (square shapes, C == H ...), the
layout propagated through the graph decides: model inputs are channels-first where
``rewrite.json`` says so, a Transpose by ``to_first``/``to_last`` sets channels-first /
channels-last (at rank 3 the two are the same perm, so it flips the layout), other ops
keep their first computed input's layout; an unknown layout counts as channels-last. When neither fits,
the layer fails with a shape error.

Memory: onnxruntime is run with the wanted tensors as extra outputs in chunks of at most
``chunk_mb`` MB (each chunk is one more run of the graph); torch runs once under an
``fx.Interpreter`` that compares each value as it is produced and keeps none. Keras'
activations are read from the npz file one at a time.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, StageClock, read_json, write_json, write_text
from pipeline.stages.compare import compare_arrays
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.names import is_keras3, layer_of_name
from pipeline.core.reference import inputs_for, load_reference
from pipeline.core.perm import to_first, to_last

STAGES = ("onnx_raw", "onnx_nchw", "onnx_torch", "torch")
# the step a stage's first failure blames, and why
BLAME = {
    "onnx_raw": ("export", "tf2onnx's raw.onnx already differs from Keras"),
    "onnx_nchw": ("rewrite", "the channels-first rewrite (nchw.onnx) changed the numbers"),
    "onnx_torch": ("rewrite", "the rewrite's torch.onnx (Transpose folded into Dense) changed the numbers"),
    "torch": ("import", "the PyTorch module (onnx2torch + the import stage's weights) changed the numbers"),
}
CHUNK_MB = 512


# ---------------------------------------------------------------- matching by name

@dataclass(frozen=True)
class Match:
    """Where one Keras layer's output lives in one graph."""

    tensor: str
    layout: str          # "cf", "cl" or "?" (propagated through the graph)
    nodes: tuple         # names of the layer's nodes in this graph


def match_layers(graph, layers: list[str], cf_inputs: set[str], folded: bool = False) -> dict[str, Match]:
    """{layer: Match} for the layers that have nodes in ``graph`` (an ``onnx.GraphProto``);
    ``folded``: the graph is ``torch.onnx`` of a rewrite that folded Transposes into Dense."""
    names = set(layers)
    keras3 = is_keras3(graph)
    # a node belongs to the layer its first output's name says (tf2onnx names a Conv with a fused
    # BatchNormalization after the conv, its output after the BN), else to the layer of its own name
    owner = {n.name: (layer_of_name(n.output[0], names, keras3) if n.output else None)
             or layer_of_name(n.name, names, keras3) for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output if o}
    graph_outputs = {o.name for o in graph.output}
    layout = _propagate_layout(graph, cf_inputs, folded)
    boundary: dict[str, str] = {}
    nodes: dict[str, list[str]] = {}
    for n in graph.node:
        if owner[n.name]:
            nodes.setdefault(owner[n.name], []).append(n.name)
    def plumbing(p) -> bool:
        if p.op_type != "Transpose" or not p.input:
            return False
        perm = next((tuple(a.ints) for a in p.attribute if a.name == "perm"), ())
        src = producer.get(p.input[0])
        return len(perm) > 2 and perm in (to_first(len(perm)), to_last(len(perm))) and \
            (src is None or owner[src.name] != owner[p.name])

    for n in graph.node:   # graph order is topological: the last boundary output wins
        for i in n.input:
            p = producer.get(i)
            if p is not None and owner[p.name] and owner[p.name] != owner[n.name] and not plumbing(p):
                boundary[owner[p.name]] = _later(boundary.get(owner[p.name]), i, producer, graph)
    for o in graph_outputs:
        p = producer.get(o)
        if p is not None and owner[p.name] and not plumbing(p):
            boundary[owner[p.name]] = _later(boundary.get(owner[p.name]), o, producer, graph)
    return {k: Match(v, layout.get(v, "?"), tuple(nodes[k])) for k, v in boundary.items()}


def _later(current: str | None, candidate: str, producer: dict, graph) -> str:
    if current is None:
        return candidate
    order = {n.name: i for i, n in enumerate(graph.node)}
    return candidate if order[producer[candidate].name] > order[producer[current].name] else current


def _propagate_layout(graph, cf_inputs: set[str], folded: bool = False) -> dict[str, str]:
    inits = {t.name for t in graph.initializer}
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    layout = {i.name: ("cf" if i.name in cf_inputs else "cl") for i in graph.input if i.name not in inits}
    for n in graph.node:
        if n.op_type == "Transpose":
            perm = next((tuple(a.ints) for a in n.attribute if a.name == "perm"), None)
            r = len(perm) if perm else 0
            src = layout.get(n.input[0], "?")
            if r == 3 and perm == to_first(3):   # rank 3: to_first == to_last, the Transpose flips the layout
                out = {"cf": "cl", "cl": "cf"}.get(src, "?")
            else:
                out = "cf" if r > 3 and perm == to_first(r) else "cl" if r > 3 and perm == to_last(r) else "?"
        elif folded and (n.op_type == "Flatten" or n.op_type == "Reshape" and len(dims.get(n.output[0], [])) == 2) \
                and layout.get(n.input[0]) == "cf" \
                and len(dims.get(n.input[0], [])) > 2 and all(dims[n.input[0]][1:]):
            # a Flatten (or Reshape to 2-D) straight on a channels-first tensor exists only where the
            # rewrite folded the Transpose before it into the Dense rows: features in channels-first order
            out = "cfflat:" + ",".join(map(str, dims[n.input[0]][1:]))
        else:
            out = next((layout[i] for i in n.input if i in layout), "?")
        for o in n.output:
            layout[o] = out
    return layout


def to_keras_layout(value: np.ndarray, keras_shape: tuple, layout: str) -> np.ndarray | None:
    """``value`` in Keras' channels-last layout by the rule of the module docstring, or None."""
    if layout.startswith("cfflat:"):   # Flatten of (N, C, *S) -> Flatten of (N, *S, C)
        cf = [int(d) for d in layout[7:].split(",")]
        if value.ndim != 2 or math.prod(cf) != value.shape[1] or tuple(value.shape) != tuple(keras_shape):
            return None
        v = value.reshape(value.shape[0], *cf)
        return np.transpose(v, to_last(v.ndim)).reshape(value.shape[0], -1)
    as_is = tuple(value.shape) == tuple(keras_shape)
    back = value.ndim > 2 and tuple(value.shape[i] for i in to_last(value.ndim)) == tuple(keras_shape)
    if back and (not as_is or layout == "cf"):
        return np.transpose(value, to_last(value.ndim))
    return value if as_is else None


def to_graph_layout(keras_value: np.ndarray, layout: str) -> np.ndarray:
    """A Keras activation in the layout a graph tensor has (inverse of ``to_keras_layout``)."""
    if layout.startswith("cfflat:"):
        cf = [int(d) for d in layout[7:].split(",")]
        v = keras_value.reshape(keras_value.shape[0], *cf[1:], cf[0])
        return np.ascontiguousarray(np.transpose(v, to_first(v.ndim)).reshape(keras_value.shape[0], -1))
    if layout == "cf" and keras_value.ndim > 2:
        return np.ascontiguousarray(np.transpose(keras_value, to_first(keras_value.ndim)))
    return keras_value


# ---------------------------------------------------------------- running the graphs

def _session(proto, names: list[str]):
    """An onnxruntime session with ``names`` as extra outputs; ``proto`` is left as it was
    (outputs appended, serialised, removed: no second copy of the weights)."""
    import onnx
    import onnxruntime as ort

    outputs = proto.graph.output
    n0 = len(outputs)
    have = {o.name for o in outputs}
    outputs.extend(onnx.helper.make_empty_tensor_value_info(t) for t in dict.fromkeys(names) if t not in have)
    try:
        data = proto.SerializeToString()
    finally:
        while len(outputs) > n0:
            outputs.pop()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # keep every tensor
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def onnx_tensors(path: Path, feeds: dict, tensors: list[str], sizes: dict, chunk_mb: float = CHUNK_MB):
    """Yield (tensor, value) for ``tensors``, running the graph once per chunk of at most
    ``chunk_mb`` MB of values (``sizes``: expected bytes per tensor)."""
    import onnx

    proto = onnx.load(str(path))
    chunks, cur, total = [], [], 0
    for t in tensors:
        if cur and total + sizes.get(t, 0) > chunk_mb * 2**20:
            chunks.append(cur)
            cur, total = [], 0
        cur.append(t)
        total += sizes.get(t, 0)
    if cur:
        chunks.append(cur)
    for chunk in chunks:
        sess = _session(proto, chunk)
        ins = {i.name: feeds[i.name] for i in sess.get_inputs()}
        values = sess.run(chunk, ins)
        del sess
        for t, v in zip(chunk, values):
            yield t, v
        del values


def torch_tensors(module, feeds: list, tensors: dict, sink) -> None:
    """Run an onnx2torch GraphModule under an ``fx.Interpreter`` and call ``sink(tensor,
    value)`` as each wanted value is produced (nothing is kept); ``tensors`` maps ONNX
    tensor -> (onnx2torch module name, output index), those names being the fx targets."""
    import torch

    by_node: dict[str, list] = {}
    for t, (node, idx) in tensors.items():
        by_node.setdefault(node, []).append((t, idx))

    class Keeper(torch.fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            if n.op == "call_module" and n.target in by_node:
                for t, idx in by_node[n.target]:
                    sink(t, (v[idx] if isinstance(v, (tuple, list)) else v).detach().numpy())
            return v

    with torch.no_grad():
        Keeper(module).run(*[torch.from_numpy(np.ascontiguousarray(x)) for x in feeds])


# ---------------------------------------------------------------- the whole debug run

def _torch_module(mdir: ModelDir, model_name: str):
    """onnx2torch on ``torch.onnx`` with the import stage's weights (node names intact)."""
    from safetensors.torch import load_file

    from pipeline.runners import onnx2torch_module

    module = onnx2torch_module(mdir)   # converted once per process (compare's port, when it ran here)
    weights = mdir.stage("import") / "onnx2torch.safetensors"
    if weights.exists():
        module.load_state_dict(load_file(str(weights)))
    return module.eval()


def run(mdir: ModelDir, settings: Settings, torch_module=None, bisect: bool = False,
        chunk_mb: float = CHUNK_MB) -> dict:
    """Compare every recorded Keras layer at every stage; write ``compare/layers.json`` and
    ``compare/report.html`` (and ``compare/bisect/`` when asked). ``torch_module`` replaces
    the onnx2torch module (it must keep onnx2torch's node names)."""
    import onnx

    clock = StageClock()
    exp = mdir.require("export", "raw.onnx", "reference.npz", "meta.json")
    if not (exp / "layers.npz").exists() or not (exp / "layers.json").exists():
        raise PipelineError("debug", f"{exp / 'layers.npz'} is missing: the Keras layers' outputs were not recorded",
                            model=mdir.root.name, hint="python -m pipeline export --layers-only --model ... "
                            "(or make debug MODEL=..., which records them)")
    rw = mdir.require("rewrite", "nchw.onnx", "torch.onnx", "rewrite.json")
    meta = read_json(exp / "meta.json")
    model_name = meta["model"]
    facts = read_json(rw / "rewrite.json")
    entries = [e for e in read_json(exp / "layers.json")["layers"] if "shape" in e]
    names = [e["name"] for e in entries]
    inputs, _ = load_reference(exp / "reference.npz")
    feeds_cf = inputs_for(facts, inputs)
    in_names = [i["name"] for i in meta["inputs"]]
    cf_in = set(facts.get("inputs_channels_first", []))
    sizes = {}
    keras_npz = np.load(exp / "layers.npz", allow_pickle=False)
    results: dict[str, dict] = {n: {} for n in names}
    stage_errors: dict[str, str] = {}
    error_layers: dict[str, str | None] = {}
    matches: dict[str, dict] = {}

    def sink_for(stage: str, match: dict):
        by_tensor = {}
        for layer, m in match.items():
            by_tensor.setdefault(m.tensor, []).append(layer)

        def sink(tensor, value):
            for layer in by_tensor.get(tensor, []):
                ref = keras_npz[f"layer:{layer}"]
                got = to_keras_layout(np.asarray(value), ref.shape, match[layer].layout)
                if got is None:
                    r = compare_arrays(ref, np.asarray(value), settings.rtol, settings.atol)
                    r["error"] = f"shape {list(value.shape)} fits neither Keras' {list(ref.shape)} nor its channels-first form"
                else:
                    r = compare_arrays(ref, got, settings.rtol, settings.atol)
                results[layer][stage] = {"tensor": tensor, "layout": match[layer].layout, **r}
        return sink

    folded = bool(facts.get("folded_into_dense"))
    graphs = {"onnx_raw": (exp / "raw.onnx", inputs, set(), False), "onnx_nchw": (rw / "nchw.onnx", feeds_cf, cf_in, False),
              "onnx_torch": (rw / "torch.onnx", feeds_cf, cf_in, folded)}
    for stage, (path, feeds, cfs, fold) in graphs.items():
        graph = onnx.load(str(path), load_external_data=False).graph
        match = match_layers(graph, names, cfs, fold)
        matches[stage] = match
        del graph
        for layer, m in match.items():
            e = next(x for x in entries if x["name"] == layer)
            sizes[m.tensor] = 4 * math.prod(e["shape"])
        try:
            sink = sink_for(stage, match)
            for t, v in onnx_tensors(path, feeds, list(dict.fromkeys(m.tensor for m in match.values())), sizes, chunk_mb):
                sink(t, v)
        except Exception as e:  # onnxruntime's own errors (shape inference, kernels): the stage cannot run
            stage_errors[stage] = f"onnxruntime cannot run {path.name}: {type(e).__name__}: {str(e).splitlines()[0]}"
            error_layers[stage] = _layer_in_message(path, str(e), names)
    match = matches["onnx_torch"]
    try:
        module = torch_module if torch_module is not None else _torch_module(mdir, model_name)
        from onnx2torch.onnx_graph import OnnxGraph

        # onnx2torch's own module names ('.' -> '/', duplicates numbered): the fx targets
        graph = OnnxGraph(onnx.load(str(rw / "torch.onnx"), load_external_data=False).graph)
        where = {o: (name, i) for name, n in graph.nodes.items() for i, o in enumerate(n.output_values)}
        wanted = {m.tensor: where[m.tensor] for m in match.values() if m.tensor in where}
        torch_tensors(module, [feeds_cf[n] for n in in_names], wanted, sink_for("torch", match))
    except PipelineError:
        raise
    except Exception as e:  # torch and onnx2torch raise many types; the stage cannot run
        stage_errors["torch"] = f"the torch module cannot run: {type(e).__name__}: {str(e).splitlines()[0]}"

    rows = []
    for e in entries:
        rows.append({"layer": e["name"], "class": e["class"], "shape": e["shape"],
                     "stages": {s: results[e["name"]].get(s) for s in STAGES}})
    warnings = [f"stage {s}: no Keras layer matched a value (node names lost?); its column is empty"
                for s in STAGES if s not in stage_errors and not any(r["stages"][s] for r in rows)
                and any(r["stages"][t] for r in rows for t in STAGES)]
    first = {s: next((r["layer"] for r in rows if r["stages"][s] and not r["stages"][s]["ok"]), None) for s in STAGES}
    verdict = _verdict(first, stage_errors, error_layers)
    summary = {
        "model": model_name,
        "status": "ok" if verdict is None else "mismatch",
        "tolerance": {"rtol": settings.rtol, "atol": settings.atol},
        "first_failing": first,
        "verdict": verdict,
        "stage_errors": stage_errors,
        "warnings": warnings,
        "layers": rows,
        "skipped": [{"layer": e["name"], "reason": e["skipped"]} for e in read_json(exp / "layers.json")["layers"]
                    if "skipped" in e and e["skipped"] != "input"],
    }
    out = mdir.stage("compare")
    out.mkdir(parents=True, exist_ok=True)
    if bisect and verdict is not None:
        try:
            summary["bisect"] = write_bisect(mdir, summary, matches, keras_npz, feeds_cf, settings)
        except Exception as e:  # onnx.utils/onnxruntime errors on an odd cut: report, keep the rest
            summary["bisect"] = {"skipped": f"could not cut the failing layer out: {type(e).__name__}: {e}"}
    keras_npz.close()
    summary["stage"] = {"stage": "debug", **clock.record()}
    write_json(out / "layers.json", summary)
    write_text(out / "report.html", render_html(summary))
    return summary


def _verdict(first: dict, stage_errors: dict, error_layers: dict) -> dict | None:
    for s in STAGES:
        if first[s] is not None or s in stage_errors:
            step, why = BLAME[s]
            return {"stage": s, "step": step, "layer": first[s] or error_layers.get(s), "why": why,
                    "error": stage_errors.get(s)}
    return None


def _layer_in_message(path: Path, message: str, layers: list[str]) -> str | None:
    """The layer of the node that an onnxruntime error message names, if it names one."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    keras3 = is_keras3(graph)
    for n in sorted(graph.node, key=lambda n: -len(n.name)):
        if n.name and n.name in message:
            return layer_of_name(n.name, set(layers), keras3)
    return None


# ---------------------------------------------------------------- bisect

def write_bisect(mdir: ModelDir, summary: dict, matches: dict, keras_npz, feeds_cf: dict, settings: Settings) -> dict:
    """The failing layer's nodes cut out of the rewritten graph as ``compare/bisect/<layer>.onnx``
    with its inputs (from Keras' activations where a layer's tensor feeds it, else from the
    model's inputs or onnxruntime) and Keras' expected output in ``<layer>.npz``."""
    import onnx
    import onnx.utils

    stage = next((s for s in ("onnx_nchw", "onnx_torch") if summary["first_failing"][s]), None)
    if stage is None:
        return {"skipped": "the rewritten graphs match Keras layer by layer; nothing to cut"}
    layer = summary["first_failing"][stage]
    src = mdir.stage("rewrite") / ("nchw.onnx" if stage == "onnx_nchw" else "torch.onnx")
    graph = onnx.load(str(src), load_external_data=False).graph
    m = matches[stage][layer]
    inits = {t.name for t in graph.initializer}
    own = set(m.nodes)
    produced_inside = {o for n in graph.node if n.name in own for o in n.output}
    cut_inputs = list(dict.fromkeys(i for n in graph.node if n.name in own for i in n.input
                                    if i and i not in inits and i not in produced_inside))
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", layer)
    d = mdir.stage("compare") / "bisect"
    d.mkdir(parents=True, exist_ok=True)
    onnx.utils.extract_model(str(src), str(d / f"{safe}.onnx"), cut_inputs, [m.tensor])
    # input values: Keras' activation of the layer whose tensor it is, else a model input, else onnxruntime
    tensor_layer = {mm.tensor: (lname, mm.layout) for lname, mm in matches[stage].items()}
    values, source = {}, {}
    need_ort = []
    for t in cut_inputs:
        if t in tensor_layer:
            lname, lay = tensor_layer[t]
            values[t], source[t] = to_graph_layout(keras_npz[f"layer:{lname}"], lay), f"keras:{lname}"
        elif t in feeds_cf:
            values[t], source[t] = feeds_cf[t], "model input"
        else:
            need_ort.append(t)
    if need_ort:
        for t, v in onnx_tensors(src, feeds_cf, need_ort, {}):
            values[t], source[t] = v, "onnxruntime"
    expected = to_graph_layout(keras_npz[f"layer:{layer}"], m.layout)
    np.savez(d / f"{safe}.npz", **{f"input:{k}": v for k, v in values.items()}, **{f"expected:{m.tensor}": expected})
    sess = _session(onnx.load(str(d / f"{safe}.onnx")), [])
    got = sess.run([m.tensor], {i.name: values[i.name] for i in sess.get_inputs()})[0]
    check = compare_arrays(expected, got, settings.rtol, settings.atol) if got.shape == expected.shape else \
        {"ok": False, "error": f"shape {list(got.shape)} != expected {list(expected.shape)}"}
    return {"stage": stage, "layer": layer, "model": str(d / f"{safe}.onnx"), "data": str(d / f"{safe}.npz"),
            "nodes": list(m.nodes), "inputs": source, "output": m.tensor,
            "reproduces": not check["ok"], "check": check}


# ---------------------------------------------------------------- text and HTML

def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2e}"


def table(summary: dict) -> str:
    """The per-layer table printed by ``debug``; ``<<`` marks each stage's first failing layer."""
    head = f"{'layer':<22} {'kind':<20} {'shape':<18}" + "".join(f" {s + ' abs/rel':>24}" for s in STAGES)
    lines = [head]
    for r in summary["layers"]:
        cells = []
        for s in STAGES:
            c = r["stages"][s]
            if c is None:
                cells.append(f" {'-':>24}")
                continue
            mark = "<<" if summary["first_failing"][s] == r["layer"] else ("!" if not c["ok"] else " ")
            txt = "shape!" if c.get("error") and c["max_abs_err"] is None else f"{_fmt(c['max_abs_err'])}/{_fmt(c['max_rel_err'])}"
            cells.append(f" {txt + mark:>24}")
        lines.append(f"{r['layer'][:22]:<22} {r['class'][:20]:<20} {str(r['shape'][1:])[:18]:<18}" + "".join(cells))
    v = summary["verdict"]
    if v is None:
        lines.append(f"every layer within tolerance at every stage (rtol {summary['tolerance']['rtol']}, "
                     f"atol {summary['tolerance']['atol']})")
    else:
        where = f"layer {v['layer']!r}" if v["layer"] else "the graph"
        lines.append(f"first wrong: {where} at stage {v['stage']} -> step '{v['step']}' broke it: {v['why']}"
                     + (f" ({v['error']})" if v.get("error") else ""))
    for s, e in summary["stage_errors"].items():
        lines.append(f"stage {s}: {e}")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    lines.append("(-: the graph has no tensor for that layer, e.g. a Conv2D that tf2onnx fused with the next "
                 "BatchNormalization; << first layer out of tolerance in that stage; ! out of tolerance)")
    return "\n".join(lines)


COLOURS = {"onnx_raw": "#1f77b4", "onnx_nchw": "#d62728", "onnx_torch": "#ff7f0e", "torch": "#2ca02c"}


def _plot(summary: dict) -> str:
    """An inline SVG: log10 relative error per layer, one line per stage, rtol dashed."""
    rows = summary["layers"]
    n = max(len(rows), 2)
    w, h, left, top, bottom = max(900, 80 + 11 * n), 320, 60, 20, 90   # 11 px per layer label
    lo, hi = -12, 2

    def x(i):
        return left + i * (w - left - 20) / (n - 1)

    def y(rel):
        v = hi if rel is None or not math.isfinite(rel) else min(max(math.log10(max(rel, 1e-300)), lo), hi)
        return top + (hi - v) * (h - top - bottom) / (hi - lo)

    parts = [f'<svg id="error-plot" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'viewBox="0 0 {w} {h}" role="img" aria-label="relative error per layer, log scale">',
             f'<rect x="{left}" y="{top}" width="{w - left - 20}" height="{h - top - bottom}" fill="#fafafa" stroke="#ccc"/>']
    for e in range(lo, hi + 1, 2):
        parts.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(10.0 ** e):.1f}" y2="{y(10.0 ** e):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 5}" y="{y(10.0 ** e) + 4:.1f}" font-size="10" text-anchor="end">1e{e}</text>')
    rtol = summary["tolerance"]["rtol"]
    parts.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(rtol):.1f}" y2="{y(rtol):.1f}" stroke="#888" '
                 f'stroke-dasharray="5,4"/><text x="{w - 22}" y="{y(rtol) - 4:.1f}" font-size="10" '
                 f'text-anchor="end">rtol {rtol:g}</text>')
    for i, r in enumerate(rows):
        parts.append(f'<text x="{x(i):.1f}" y="{h - bottom + 12}" font-size="9" text-anchor="end" '
                     f'transform="rotate(-45 {x(i):.1f} {h - bottom + 12})">{html.escape(r["layer"][:18])}</text>')
    for k, s in enumerate(STAGES):
        pts = [(x(i), y(r["stages"][s].get("max_rel_err"))) for i, r in enumerate(rows) if r["stages"][s]]
        if not pts:
            continue
        parts.append(f'<polyline class="stage-line" data-stage="{s}" fill="none" stroke="{COLOURS[s]}" stroke-width="1.5" '
                     f'points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}"/>')
        for i, r in enumerate(rows):
            c = r["stages"][s]
            if not c:
                continue
            first = summary["first_failing"][s] == r["layer"]
            mark = ' class="first-fail-point"' if first else ""
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(c.get("max_rel_err")):.1f}" r="{6 if first else 2.5}" '
                         f'fill="{COLOURS[s] if c["ok"] or first else "#fff"}" stroke="{COLOURS[s]}"'
                         f'{mark}><title>{s} {html.escape(r["layer"])}: '
                         f'{_fmt(c.get("max_rel_err"))}</title></circle>')
        parts.append(f'<rect x="{left + 10 + k * 150}" y="{h - 18}" width="12" height="12" fill="{COLOURS[s]}"/>'
                     f'<text x="{left + 26 + k * 150}" y="{h - 8}" font-size="12">{s}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(summary: dict) -> str:
    """A self-contained page (no scripts, no network): summary, error plot, per-layer table."""
    esc = html.escape
    v = summary["verdict"]
    if v is None:
        verdict = '<p class="verdict ok">Every layer is within tolerance at every stage.</p>'
    else:
        verdict = (f'<p class="verdict bad">First wrong: <b>{esc(str(v["layer"]))}</b> at stage <b>{esc(v["stage"])}</b>'
                   f' &rarr; the <b>{esc(v["step"])}</b> step broke it: {esc(v["why"])}.'
                   + (f' {esc(v["error"])}' if v.get("error") else "") + "</p>")
    firsts = "".join(f"<li>{esc(s)}: {esc(str(summary['first_failing'][s] or 'none'))}"
                     + (f" &mdash; {esc(summary['stage_errors'][s])}" if s in summary["stage_errors"] else "") + "</li>"
                     for s in STAGES)
    head = "".join(f"<th>{s}<br>max abs</th><th>{s}<br>max rel</th>" for s in STAGES)
    body = []
    vlayer = v["layer"] if v else None
    for r in summary["layers"]:
        cls = []
        if r["layer"] == vlayer:
            cls.append("first-fail")
        if any(c and not c["ok"] for c in r["stages"].values()):
            cls.append("fail")
        cells = []
        for s in STAGES:
            c = r["stages"][s]
            if c is None:
                cells.append('<td class="na">&ndash;</td><td class="na">&ndash;</td>')
                continue
            k = "bad" if not c["ok"] else "good"
            if summary["first_failing"][s] == r["layer"]:
                k += " first"
            title = esc(f"tensor {c['tensor']} ({c['layout']}); tolerance {c['tolerance']:.3g}" + (f"; {c['error']}" if c.get("error") else ""))
            cells.append(f'<td class="{k}" title="{title}">{_fmt(c["max_abs_err"])}</td>'
                         f'<td class="{k}" title="{title}">{_fmt(c["max_rel_err"])}</td>')
        rid = ' id="first-fail"' if r["layer"] == vlayer else ""
        body.append(f'<tr{rid} class="{" ".join(cls)}" data-layer="{esc(r["layer"])}"><td>{esc(r["layer"])}</td>'
                    f'<td>{esc(r["class"])}</td><td>{esc(str(r["shape"][1:]))}</td>{"".join(cells)}</tr>')
    tol = summary["tolerance"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>keras2torch debug: {esc(summary['model'])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
td:nth-child(-n+3) {{ text-align: left; }}
td.bad {{ color: #b00; }} td.na {{ color: #aaa; text-align: center; }}
td.first {{ font-weight: bold; background: #fdd; }}
tr.fail {{ background: #fff4f4; }}
tr.first-fail {{ background: #ffb3b3; outline: 3px solid #d00; }}
.verdict.ok {{ color: #070; font-weight: bold; }} .verdict.bad {{ color: #b00; font-size: 1.1em; }}
</style></head><body>
<h1>Per-layer comparison: {esc(summary['model'])}</h1>
{verdict}
<p>Tolerance per layer: max |converted &minus; Keras| &le; {tol['rtol']:g} &middot; max|Keras activation| + {tol['atol']:g}.
Relative error = max abs error / max|Keras activation|.</p>
<ul>First layer out of tolerance per stage: {firsts}</ul>
{"".join(f'<p class="warning">warning: {esc(w)}</p>' for w in summary.get("warnings", []))}
<h2>Relative error per layer (log scale)</h2>
<div style="overflow-x: auto">{_plot(summary)}</div>
<h2>Layers</h2>
<p>&ndash;: the graph has no tensor for that layer (e.g. a Conv2D that tf2onnx fused with the next
BatchNormalization). Hover a cell for the tensor compared, its layout and the tolerance.</p>
<table id="layers"><thead><tr><th>layer</th><th>kind</th><th>shape</th>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
</body></html>
"""
