"""The training check (``make trainable-check``, ``python -m pipeline trainable-check``):
the generated ``model.py`` trains as the Keras model does. Writes
``<model>/training/training.json`` (a folder of its own: the stages' fingerprints stay
valid); ``report.json`` shows it as ``training``.

On the reference batch (``export/reference.npz``), a seeded target per output
(``targets_for``) and loss = sum over outputs of mean((y - target)**2) +
the regularizers (Keras: ``sum(model.losses)``; the port: ``regularization_loss()``, weights
and the activity terms of the forward),
Keras (``keras_side``, a TensorFlow process) and the port (``torch_side``) run:

1. ``forward``: train-mode outputs (batch statistics; dropout rates 0) within
   ``OUT_RTOL`` of the output's scale + ``OUT_ATOL``, and the regularization after that
   forward (weight regularizers and the activity terms of its outputs) within ``OUT_RTOL``
   relative + ``OUT_ATOL``;
2. ``moving_statistics``: every non-trainable variable after that forward (the moving mean
   and variance), through ``weights_map.json``, within ``STATS_RTOL`` of its scale;
3. ``gradients``: the gradient of every trainable Keras variable, mapped through
   ``weights_map.json``, within ``GRAD_RTOL * max|grad| + GRAD_ATOL`` per tensor, and never
   held to less than ``GRAD_FLOOR`` of the model's largest gradient: a gradient that is 0
   in exact math is float32 rounding in both frameworks (a conv bias before a training-mode
   batch norm, measured: Keras 3.4e-7, the port 2.8e-7 from it, where the model's largest
   gradient is 3.5); a frozen variable gets none in the port, and no parameter trains in the
   port that has no Keras variable;
4. ``sgd``: ``STEPS`` steps of SGD (lr ``LR``): every step's loss within ``LOSS_RTOL``
   relative, or within ``LOSS_FLOOR`` of the first step's loss (a model that fits the
   target goes from 2.27 to 3.9e-7 in 10 steps, where float32 outputs of size 1 leave the
   residual, and so the loss, 3e-4 relative noise), every variable at the end within
   ``WEIGHT_RTOL`` of its scale;
5. ``noise``: the dropout family, and the recurrent layers' ``dropout``/``recurrent_dropout``,
   at their own rates (``noise.py``).

``status``: "ok" when all five pass, "mismatch" otherwise, "skipped" (with the reason) for
a model without Keras weights to train (a SavedModel signature).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, StageClock, atomic_dir, read_json, write_json
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.perm import to_first, to_last
from pipeline.core.reference import inputs_for, load_reference

FOLDER = "training"
LR, STEPS = 0.01, 10
OUT_RTOL, OUT_ATOL = 1e-5, 1e-7
STATS_RTOL, STATS_ATOL = 1e-5, 1e-7
GRAD_RTOL, GRAD_ATOL, GRAD_FLOOR = 1e-4, 1e-7, 1e-6
LOSS_RTOL, LOSS_FLOOR = 1e-4, 1e-8
WEIGHT_RTOL, WEIGHT_ATOL = 1e-4, 1e-7
KERAS_TIMEOUT_S = 3600


def folder(mdir: ModelDir) -> Path:
    return mdir.root / FOLDER


def _close(expected: np.ndarray, got, rtol: float, atol: float) -> dict:
    """max |got - expected| against ``rtol * max|expected| + atol`` (NaN and shape errors fail)."""
    e = np.asarray(expected, np.float64)
    scale = float(np.abs(e).max()) if e.size else 0.0
    if got is None:
        return {"ok": False, "error": "no value in the port", "scale": scale}
    g = np.asarray(got, np.float64)
    if g.shape != e.shape:
        return {"ok": False, "error": f"shape {list(g.shape)} != {list(e.shape)}", "scale": scale}
    err = float(np.abs(g - e).max()) if e.size else 0.0
    tol = rtol * scale + atol
    ok = bool(np.isfinite(g).all()) and err <= tol
    return {"ok": ok, "max_abs_err": err, "max_rel_err": err / scale if scale else err, "scale": scale,
            "err_over_tolerance": err / tol}


def _tensors(rows: list[tuple[str, str, dict]], rtol: float, atol: float, keep: int = 5) -> dict:
    """Summary of per-tensor results [(keras path, torch key, _close result)]."""
    bad = [{"keras": k, "torch": t, **r} for k, t, r in rows if not r["ok"]]
    # relative error where the tensor is large enough for rtol to decide (else atol does: a
    # gradient that is 0 in exact math, as a bias's before a batch norm, is rounding noise);
    # ``max_err_over_tolerance`` <= 1: every tensor passes
    rels = [r["max_rel_err"] for _, _, r in rows if "max_rel_err" in r and rtol * r["scale"] >= atol]
    return {"ok": not bad, "tensors": len(rows), "max_rel_err": max(rels, default=0.0),
            "at_atol": sum(1 for _, _, r in rows if "max_rel_err" in r and rtol * r["scale"] < atol),
            "max_err_over_tolerance": max((r.get("err_over_tolerance", float("inf")) for _, _, r in rows), default=0.0),
            "rtol": rtol, "atol": atol, "failed": bad[:keep], "n_failed": len(bad)}


def _keras(mdir: ModelDir, meta: dict, inputs: dict, targets: dict, tmp: Path, seed: int) -> tuple[dict, dict]:
    feeds = tmp / "feeds.npz"
    np.savez(feeds, **{f"in:{k}": v for k, v in inputs.items()}, **{f"target:{k}": v for k, v in targets.items()})
    req = {"mdir": str(mdir.root.resolve()), "feeds": str(feeds), "dest": str(tmp / "keras.npz"), "lr": LR,
           "steps": STEPS, "inputs": [i["name"] for i in meta["inputs"]],
           "outputs": [o["name"] for o in meta["outputs"]], "seed": seed}
    (tmp / "request.json").write_text(json.dumps(req))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    try:
        proc = subprocess.run([sys.executable, "-m", "pipeline.tools.training.keras_side", str(tmp / "request.json")],
                              capture_output=True, text=True, env=env, timeout=KERAS_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise PipelineError(FOLDER, f"Keras' training steps did not finish in {KERAS_TIMEOUT_S} s",
                            model=meta["model"]) from e
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-4:])
        raise PipelineError(FOLDER, f"Keras' training steps failed: {tail}", model=meta["model"])
    with np.load(tmp / "keras.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((tmp / "keras.npz.json").read_text())


def targets_for(ref: dict, seed: int) -> dict:
    """A seeded target per output: Keras' output plus normal noise of the output's scale
    (max |output|), so that the loss is of the output's size squared and stays above float32
    rounding for the steps (with the std of the output as the noise, a frozen MobileNetV2
    base's head started at a loss of 2.5e-6, all rounding noise within 10 steps)."""
    rng = np.random.default_rng(seed + 7919)
    return {k: (v + rng.standard_normal(v.shape) * max(float(np.abs(v).max()), 1e-3)).astype(np.float32)
            for k, v in ref.items()}


def run(mdir: ModelDir, settings: Settings) -> dict:
    """Run the five checks; write and return ``training.json``'s content."""
    from pipeline.runners.pytorch import load_generated
    from pipeline.stages.importer.weights_map import apply

    clock = StageClock()
    exp = mdir.require("export", "meta.json", "reference.npz")
    meta = read_json(exp / "meta.json")
    imp = mdir.require("import", "model.py", "weights_map.json")
    facts = read_json(mdir.require("rewrite", "rewrite.json") / "rewrite.json")
    wmap = read_json(imp / "weights_map.json")
    inputs, ref = load_reference(exp / "reference.npz")
    if meta["spec"].get("kind") == "savedmodel":
        return _write(mdir, {"status": "skipped", "reason": "a SavedModel signature has no Keras layers to train"},
                      clock)
    targets = targets_for(ref, settings.seed)
    with tempfile.TemporaryDirectory(prefix="trainable-check-") as tmp:
        karr, kinfo = _keras(mdir, meta, inputs, targets, Path(tmp), settings.seed)
    cf_out = set(facts.get("outputs_channels_first", []))
    names = [o["name"] for o in meta["outputs"]]
    feeds_cf = inputs_for(facts, inputs)
    t_port = [np.transpose(targets[n], to_first(targets[n].ndim)) if n in cf_out else targets[n] for n in names]
    from pipeline.tools.training import torch_side

    layer_module = {layer: m for m, layer in wmap.get("modules", {}).items()}
    expected = {layer_module.get(layer, layer): attrs
                for layer, attrs in {**kinfo["zeroed"], **kinfo["recurrent_dropout"]}.items()}
    try:
        t = torch_side.run(lambda: load_generated(mdir), [feeds_cf[i["name"]] for i in meta["inputs"]], t_port,
                           LR, STEPS, settings.seed, expected)
    except Exception as e:
        raise PipelineError(FOLDER, f"the port's training steps failed: {type(e).__name__}: {e}",
                            model=meta["model"]) from e
    trainable = set(kinfo["trainable"])
    rows = wmap["map"]
    warnings = []

    # 1. train-mode forward
    outs = {}
    for i, n in enumerate(names):
        o = t["outputs"][i]
        o = np.transpose(o, to_last(o.ndim)) if n in cf_out else o
        outs[n] = _close(karr[f"out:{i}"], o, OUT_RTOL, OUT_ATOL)
    reg_ok = abs(kinfo["regularization"] - t["regularization"]) <= OUT_RTOL * abs(kinfo["regularization"]) + OUT_ATOL
    forward = {"ok": all(r["ok"] for r in outs.values()) and reg_ok, "rtol": OUT_RTOL, "atol": OUT_ATOL,
               "outputs": outs, "loss": {"keras": kinfo["loss"], "torch": t["loss"]},
               "regularization": {"keras": kinfo["regularization"], "torch": t["regularization"], "ok": reg_ok}}

    # 2. moving statistics (every non-trainable Keras variable) after that forward
    stats = [(r["keras"], r["torch"], _close(apply(r["transform"], karr[f"after:{r['keras']}"]),
                                             t["after"].get(r["torch"]), STATS_RTOL, STATS_ATOL))
             for r in rows if r["keras"] not in trainable and f"after:{r['keras']}" in karr]
    moving = _tensors(stats, STATS_RTOL, STATS_ATOL)

    # 3. gradients; frozen variables get none; nothing trains in the port without a Keras variable
    grads, frozen_bad = [], []
    biggest = max((float(np.abs(karr[f"grad:{p}"]).max()) for p in trainable if karr[f"grad:{p}"].size), default=0.0)
    grad_atol = max(GRAD_ATOL, GRAD_FLOOR * biggest)
    for r in rows:
        key, path = r["torch"], r["keras"]
        if path in trainable:
            g = t["grads"].get(key)
            if g is None and t["requires_grad"].get(key):
                g = np.zeros_like(t["after"][key])   # trains, but the loss does not reach it (Keras: zeros too)
            grads.append((path, key, _close(apply(r["transform"], karr[f"grad:{path}"]), g, GRAD_RTOL, grad_atol)))
        elif t["requires_grad"].get(key):
            frozen_bad.append({"keras": path, "torch": key, "error": "frozen in Keras, trains in the port"})
    mapped = {r["torch"] for r in rows}
    extra = [k for k, req in t["requires_grad"].items() if req and k not in mapped]
    unmapped = [u for u in wmap.get("unmapped", []) if u["keras"] in trainable]
    gradients = _tensors(grads, GRAD_RTOL, grad_atol)
    gradients["largest_grad"] = biggest
    gradients.update({"frozen": sum(1 for r in rows if r["keras"] not in trainable and
                                    r["torch"] in t["requires_grad"]),
                      "frozen_training": frozen_bad, "port_only_trainable": extra, "unmapped": unmapped})
    gradients["ok"] = gradients["ok"] and not frozen_bad and not extra and not unmapped

    # 4. SGD steps
    kl, tl = kinfo["sgd_losses"], t["sgd_losses"]
    loss_err = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(kl, tl)]
    loss_ok = [abs(a - b) <= LOSS_RTOL * abs(a) + LOSS_FLOOR * abs(kl[0]) for a, b in zip(kl, tl)]
    final = _tensors([(r["keras"], r["torch"], _close(apply(r["transform"], karr[f"final:{r['keras']}"]),
                                                      t["final"].get(r["torch"]), WEIGHT_RTOL, WEIGHT_ATOL))
                      for r in rows if f"final:{r['keras']}" in karr], WEIGHT_RTOL, WEIGHT_ATOL)
    sgd = {"ok": len(kl) == len(tl) == STEPS and all(loss_ok) and final["ok"],
           "lr": LR, "steps": STEPS, "loss_rtol": LOSS_RTOL, "loss_floor": LOSS_FLOOR, "keras_losses": kl, "torch_losses": tl,
           "max_loss_rel_err": max(loss_err, default=0.0), "final_weights": final}

    # 5. the dropout family and the recurrent layers' own dropout at their own rates
    modules = list(t["noise"])
    for m in sorted(set(t["zeroed"]) - set(expected)):
        modules.append({"module": m, "kind": "dropout", "rate": t["zeroed"][m], "ok": False,
                        "error": "drops in the port where the Keras layer it comes from does not"})
    noise = {"ok": all(m["ok"] for m in modules), "z": 3.0, "modules": modules}

    ported = set(meta.get("trainable", {}).get("activity_regularizers", {}).get("nodes", []))
    missing = [layer for layer in kinfo["activity_regularized"] if layer not in ported]
    if missing:
        warnings.append(f"activity regularizers of {missing} are not ported: the port's regularization_loss() "
                        "leaves them out (export/meta.json trainable.activity_regularizers says why)")
    checks = {"forward": forward, "moving_statistics": moving, "gradients": gradients, "sgd": sgd, "noise": noise}
    summary = {"status": "ok" if all(c["ok"] for c in checks.values()) else "mismatch",
               "batch": int(next(iter(inputs.values())).shape[0]) if inputs else None,
               "loss": "sum over outputs of mean((y - target)**2) + weight regularizers; target seeded normal",
               "zeroed": {"keras": kinfo["zeroed"], "torch": t["zeroed"]},
               "checks": checks, "warnings": warnings}
    return _write(mdir, summary, clock)


def _write(mdir: ModelDir, summary: dict, clock: StageClock) -> dict:
    """``training.json``, with the import stage's outputs hash it was measured on (the report
    shows a check of an older port as stale)."""
    from pipeline.core.runstate import outputs_hash

    with atomic_dir(folder(mdir)) as d:
        write_json(d / "training.json", {**summary, "import_outputs": outputs_hash(mdir, "import"),
                                         "stage": {"stage": FOLDER, **clock.record()}})
    return summary


def write_failure(mdir: ModelDir, e: PipelineError) -> None:
    """``training.json`` with ``status`` "failed" and the error."""
    _write(mdir, {"status": "failed", "error": e.info.to_json()}, StageClock())


def table(summary: dict) -> str:
    """The lines printed after a training check."""
    if summary["status"] == "skipped":
        return f"training check skipped: {summary['reason']}"
    c = summary["checks"]
    f, m, g, s, n = c["forward"], c["moving_statistics"], c["gradients"], c["sgd"], c["noise"]

    def row(check: str, figure: str, ok: bool) -> str:
        return f"{check:<22} {figure[:60]:<60} {'yes' if ok else 'NO'}"

    worst_out = max((r.get("max_rel_err", float("inf")) for r in f["outputs"].values()), default=0.0)
    rows = [f"{'check':<22} {'figure':<60} ok",
            row("1 train forward", "max rel err %.3g (rtol %g)" % (worst_out, f["rtol"]), f["ok"]),
            row("2 moving statistics", "%d tensors, max rel err %.3g" % (m["tensors"], m["max_rel_err"]), m["ok"]),
            row("3 gradients", "%d tensors, max rel err %.3g (%d at atol), %d frozen" % (
                g["tensors"], g["max_rel_err"], g["at_atol"], g["frozen"]), g["ok"]),
            row("4 SGD x%d" % s["steps"], "loss max rel err %.3g, weights %.3g" % (
                s["max_loss_rel_err"], s["final_weights"]["max_rel_err"]), s["ok"])]
    for mod in n["modules"]:
        if "measured" in mod:
            fig = "%s %s: dropped %.4f, rate %g" % (mod["module"], mod["kind"], mod["measured"], mod["rate"])
        elif "measured_std" in mod:
            fig = "%s %s: std %.4f, expected %.4f" % (mod["module"], mod["kind"], mod["measured_std"],
                                                       mod["expected_std"])
        else:
            fig = "%s: %s" % (mod["module"], mod.get("error", ""))
        rows.append(row("5 noise", fig, mod["ok"]))
    if not n["modules"]:
        rows.append(row("5 noise", "no dropout-family module", True))
    for r in (r for part in (m, g, s["final_weights"]) for r in part["failed"]):
        why = r.get("error") or "max rel err %.3g" % r["max_rel_err"]
        rows.append(f"  failed: {r['keras']} -> {r['torch']}: {why}")
    for r in g["frozen_training"] + [{"keras": u["keras"], "torch": "-", "error": u["reason"]} for u in g["unmapped"]]:
        rows.append(f"  failed: {r['keras']} -> {r['torch']}: {r['error']}")
    rows += [f"  failed: {k} trains in the port but has no Keras variable" for k in g["port_only_trainable"]]
    rows += [f"warning: {w}" for w in summary["warnings"]]
    return "\n".join(rows)
