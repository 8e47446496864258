"""What makes runs safe to kill, resume and run side by side.

- ``model_lock``: one run at a time per model folder (``OUT/.<model>.lock``, ``flock``);
  a second run waits for the first and says so. ``convert`` holds it for its stage
  processes, which it tells through ``PIPELINE_LOCK_HELD``.
- ``clean_stale``: temporary stage folders left by a killed run are removed, and a stage
  folder a kill caught between its two renames is put back.
- ``fingerprint`` / ``up_to_date``: a stage is skipped by ``convert`` when its folder is
  complete, unchanged since it was written, and made from the same inputs, settings,
  package versions and conversion code. ``<stage>/fingerprint.json`` holds both hashes.
- ``versions``, ``code_hash``, ``sources_hash``: what a result depends on besides its
  settings, in one place for the stage fingerprints and the zoo's (``zoo.json``).
  Conversion code is every ``.py`` file of the pipeline package except the tools that only
  drive or time conversions (``NOT_CONVERSION_CODE``: tools/zoo, tools/bench). The debug
  tool counts: the zoo judges a model with degenerate outputs by ``compare --per-layer``,
  which is the debug tool; the runners count: their float64 twin of the Keras model
  decides compare's verdict after a strict mismatch.
- ``stage_started`` / ``started_stage``: ``<model>/run.json`` says which stage ``convert``
  started last, so that whoever watches it (the zoo) knows where a killed run was.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pipeline
from pipeline.core.artifacts import ModelDir, read_json, write_json
from pipeline.core.errors import PipelineError

LOCK_ENV = "PIPELINE_LOCK_HELD"
FINGERPRINT = "fingerprint.json"
RUN = "run.json"
# distributions whose versions change a conversion (looked up without importing them)
PACKAGES = ("tensorflow-cpu", "tensorflow", "keras", "tf-keras", "tf2onnx", "onnx", "onnx-ir", "onnxruntime",
            "onnx2torch", "torch", "numpy", "safetensors")
_CODE = Path(pipeline.__file__).resolve().parent   # the pipeline package
# folders of the package that change no conversion result: the batch runner and the benchmark
NOT_CONVERSION_CODE = (("tools", "zoo"), ("tools", "bench"))


@contextlib.contextmanager
def model_lock(mdir: ModelDir, wait_s: float = 3600.0):
    """Hold ``OUT/.<model>.lock``; yields False (and holds nothing) in a stage process whose
    ``convert`` holds it, True otherwise."""
    mdir.root.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(mdir)
    if os.environ.get(LOCK_ENV) == str(path.resolve()):
        yield False
        return
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another run on {mdir.root} to finish (lock {path})", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            while True:
                time.sleep(0.2)
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - t0 > wait_s:
                        raise PipelineError("convert", f"another run has held {path} for over {wait_s:.0f} s",
                                            model=mdir.root.name,
                                            hint="wait for it to finish, or stop it; the lock goes with its process")
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_env(mdir: ModelDir) -> dict:
    """The environment for stage processes of a run that holds the lock."""
    return {**os.environ, LOCK_ENV: str(lock_path(mdir).resolve())}


def lock_path(mdir: ModelDir) -> Path:
    """``OUT/.<model>.lock``: beside the model folder, so that the folder holds results only."""
    return mdir.root.parent / f".{mdir.root.name}.lock"


def clean_stale(mdir: ModelDir) -> list[str]:
    """Remove ``.<stage>.tmp-*`` folders; restore a ``<stage>`` whose swap was interrupted.

    Called with the lock held, so no live run owns these folders.
    """
    if not mdir.root.is_dir():
        return []
    done = []
    for p in sorted(mdir.root.iterdir()):
        name = p.name
        if not name.startswith(".") or ".old-" not in name and ".tmp-" not in name:
            continue
        stage = name[1:].split(".tmp-")[0].split(".old-")[0]
        final = mdir.root / stage
        if ".old-" in name and p.is_dir() and not final.exists():
            os.replace(p, final)   # killed between the two renames of atomic_dir: the old folder is whole
            done.append(f"restored {stage}")
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {name}")
        else:
            p.unlink(missing_ok=True)
            done.append(f"removed {name}")
    return done


def versions() -> dict:
    """The pipeline's version and those of the installed ``PACKAGES``."""
    out = {"pipeline": pipeline.__version__}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _hash_tree(paths, h=None, root: Path | None = None):
    h = h or hashlib.sha256()
    for p in paths:
        p = Path(p)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p] if p.exists() else []
        for q in files:
            if q.name == FINGERPRINT or q.name.startswith("."):
                continue
            h.update(str(q.relative_to(root or p.parent)).encode() + b"\0")
            with open(q, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0")
    return h


def conversion_code() -> list[Path]:
    """The ``.py`` files of the pipeline package that can change a result (module docstring)."""
    return [q for q in sorted(_CODE.rglob("*.py")) if q.relative_to(_CODE).parts[:2] not in NOT_CONVERSION_CODE]


def code_hash() -> str:
    """The hash of ``conversion_code()``: file names relative to the package, and contents."""
    return _hash_tree(conversion_code(), root=_CODE).hexdigest()


def source_files(spec) -> list[Path]:
    """The files a model spec reads: the model file or folder, or the builder's file."""
    if spec.kind == "zoo":
        return []
    if spec.kind == "builder":
        return [Path(spec.target.rpartition(":")[0])]
    return [Path(spec.target)]


def sources_hash(spec) -> str:
    """The hash of ``source_files(spec)`` (names and contents; a missing file hashes as none)."""
    return _hash_tree(source_files(spec)).hexdigest()


def fingerprint(stage: str, previous: str | None, spec, settings) -> str:
    """The hash of everything a stage's result depends on; ``previous`` is the outputs hash
    of the stage before it (None for export, which hashes the model's source instead)."""
    return hashlib.sha256(json.dumps(
        {"stage": stage, "previous": previous, "spec": spec.to_json(), "settings": settings.to_json(),
         "versions": versions(), "code": code_hash(), "sources": sources_hash(spec) if previous is None else None},
        sort_keys=True, default=str).encode()).hexdigest()


def outputs_hash(mdir: ModelDir, stage: str) -> str | None:
    d = mdir.stage(stage)
    return _hash_tree([d], root=d).hexdigest() if d.is_dir() else None


def record(mdir: ModelDir, stage: str, inputs: str) -> None:
    """After a stage completed: write its fingerprint (a kill before this re-runs the stage)."""
    write_json(mdir.stage(stage) / FINGERPRINT, {"inputs": inputs, "outputs": outputs_hash(mdir, stage)})


def up_to_date(mdir: ModelDir, stage: str, inputs: str) -> bool:
    f = mdir.stage(stage) / FINGERPRINT
    if not f.is_file():
        return False
    try:
        stored = read_json(f)
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return False
    return isinstance(stored, dict) and stored.get("inputs") == inputs and stored.get("outputs") == outputs_hash(mdir, stage)


def stage_started(mdir: ModelDir, stage: str) -> None:
    """``convert`` starts ``stage``: ``<model>/run.json`` {stage, started} (beside the stage
    folders, so that no stage fingerprint sees it)."""
    mdir.root.mkdir(parents=True, exist_ok=True)
    write_json(mdir.root / RUN, {"stage": stage, "started": datetime.datetime.now(datetime.timezone.utc)
                                 .isoformat(timespec="milliseconds")})


def started_stage(mdir: ModelDir) -> str | None:
    """The stage ``convert`` started last in ``mdir`` (None: no stage started, or no record)."""
    try:
        run = read_json(mdir.root / RUN)
    except (OSError, ValueError):
        return None
    return run.get("stage") if isinstance(run, dict) and isinstance(run.get("stage"), str) else None
