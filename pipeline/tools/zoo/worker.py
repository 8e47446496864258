"""One model of the zoo: ``convert`` in a worker process of its own, watched.

The worker runs in a new session, so that its whole process tree can be killed; it is
watched for a wall-clock limit and for the summed RSS of that tree. A crash, an
out-of-memory kill or a timeout becomes that model's ``error.json``/``report.json`` (with
the signal or the limit, and the stage ``convert`` had started: ``runstate.started_stage``).
The worker's output goes to ``OUT/<model>/zoo.log``.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

import pipeline
from pipeline.core import runstate
from pipeline.core.artifacts import ModelDir, read_json, write_json

POLL_S = 0.2
# set on Ctrl-C: running workers are killed and nothing is recorded for them (redone next time)
CANCEL = threading.Event()


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


def run_one(job: dict) -> dict:
    """Convert one model in a watched worker process; returns its record and result files.

    ``job``: ``ZooModel`` fields plus ``out``, ``config``, ``fingerprint``. Never raises for
    a failure of the model: a crash, a limit or a bad spec is written as its ``error.json``.
    """
    from pipeline.stages import report

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
    peak, killed = 0, None
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
                if CANCEL.is_set():
                    killed = {"kind": "cancelled"}
                if killed:
                    _kill_tree(popen)
                    break
                time.sleep(POLL_S)
            rc = popen.wait()
            reader.join(timeout=5)
    seconds = time.monotonic() - t0
    stage = runstate.started_stage(mdir) or "export"   # where convert was when it ended
    if killed and killed["kind"] == "cancelled":
        return {"name": name, "record": {"name": name, "status": "cancelled", "seconds": seconds}, "files": {}}
    if killed:
        write_json(mdir.error, {"stage": stage, "model": name, "signal": "SIGKILL", **killed,
                                "message": killed["message"]})
    elif rc is not None and rc < 0:
        write_json(mdir.error, {"stage": stage, "model": name, "kind": "crash", "signal": signal.Signals(-rc).name,
                                "message": f"the worker was killed by signal {signal.Signals(-rc).name}"})
    elif rc not in (None, 0, 1) and not mdir.error.exists():
        tail = (mdir.root / "zoo.log").read_text().strip().splitlines()[-20:]
        write_json(mdir.error, {"stage": stage, "model": name, "kind": "exit",
                                "message": f"convert exited with status {rc}: " + (tail[-1] if tail else "no output"),
                                "log_tail": "\n".join(tail)})
    rep = report.write(mdir)
    per_layer = None
    if rep["status"] == "ok" and rep.get("degenerate"):   # parity on those outputs proves little
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
    """Degenerate outputs: judge parity per layer too (``compare --per-layer``)."""
    export_cmd = [*cmd[:3], "export", *cmd[4:], "--layers-only"]   # Keras' per-layer outputs first
    rec = subprocess.run(export_cmd, env=env, cwd=root, capture_output=True, text=True)
    proc = rec if rec.returncode else subprocess.run([*cmd, "--per-layer"], env=env, cwd=root,
                                                     capture_output=True, text=True)
    (mdir.root / "per_layer.log").write_text(rec.stdout + rec.stderr + proc.stdout + proc.stderr)
    # every layer's activations (GBs for the large models) were only needed for the comparison,
    # whose results stay in <model>/debug/; `make debug` records them again
    from pipeline.stages.export import layers as keras_layers

    shutil.rmtree(keras_layers.folder(mdir), ignore_errors=True)
    status = {0: "ok", 1: "mismatch"}.get(proc.returncode, "failed")
    return {"status": status, "exit_code": proc.returncode,
            "message": (proc.stdout + proc.stderr).strip().splitlines()[-1] if (proc.stdout + proc.stderr).strip()
            else ""}
