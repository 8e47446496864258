"""Where each stage reads and writes: ``<out>/<model>/<stage>/``, written atomically."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_model_name(name: str) -> str:
    """A model name is one path component: no separators, no ``..``, nothing absolute."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise PipelineError("config", f"model name {name!r} is not a safe folder name",
                            hint="use letters, digits, '_', '-' and '.' only")
    return name


@dataclass(frozen=True)
class ModelDir:
    """The folder of one model's artifacts."""

    root: Path

    @classmethod
    def of(cls, out: str | Path, name: str) -> "ModelDir":
        return cls(Path(out) / check_model_name(name))

    def stage(self, stage: str) -> Path:
        return self.root / stage

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def error(self) -> Path:
        return self.root / "error.json"

    def require(self, stage: str, *files: str) -> Path:
        """The folder of a finished stage; a clear error if it or a file in it is missing."""
        d = self.stage(stage)
        for f in files:
            if not (d / f).exists():
                raise PipelineError(stage, f"{d / f} is missing: run the {stage} stage first",
                                    hint=f"make {stage} MODEL=... (or make convert)")
        return d


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling folder; on success it replaces ``final`` in one rename.

    On an exception or a kill the previous ``final`` is left untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _test_pause(final.name)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _test_pause(stage: str) -> None:
    """Test hook: ``PIPELINE_TEST_SLEEP_IN=<stage>:<seconds>`` sleeps once the stage's files
    are written to its temporary folder and before they move into place, so that a test can
    kill a run in the middle of a stage at a known point."""
    hook = os.environ.get("PIPELINE_TEST_SLEEP_IN", "")
    name, _, seconds = hook.partition(":")
    if name == stage:
        time.sleep(float(seconds or 60))


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temporary path beside ``path`` (same suffix, so writers that append one, as
    ``np.savez`` does, keep it); on success it replaces ``path`` in one rename, so a reader
    never sees half a file and a failure leaves the previous one."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class StageClock:
    """Seconds and peak RSS of the current process, for ``stage.json``."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def record(self) -> dict:
        import resource

        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"seconds": round(time.perf_counter() - self.t0, 3), "peak_rss_mb": round(rss_kb / 1024, 1)}
