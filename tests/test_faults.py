"""Faults: a run killed in the middle of a stage, a stage process that crashes or runs out
of time, two runs on the same OUT. Timing is made deterministic with the test hook
``PIPELINE_TEST_SLEEP_IN=<stage>:<seconds>`` (pipeline/core/artifacts.py): the stage sleeps with
its files written to its temporary folder, before they move into place."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ENV, REPO, report

MODEL = "tests/models.py:conv1d_flatten_dense"
NAME = "conv1d_flatten_dense"


def start(*args, hook: str | None = None) -> subprocess.Popen:
    env = {**ENV, **({"PIPELINE_TEST_SLEEP_IN": hook} if hook else {})}
    return subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(*args, hook: str | None = None, timeout=900) -> subprocess.CompletedProcess:
    p = start(*args, hook=hook)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def wait_for_tmp(mdir: Path, stage: str, proc: subprocess.Popen, timeout=600) -> Path:
    """The temporary folder of ``stage`` once its files are all written (the hook's sleep)."""
    done = {"export": "meta.json", "rewrite": "rewrite.json", "import": "import.json", "compare": "compare.json"}[stage]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        tmps = [p for p in mdir.glob(f".{stage}.tmp-*") if (p / done).exists()] if mdir.exists() else []
        if tmps:
            return tmps[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"no complete .{stage}.tmp-* folder after {timeout} s")


def tree_hash(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(d)).encode() + p.read_bytes())
    return h.hexdigest()


def gone(pid: int, timeout=30) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def leftovers(out: Path) -> list[str]:
    return [str(p) for p in Path(out).rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def test_sigkill_mid_stage_keeps_previous_results_and_resumes(tmp_path):
    mdir = tmp_path / NAME
    first = run("convert", "--model", MODEL, "--out", tmp_path, "--seed", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {s: tree_hash(mdir / s) for s in ("import", "compare")}

    # a second run with other settings, SIGKILLed while the import stage is writing
    proc = start("convert", "--model", MODEL, "--out", tmp_path, "--seed", "2", hook="import:300")
    tmp = wait_for_tmp(mdir, "import", proc)
    child = int(tmp.name.rsplit("-", 1)[1])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert gone(child), "the stage process outlived the killed run"
    # the previous import and compare results are intact; export and rewrite are the new ones
    assert {s: tree_hash(mdir / s) for s in ("import", "compare")} == before
    for s in ("export", "rewrite"):
        assert (mdir / s / "fingerprint.json").is_file()
    assert json.loads((mdir / "export" / "meta.json").read_text())["settings"]["seed"] == 2

    # the re-run resumes from the last complete stage
    again = run("convert", "--model", MODEL, "--out", tmp_path, "--seed", "2")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    out = again.stdout
    assert f"== {NAME}: export (up to date, skipped)" in out and f"== {NAME}: rewrite (up to date, skipped)" in out
    assert f"== {NAME}: import\n" in out and f"== {NAME}: compare\n" in out
    assert f"removed .import.tmp-{child}" in out
    assert not leftovers(tmp_path)
    assert tree_hash(mdir / "import") != before["import"]
    rep = report(tmp_path, NAME)
    assert rep["status"] == "ok" and rep["settings"]["seed"] == 2
    # a third run has nothing to do; --force re-runs a stage
    third = run("convert", "--model", MODEL, "--out", tmp_path, "--seed", "2")
    assert third.returncode == 0 and third.stdout.count("(up to date, skipped)") == 4, third.stdout
    # a stage folder changed behind convert's back is not trusted
    (mdir / "compare" / "compare.json").write_text((mdir / "compare" / "compare.json").read_text() + " ")
    fourth = run("convert", "--model", MODEL, "--out", tmp_path, "--seed", "2")
    assert fourth.returncode == 0 and fourth.stdout.count("(up to date, skipped)") == 3, fourth.stdout


def test_stage_killed_by_signal_or_time_limit_is_recorded(tmp_path):
    mdir = tmp_path / NAME
    # the rewrite process crashes (SIGKILL from outside, as the OOM killer does)
    proc = start("convert", "--model", MODEL, "--out", tmp_path, hook="rewrite:300")
    tmp = wait_for_tmp(mdir, "rewrite", proc)
    os.kill(int(tmp.name.rsplit("-", 1)[1]), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    assert "the rewrite process was killed by signal SIGKILL" in err and "Traceback" not in err
    rep = report(tmp_path, NAME)
    assert rep["status"] == "failed"
    assert rep["error"]["stage"] == "rewrite" and rep["error"]["signal"] == "SIGKILL", rep["error"]
    assert (mdir / "export" / "raw.onnx").is_file() and not (mdir / "rewrite").exists()
    assert not leftovers(tmp_path)

    # the rewrite process runs past --stage-timeout; export is not redone
    timed = run("convert", "--model", MODEL, "--out", tmp_path, "--stage-timeout", "10", hook="rewrite:300")
    assert timed.returncode == 2, timed.stdout + timed.stderr
    assert f"== {NAME}: export (up to date, skipped)" in timed.stdout
    assert "the rewrite process exceeded its time limit of 10 s and was killed" in timed.stderr
    err = report(tmp_path, NAME)["error"]
    assert err["kind"] == "timeout" and err["limit"] == {"seconds": 10.0} and err["signal"] == "SIGKILL", err
    assert not (mdir / "rewrite").exists() and not leftovers(tmp_path)


def test_concurrent_runs_on_one_out_wait_for_each_other(tmp_path):
    a = start("convert", "--model", MODEL, "--out", tmp_path, hook="export:5")
    wait_for_tmp(tmp_path / NAME, "export", a)        # A holds the lock and is mid-export
    b = start("convert", "--model", MODEL, "--out", tmp_path)
    out_b, err_b = b.communicate(timeout=900)
    out_a, err_a = a.communicate(timeout=900)
    assert a.returncode == 0, out_a + err_a
    assert b.returncode == 0, out_b + err_b
    assert "waiting for another run on" in err_b
    assert out_b.count("(up to date, skipped)") == 4, out_b   # B found A's complete results
    assert report(tmp_path, NAME)["status"] == "ok"
    assert not leftovers(tmp_path)
    # a stage run alone also takes the lock (and here finds it free)
    alone = run("compare", "--model", MODEL, "--out", tmp_path)
    assert alone.returncode == 0, alone.stderr[-2000:]
