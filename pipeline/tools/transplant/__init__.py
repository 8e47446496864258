"""Keras weights into the user's own PyTorch module, with proof (``python -m pipeline transplant``).

Built on the stages' files, kept apart from them: it reads ``export/`` (``meta.json``
``keras_layers``, ``keras_weights.npz``, ``reference.npz``), ``rewrite/rewrite.json`` (the
inputs' layout), ``import/`` (``weights_map.json``, and the generated port for Keras'
batch-norm settings) and ``layers/`` (Keras' per-layer activations, as ``debug`` records
them), and writes only ``<model>/transplant/``, replaced atomically:

- ``state_dict.safetensors``: the user's state_dict keys with Keras' values (no pickle)
- ``mapping.json``: per Keras variable the user's key and the transform (``transforms.py``),
  what stayed unmatched (with shapes) and pairs made by order among several that fit
- ``report.json`` / ``report.html``: outputs against Keras (``compare_arrays``, the compare
  stage's tolerance), per paired module against its Keras layer, the first that diverges
  and the traps that explain it (``diagnosis.py``, ``traps.py``), and ``warnings``: a batch
  norm's momentum not 1 - Keras', a paired module called more than once (compared on its
  first call only)

``status`` is ``ok`` only when every user parameter got a Keras value, every output is
within tolerance and no paired module's output is off its Keras layer's (tiny random-weight
outputs can pass on ``atol`` alone). torch only: TensorFlow is never imported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, StageClock, atomic_dir, read_json, write_json, write_text
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.perm import to_first
from pipeline.core.reference import load_reference
from pipeline.stages.compare import compare_arrays
from pipeline.stages.export import layers as keras_layers
from pipeline.tools.debug.matching import to_keras_layout
from pipeline.tools.transplant import matching, userfile
from pipeline.tools.transplant.diagnosis import diagnose, grouped
from pipeline.tools.transplant.report import render_html, table
from pipeline.tools.transplant.tracing import ForwardError, call_order, per_layer, to_numpy
from pipeline.tools.transplant.transforms import apply, flatten_permutation
from pipeline.tools.transplant.traps import Context

FOLDER = "transplant"
STAGE = userfile.STAGE
LAYOUTS = ("auto", "channels_first", "channels_last")

__all__ = ["FOLDER", "LAYOUTS", "folder", "run", "table"]


def folder(mdir: ModelDir) -> Path:
    return mdir.root / FOLDER


def run(mdir: ModelDir, settings: Settings, into: str, init_args: str | None = None, input_layout: str = "auto",
        fold_flatten: bool = False) -> dict:
    """Transplant, check and explain (see the module docstring); returns ``report.json``."""
    from safetensors.torch import save_file

    clock = StageClock()
    name = mdir.root.name
    exp = mdir.require("export", "reference.npz", "meta.json")
    imp = mdir.require("import", "weights_map.json")
    rw = mdir.require("rewrite", "rewrite.json")
    meta, facts, wmap = read_json(exp / "meta.json"), read_json(rw / "rewrite.json"), read_json(imp / "weights_map.json")
    if not keras_layers.is_current(mdir):
        raise PipelineError(STAGE, "the Keras layers' outputs (layers/) are missing or belong to an earlier export",
                            model=name, hint="make transplant runs `export --layers-only` for you")
    inputs, outputs = load_reference(exp / "reference.npz")
    net = userfile.build(into, init_args, name)
    feeds, layout, order, calls = _feeds(net, meta, facts, inputs, input_layout, into, name)
    m = matching.match(net, order, meta["keras_layers"])
    keras_facts = _keras_facts(mdir, meta)
    perms = _flatten_perms(meta["keras_layers"], read_json(keras_layers.folder(mdir) / "layers.json")["layers"], wmap)
    state, mapping = _state(net, m, perms, fold_flatten, mdir, wmap, facts)
    missing = net.load_state_dict(state, strict=False).missing_keys
    pairs = {p.unit: p.layer for p in m["pairs"]}
    rtol, atol = settings.rtol, settings.atol
    cf = layout == "channels_first"
    with np.load(keras_layers.folder(mdir) / "layers.npz", allow_pickle=False) as acts:
        outs, rows, _ = per_layer(net, feeds, pairs, acts, cf, rtol, atol)
        results = _compare_outputs(meta, outputs, outs, cf, rtol, atol)
        first = next((r for r in rows if r["ok"] is False), None)
        # a layer off fails too: random-weight outputs can be tiny enough to pass on atol alone
        ok = all(r["ok"] for r in results.values()) and not m["unmatched_user"] and first is None
        findings, rows_fixed = [], rows
        if first is not None:
            ctx = _contexts(net, m, perms, order, keras_facts)
            findings, rows_fixed = diagnose(lambda: per_layer(net, feeds, pairs, acts, cf, rtol, atol)[1], ctx, rows)
    summary = {
        "model": meta["model"], "into": into, "init_args": init_args, "input_layout": layout,
        "fold_flatten": fold_flatten, "status": "ok" if ok else "mismatch",
        "tolerance": {"rtol": rtol, "atol": atol}, "outputs": results,
        "first_diverging": None if first is None else {k: first.get(k) for k in
                                                       ("module", "layer", "max_abs_err", "max_rel_err")},
        "findings": findings, "traps": grouped(findings),
        "explained": bool(findings) and all(f["explained"] for f in findings)
        and first_failing_after(rows_fixed) is None,
        "layers": rows, "warnings": _warnings(net, m, calls, keras_facts), "unmatched_user": m["unmatched_user"], "unmatched_keras": m["unmatched_keras"],
        "ambiguous": [{"module": p.unit, "layer": p.layer, "also_fits": p.ambiguous} for p in m["pairs"] if p.ambiguous],
        "not_in_state_dict": missing,
    }
    with atomic_dir(folder(mdir)) as d:
        save_file({k: v.contiguous() for k, v in state.items()}, str(d / "state_dict.safetensors"))
        write_json(d / "mapping.json", {"model": meta["model"], "into": into, "fold_flatten": fold_flatten,
                                         "map": mapping, "unmatched_user": m["unmatched_user"],
                                         "unmatched_keras": m["unmatched_keras"], "ambiguous": summary["ambiguous"]})
        summary["stage"] = {"stage": STAGE, **clock.record()}
        write_json(d / "report.json", summary)
        write_text(d / "report.html", render_html(summary))
    return summary


def first_failing_after(rows: list[dict]):
    return next((r for r in rows if r["ok"] is False), None)


def _feeds(net, meta: dict, facts: dict, inputs: dict, layout: str, into: str, name: str):
    """(torch inputs, the layout used, module call order, calls per module); ``auto`` tries the port's
    channels-first layout, then Keras' channels-last one."""
    import torch

    if layout not in LAYOUTS:
        raise PipelineError(STAGE, f"--input-layout {layout!r}: expected one of {', '.join(LAYOUTS)}", model=name)
    cf_names = set(facts.get("inputs_channels_first", []))
    tries = ["channels_first", "channels_last"] if layout == "auto" else [layout]
    if layout == "auto" and not cf_names:
        tries = ["channels_last"]
    errors = []
    for lay in tries:
        feeds = []
        for i in meta["inputs"]:
            x = inputs[i["name"]]
            if lay == "channels_first" and i["name"] in cf_names:
                x = np.transpose(x, to_first(x.ndim))
            t = torch.from_numpy(np.ascontiguousarray(x))
            feeds.append(t.long() if np.issubdtype(x.dtype, np.integer) else t)
        try:
            calls: dict = {}
            _, order = call_order(net, feeds, calls)
            return feeds, lay, order, calls
        except ForwardError as e:
            errors.append(f"{lay}: {e}" + (f" (in module {e.module!r})" if e.module else ""))
    shapes = [list(inputs[i["name"]].shape) for i in meta["inputs"]]
    raise PipelineError(STAGE, f"{into}'s forward fails on the Keras reference inputs (Keras shapes {shapes}): "
                        + "; ".join(errors), model=name,
                        hint="--input-layout channels_first|channels_last picks the layout; --init-args the "
                             "constructor's arguments")


def _flatten_perms(keras_layers_meta: list[dict], recorded: list[dict], wmap: dict) -> dict:
    """{Dense layer: (row permutation, rank of the flattened tensor)} for each Dense right
    after a Flatten of (N, *S, C) (Keras' layer order and recorded shapes; the port's
    ``row_permutation`` from ``weights_map.json`` where the layers do not tell)."""
    shapes = {e["name"]: e["shape"][1:] for e in recorded if "shape" in e}
    out = {}
    for i, e in enumerate(keras_layers_meta):
        if e["class"] != "Dense" or i < 2 or keras_layers_meta[i - 1]["class"] != "Flatten":
            continue
        src = shapes.get(keras_layers_meta[i - 2]["name"])
        p = flatten_permutation(tuple(src)) if src else None
        if p is not None:
            out[e["name"]] = (p, len(src) + 1)
    for row in wmap.get("map", []):
        layer = row["keras"].split("/")[0]
        if "row_permutation" in row["transform"] and layer not in out:
            out[layer] = (row["transform"]["row_permutation"], None)
    return out


def _state(net, m: dict, perms: dict, fold_flatten: bool, mdir: ModelDir, wmap: dict, facts: dict) -> tuple[dict, list]:
    """The user's state_dict entries from the Keras values, and ``mapping.json``'s rows.

    The values come from ``export/keras_weights.npz``; where the export did not keep it
    (over 128 MB of weights), from the converted port's ``model.safetensors`` (``_PortValues``)."""
    import torch

    own = net.state_dict()
    state, rows = {}, []
    npz = mdir.stage("export") / "keras_weights.npz"
    port = None if npz.exists() else _PortValues(mdir, wmap, perms, bool(facts.get("folded_into_dense")))
    with (np.load(npz, allow_pickle=False) if port is None else _nothing()) as values:
        for p in m["pairs"]:
            for tname, slot in p.slots.items():
                key = f"{p.unit}.{tname}" if p.unit else tname
                tr = dict(slot.transform)
                if fold_flatten and p.keras_class == "Dense" and tname == "weight" and p.layer in perms:
                    tr = {"row_permutation": perms[p.layer][0]} | tr
                if slot.keras is not None and port is not None:
                    value, tr = port.value(p.layer, slot, tname, tr)
                    if value is None:
                        raise PipelineError(STAGE, f"no tensor of the converted port holds Keras {slot.keras!r} for "
                                            f"{key!r} (keras_weights.npz was not kept)", model=mdir.root.name,
                                            layer=p.layer)
                else:
                    value = apply(tr, None if slot.keras is None else values[slot.keras])
                state[key] = torch.from_numpy(np.ascontiguousarray(value)).to(own[key].dtype)
                shown = {k: ("..." if k == "row_permutation" else v) for k, v in tr.items()}
                rows.append({"keras": slot.keras, "user": key, "layer": p.layer, "module": p.unit, "transform": tr,
                             "transform_summary": shown})
            nbt = f"{p.unit}.num_batches_tracked"
            if nbt in own:
                state[nbt] = own[nbt]
    return state, rows


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


class _PortValues:
    """A Keras variable in PyTorch's layout taken from the converted port, where the Keras
    values were not kept: the port tensor ``weights_map.json`` names for it (verified row,
    or the candidates of an unverified one) with the slot's name and shape. A Dense after a
    Flatten whose port weight has the fold's row permutation gets it undone unless
    ``--fold-flatten`` asks for it."""

    def __init__(self, mdir: ModelDir, wmap: dict, perms: dict, folded: bool):
        from safetensors.numpy import load_file

        self.state = load_file(str(mdir.require("import", "model.safetensors") / "model.safetensors"))
        self.rows, self.perms, self.folded = wmap, perms, folded

    def value(self, layer: str, slot, tname: str, tr: dict):
        keys = [(r["torch"], r["transform"]) for r in self.rows.get("map", []) if r["keras"] == slot.keras]
        keys += [(k, None) for r in self.rows.get("unmapped", []) if r["keras"] == slot.keras
                 for k in r.get("candidates", [])]
        for key, verified in keys:
            t = self.state.get(key)
            if t is None or not (key == tname or key.endswith("." + tname)) or tuple(t.shape) != tuple(slot.shape):
                continue
            port_folded = "row_permutation" in verified if verified is not None else \
                (self.folded and layer in self.perms and tname == "weight")
            out = dict(tr) | {"from_port": key}
            if port_folded and "row_permutation" not in tr:   # undo it: the weight for an unpermuted flatten
                p = np.asarray(verified["row_permutation"] if verified else self.perms[layer][0])
                t = t[:, np.argsort(p)]
            elif not port_folded and "row_permutation" in tr:
                t = t[:, np.asarray(tr["row_permutation"])]
            return t, out
        return None, tr


def _compare_outputs(meta, outputs: dict, outs: list, cf: bool, rtol, atol) -> dict:
    names = [o["name"] for o in meta.get("outputs", [])] or list(outputs)
    res = {}
    for i, n in enumerate(names):
        ref = outputs[n]
        if i >= len(outs):
            res[n] = {"ok": False, "error": f"the module returned {len(outs)} tensors, Keras has {len(names)} outputs"}
            continue
        got = to_keras_layout(to_numpy(outs[i]), ref.shape, "cf" if cf else "cl")
        res[n] = compare_arrays(ref, got if got is not None else to_numpy(outs[i]), rtol, atol)
    return res


def _keras_facts(mdir: ModelDir, meta: dict):
    """A function (Keras layer, class) -> what a trap or a warning needs of it: GRU's
    ``reset_after``; a batch norm's ``eps`` and Keras ``momentum`` from the generated port
    (``KerasBatchNorm*d``, torch momentum = 1 - Keras'), loaded when first needed."""
    entries = {e["name"]: e for e in meta["keras_layers"]}
    port = {}

    def keras_facts(layer: str, cls: str) -> dict:
        e = entries[layer]
        if cls == "GRU":
            bias = next((v for v in e.get("variables", []) if v["path"].endswith("bias")), None)
            return {"reset_after": bias is None or len(bias["shape"]) == 2}
        if cls != "BatchNormalization":
            return {}
        if "module" not in port:
            from pipeline.runners.pytorch import load_generated

            port["module"] = load_generated(mdir)
            port["names"] = {r["keras"].split("/")[0]: r["torch"].rsplit(".", 1)[0]
                             for r in read_json(mdir.stage("import") / "weights_map.json")["map"]}
        mod_name = port["names"].get(layer)
        if mod_name is None:
            return {}
        bn = port["module"].get_submodule(mod_name)
        return {"eps": float(bn.eps), "momentum": 1.0 - float(bn.momentum)} if hasattr(bn, "eps") else {}
    return keras_facts


def _warnings(net, m: dict, calls: dict, keras_facts) -> list[dict]:
    """What does not change this comparison but the user should know, per module:
    ``batchnorm_momentum`` (a batch norm whose momentum is not 1 - Keras' momentum: the
    running statistics move differently once it trains; eval ignores it) and
    ``called_more_than_once`` (a paired module is compared on its first call only)."""
    import math

    out = []
    for p in m["pairs"]:
        mod = net.get_submodule(p.unit)
        if p.keras_class == "BatchNormalization" and hasattr(mod, "momentum"):
            k = keras_facts(p.layer, p.keras_class).get("momentum")
            want = None if k is None else 1.0 - k
            if want is not None and (mod.momentum is None or not math.isclose(mod.momentum, want, rel_tol=1e-6,
                                                                              abs_tol=1e-9)):
                out.append({"kind": "batchnorm_momentum", "module": p.unit, "layer": p.layer,
                            "user_momentum": mod.momentum, "keras_momentum": k,
                            "message": f"{p.unit!r} (Keras layer {p.layer!r}) has momentum={mod.momentum}, Keras' "
                                       f"BatchNormalization momentum={k:g}, i.e. torch momentum={want:g} (1 - "
                                       f"Keras'): the same in eval, but its running statistics update differently "
                                       f"once it trains; construct it with momentum={want:g}"})
        n = calls.get(p.unit, 0)
        if n > 1:
            out.append({"kind": "called_more_than_once", "module": p.unit, "layer": p.layer, "calls": n,
                        "message": f"{p.unit!r} is called {n} times by your forward; it was compared with Keras "
                                   f"layer {p.layer!r} on its first call only"})
    return out


def _contexts(net, m: dict, perms: dict, order: list[str], keras_facts):
    """A function of a failing row giving its trap ``Context``."""
    pairs = {p.unit: p for p in m["pairs"]}

    def context_for(row: dict) -> Context:
        p = pairs[row["module"]]
        paired = [n for n in order if n in pairs]
        i = order.index(row["module"])
        prev = max((order.index(n) for n in paired if order.index(n) < i), default=-1)
        nxt = min((order.index(n) for n in paired if order.index(n) > i), default=len(order))
        perm, rank = perms.get(p.layer, (None, None))
        return Context(net, p.unit, p.layer, p.keras_class, keras_facts(p.layer, p.keras_class), perm, rank,
                       before=order[prev + 1:i], after=order[i + 1:nxt])
    return context_for
