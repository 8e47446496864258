"""Batch conversion of a model zoo: isolated, parallel, resumable, local or on Ray.

Each model runs ``python -m pipeline convert`` in a worker process of its own (a new
session, so that the whole process tree can be killed), watched for a wall-clock limit
and for the summed RSS of that tree. A crash, an out-of-memory kill or a timeout becomes
that model's ``error.json``/``report.json`` (with the signal or the limit) and the batch
goes on. A model whose ``zoo.json`` fingerprint (model file or builder source, settings,
limits, package versions, pipeline source) still matches is skipped unless ``--force``.
``summary.json``, ``summary.md`` and ``summary.html`` are rewritten after every model.

Config (TOML): top-level keys are conversion settings for every model (as in
``default.toml``); ``[zoo]`` holds batch defaults (``time_limit_s``, ``memory_limit_mb``,
``jobs``, ``memory_budget_mb``); each ``[[models]]`` entry has ``model`` (a spec; builder
paths are relative to the config file) and optionally ``name``, ``input_shape``,
``time_limit_s``, ``memory_limit_mb`` and the per-model settings in ``MODEL_FLAGS``.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import html
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

import pipeline
from pipeline.stages import STAGES
from pipeline.core.artifacts import ModelDir, check_model_name, read_json, write_json, write_text
from pipeline.stages.compare import STAGE_KEYS
from pipeline.core.config import load_settings, parse_shape, read_toml
from pipeline.core.errors import PipelineError
from pipeline.core.spec import resolve

ZOO_DEFAULTS = {"time_limit_s": 1800.0, "memory_limit_mb": 12000, "jobs": 0, "memory_budget_mb": 0}
# per-model settings -> convert flags; value None: a boolean switch
MODEL_FLAGS = {"rtol": "--rtol", "atol": "--atol", "seed": "--seed", "batch": "--batch",
               "channels_last_inputs": "--channels-last-inputs", "channels_last_outputs": "--channels-last-outputs",
               "unsafe": "--unsafe"}
_MODEL_KEYS = {"model", "name", "input_shape", "time_limit_s", "memory_limit_mb", "fold_flatten_transpose",
               "custom_objects", *MODEL_FLAGS}
# distributions whose versions change a conversion (looked up without importing them)
DISTRIBUTIONS = ("tensorflow-cpu", "tensorflow", "keras", "tf-keras", "tf2onnx", "onnx", "onnx-ir", "onnxruntime",
                 "onnx2torch", "torch", "numpy", "safetensors")
POLL_S = 0.2
# set on Ctrl-C: running workers are killed and nothing is recorded for them (redone next time)
_CANCEL = threading.Event()


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo, with everything its conversion and its limits depend on."""

    model: str                  # the spec given to ``convert --model``
    name: str                   # folder under OUT
    flags: tuple = ()           # extra ``convert`` flags (per-model settings)
    settings: dict = field(default_factory=dict)   # the effective Settings, as JSON
    time_limit_s: float = ZOO_DEFAULTS["time_limit_s"]
    memory_limit_mb: int = ZOO_DEFAULTS["memory_limit_mb"]
    problem: str | None = None  # why the spec cannot be resolved (recorded as its failure)


@dataclass(frozen=True)
class Zoo:
    config: Path
    models: tuple
    jobs: int = 0               # 0: number of cores, bounded by memory
    memory_budget_mb: int = 0   # 0: total memory of the machine


def _flags(entry: dict) -> tuple:
    out: list[str] = []
    if "input_shape" in entry:
        shape = entry["input_shape"]
        out += ["--input-shape", ",".join(map(str, shape)) if isinstance(shape, list) else str(shape)]
    for key, flag in MODEL_FLAGS.items():
        if key not in entry:
            continue
        if isinstance(entry[key], bool):
            out += [flag] if entry[key] else []
        else:
            out += [flag, str(entry[key])]
    if entry.get("fold_flatten_transpose") is False:
        out.append("--no-fold")
    for obj in entry.get("custom_objects", ()):
        out += ["--custom-object", obj]
    return tuple(out)


def _fallback_name(spec: str) -> str:
    base = spec.rpartition(":")[2] if ".py:" in spec else Path(spec).stem or spec
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", base).strip("._") or "model"


def load_zoo(path: str | Path) -> Zoo:
    """Parse a zoo config; a config error is fatal, a model that cannot be resolved is not."""
    path = Path(path)
    raw = read_toml(path, "zoo config")
    load_settings(path)   # validates the top-level settings keys
    zoo = {**ZOO_DEFAULTS, **raw.get("zoo", {})}
    unknown = set(zoo) - set(ZOO_DEFAULTS)
    if unknown:
        raise PipelineError("config", f"unknown keys {sorted(unknown)} in [zoo] of {str(path)!r}",
                            hint=f"known keys: {sorted(ZOO_DEFAULTS)}")
    entries = raw.get("models", [])
    if not entries:
        raise PipelineError("config", f"zoo config {str(path)!r} lists no [[models]]")
    models, names = [], set()
    for i, entry in enumerate(entries):
        where = f"[[models]] entry {i + 1} of {str(path)!r}"
        if not isinstance(entry.get("model"), str):
            raise PipelineError("config", f"{where} has no model = \"...\"")
        unknown = set(entry) - _MODEL_KEYS
        if unknown:
            raise PipelineError("config", f"unknown keys {sorted(unknown)} in {where}", hint=f"known: {sorted(_MODEL_KEYS)}")
        spec = entry["model"]
        if ".py:" in spec and not spec.startswith("keras.") and not Path(spec.rpartition(":")[0]).is_absolute():
            spec = f"{(path.parent / spec.rpartition(':')[0]).resolve()}:{spec.rpartition(':')[2]}"
        elif not spec.startswith("keras.") and not Path(spec).is_absolute():
            spec = str((path.parent / spec).resolve())
        problem = None
        try:
            name = resolve(spec, entry.get("name")).name
        except PipelineError as e:
            name, problem = entry.get("name") or _fallback_name(spec), str(e)
        check_model_name(name)
        if name in names:
            raise PipelineError("config", f"{where}: model name {name!r} is used twice", hint="give one a name = \"...\"")
        names.add(name)
        shapes = entry.get("input_shape")
        settings = load_settings(path, model=spec, name=name,
                                 input_shapes=parse_shape(",".join(map(str, shapes)) if isinstance(shapes, list)
                                                          else shapes) if shapes else None,
                                 **{k: entry[k] for k in (*MODEL_FLAGS, "fold_flatten_transpose", "custom_objects")
                                    if k in entry})
        models.append(ZooModel(model=spec, name=name, flags=_flags(entry), settings=settings.to_json(),
                               time_limit_s=float(entry.get("time_limit_s", zoo["time_limit_s"])),
                               memory_limit_mb=int(entry.get("memory_limit_mb", zoo["memory_limit_mb"])),
                               problem=problem))
    return Zoo(config=path.resolve(), models=tuple(models), jobs=int(zoo["jobs"]),
               memory_budget_mb=int(zoo["memory_budget_mb"]))


# ---------------------------------------------------------------- fingerprints

def _hash_path(h, p: Path) -> None:
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode())
            _hash_path(h, f)
    elif p.is_file():
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)


def versions() -> dict:
    out = {"pipeline": pipeline.__version__}
    for d in DISTRIBUTIONS:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


_NOT_CONVERSION = ("tools/zoo/", "tools/bench.py")


def _pipeline_source_hash() -> str:
    """The pipeline's conversion code (this batch runner and the benchmark left out: they
    change no conversion result)."""
    h = hashlib.sha256()
    root = Path(pipeline.__file__).parent
    for f in sorted(q for q in root.rglob("*.py") if not str(q.relative_to(root)).startswith(_NOT_CONVERSION)):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(m: ZooModel, vers: dict, source: str) -> str:
    """Changes when the model file/builder, its settings, limits or the software change."""
    h = hashlib.sha256()
    target = m.model.rpartition(":")[0] if ".py:" in m.model else m.model
    if not m.model.startswith("keras.applications."):
        _hash_path(h, Path(target))
    h.update(json.dumps({"model": m.model, "settings": m.settings, "flags": list(m.flags),
                         "limits": [m.time_limit_s, m.memory_limit_mb], "versions": vers, "pipeline": source},
                        sort_keys=True).encode())
    return h.hexdigest()[:24]


def up_to_date(out: Path, name: str, fp: str) -> dict | None:
    """The model's zoo record when its report is complete and its fingerprint matches."""
    mdir = ModelDir.of(out, name)
    try:
        rec = read_json(mdir.root / "zoo.json")
        rep = read_json(mdir.report)
    except (OSError, ValueError):
        return None
    if rec.get("fingerprint") != fp or rep.get("status") not in ("ok", "mismatch", "failed"):
        return None
    return rec


# ---------------------------------------------------------------- one model

def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def _kill_tree(popen: subprocess.Popen) -> None:
    try:
        kids = psutil.Process(popen.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for k in kids:   # children that left the process group
        try:
            k.kill()
        except psutil.NoSuchProcess:
            continue


def _per_layer_supported() -> bool:
    """Whether this pipeline's ``compare`` has ``--per-layer`` (the debugging feature)."""
    from pipeline.cli import _parser

    _, unknown = _parser().parse_known_args(["compare", "--per-layer"])
    return not unknown


def run_one(job: dict) -> dict:
    """Convert one model in a watched worker process; returns its record and result files.

    ``job``: ``ZooModel`` fields plus ``out``, ``config``, ``fingerprint``. Never raises for
    a failure of the model: a crash, a limit or a bad spec is written as its ``error.json``.
    """
    from pipeline.core import report

    out, name = Path(job["out"]), job["name"]
    mdir = ModelDir.of(out, name)
    shutil.rmtree(mdir.root, ignore_errors=True)
    mdir.root.mkdir(parents=True)
    root = str(Path(pipeline.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    args = ["--model", job["model"], "--name", name, "--out", str(out), "--config", job["config"], *job["flags"]]
    cmd = [sys.executable, "-m", "pipeline", "convert", *args]
    t0 = time.monotonic()
    stage, peak, killed = ["export"], 0, None
    with open(mdir.root / "zoo.log", "w") as log:
        if job.get("problem"):
            rc = None
            write_json(mdir.error, {"stage": "export", "message": job["problem"], "model": name, "kind": "spec"})
        else:
            popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     cwd=root, start_new_session=True)

            def pump():
                for line in popen.stdout:
                    log.write(line)
                    log.flush()
                    m = re.match(r"^== .*: (\w+)$", line.rstrip())
                    if m:
                        stage[0] = m.group(1)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            proc = psutil.Process(popen.pid)
            limit_b = job["memory_limit_mb"] * 2**20
            while popen.poll() is None:
                rss = _tree_rss(proc)
                peak = max(peak, rss)
                if rss > limit_b:
                    killed = {"kind": "memory", "limit": f"memory_limit_mb={job['memory_limit_mb']}",
                              "message": f"memory limit exceeded: the worker's process tree used {rss / 2**20:.0f} MB "
                                         f"> memory_limit_mb={job['memory_limit_mb']}; killed with SIGKILL"}
                elif time.monotonic() - t0 > job["time_limit_s"]:
                    killed = {"kind": "timeout", "limit": f"time_limit_s={job['time_limit_s']:g}",
                              "message": f"time limit exceeded: still running after time_limit_s="
                                         f"{job['time_limit_s']:g}; killed with SIGKILL"}
                if _CANCEL.is_set():
                    killed = {"kind": "cancelled"}
                if killed:
                    _kill_tree(popen)
                    break
                time.sleep(POLL_S)
            rc = popen.wait()
            reader.join(timeout=5)
    seconds = time.monotonic() - t0
    if killed and killed["kind"] == "cancelled":
        return {"name": name, "record": {"name": name, "status": "cancelled", "seconds": seconds}, "files": {}}
    if killed:
        write_json(mdir.error, {"stage": stage[0], "model": name, "signal": "SIGKILL", **killed,
                                "message": killed["message"]})
    elif rc is not None and rc < 0:
        write_json(mdir.error, {"stage": stage[0], "model": name, "kind": "crash", "signal": signal.Signals(-rc).name,
                                "message": f"the worker was killed by signal {signal.Signals(-rc).name}"})
    elif rc not in (None, 0, 1) and not mdir.error.exists():
        tail = (mdir.root / "zoo.log").read_text().strip().splitlines()[-20:]
        write_json(mdir.error, {"stage": stage[0], "model": name, "kind": "exit",
                                "message": f"convert exited with status {rc}: " + (tail[-1] if tail else "no output"),
                                "log_tail": "\n".join(tail)})
    rep = report.write(mdir)
    per_layer = None
    if rep["status"] == "ok" and rep.get("warnings"):
        per_layer = _per_layer(cmd[:3] + ["compare", *args], env, root, mdir)
        rep = read_json(mdir.report)
    params = None
    meta = mdir.stage("export") / "meta.json"
    if meta.exists():
        params = read_json(meta).get("params")
    rec = {"model": job["model"], "name": name, "fingerprint": job["fingerprint"], "status": rep["status"],
           "exit_code": rc, "seconds": round(seconds, 2), "peak_rss_mb": round(peak / 2**20, 1),
           "limits": {"time_limit_s": job["time_limit_s"], "memory_limit_mb": job["memory_limit_mb"]},
           "killed": killed, "params": params, "per_layer": per_layer, "host": os.uname().nodename,
           "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")}
    write_json(mdir.root / "zoo.json", rec)
    files = {f: (mdir.root / f).read_text() for f in ("report.json", "zoo.json", "error.json")
             if (mdir.root / f).exists()}
    return {"name": name, "record": rec, "files": files}


def _per_layer(cmd: list, env: dict, root: str, mdir: ModelDir) -> dict:
    """Degenerate outputs: judge parity per layer too, when the pipeline can."""
    if not _per_layer_supported():
        return {"status": "unavailable",
                "message": "outputs are degenerate and this pipeline has no `compare --per-layer`: "
                           "parity rests on the outputs alone"}
    export_cmd = [*cmd[:3], "export", *cmd[4:], "--layers-only"]   # Keras' per-layer outputs first
    rec = subprocess.run(export_cmd, env=env, cwd=root, capture_output=True, text=True)
    proc = rec if rec.returncode else subprocess.run([*cmd, "--per-layer"], env=env, cwd=root,
                                                     capture_output=True, text=True)
    (mdir.root / "per_layer.log").write_text(rec.stdout + rec.stderr + proc.stdout + proc.stderr)
    # every layer's activations (GBs for the large models) were only needed for the comparison,
    # whose results stay in compare/; `make debug` records them again
    for f in ("layers.npz", "layers.json"):
        (mdir.stage("export") / f).unlink(missing_ok=True)
    status = {0: "ok", 1: "mismatch"}.get(proc.returncode, "failed")
    return {"status": status, "exit_code": proc.returncode,
            "message": (proc.stdout + proc.stderr).strip().splitlines()[-1] if (proc.stdout + proc.stderr).strip()
            else ""}


# ---------------------------------------------------------------- summary

def _row(m: ZooModel, out: Path, fp: str) -> dict:
    mdir = ModelDir.of(out, m.name)
    rec = up_to_date(out, m.name, fp)
    if rec is None:
        return {"name": m.name, "model": m.model, "status": "pending"}
    rep = read_json(mdir.report)
    status = rep["status"]
    per_layer = rec.get("per_layer") or None
    if status == "ok" and per_layer and per_layer["status"] in ("mismatch", "failed"):
        status = "mismatch"
    err = rep.get("error") or {}
    precision = rep.get("float32_precision") or {}
    relaxed = sorted({s for o in (rep.get("outputs") or {}).values() for s, r in o.items()
                      if r.get("float32_precision") is not None})
    if relaxed:
        parity = ("outputs, as accurate as Keras (float64 check: Keras "
                  f"{_fmt(max(precision['keras_vs_float64'].values()))} from exact, ports "
                  f"<= {_fmt(max(e for st in relaxed for e in precision['stage_vs_float64'][st].values()))})")
    elif not rep.get("warnings"):
        parity = "outputs"
    elif per_layer and per_layer["status"] != "unavailable":
        parity = "outputs (degenerate) + per-layer"
    else:
        parity = "outputs (degenerate; per-layer comparison unavailable)"
    return {
        "name": m.name, "model": m.model, "status": status, "parity": parity if rep.get("max_abs_err") else None,
        "max_abs_err": rep.get("max_abs_err", {}), "max_rel_err": rep.get("max_rel_err", {}),
        "transposes": rep.get("transposes"), "transposes_torch": rep.get("transposes_torch"),
        "params": rec.get("params"), "stages": rep.get("stages", {}),
        "seconds": rec.get("seconds"), "peak_rss_mb": rec.get("peak_rss_mb"),
        "warnings": rep.get("warnings", []), "per_layer": per_layer, "float32_precision": precision or None,
        "error": ({"stage": err.get("stage"), "kind": err.get("kind"), "signal": err.get("signal"),
                   "limit": err.get("limit"), "node": err.get("node"), "op_type": err.get("op_type"),
                   "layer": err.get("layer"),
                   "first_line": (err.get("message") or "").strip().splitlines()[0] if err.get("message") else ""}
                  if err else None),
        "report": str(mdir.report),
    }


def summarize(zoo: Zoo, out: Path, fps: dict) -> dict:
    rows = [_row(m, out, fps[m.name]) for m in zoo.models]
    counts: dict = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"config": str(zoo.config), "out": str(out), "counts": counts, "total": len(rows),
            "versions": versions(), "models": rows,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _fmt(v, spec=".2g") -> str:
    if v is None:
        return ""
    return format(v, spec) if isinstance(v, float) else str(v)


def _cells(r: dict) -> list[str]:
    e = r.get("max_abs_err") or {}
    stages = r.get("stages") or {}
    st = [f"{stages[s]['seconds']:.1f} s / {stages[s]['peak_rss_mb']:.0f} MB" if s in stages else ""
          for s in STAGES]
    note = ""
    if r.get("error"):
        x = r["error"]
        where = ", ".join(f"{k} {x[k]}" for k in ("stage", "layer", "node", "op_type", "signal", "limit") if x.get(k))
        note = f"{where}: {x['first_line']}"
    elif (r.get("parity") or "").startswith("outputs, as accurate as Keras"):
        note = r["parity"]
    elif r.get("per_layer"):
        note = f"per-layer: {r['per_layer']['status']}"
    elif r.get("warnings"):
        note = r["warnings"][0]
    return [r["name"], r["status"], *[_fmt(e.get(s)) for s in STAGE_KEYS], _fmt(r.get("transposes")),
            _fmt(r.get("params")), *st, _fmt(r.get("seconds"), ".0f"), _fmt(r.get("peak_rss_mb"), ".0f"), note]


HEADER = ["model", "status", "err onnx_raw", "err onnx_nchw", "err onnx2torch", "err model.py", "err model.pt2",
          "transposes", "params",
          *[f"{s} (s / peak MB)" for s in STAGES], "total s", "peak MB (tree)", "note"]


def to_markdown(summary: dict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items()))
    lines = [f"# Zoo summary ({summary['total']} models: {counts})", "",
             "Max abs error per stage against Keras' outputs (logits); parity is judged per output "
             "against rtol·max|Keras| + atol (see each report).", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in summary["models"]:
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in _cells(r)) + " |")
    return "\n".join(lines) + "\n"


def to_html(summary: dict) -> str:
    colour = {"ok": "#d4f4d4", "mismatch": "#fde2b8", "failed": "#f8c8c8", "pending": "#eeeeee"}
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items()))
    rows = []
    for r in summary["models"]:
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r))
        rows.append(f'<tr style="background:{colour.get(r["status"], "#fff")}">{cells}</tr>')
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    return ("<!doctype html><meta charset=utf-8><title>Zoo summary</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #999;padding:3px 6px;text-align:left}</style>"
            f"<h1>Zoo summary</h1><p>{summary['total']} models: {html.escape(counts)}; updated {summary['updated']}</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>\n")


def write_summary(summary: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    for name, text in (("summary.md", to_markdown(summary)), ("summary.html", to_html(summary))):
        write_text(out / name, text)


# ---------------------------------------------------------------- progress

class Progress:
    """One status line: bar, done/total, ok/mismatch/failed/skipped, running models, ETA."""

    def __init__(self, total: int, jobs: int, stream=sys.stderr, enabled: bool = True):
        self.total, self.jobs, self.stream, self.enabled = total, jobs, stream, enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.counts = {"ok": 0, "mismatch": 0, "failed": 0, "skipped": 0}
        self.running: dict = {}
        self.durations: list = []
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def start(self, name: str) -> None:
        with self.lock:
            self.running[name] = time.monotonic()
            self._show(f"start {name}")

    def finish(self, name: str, status: str, seconds: float | None = None, skipped: str | None = None) -> None:
        """``skipped``: why the model was not run (then ``status`` is its recorded one)."""
        with self.lock:
            self.running.pop(name, None)
            self.counts["skipped" if skipped else status if status in self.counts else "failed"] += 1
            if seconds is not None and not skipped:
                self.durations.append(seconds)
            self._show(f"{name}: {f'skipped ({skipped}: {status})' if skipped else status}"
                       + (f" in {seconds:.0f} s" if seconds is not None and not skipped else ""))

    def _eta(self) -> str:
        left = self.total - self.done
        if not left:
            return "0s"
        if not self.durations:
            return "?"
        mean = sum(self.durations) / len(self.durations)
        now = time.monotonic()
        running_left = sum(max(0.0, mean - (now - t)) for t in self.running.values())
        queued = left - len(self.running)
        return _dur((running_left + queued * mean) / max(1, min(self.jobs, left)))

    def _show(self, event: str) -> None:
        if not self.enabled:   # one plain line per event, no status line
            self.stream.write(f"{event}\n")
            self.stream.flush()
            return
        width = 20
        fill = int(width * self.done / max(1, self.total))
        c = self.counts
        line = (f"zoo [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} ok {c['ok']} "
                f"mismatch {c['mismatch']} failed {c['failed']} skipped {c['skipped']} | running: "
                f"{', '.join(self.running) or '-'} | {_dur(time.monotonic() - self.t0)} ETA {self._eta()}")
        if self.tty:
            self.stream.write(f"\r\033[K{event}\n{line}")
        else:
            self.stream.write(f"{event}\n{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _dur(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# ---------------------------------------------------------------- executors

def default_jobs(zoo: Zoo, budget_mb: int) -> int:
    """Cores, bounded by how many default-sized memory limits fit in the budget."""
    if zoo.jobs > 0:
        return zoo.jobs
    limit = min(m.memory_limit_mb for m in zoo.models)
    return max(1, min(os.cpu_count() or 1, budget_mb // max(1, limit)))


class _MemoryBudget:
    """Admit a model only while the memory limits of the running ones fit the budget."""

    def __init__(self, total_mb: int):
        self.total, self.used = total_mb, 0
        self.cond = threading.Condition()

    def acquire(self, mb: int) -> int:
        mb = min(mb, self.total)   # a model larger than the budget runs alone
        with self.cond:
            self.cond.wait_for(lambda: self.used + mb <= self.total)
            self.used += mb
        return mb

    def release(self, mb: int) -> None:
        with self.cond:
            self.used -= mb
            self.cond.notify_all()


def _write_files(out: Path, result: dict) -> None:
    """Results of a remote worker land in the local OUT (the same files when OUT is shared)."""
    mdir = ModelDir.of(out, result["name"])
    mdir.root.mkdir(parents=True, exist_ok=True)
    if "error.json" not in result["files"] and mdir.error.exists():
        mdir.error.unlink()
    for f, text in result["files"].items():
        write_text(mdir.root / f, text)


def run_zoo(zoo: Zoo, out: str | Path, *, jobs: int = 0, executor: str = "local", address: str | None = None,
            force: bool = False, retry_failed: bool = False, only: list | None = None,
            progress: bool = True) -> dict:
    """Convert every model of ``zoo`` that is not up to date; returns the summary."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    vers, source = versions(), _pipeline_source_hash()
    fps = {m.name: fingerprint(m, vers, source) for m in zoo.models}
    if only:
        missing = set(only) - {m.name for m in zoo.models}
        if missing:
            raise PipelineError("config", f"--only names {sorted(missing)} are not in {zoo.config}")
    budget = zoo.memory_budget_mb or int(psutil.virtual_memory().total / 2**20)
    jobs = jobs or default_jobs(zoo, budget)
    bar = Progress(len(zoo.models), jobs, enabled=progress)
    todo = []
    for m in zoo.models:
        rec = up_to_date(out, m.name, fps[m.name])
        selected = only is None or m.name in only
        if rec and not (selected and (force or (retry_failed and rec["status"] == "failed"))):
            bar.finish(m.name, rec["status"], skipped="up to date")
        elif not selected:
            bar.finish(m.name, "not run or out of date", skipped="not in --only")
        else:
            todo.append(m)
    lock = threading.Lock()

    def done(result: dict) -> None:
        if result["record"]["status"] == "cancelled":
            return
        with lock:
            write_summary(summarize(zoo, out, fps), out)
        rec = result["record"]
        bar.finish(rec["name"], rec["status"], rec["seconds"])

    jobs_of = {m.name: {**m.__dict__, "flags": list(m.flags), "out": str(out), "config": str(zoo.config),
                        "fingerprint": fps[m.name]} for m in todo}
    write_summary(summarize(zoo, out, fps), out)
    if executor == "ray":
        _run_ray(todo, jobs_of, jobs, address, bar, out, done)
    else:
        mem = _MemoryBudget(budget)

        def work(m: ZooModel) -> None:
            mb = mem.acquire(m.memory_limit_mb)
            try:
                if not _CANCEL.is_set():
                    bar.start(m.name)
                    done(run_one(jobs_of[m.name]))
            finally:
                mem.release(mb)

        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(work, m) for m in todo]
            try:
                for f in futures:
                    f.result()
            except KeyboardInterrupt:
                _CANCEL.set()   # running workers are killed within POLL_S; queued ones never start
                pool.shutdown(wait=True, cancel_futures=True)
                write_summary(summarize(zoo, out, fps), out)
                raise
    bar.close()
    summary = summarize(zoo, out, fps)
    write_summary(summary, out)
    return summary


def _run_ray(todo, jobs_of, jobs, address, bar, out, done) -> None:
    """Same worker command as the local executor, one Ray task per model."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"py_modules": [str(Path(pipeline.__file__).resolve().parent)]})
    try:
        mem_total = ray.cluster_resources().get("memory", float("inf"))
        task = ray.remote(max_retries=0)(run_one)
        pending, inflight = list(todo), {}
        while pending or inflight:
            while pending and len(inflight) < jobs:
                m = pending.pop(0)
                ref = task.options(num_cpus=1, memory=min(m.memory_limit_mb * 2**20, mem_total)).remote(jobs_of[m.name])
                inflight[ref] = m
                bar.start(m.name)
            try:
                ready, _ = ray.wait(list(inflight), num_returns=1)
            except KeyboardInterrupt:
                for ref in inflight:   # kills the Ray workers; their convert trees end with their stage
                    ray.cancel(ref, force=True)
                raise
            m = inflight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except (ray.exceptions.RayError, OSError) as e:   # the task itself died (node lost, Ray OOM kill)
                result = _lost(out, m, jobs_of[m.name], e)
            _write_files(out, result)
            done(result)
    finally:
        if started_here:
            ray.shutdown()


def _lost(out: Path, m: ZooModel, job: dict, e: Exception) -> dict:
    from pipeline.core import report

    mdir = ModelDir.of(out, m.name)
    mdir.root.mkdir(parents=True, exist_ok=True)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    write_json(mdir.error, {"stage": "worker", "model": m.name, "kind": "ray",
                            "message": f"the Ray task died: {type(e).__name__}: {first}", "detail": str(e)})
    rep = report.write(mdir)
    rec = {"model": m.model, "name": m.name, "fingerprint": job["fingerprint"], "status": rep["status"],
           "exit_code": None, "seconds": None, "peak_rss_mb": None, "killed": None, "params": None}
    write_json(mdir.root / "zoo.json", rec)
    return {"name": m.name, "record": rec, "files": {}}


def main(args) -> int:
    """``python -m pipeline zoo``: 0 when every model is ok, 1 otherwise."""
    zoo = load_zoo(args.config)
    summary = run_zoo(zoo, args.out, jobs=args.jobs or 0, executor=args.executor, address=args.address,
                      force=args.force, retry_failed=args.retry_failed,
                      only=[s for s in (args.only or "").split(",") if s] or None, progress=not args.no_progress)
    out = Path(args.out)
    print(to_markdown(summary))
    print(f"summary: {out / 'summary.json'}, {out / 'summary.md'}, {out / 'summary.html'}")
    return 0 if summary["counts"].get("ok", 0) == summary["total"] else 1
