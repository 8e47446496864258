"""Checking the ports at more shapes than the reference, where the model has free dims.

A dim export left free (``meta.json`` ``free_dims``) is checked at its reference size and at
``CASES`` more: ``odd`` (an odd size, ref+1 for the first free dim of an input and ref+ref/2-1
for the next: 33x47 from 32x32; a stride-2 SAME then pads asymmetrically), ``one`` (length 1,
sequence axes only: inputs of rank 3 or less) and ``large`` (8x a sequence axis, 2x an image
axis). Every free dim of every input takes its case size at once, so inputs that share a
length keep sharing it. The inputs are drawn as the reference inputs are (``draw_inputs``,
the same seed), Keras runs on them in its own process (the Keras runner), and a shape Keras
rejects is skipped with its reason. ``model.pt2`` is skipped, with the reason, where the import
stage fixed a dim (``import.json`` ``fixed_dims``) that differs, and where a runtime guard it
recorded (``pt2_guards``) refuses the size; model.py is checked at every shape.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.reference import draw_inputs, inputs_for, output_to_keras

SEQ_LARGE, SPATIAL_LARGE = 8, 2


def _size(case: str, ref: int, rank: int, j: int) -> int | None:
    """The size of the ``j``-th free dim (reference ``ref``) of a rank-``rank`` input in ``case``."""
    seq = rank <= 3
    if case == "odd":
        s = ref + 1 + j * max(ref // 2 - 2, 1)
        return s if s % 2 else s + 1
    if case == "one":
        return 1 if seq else None
    return ref * (SEQ_LARGE if seq else SPATIAL_LARGE)


def cases(meta: dict) -> list[dict]:
    """[{"case", "inputs": {name: full shape (None batch)}}] for the free dims of ``meta``."""
    out = []
    for case in ("odd", "one", "large"):
        shapes, changed = {}, False
        for i in meta["inputs"]:
            shape = list(i.get("reference_shape") or i["shape"])
            for j, k in enumerate(i.get("free_dims", [])):
                s = _size(case, shape[k], len(shape), j)
                if s is not None and s != shape[k]:
                    shape[k], changed = s, True
            shapes[i["name"]] = shape
        if changed:
            out.append({"case": case, "inputs": shapes})
    return out


def label(shapes: dict) -> str:
    """``x=7x3``: the non-batch dims of each input."""
    return ";".join(f"{n}={'x'.join(str(d) for d in s[1:])}" for n, s in shapes.items())


def reference_entry(meta: dict, results: dict) -> dict:
    """The reference shape's entry of ``shapes`` (its numbers are compare.json's ``outputs``)."""
    inputs = {i["name"]: i.get("reference_shape") or i["shape"] for i in meta["inputs"]}
    ref = {s: {k: r for k, r in per.items() if " @ " not in k} for s, per in results.items()}
    return {"case": "reference", "inputs": inputs, "label": label(inputs),
            "passed": {s: all(r["ok"] for r in per.values()) for s, per in ref.items()},
            "max_abs_err": {s: worst(per, "max_abs_err") for s, per in ref.items()},
            "max_rel_err": {s: worst(per, "max_rel_err") for s, per in ref.items()}}


def prepare(mdir, meta: dict, settings, imp: dict) -> list[dict]:
    """The cases with their feeds (Keras' layout) and Keras' outputs; a case Keras rejects
    gets ``skipped``. Empty (no Keras process) when the model has no free dims."""
    todo = cases(meta)
    if not todo:
        return []
    from pipeline.runners import KerasRunner

    specs = [(i["name"], None, np.dtype(i["dtype"])) for i in meta["inputs"]]
    fixed = {(f["input"], f["dim"]): f for f in imp.get("fixed_dims", [])}
    with KerasRunner(mdir, "pipeline.stages.compare:keras_model", name="keras") as keras:
        for c in todo:
            c["label"] = label(c["inputs"])
            c["feeds"] = draw_inputs([(n, c["inputs"][n], d) for n, _, d in specs], meta.get("input_ranges") or meta.get("input_vocab", 10),
                                     settings.seed, settings.batch)
            try:
                c["keras"] = keras.infer(c["feeds"])
            except PipelineError as e:
                c["skipped"] = f"Keras rejects this shape: {e.info.message[:300]}"
            ref = {i["name"]: i.get("reference_shape") or i["shape"] for i in meta["inputs"]}
            c["pt2_guards"] = imp.get("pt2_guards", [])
            c["pt2_fixed"] = [f"{f['input']} dim {f['dim']} ({f['name']}) is fixed at {f['size']} in model.pt2: "
                              f"{f['reason'][:200]}" for (n, k), f in fixed.items() if c["inputs"][n][k] != ref[n][k]]
    return todo


def run_port(name: str, runner, todo: list[dict], facts: dict) -> None:
    """Runs ``runner`` (port ``name``) on every case Keras answered; its outputs (or failure)
    go into the case (``got``, ``errors``, ``port_skipped``)."""
    for c in todo:
        if "skipped" in c:
            continue
        if name == "torch_pt2" and c["pt2_fixed"]:
            c.setdefault("port_skipped", {})[name] = "; ".join(c["pt2_fixed"])
            continue
        try:
            out = runner.infer(c["feeds"] if name == "onnx_raw" else inputs_for(facts, c["feeds"]))
        except PipelineError as e:   # a runtime guard import recorded refuses the size: a known limit, not a fault
            if name == "torch_pt2" and c["pt2_guards"] and "Guard failed" in e.info.message:
                c.setdefault("port_skipped", {})[name] = (f"model.pt2 refuses this size ({e.info.message[:200]}); "
                                                          f"import.json pt2_guards: {c['pt2_guards'][0][:200]}")
            else:
                c.setdefault("errors", {})[name] = e.info.message[:500]
            continue
        c.setdefault("got", {})[name] = out if name == "onnx_raw" else {k: output_to_keras(facts, k, v)
                                                                         for k, v in out.items()}


def results(todo: list[dict], compare_outputs, rtol: float, atol: float) -> tuple[list[dict], dict]:
    """(the ``shapes`` entries of compare.json, {stage: {"output @ shape": result}} to add to
    the verdict: a kept port failing at any shape checked is a mismatch)."""
    entries, extra = [], {}
    for c in todo:
        entry = {"case": c["case"], "inputs": c["inputs"], "label": c["label"]}
        if "skipped" in c:
            entries.append({**entry, "skipped": c["skipped"]})
            continue
        per = {s: compare_outputs(c["keras"], got, rtol, atol) for s, got in c.get("got", {}).items()}
        for s, msg in c.get("errors", {}).items():
            per[s] = {k: {"ok": False, "max_abs_err": None, "max_rel_err": None, "tolerance": None, "error": msg}
                      for k in c["keras"]}
        for s, r in per.items():
            extra.setdefault(s, {}).update({f"{k} @ {c['label']}": v for k, v in r.items()})
        entries.append({**entry, "port_skipped": c.get("port_skipped", {}),
                        "passed": {s: all(v["ok"] for v in r.values()) for s, r in per.items()},
                        "max_abs_err": {s: worst(r, "max_abs_err") for s, r in per.items()},
                        "max_rel_err": {s: worst(r, "max_rel_err") for s, r in per.items()},
                        "outputs": {k: {s: per[s][k] for s in per} for k in c["keras"]}})
    return entries, extra


def worst(per: dict, key: str) -> float:
    """The largest ``key`` over the compared outputs (not the ``excluded`` ones); inf where one has none."""
    vals = [r[key] for r in per.values() if "excluded" not in r]   # random outputs: out of parity
    return float("inf") if any(v is None for v in vals) else max(vals, default=0.0)


def dims(meta: dict, imp: dict) -> dict:
    """Which input dims are free and which became fixed, where and why (report.json ``dims``):
    ``free`` {input: [Keras axis]} as export left them, ``pt2_dynamic`` {input: {axis: Dim name}},
    ``fixed`` [{input, dim, size, by (keras, tf2onnx, torch.export), reason, layer}]."""
    fixed = [{"input": i["name"], **f} for i in meta["inputs"] for f in i.get("fixed_dims", [])]
    fixed += [{k: f.get(k) for k in ("input", "dim", "size", "by", "reason", "name")} for f in imp.get("fixed_dims", [])]
    return {"free": {i["name"]: i["free_dims"] for i in meta["inputs"] if i.get("free_dims")},
            "pt2_dynamic": imp.get("dynamic_dims", {}), "pt2_constraints": imp.get("dim_constraints", []),
            "pt2_guards": imp.get("pt2_guards", []),
            "fixed": fixed}


def describe(d: dict) -> list[str]:
    """Lines for the printed summary: the free dims, and each fixed one with its reason."""
    rows = []
    if d["free"]:
        rows.append("free dims: " + "; ".join(f"{n} dims {v}" for n, v in d["free"].items())
                    + (f" (model.pt2: {d['pt2_constraints']})" if d["pt2_constraints"] else ""))
    rows += [f"model.pt2 keeps a runtime guard on a free dim: {g[:200]}" for g in d.get("pt2_guards", [])]
    for f in d["fixed"]:
        where = f" (Keras layer {f['layer']!r})" if f.get("layer") else ""
        rows.append(f"fixed: {f['input']} dim {f['dim']} at {f['size']} by {f['by']}{where}: {f['reason'][:200]}")
    return rows
