"""``<out>/<model>/report.json``: assembled from the stage folders, never computed twice."""

from __future__ import annotations

from pipeline.stages import STAGES
from pipeline.core.artifacts import ModelDir, read_json, write_json

_STAGE_FILES = {"export": "meta.json", "rewrite": "rewrite.json", "import": "import.json", "compare": "compare.json"}


def _load(mdir: ModelDir, stage: str) -> dict | None:
    p = mdir.stage(stage) / _STAGE_FILES[stage]
    return read_json(p) if p.exists() else None


def build(mdir: ModelDir, settings=None) -> dict:
    data = {s: _load(mdir, s) for s in STAGES}
    error = read_json(mdir.error) if mdir.error.exists() else None
    meta, rw, imp, cmp_ = data["export"], data["rewrite"], data["import"], data["compare"]
    rep: dict = {"model": mdir.root.name}
    if error:
        rep["status"] = "failed"
    elif cmp_:
        rep["status"] = cmp_["status"]
    else:
        rep["status"] = "incomplete"
    rep["tolerance"] = (cmp_ or {}).get("tolerance") or (
        {"rtol": settings.rtol, "atol": settings.atol} if settings else None)
    rep["max_abs_err"] = (cmp_ or {}).get("max_abs_err", {})
    rep["max_rel_err"] = (cmp_ or {}).get("max_rel_err", {})
    # per stage: which ports reproduce Keras; ``status`` follows model.py and model.pt2 alone
    rep["passed"] = (cmp_ or {}).get("passed", {})
    rep["skipped"] = (cmp_ or {}).get("skipped", {})
    # set where the strict tolerance failed: Keras' own float32 distance from float64 math
    rep["float32_precision"] = (cmp_ or {}).get("float32_precision")
    if rw:
        rep["transposes"] = rw["transposes"]
        rep["transposes_torch"] = rw.get("transposes_torch")
        rep["transposes_in_raw"] = rw.get("transposes_in_raw")
        rep["remaining_transposes"] = rw["remaining"]
        rep["transposes_by_kind"] = {"nchw": rw.get("transposes_by_kind"), "torch": rw.get("transposes_torch_by_kind")}
        rep["layout"] = {"inputs_channels_first": rw["inputs_channels_first"],
                         "outputs_channels_first": rw["outputs_channels_first"]}
    rep["stages"] = {s: {k: d["stage"][k] for k in ("seconds", "peak_rss_mb")}
                     for s, d in data.items() if d and "stage" in d}
    versions = dict((meta or {}).get("versions", {}))
    if imp:
        versions.update({"torch": imp.get("torch"), "onnx2torch": imp.get("onnx2torch")})
        rep["torch_format"] = imp.get("format")
        rep["torch_files"] = {"model.py": True, "model.safetensors": True, "model.pt2": imp.get("format") == "pt2"}
        if imp.get("pt2_error"):
            rep["pt2_error"] = imp["pt2_error"]
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    rep["versions"] = versions
    if cmp_:
        rep["outputs"] = cmp_["outputs"]
        rep["warnings"] = cmp_["warnings"]
        rep["degenerate"] = cmp_.get("degenerate", [])
        rep["excluded"] = cmp_.get("excluded", {})   # outputs drawn at inference: out of parity, and why
        # free input dims, the ones fixed (where, why), every shape checked and the ones failed
        rep["dims"] = cmp_.get("dims")
        rep["shapes"] = cmp_.get("shapes", [])
        rep["failed_shapes"] = cmp_.get("failed_shapes", {})
    if meta:
        rep["inputs"] = meta["inputs"]
        rep["settings"] = meta.get("settings")
    if error:
        rep["error"] = error
    if (t := _training(mdir)) is not None:
        rep["training"] = t
    return rep


def _training(mdir: ModelDir) -> dict | None:
    """``training``: the training check's result (``make trainable-check``, in the tool's
    folder ``<model>/training/``), or None (never run); a check measured on another port
    than the current one (the import stage's outputs hash differs) is "stale"."""
    from pipeline.core.runstate import outputs_hash

    p = mdir.root / "training" / "training.json"
    if not p.exists():
        return None
    t = read_json(p)
    if t.get("import_outputs") != outputs_hash(mdir, "import"):
        return {"status": "stale", "reason": "the port was converted again after the check: run it again"}
    return {k: v for k, v in t.items() if k != "import_outputs"}


def write(mdir: ModelDir, settings=None) -> dict:
    rep = build(mdir, settings)
    mdir.root.mkdir(parents=True, exist_ok=True)
    write_json(mdir.report, rep)
    return rep
