"""Each stage folder is written by its stage only: ``debug`` keeps Keras' per-layer outputs in
``<model>/layers/`` and its results in ``<model>/debug/``, so ``convert``, ``debug``,
``convert`` re-runs nothing the second time. ``debug`` holds the model lock as ``convert``
does, and TensorFlow's start-up lines show only with ``--verbose``."""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ENV, REPO, cli

MODEL = "tests/debug_models.py:concat_channels"
NAME = "concat_channels"
STAGES = ("export", "rewrite", "import", "compare")
TF_START_UP = ("absl::InitializeLog", "oneDNN custom operations", "cudart_stub")


def files(folder: Path) -> dict:
    """{relative path: (mtime_ns, sha256)} of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stage_files(mdir: Path) -> dict:
    return {s: files(mdir / s) for s in STAGES}


def ran(stdout: str) -> list[str]:
    """The stages a convert or debug run started (``== model: stage`` with nothing after it)."""
    return re.findall(rf"^== {NAME}: (\w+)$", stdout, flags=re.M)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted")
    proc = cli("convert", "--model", MODEL, "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ran(proc.stdout) == list(STAGES)
    for line in TF_START_UP:   # TensorFlow's own lines stay off the console without --verbose
        assert line not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return out


def test_convert_debug_convert_reruns_nothing(converted, tmp_path):
    shutil.copytree(converted / NAME, tmp_path / NAME)
    mdir = tmp_path / NAME
    before = stage_files(mdir)

    proc = cli("debug", "--model", MODEL, "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ran(proc.stdout) == [], proc.stdout          # every stage up to date: debug ran none
    for s in STAGES:
        assert f"== {NAME}: {s} (up to date, skipped)" in proc.stdout
    assert "recording Keras layer outputs" in proc.stdout
    assert stage_files(mdir) == before, "debug wrote into a stage folder"
    assert sorted(files(mdir / "layers")) == ["layers.json", "layers.npz"]
    assert sorted(files(mdir / "debug")) == ["debug.json", "report.html"]
    assert json.loads((mdir / "debug" / "debug.json").read_text())["status"] == "ok"
    after_debug = {d: files(mdir / d) for d in ("layers", "debug")}

    proc = cli("convert", "--model", MODEL, "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ran(proc.stdout) == [], proc.stdout
    for s in STAGES:
        assert f"== {NAME}: {s} (up to date, skipped)" in proc.stdout
    assert stage_files(mdir) == before
    assert {d: files(mdir / d) for d in ("layers", "debug")} == after_debug, "convert touched layers/ or debug/"

    # debug again: the recorded layers belong to this export, nothing is recorded or run again
    proc = cli("debug", "--model", MODEL, "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ran(proc.stdout) == [] and "recording Keras layer outputs" not in proc.stdout, proc.stdout
    assert files(mdir / "layers") == after_debug["layers"]


def test_layers_of_another_export_are_recorded_again(converted, tmp_path):
    """``layers/layers.json`` names the export it was recorded for; for another, debug (with
    ``--verbose``, which its processes inherit: TF's lines show) records them again."""
    shutil.copytree(converted / NAME, tmp_path / NAME)
    mdir = tmp_path / NAME
    assert cli("export", "--layers-only", "--model", MODEL, "--out", tmp_path).returncode == 0
    info = json.loads((mdir / "layers" / "layers.json").read_text())
    (mdir / "layers" / "layers.json").write_text(json.dumps({**info, "export": "an earlier export"}))

    proc = cli("compare", "--per-layer", "--model", MODEL, "--out", tmp_path)
    assert proc.returncode == 2 and "was recorded for an earlier export" in proc.stderr, proc.stderr[-2000:]
    assert "--layers-only" in proc.stderr

    proc = cli("debug", "--verbose", "--model", MODEL, "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "recording Keras layer outputs" in proc.stdout
    assert json.loads((mdir / "layers" / "layers.json").read_text())["export"] == info["export"]
    assert any(line in proc.stderr for line in TF_START_UP), proc.stderr[-2000:]


def test_debug_waits_for_the_model_lock(converted, tmp_path):
    """A second run on the model waits while debug holds the lock; debug's own stage
    processes do not (they inherit it)."""
    shutil.copytree(converted / NAME, tmp_path / NAME)
    lock = tmp_path / f".{NAME}.lock"
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "debug", "--model", MODEL, "--out", str(tmp_path)],
                                cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
        reader.start()
        t0 = time.monotonic()
        while not any("waiting for another run" in line for line in err) and time.monotonic() - t0 < 60:
            assert proc.poll() is None, "".join(err)
            time.sleep(0.2)
        assert any("waiting for another run" in line for line in err), "".join(err)
        assert not (tmp_path / NAME / "layers").exists() and not (tmp_path / NAME / "debug").exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    out = proc.stdout.read()
    assert proc.wait(timeout=600) == 0, out[-3000:] + "".join(err)[-3000:]
    assert (tmp_path / NAME / "debug" / "debug.json").is_file()
