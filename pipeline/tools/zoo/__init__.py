"""Batch conversion of a model zoo: isolated, parallel, resumable, local or on Ray.

Each model runs ``python -m pipeline convert`` in a worker process of its own, watched for
a wall-clock limit and for the summed RSS of its process tree; a crash, an out-of-memory
kill or a timeout becomes that model's ``error.json``/``report.json`` and the batch goes
on. A model whose ``zoo.json`` fingerprint (model file or builder source, settings,
limits, package versions, conversion code) still matches is skipped unless ``--force``.
``summary.json``, ``summary.md`` and ``summary.html`` are rewritten after every model.

- ``config``       the zoo config: models, settings, limits (``load_zoo``)
- ``fingerprint``  when a model's record is still up to date
- ``worker``       one model: the watched ``convert`` worker (``run_one``)
- ``executors``    a local pool within a memory budget, or Ray tasks
- ``summary``      rows, Markdown and HTML tables
- ``progress``     the status line
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil

from pipeline.core import runstate
from pipeline.core.errors import PipelineError
from pipeline.tools.zoo.config import MODEL_FLAGS, ZOO_DEFAULTS, Zoo, ZooModel, load_zoo
from pipeline.tools.zoo.executors import default_jobs, run_local, run_ray
from pipeline.tools.zoo.fingerprint import fingerprint, up_to_date
from pipeline.tools.zoo.progress import Progress
from pipeline.tools.zoo.summary import summarize, to_html, to_markdown, write_summary
from pipeline.tools.zoo.worker import run_one

__all__ = ["MODEL_FLAGS", "ZOO_DEFAULTS", "Zoo", "ZooModel", "fingerprint", "load_zoo", "main", "run_one", "run_zoo",
           "summarize", "to_html", "to_markdown", "up_to_date"]


def run_zoo(zoo: Zoo, out: str | Path, *, jobs: int = 0, executor: str = "local", address: str | None = None,
            force: bool = False, retry_failed: bool = False, only: list | None = None,
            progress: bool = True) -> dict:
    """Convert every model of ``zoo`` that is not up to date; returns the summary."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    vers, code = runstate.versions(), runstate.code_hash()
    fps = {m.name: fingerprint(m, vers, code) for m in zoo.models}
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
        run_ray(todo, jobs_of, jobs, address, bar, out, done)
    else:
        run_local(todo, jobs_of, jobs, budget, bar, done,
                  on_interrupt=lambda: write_summary(summarize(zoo, out, fps), out))
    bar.close()
    summary = summarize(zoo, out, fps)
    write_summary(summary, out)
    return summary


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
