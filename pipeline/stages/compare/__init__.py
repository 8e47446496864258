"""Stage 4, compare: Keras vs onnxruntime(raw) vs onnxruntime(nchw) vs the torch ports.

Torch stages: ``torch_codegen`` (the generated ``model.py`` + ``model.safetensors``),
``torch_pt2`` (``model.pt2``) and ``torch`` (onnx2torch's port of the same graph; skipped,
with the reason, where onnx2torch has no converter for an op).

All numbers live here. Per output and stage: max |diff|, max relative error (to
max|Keras output|), and pass/fail against ``rtol * max|Keras output| + atol``. NaN in a
candidate always fails. Writes ``compare/compare.json``; the report is built from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, StageClock, atomic_dir, read_json, write_json
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.reference import inputs_for, load_reference, output_to_keras

STAGE_KEYS = ("onnx_raw", "onnx_nchw", "torch", "torch_codegen", "torch_pt2")
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


def degenerate(name: str, ref: np.ndarray) -> str | None:
    """A warning when an output is too small or too uniform for parity to prove much."""
    r = np.asarray(ref, dtype=np.float64)
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    if scale < 1e-5:
        return f"output {name!r} is tiny (max |value| {scale:.3g}): parity on it proves little; check per layer"
    if r.size > 1 and float(np.std(r)) < 1e-3 * scale:
        return f"output {name!r} is nearly constant (std/scale {np.std(r) / scale:.2g}): parity on it proves little"
    return None


def compare_outputs(ref: dict, got: dict, rtol: float, atol: float) -> dict:
    return {k: compare_arrays(ref[k], got.get(k, np.array(np.nan)), rtol, atol) for k in ref}


def float32_precision(mdir: ModelDir, ref: dict, got: dict, results: dict) -> dict:
    """After a strict mismatch: how far Keras' own float32 output is from exact (float64) math.

    Where that distance is near the tolerance or above, the tolerance asks for more than
    float32 gives this model (deep networks amplify rounding): two float32 results as
    accurate as each other can differ by twice it. A failing stage then passes if its
    output is at most ``FLOAT64_FACTOR`` times as far from the float64 result as Keras' is
    (so at most 3x that from Keras; a real fault, far from both, still fails); it gets
    ``float32_precision`` {keras_vs_float64, stage_vs_float64}. Updates ``results`` in place;
    returns what was measured, or why it could not be (see ``pipeline/tools/float64.py``)."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "float64.npz"
        proc = subprocess.run([sys.executable, "-m", "pipeline.tools.float64", str(mdir.root), str(dest)],
                              capture_output=True, text=True, timeout=FLOAT64_TIMEOUT_S)
        if proc.returncode != 0 or not dest.exists():
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            why = json.loads(lines[-1])["unavailable"] if lines else (proc.stderr.strip().splitlines() or ["?"])[-1]
            return {"available": False, "reason": why[:500]}
        with np.load(dest, allow_pickle=False) as z:
            exact = {k.split(":", 1)[1]: z[k] for k in z.files}

    def dist(a, k):
        return float(np.max(np.abs(np.asarray(a, np.float64) - exact[k])))

    keras_err = {k: dist(ref[k], k) for k in ref if k in exact and np.shape(ref[k]) == np.shape(exact[k])}
    stage_err: dict = {}
    for stage, per in results.items():
        for k, r in per.items():
            bound = keras_err.get(k)
            out = got.get(stage, {}).get(k)
            if bound is None or out is None or np.shape(out) != np.shape(exact[k]) or not np.isfinite(out).all():
                continue
            e = stage_err.setdefault(stage, {})[k] = dist(out, k)
            if not r["ok"] and e <= FLOAT64_FACTOR * bound:
                r["ok"] = True
                r["float32_precision"] = {"keras_vs_float64": bound, "stage_vs_float64": e}
    return {"available": True, "factor": FLOAT64_FACTOR, "keras_vs_float64": keras_err, "stage_vs_float64": stage_err}


def run_onnx(path, feeds: dict) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})))


def run_torch(module, feeds: dict, input_names: list[str], output_names: list[str]) -> dict:
    import torch

    with torch.no_grad():
        res = module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names])
    if isinstance(res, dict):
        res = [res[k] for k in output_names]
    elif not isinstance(res, (list, tuple)):
        res = [res]
    return {n: r.detach().numpy() for n, r in zip(output_names, res)}


def run(mdir: ModelDir, settings: Settings, torch_module=None) -> dict:
    """Compare every stage; ``torch_module`` replaces the imported model (for tests)."""
    clock = StageClock()
    exp = mdir.require("export", "raw.onnx", "reference.npz", "meta.json")
    rw = mdir.require("rewrite", "nchw.onnx", "rewrite.json")
    meta = read_json(exp / "meta.json")
    facts = read_json(rw / "rewrite.json")
    inputs, ref = load_reference(exp / "reference.npz")
    feeds_cf = inputs_for(facts, inputs)
    in_names = [i["name"] for i in meta["inputs"]]
    from pipeline.core.untrusted import check_onnx

    check_onnx(exp / "raw.onnx", "compare", meta["model"])
    out_order = [o.name for o in check_onnx(rw / "nchw.onnx", "compare", meta["model"]).graph.output]
    got = {}
    try:
        got["onnx_raw"] = run_onnx(exp / "raw.onnx", inputs)
        nchw = run_onnx(rw / "nchw.onnx", feeds_cf)
        got["onnx_nchw"] = {k: output_to_keras(facts, k, v) for k, v in nchw.items()}
        from pipeline.stages import importer

        imp = read_json(mdir.require("import", "import.json") / "import.json")
        skipped, missing_pt2 = {}, None
        torch_ports = {"torch_codegen": importer.load_generated}
        if imp.get("format") == "pt2":
            torch_ports["torch_pt2"] = importer.load_pt2
        else:
            missing_pt2 = f"no model.pt2: {imp.get('pt2_error')}"
        if torch_module is not None:
            torch_ports["torch"] = lambda _: torch_module
        elif imp.get("onnx2torch_status", "ok") == "ok":
            torch_ports["torch"] = importer.load_onnx2torch
        else:
            skipped["torch"] = f"onnx2torch: {imp['onnx2torch_status']}"
        for stage, loader in torch_ports.items():
            tout = run_torch(loader(mdir), feeds_cf, in_names, out_order)
            got[stage] = {k: output_to_keras(facts, k, v) for k, v in tout.items()}
    except PipelineError:
        raise
    except Exception as e:
        raise PipelineError("compare", f"running a converted model failed: {type(e).__name__}: {e}",
                            model=meta["model"]) from e
    results = {stage: compare_outputs(ref, got[stage], settings.rtol, settings.atol) for stage in STAGE_KEYS
               if stage in got}
    if missing_pt2:   # every model must come with a model.pt2: its absence fails; onnx2torch is optional
        results["torch_pt2"] = {k: {**compare_arrays(v, np.full_like(v, np.nan), settings.rtol, settings.atol),
                                    "error": missing_pt2} for k, v in ref.items()}
    warnings = [w for k, v in ref.items() if (w := degenerate(k, v))]
    precision = None
    if settings.float64_check and not all(r["ok"] for s in results.values() for r in s.values()):
        precision = float32_precision(mdir, ref, got, results)
    ok = all(r["ok"] for s in results.values() for r in s.values())
    passed = {s: all(r["ok"] for r in results[s].values()) for s in results}
    summary = {
        "status": "ok" if ok else "mismatch",
        "tolerance": {"rtol": settings.rtol, "atol": settings.atol},
        "float32_precision": precision,
        "max_abs_err": {s: max((r["max_abs_err"] if r["max_abs_err"] is not None else float("inf"))
                               for r in results[s].values()) for s in results},
        "max_rel_err": {s: max((r["max_rel_err"] if r["max_rel_err"] is not None else float("inf"))
                               for r in results[s].values()) for s in results},
        "passed": passed,
        "skipped": skipped,
        "outputs": {k: {s: results[s][k] for s in results} for k in ref},
        "warnings": warnings,
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
            rows.append(f"{name[:28]:<28} {stage:<13} {fmt(r['max_abs_err']):>12} {fmt(r['max_rel_err']):>12} "
                        f"{r['tolerance']:>11.3g}  {verdict}")
    p = summary.get("float32_precision")
    if p and not p["available"]:
        rows.append(f"(float64 check of Keras' own precision unavailable: {p['reason']})")
    return "\n".join(rows)
