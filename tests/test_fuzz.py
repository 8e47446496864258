"""Fuzz, bounded in count and time: random truncations and byte flips of valid ``.keras``,
``.h5`` and ``raw.onnx`` files. Each run must end in success or a clean error (exit 0 or
2, a one-line ``error: [...]``), never an internal error (3), a traceback, a signal or a
hang, and must leave no temporary folder behind.

``.keras``/``.h5`` inputs go through the export stage (the load path), ``raw.onnx`` inputs
through the rewrite stage. ``FUZZ_COUNT`` (inputs per kind for the ONNX kind, half that for
each Keras kind; default 16) and ``FUZZ_SECONDS`` (default 300) scale the budget;
``FUZZ_SEED`` picks the mutations. The number of inputs tried is printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ENV, REPO, cli

COUNT = int(os.environ.get("FUZZ_COUNT", "16"))
SECONDS = float(os.environ.get("FUZZ_SECONDS", "300"))
SEED = int(os.environ.get("FUZZ_SEED", "8"))
PER_INPUT_TIMEOUT = 120


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """A truncation or 1-16 byte flips, described."""
    if rng.random() < 0.4:
        n = int(rng.integers(1, len(data)))
        return f"truncated to {n} of {len(data)} bytes", data[:n]
    buf = bytearray(data)
    k = int(rng.integers(1, 17))
    where = rng.integers(0, len(buf), size=k)
    for i in where:
        buf[int(i)] ^= int(rng.integers(1, 256))
    return f"{k} byte(s) flipped at {sorted(int(i) for i in where)[:4]}...", bytes(buf)


def run_case(args: list) -> tuple[int | None, str]:
    try:
        p = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=PER_INPUT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"hang: no exit within {PER_INPUT_TIMEOUT} s"
    return p.returncode, p.stdout[-1500:] + p.stderr[-3000:]


def check(rc, text: str, out: Path, what: str, failures: list) -> None:
    left = [str(p) for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    if rc not in (0, 2) or "Traceback" in text or "internal error" in text or left:
        failures.append(f"{what}: exit {rc}, left {left}\n{text}")
    elif rc == 2 and "error: [" not in text:
        failures.append(f"{what}: exit 2 without a clean error line\n{text}")


@pytest.fixture(scope="module")
def valid_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz_valid")
    proc = cli("export", "--model", "tests/models.py:conv1d_flatten_dense", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "conv1d_flatten_dense" / "export"


def _budget_left(t0: float) -> bool:
    return time.monotonic() - t0 < SECONDS


def test_fuzz_model_files_and_onnx(tmp_path, bad_files, valid_export):
    rng = np.random.default_rng(SEED)
    t0, tried, failures, outcomes = time.monotonic(), {}, [], {0: 0, 2: 0}
    plan = [("keras", max(1, COUNT // 2)), ("h5", max(1, COUNT // 2)), ("onnx", COUNT)]
    for kind, n in plan:
        source = (valid_export / "raw.onnx") if kind == "onnx" else (bad_files / f"valid.{kind}")
        data = source.read_bytes()
        for i in range(n):
            if not _budget_left(t0):
                break
            how, mutated = mutate(data, rng)
            out = tmp_path / f"{kind}-{i}"
            if kind == "onnx":
                shutil.copytree(valid_export, out / "fuzzed" / "export")
                (out / "fuzzed" / "export" / "raw.onnx").write_bytes(mutated)
                args = ["rewrite", "--model", "tests/models.py:conv1d_flatten_dense", "--name", "fuzzed", "--out", out]
            else:
                out.mkdir()
                f = out / f"fuzzed.{kind}"
                f.write_bytes(mutated)
                args = ["export", "--model", f, "--out", out / "artifacts"]
            rc, text = run_case(args)
            check(rc, text, out, f"{kind} #{i} ({how})", failures)
            tried[kind] = tried.get(kind, 0) + 1
            outcomes[rc] = outcomes.get(rc, 0) + 1
            shutil.rmtree(out, ignore_errors=True)
    total = sum(tried.values())
    print(f"\nfuzz: {total} inputs tried {tried} in {time.monotonic() - t0:.0f} s (seed {SEED}); "
          f"outcomes by exit status {outcomes}; {len(failures)} unclean")
    assert not failures, "\n\n".join(failures[:5])
    assert total == sum(n for _, n in plan), f"the time budget of {SECONDS} s ran out after {total} inputs"
