"""Conversion cost: this pipeline (seconds and peak RSS per stage, from its report) against
plain ``tf2onnx.convert.from_function`` + ``onnx2torch.convert`` as a user chains them, each
in a process of its own, killed above ``plain_rss_cap_mb``. Up-to-date results are reused."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from pipeline.core import runstate
from pipeline.core.artifacts import ModelDir, read_json, write_json
from pipeline.tools.bench.config import ENV, REPO, BenchModel, load_keras, quiet_tf

# what the plain conversion depends on besides the model and the cap
PLAIN_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnx2torch", "torch", "numpy")


def _run_capped(cmd: list[str], cap_mb: int, timeout: float = 3600) -> dict:
    """Run ``cmd``; kill it when its RSS passes ``cap_mb``. Its own JSON line, or why it died."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak, killed = psutil.Process(proc.pid), 0, None
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss / 2**20
        except psutil.Error:
            break
        peak = max(peak, rss)
        if rss > cap_mb:
            proc.kill()
            killed = f"killed at {rss:.0f} MB RSS (cap {cap_mb} MB)"
        elif time.perf_counter() - t0 > timeout:
            proc.kill()
            killed = f"killed after {timeout:.0f} s"
        time.sleep(0.2)
    out, err = proc.communicate()
    seconds = round(time.perf_counter() - t0, 1)
    if killed or proc.returncode != 0:
        return {"ok": False, "seconds": seconds, "peak_rss_mb": round(peak),
                "error": killed or (err.strip().splitlines() or ["?"])[-1][:300]}
    res = json.loads(out.strip().splitlines()[-1])
    return {"ok": True, "wall_seconds": seconds, **res}


def convert_pipeline(bm: BenchModel, out: Path, fresh: bool = False) -> dict:
    """``python -m pipeline convert`` (one process per stage); its report's stage costs.

    Stages whose results under ``out`` are up to date are not redone (unless ``fresh``):
    then ``reused`` is True and the costs are those of the run that made them."""
    args = [] if bm.model == "default" else ["--model", bm.model]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "convert", *args, "--out", str(out),
                           *(["--force"] if fresh else [])], cwd=REPO, env=ENV, capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 1)
    rep = read_json(ModelDir.of(out, bm.name).report)
    if proc.returncode != 0:
        raise SystemExit(f"bench: converting {bm.model} failed ({rep.get('status')}):\n{proc.stderr[-2000:]}")
    reused = proc.stdout.count("(up to date, skipped)") == len(rep["stages"])
    return {"wall_seconds": seconds, "reused": reused, "stages": rep["stages"], "status": rep["status"],
            "max_abs_err": rep.get("max_abs_err")}


def _plain_key(bm: BenchModel, cap_mb: int) -> dict:
    vers = runstate.versions()
    return {"model": bm.model, "cap_mb": cap_mb, **{p: vers[p] for p in PLAIN_PACKAGES}}


def convert_plain(bm: BenchModel, out: Path, cap_mb: int, fresh: bool = False) -> dict:
    """Plain ``tf2onnx.convert.from_function`` (default optimizers), then ``onnx2torch.convert``,
    each in its own process, as a user would chain them. A result measured before with the
    same model, cap and package versions is reused (``reused``: True) unless ``fresh``."""
    if not bm.plain:
        return {"skipped": bm.plain_skip_reason or "disabled in the bench config"}
    path = out / bm.name / "plain.onnx"
    record, key = out / bm.name / "plain.json", _plain_key(bm, cap_mb)
    if not fresh and record.exists() and (old := read_json(record)).get("key") == key:
        return {**old["result"], "reused": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    exp = _run_capped([sys.executable, "-m", "pipeline.tools.bench", "_plain_export", bm.model, str(path)], cap_mb)
    res = {"export": exp}
    if exp["ok"]:
        res["import"] = _run_capped([sys.executable, "-m", "pipeline.tools.bench", "_plain_import", str(path)], cap_mb)
    path.unlink(missing_ok=True)   # only its cost is wanted; VGG-sized files are not kept
    write_json(record, {"key": key, "result": res})
    return {**res, "reused": False}


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def plain_export(model: str, path: str) -> None:
    """``python -m pipeline.tools.bench _plain_export MODEL PATH``: tf2onnx as a user runs it;
    prints its seconds and peak RSS as one JSON line."""
    quiet_tf()
    os.environ.pop("TF2ONNX_CATCH_ERRORS", None)   # plain tf2onnx: its own defaults
    t0 = time.perf_counter()
    import tensorflow as tf
    import tf2onnx

    keras_model, settings, specs = load_keras(model)
    sig = [tf.TensorSpec(s, tf.as_dtype(d), name=n) for n, s, d in specs]
    fn = tf.function(lambda *xs: keras_model(list(xs) if len(xs) > 1 else xs[0], training=False),
                     input_signature=sig, autograph=False)
    tf2onnx.convert.from_function(fn, input_signature=sig, opset=settings.opset, output_path=path)
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": _peak_rss_mb()}))


def plain_import(path: str) -> None:
    """``python -m pipeline.tools.bench _plain_import PATH``: onnx2torch as a user runs it."""
    t0 = time.perf_counter()
    import onnx
    from onnx2torch import convert

    convert(onnx.load(path))
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": _peak_rss_mb()}))
