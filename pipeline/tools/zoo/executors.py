"""Where the zoo's workers run: a local pool within a memory budget, or Ray tasks.

Both run ``worker.run_one`` per model and call ``done(result)`` as each one finishes.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from pathlib import Path

import pipeline
from pipeline.core.artifacts import ModelDir, write_json, write_text
from pipeline.tools.zoo.config import Zoo, ZooModel
from pipeline.tools.zoo.worker import CANCEL, run_one


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


def run_local(todo: list, jobs_of: dict, jobs: int, budget_mb: int, bar, done, on_interrupt) -> None:
    """``jobs`` worker threads, each model admitted while the memory limits fit ``budget_mb``.
    On Ctrl-C the running workers are killed, queued ones never start, ``on_interrupt()`` runs
    and the interrupt goes on."""
    mem = _MemoryBudget(budget_mb)

    def work(m: ZooModel) -> None:
        mb = mem.acquire(m.memory_limit_mb)
        try:
            if not CANCEL.is_set():
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
            CANCEL.set()   # running workers are killed within POLL_S; queued ones never start
            pool.shutdown(wait=True, cancel_futures=True)
            on_interrupt()
            raise


def run_ray(todo, jobs_of, jobs, address, bar, out, done) -> None:
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
    from pipeline.stages import report

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
