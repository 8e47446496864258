"""Per-layer debugging: which Keras layer goes wrong first, and in which step.

Every number comes from ``compare.compare_arrays``. For each Keras layer recorded in
``<model>/layers/`` (``export --layers-only`` or ``export --per-layer``; see
``pipeline/stages/export/layers.py``) this package finds the tensor that carries that
layer's output in each graph (``matching.py``), runs the graphs (``running.py``: the four
``LAYER_RUNS``, onnxruntime on ``raw.onnx``, ``nchw.onnx`` and ``torch.onnx``, and the
onnx2torch module) and compares each value with Keras' activation, read from the npz file
one at a time. The first run with a failing layer names the step that broke it (``BLAME``).

The results go to ``<model>/debug/``, a folder of its own (the stage folders, and so their
fingerprints, are left as they are), replaced atomically by each run:

- ``debug.json``: per layer and run the tensor compared, its layout and the errors; the
  first failing layer of each run; the verdict; runs that could not run at all
- ``report.html``: the same for a browser (``report.py``)
- ``bisect/<layer>.onnx`` and ``<layer>.npz`` with ``--bisect`` (``bisect.py``)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, StageClock, atomic_dir, read_json, write_json, write_text
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.names import is_keras3, layer_of_name
from pipeline.core.reference import inputs_for, load_reference
from pipeline.stages.compare import compare_arrays
from pipeline.stages.export import layers as keras_layers
from pipeline.tools.debug.bisect import write_bisect
from pipeline.tools.debug.matching import Match, match_layers, propagate_layout, to_graph_layout, to_keras_layout
from pipeline.tools.debug.report import render_html, table
from pipeline.tools.debug.running import (BLAME, CHUNK_MB, LAYER_RUNS, onnx_tensors, torch_module as load_torch_module,
                                          torch_targets, torch_tensors)

FOLDER = "debug"

__all__ = ["BLAME", "CHUNK_MB", "FOLDER", "LAYER_RUNS", "Match", "folder", "match_layers", "onnx_tensors",
           "propagate_layout", "render_html", "run", "table", "to_graph_layout", "to_keras_layout", "torch_tensors",
           "write_bisect"]


def folder(mdir: ModelDir) -> Path:
    return mdir.root / FOLDER


def run(mdir: ModelDir, settings: Settings, torch_module=None, bisect: bool = False,
        chunk_mb: float = CHUNK_MB) -> dict:
    """Compare every recorded Keras layer in every run; write ``<model>/debug/`` (see the
    module docstring) and return what ``debug.json`` holds. ``torch_module`` replaces the
    onnx2torch module (it must keep onnx2torch's node names)."""
    clock = StageClock()
    exp = mdir.require("export", "raw.onnx", "reference.npz", "meta.json")
    _require_layers(mdir)
    rw = mdir.require("rewrite", "nchw.onnx", "torch.onnx", "rewrite.json")
    meta = read_json(exp / "meta.json")
    facts = read_json(rw / "rewrite.json")
    recorded = read_json(keras_layers.folder(mdir) / "layers.json")["layers"]
    entries = [e for e in recorded if "shape" in e]
    inputs, _ = load_reference(exp / "reference.npz")
    feeds_cf = inputs_for(facts, inputs)
    with np.load(keras_layers.folder(mdir) / "layers.npz", allow_pickle=False) as keras_npz:
        runs = _LayerRuns(mdir, meta["model"], settings, entries, keras_npz)
        cf_in = set(facts.get("inputs_channels_first", []))
        runs.onnx("onnx_raw", exp / "raw.onnx", inputs, set(), False, chunk_mb)
        runs.onnx("onnx_nchw", rw / "nchw.onnx", feeds_cf, cf_in, False, chunk_mb)
        runs.onnx("onnx_torch", rw / "torch.onnx", feeds_cf, cf_in, bool(facts.get("folded_into_dense")), chunk_mb)
        runs.torch(torch_module, [feeds_cf[i["name"]] for i in meta["inputs"]])
        summary = runs.summary()
        summary["skipped"] = [{"layer": e["name"], "reason": e["skipped"]} for e in recorded
                              if "skipped" in e and e["skipped"] != "input"]
        with atomic_dir(folder(mdir)) as d:
            if bisect and summary["verdict"] is not None:
                try:
                    summary["bisect"] = write_bisect(rw, summary, runs.matches, keras_npz, feeds_cf, settings,
                                                     d / "bisect", folder(mdir) / "bisect")
                except Exception as e:  # onnx.utils/onnxruntime errors on an odd cut: report, keep the rest
                    summary["bisect"] = {"skipped": f"could not cut the failing layer out: {type(e).__name__}: {e}"}
            summary["stage"] = {"stage": "debug", **clock.record()}
            write_json(d / "debug.json", summary)
            write_text(d / "report.html", render_html(summary))
    return summary


def _require_layers(mdir: ModelDir) -> None:
    """A clear error when ``layers/`` is missing or belongs to an earlier export."""
    if keras_layers.is_current(mdir):
        return
    npz = keras_layers.folder(mdir) / "layers.npz"
    why = "was recorded for an earlier export" if npz.exists() else "is missing"
    raise PipelineError("debug", f"{npz} {why}: the Keras layers' outputs for this export are not recorded",
                        model=mdir.root.name, hint="python -m pipeline export --layers-only --model ... "
                        "(or make debug MODEL=..., which records them)")


class _LayerRuns:
    """The per-layer results of the runs so far: ``results[layer][run]``, the runs that could
    not run at all (``errors``, and the layer the error names), and each run's matches."""

    def __init__(self, mdir: ModelDir, model_name: str, settings: Settings, entries: list[dict], keras_npz):
        self.mdir, self.model_name, self.settings = mdir, model_name, settings
        self.entries, self.keras_npz = entries, keras_npz
        self.names = [e["name"] for e in entries]
        self.results: dict[str, dict] = {n: {} for n in self.names}
        self.errors: dict[str, str] = {}
        self.error_layers: dict[str, str | None] = {}
        self.matches: dict[str, dict[str, Match]] = {}

    def sink(self, run: str, match: dict):
        """A function of (tensor, value) that compares the value with each layer it carries."""
        by_tensor: dict[str, list] = {}
        for layer, m in match.items():
            by_tensor.setdefault(m.tensor, []).append(layer)
        rtol, atol = self.settings.rtol, self.settings.atol

        def sink(tensor, value):
            for layer in by_tensor.get(tensor, []):
                ref = self.keras_npz[f"layer:{layer}"]
                got = to_keras_layout(np.asarray(value), ref.shape, match[layer].layout)
                if got is None:
                    r = compare_arrays(ref, np.asarray(value), rtol, atol)
                    r["error"] = f"shape {list(value.shape)} fits neither Keras' {list(ref.shape)} nor its channels-first form"
                else:
                    r = compare_arrays(ref, got, rtol, atol)
                self.results[layer][run] = {"tensor": tensor, "layout": match[layer].layout, **r}
        return sink

    def onnx(self, run: str, path: Path, feeds: dict, cf_inputs: set, folded: bool, chunk_mb: float) -> None:
        import onnx

        match = match_layers(onnx.load(str(path), load_external_data=False).graph, self.names, cf_inputs, folded)
        self.matches[run] = match
        shapes = {e["name"]: e["shape"] for e in self.entries}
        sizes = {m.tensor: 4 * math.prod(shapes[layer]) for layer, m in match.items()}
        try:
            sink = self.sink(run, match)
            for t, v in onnx_tensors(path, feeds, list(dict.fromkeys(m.tensor for m in match.values())), sizes, chunk_mb):
                sink(t, v)
        except Exception as e:  # onnxruntime's own errors (shape inference, kernels): the graph cannot run
            self.errors[run] = f"onnxruntime cannot run {path.name}: {type(e).__name__}: {str(e).splitlines()[0]}"
            self.error_layers[run] = _layer_in_message(path, str(e), self.names)

    def torch(self, module, feeds: list) -> None:
        """The onnx2torch module of ``torch.onnx``, matched as that graph is."""
        match = self.matches["onnx_torch"]
        try:
            module = module if module is not None else load_torch_module(self.mdir)
            where = torch_targets(self.mdir.stage("rewrite") / "torch.onnx")
            wanted = {m.tensor: where[m.tensor] for m in match.values() if m.tensor in where}
            torch_tensors(module, feeds, wanted, self.sink("torch", match))
        except PipelineError:
            raise
        except Exception as e:  # torch and onnx2torch raise many types; the run cannot go on
            self.errors["torch"] = f"the torch module cannot run: {type(e).__name__}: {str(e).splitlines()[0]}"

    def summary(self) -> dict:
        rows = [{"layer": e["name"], "class": e["class"], "shape": e["shape"],
                 "stages": {s: self.results[e["name"]].get(s) for s in LAYER_RUNS}} for e in self.entries]
        warnings = [f"stage {s}: no Keras layer matched a value (node names lost?); its column is empty"
                    for s in LAYER_RUNS if s not in self.errors and not any(r["stages"][s] for r in rows)
                    and any(r["stages"][t] for r in rows for t in LAYER_RUNS)]
        first = {s: next((r["layer"] for r in rows if r["stages"][s] and not r["stages"][s]["ok"]), None)
                 for s in LAYER_RUNS}
        verdict = _verdict(first, self.errors, self.error_layers)
        return {
            "model": self.model_name,
            "status": "ok" if verdict is None else "mismatch",
            "tolerance": {"rtol": self.settings.rtol, "atol": self.settings.atol},
            "first_failing": first,
            "verdict": verdict,
            "stage_errors": self.errors,
            "warnings": warnings,
            "layers": rows,
        }


def _verdict(first: dict, errors: dict, error_layers: dict) -> dict | None:
    for s in LAYER_RUNS:
        if first[s] is not None or s in errors:
            step, why = BLAME[s]
            return {"stage": s, "step": step, "layer": first[s] or error_layers.get(s), "why": why,
                    "error": errors.get(s)}
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
