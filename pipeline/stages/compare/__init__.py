"""Stage 4, compare: Keras vs onnxruntime(raw) vs onnxruntime(nchw) vs the torch ports.

Each column of ``RUNNERS`` is one runner of ``pipeline.runners`` on the reference inputs:
``onnx_raw`` and ``onnx_nchw`` (onnxruntime on ``raw.onnx``, ``nchw.onnx``), ``torch``
(onnx2torch's port of ``torch.onnx`` with the import stage's weights; skipped, with the
reason, where onnx2torch has no converter for an op), ``torch_codegen`` (the generated
``model.py`` + ``model.safetensors``) and ``torch_pt2`` (``model.pt2``).

All numbers live here. Per output and stage: max |diff|, max relative error (to
max|Keras output|), and pass/fail against ``rtol * max|Keras output| + atol``. NaN in a
candidate always fails. Writes ``compare/compare.json``; the report is built from it.

The verdict (``verdict``) follows what the user keeps: ``status`` is "ok" when the ``KEPT``
ports (``torch_codegen``: model.py, ``torch_pt2``: model.pt2, whose absence fails) pass.
``onnx_raw``, ``onnx_nchw`` and onnx2torch's ``torch`` are cross-checks: out of tolerance,
they stay false in ``passed`` and give a warning naming the stage, but do not decide it.

After a strict mismatch of a kept port (unless ``--no-float64-check``; a failing
cross-check alone does not ask for it), ``float32_precision`` measures how far Keras' own
float32 output is from exact math: the Keras runner runs a float64 twin of the exported
model (``KerasRunner(mdir, "pipeline.stages.compare:keras_model", dtype="float64")``, a
TensorFlow process of its own) on the reference inputs, and a failing stage (any of them)
passes if it is at most ``FLOAT64_FACTOR`` times as far from that result as Keras is.
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.core.artifacts import ModelDir, StageClock, atomic_dir, read_json, write_json
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.reference import inputs_for, load_reference, output_to_keras
from pipeline.stages.compare import shapes

# the runners compared with Keras, in the order of the results (report.json, the zoo's table)
RUNNERS = ("onnx_raw", "onnx_nchw", "torch", "torch_codegen", "torch_pt2")
# the ports the user keeps: they alone decide ``status``; the other runners are cross-checks
KEPT = ("torch_codegen", "torch_pt2")
FILES = {"onnx_raw": "raw.onnx", "onnx_nchw": "nchw.onnx", "torch": "onnx2torch", "torch_codegen": "model.py",
         "torch_pt2": "model.pt2"}
FLOAT64_TIMEOUT_S = 1800
FLOAT64_FACTOR = 2.0   # a port may be this many times as far from float64 math as Keras' float32 is


def compare_arrays(ref: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> dict:
    ref64, got64 = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
    tol = rtol * scale + atol
    if ref64.shape != got64.shape:
        return {"ok": False, "max_abs_err": None, "max_rel_err": None, "tolerance": tol, "scale": scale,
                "error": f"shape {list(got64.shape)} != Keras {list(ref64.shape)}"}
    if not np.isfinite(got64).all():
        return {"ok": False, "max_abs_err": float("nan"), "max_rel_err": float("nan"), "tolerance": tol,
                "scale": scale, "error": "NaN or inf in the output"}
    err = float(np.max(np.abs(ref64 - got64))) if ref64.size else 0.0
    return {"ok": err <= tol, "max_abs_err": err, "max_rel_err": err / scale if scale else err,
            "tolerance": tol, "scale": scale}


def stochastic(ref: np.ndarray, got: np.ndarray, reason: str) -> dict:
    """An output drawn from random numbers at inference (export ``meta.json`` ``random``):
    left out of parity (``excluded``: why); it passes with Keras' shape and finite values.
    The means and stds of both are recorded, for a look at the distribution."""
    ref64, got64 = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    out = {"ok": True, "excluded": reason, "max_abs_err": None, "max_rel_err": None, "tolerance": None,
           "scale": float(np.max(np.abs(ref64))) if ref64.size else 0.0,
           "keras_mean": float(ref64.mean()) if ref64.size else None, "keras_std": float(ref64.std()) if ref64.size else None}
    if ref64.shape != got64.shape:
        return {**out, "ok": False, "error": f"shape {list(got64.shape)} != Keras {list(ref64.shape)}"}
    if not np.isfinite(got64).all():
        return {**out, "ok": False, "error": "NaN or inf in the output"}
    return {**out, "mean": float(got64.mean()) if got64.size else None, "std": float(got64.std()) if got64.size else None}


def degenerate(name: str, ref: np.ndarray) -> str | None:
    """A warning when an output is too small or too uniform for parity to prove much."""
    r = np.asarray(ref, dtype=np.float64)
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    if scale < 1e-5:
        return f"output {name!r} is tiny (max |value| {scale:.3g}): parity on it proves little; check per layer"
    if r.size > 1 and float(np.std(r)) < 1e-3 * scale:
        return f"output {name!r} is nearly constant (std/scale {np.std(r) / scale:.2g}): parity on it proves little"
    return None


def compare_outputs(ref: dict, got: dict, rtol: float, atol: float, excluded: dict | None = None) -> dict:
    """Per output ``compare_arrays``; the outputs in ``excluded`` (name -> why) are ``stochastic``."""
    excluded = excluded or {}
    return {k: (stochastic(ref[k], got.get(k, np.array(np.nan)), excluded[k]) if k in excluded else
                compare_arrays(ref[k], got.get(k, np.array(np.nan)), rtol, atol)) for k in ref}



def kept_ok(results: dict) -> bool:
    """Every output of every ``KEPT`` port within tolerance (a port not compared fails)."""
    return all(s in results and all(r["ok"] for r in results[s].values()) for s in KEPT)


def verdict(results: dict, rtol: float, atol: float) -> tuple[str, list[str]]:
    """(``status``, warnings) from ``results`` ({stage: {output: compare_arrays result}}).

    "ok" when the ``KEPT`` torch ports pass, else "mismatch". Each other stage out of
    tolerance gives a warning naming it, its max relative error and the tolerance: it is a
    cross-check of the conversion, not a file the user keeps, so it does not decide."""
    warnings = []
    for stage, per in results.items():
        bad = [r for r in per.values() if not r["ok"]]
        if stage in KEPT or not bad:
            continue
        errs = [r["max_rel_err"] for r in bad]
        err = "n/a" if any(e is None for e in errs) else f"{max(errs):.3g}"
        warnings.append(f"stage {stage} ({FILES.get(stage, stage)}) is out of tolerance: max rel error {err}, "
                        f"tolerance rtol {rtol:g} + atol {atol:g}; it is a cross-check, the status follows "
                        f"the torch ports ({', '.join(FILES[k] for k in KEPT)})")
    return ("ok" if kept_ok(results) else "mismatch"), warnings


def float32_precision(mdir: ModelDir, inputs: dict, ref: dict, got: dict, results: dict) -> dict:
    """After a strict mismatch of a kept port: how far Keras' own float32 output is from exact (float64) math.

    Where that distance is near the tolerance or above, the tolerance asks for more than
    float32 gives this model (deep networks amplify rounding): two float32 results as
    accurate as each other can differ by twice it. A failing stage then passes if its
    output is at most ``FLOAT64_FACTOR`` times as far from the float64 result as Keras' is
    (so at most 3x that from Keras; a real fault, far from both, still fails); it gets
    ``float32_precision`` {keras_vs_float64, stage_vs_float64}. Updates ``results`` in place;
    returns what was measured, or why it could not be.

    The float64 result is the Keras runner's float64 twin of the exported model on the
    reference ``inputs`` (``KerasRunner(..., dtype="float64")``, a TensorFlow process of its
    own): the same model rebuilt with float64 weights and float64 computation (a SavedModel:
    its signature's frozen graph retyped), made only if the float32 model rebuilt first
    reproduces Keras' recorded outputs. A subclassed model or an op without float64 has no
    twin: then ``available`` is False with the ``reason``."""
    from pipeline.runners import KerasRunner

    try:
        with KerasRunner(mdir, "pipeline.stages.compare:keras_model", dtype="float64", name="keras_float64",
                         timeout_s=FLOAT64_TIMEOUT_S) as runner:
            exact = runner.infer(inputs)
    except PipelineError as e:   # any reason the float64 twin cannot be made is an answer, not a crash
        return {"available": False, "reason": e.info.message[:500]}

    def dist(a, k):
        return float(np.max(np.abs(np.asarray(a, np.float64) - exact[k])))

    keras_err = {k: dist(ref[k], k) for k in ref if k in exact and np.shape(ref[k]) == np.shape(exact[k])}
    stage_err: dict = {}
    for stage, per in results.items():
        for k, r in per.items():
            bound = keras_err.get(k)
            out = got.get(stage, {}).get(k)
            if r.get("excluded") or bound is None or out is None or np.shape(out) != np.shape(exact[k]) or not np.isfinite(out).all():
                continue
            e = stage_err.setdefault(stage, {})[k] = dist(out, k)
            if not r["ok"] and e <= FLOAT64_FACTOR * bound:
                r["ok"] = True
                r["float32_precision"] = {"keras_vs_float64": bound, "stage_vs_float64": e}
    return {"available": True, "factor": FLOAT64_FACTOR, "keras_vs_float64": keras_err, "stage_vs_float64": stage_err}


def runners_for(mdir: ModelDir, modules: dict | None = None) -> tuple[dict, dict]:
    """({name: Runner} of the ``RUNNERS`` this model has, {name: why it is skipped}).
    ``model.pt2`` and onnx2torch's port are left out where the import stage made none
    (``import.json``: ``format``, ``onnx2torch_status``); ``modules`` ({"torch" |
    "torch_codegen" | "torch_pt2": torch module}) replaces those ports (for tests)."""
    from pipeline.runners import GeneratedRunner, OnnxRuntimeRunner, OnnxToTorchRunner, Pt2Runner, TorchRunner

    meta = read_json(mdir.stage("export") / "meta.json")
    imp = read_json(mdir.require("import", "import.json") / "import.json")
    model = meta["model"]
    runners = {"onnx_raw": OnnxRuntimeRunner(mdir.stage("export") / "raw.onnx", name="onnx_raw", model=model),
               "onnx_nchw": OnnxRuntimeRunner(mdir.stage("rewrite") / "nchw.onnx", name="onnx_nchw", model=model)}
    skipped = {}
    if imp.get("onnx2torch_status", "ok") == "ok":
        runners["torch"] = OnnxToTorchRunner(mdir)
    else:
        skipped["torch"] = f"onnx2torch: {imp['onnx2torch_status']}"
    runners["torch_codegen"] = GeneratedRunner(mdir)
    if imp.get("format") == "pt2":
        runners["torch_pt2"] = Pt2Runner(mdir)
    else:
        skipped["torch_pt2"] = f"no model.pt2: {imp.get('pt2_error')}"
    for name, module in (modules or {}).items():
        port = runners.get(name) or OnnxToTorchRunner(mdir)
        runners[name] = TorchRunner(module, port.input_names, port.output_names, name=name, model=model)
        skipped.pop(name, None)
    return {k: runners[k] for k in RUNNERS if k in runners}, skipped


def keras_model(mdir: ModelDir):
    """The Keras model as the export stage loaded it (its recorded spec and settings, batch
    norm calibration included): ``KerasRunner(mdir, build="pipeline.stages.compare:keras_model")``
    runs it in a TensorFlow process of its own (this function runs there)."""
    from pipeline.runners.keras_tf import recorded
    from pipeline.stages import export

    return export.load_model(*recorded(mdir))


def run(mdir: ModelDir, settings: Settings, modules: dict | None = None) -> dict:
    """Compare every stage; ``modules`` ({port name: torch module}) replaces torch ports (for tests)."""
    clock = StageClock()
    exp = mdir.require("export", "raw.onnx", "reference.npz", "meta.json")
    rw = mdir.require("rewrite", "nchw.onnx", "rewrite.json")
    facts = read_json(rw / "rewrite.json")
    inputs, ref = load_reference(exp / "reference.npz")
    feeds_cf = inputs_for(facts, inputs)
    runners, skipped = runners_for(mdir, modules)
    missing_pt2 = skipped.pop("torch_pt2", None)   # not skipped: every model must come with a model.pt2
    meta = read_json(exp / "meta.json")
    imp = read_json(mdir.stage("import") / "import.json")
    more = shapes.prepare(mdir, meta, settings, imp)   # free dims: more shapes, Keras at each
    got = {}
    for name, runner in runners.items():   # raw.onnx takes Keras' layout; the others the rewritten model's
        out = runner.infer(inputs if name == "onnx_raw" else feeds_cf)
        got[name] = out if name == "onnx_raw" else {k: output_to_keras(facts, k, v) for k, v in out.items()}
        shapes.run_port(name, runner, more, facts)
        runner.close()
    random = (meta.get("random") or {}).get("outputs", {})   # drawn at inference: out of parity, with why
    results = {stage: compare_outputs(ref, got[stage], settings.rtol, settings.atol, random) for stage in RUNNERS
               if stage in got}
    shape_entries, at_shapes = shapes.results(more, functools.partial(compare_outputs, excluded=random),
                                              settings.rtol, settings.atol)
    if missing_pt2:   # its absence fails; onnx2torch is optional
        results["torch_pt2"] = {k: {**compare_arrays(v, np.full_like(v, np.nan), settings.rtol, settings.atol),
                                    "error": missing_pt2} for k, v in ref.items()}
    degenerate_outputs = {k: w for k, v in ref.items() if k not in random and (w := degenerate(k, v))}
    precision = None
    if settings.float64_check and not kept_ok(results):   # a failing cross-check alone is a warning
        precision = float32_precision(mdir, inputs, ref, got, results)
    # the verdict counts every shape checked: "output @ x=7x3" entries beside the reference's
    results = {s: {**per, **at_shapes.get(s, {})} for s, per in results.items()}
    status, stage_warnings = verdict(results, settings.rtol, settings.atol)
    passed = {s: all(r["ok"] for r in results[s].values()) for s in results}
    summary = {
        "status": status,
        "tolerance": {"rtol": settings.rtol, "atol": settings.atol},
        "float32_precision": precision,
        "max_abs_err": {s: shapes.worst(results[s], "max_abs_err") for s in results},
        "max_rel_err": {s: shapes.worst(results[s], "max_rel_err") for s in results},
        "passed": passed,
        "skipped": skipped,
        "outputs": {k: {s: results[s][k] for s in results} for k in ref},
        "shapes": ([shapes.reference_entry(meta, results)] + shape_entries) if more else [],
        "dims": shapes.dims(meta, imp),
        "failed_shapes": {s: sorted({k.split(" @ ", 1)[1] for k, r in per.items() if " @ " in k and not r["ok"]})
                          for s, per in results.items() if any(" @ " in k and not r["ok"] for k, r in per.items())},
        "warnings": [*degenerate_outputs.values(), *[random[k] for k in ref if k in random], *stage_warnings],
        "excluded": {k: random[k] for k in ref if k in random},   # outputs left out of parity, and why
        "degenerate": list(degenerate_outputs),   # outputs whose parity proves little (the zoo checks per layer)
    }
    with atomic_dir(mdir.stage("compare")) as d:
        record = {"stage": "compare", **clock.record()}
        write_json(d / "compare.json", {**summary, "stage": record})
    return summary


def table(summary: dict) -> str:
    """The short table printed after a comparison."""
    rows = [f"{'output':<28} {'stage':<13} {'max abs err':>12} {'max rel err':>12} {'tolerance':>11}  ok"]
    for name, per in summary["outputs"].items():
        for stage, r in per.items():
            fmt = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
            verdict = "yes" if r["ok"] else "NO"
            if r.get("float32_precision") is not None:
                p = r["float32_precision"]
                verdict = (f"yes, as accurate as Keras: {p['stage_vs_float64']:.3g} from float64 math, "
                           f"Keras {p['keras_vs_float64']:.3g}")
            if "excluded" in r:
                verdict = ("excluded, random at inference: shape and values finite" if r["ok"] else
                           f"NO ({r.get('error')})")
            rows.append(f"{name[:28]:<28} {stage:<13} {fmt(r['max_abs_err']):>12} {fmt(r['max_rel_err']):>12} "
                        f"{fmt(r['tolerance']):>11}  {verdict}")
    rows += shapes.describe(summary["dims"]) if summary.get("dims") else []
    for e in summary.get("shapes", [])[1:]:
        if "skipped" in e:
            rows.append(f"at {e['label']}: skipped, {e['skipped']}")
            continue
        errs = ", ".join(f"{s} {v:.3g}{'' if e['passed'][s] else ' NO'}" for s, v in e["max_rel_err"].items())
        rows.append(f"at {e['label']}: max rel err {errs}"
                    + "".join(f"; {s} skipped: {why}" for s, why in e.get("port_skipped", {}).items()))
    p = summary.get("float32_precision")
    if p and not p["available"]:
        rows.append(f"(float64 check of Keras' own precision unavailable: {p['reason']})")
    return "\n".join(rows)
