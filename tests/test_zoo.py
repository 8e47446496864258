"""Zoo batches: isolated workers (a crash, a timeout and a memory overrun are recorded and
the batch goes on), resumable (a re-run skips what is up to date, --force redoes it),
summary files, locally and on a local Ray instance that the test starts and stops."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ENV, REPO

RTOL, ATOL = 1e-5, 1e-7   # the pipeline's defaults; parity is max|d| <= RTOL*max|keras| + ATOL
GOOD = ("conv1d_flatten_dense", "conv2d_flatten_dense")

ZOO = f"""
seed = 0
rtol = {RTOL}
atol = {ATOL}

[zoo]
time_limit_s = 300
memory_limit_mb = 4000

[[models]]
model = "{REPO}/tests/models.py:conv1d_flatten_dense"

[[models]]
model = "{REPO}/tests/models.py:conv2d_flatten_dense"

[[models]]
model = "{REPO}/tests/zoo_models.py:crash"

[[models]]
model = "{REPO}/tests/zoo_models.py:sleep"
time_limit_s = 20

[[models]]
model = "{REPO}/tests/zoo_models.py:memory_hog"
memory_limit_mb = 2500
"""


def zoo(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "pipeline", "zoo", "--no-progress", *map(str, args)], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def load(out):
    return {m["name"]: m for m in json.loads((out / "summary.json").read_text())["models"]}


def zoo_record(out, name):
    return json.loads((out / name / "zoo.json").read_text())


@pytest.fixture()
def config(tmp_path):
    p = tmp_path / "zoo.toml"
    p.write_text(ZOO)
    return p


def check_first_run(proc, out):
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]   # not every model is ok
    rows = load(out)
    assert list(rows) == [*GOOD, "crash", "sleep", "memory_hog"]
    for name in GOOD:
        r = rows[name]
        assert r["status"] == "ok", r
        rep = json.loads((out / name / "report.json").read_text())
        for output, stages in rep["outputs"].items():
            for stage, c in stages.items():
                assert c["max_abs_err"] <= RTOL * c["scale"] + ATOL, (name, output, stage, c)
        assert r["params"] > 0 and set(r["stages"]) == {"export", "rewrite", "import", "compare"}
        assert r["peak_rss_mb"] > 0 and r["seconds"] > 0
    crash, sleep, hog = rows["crash"], rows["sleep"], rows["memory_hog"]
    assert crash["status"] == "failed" and crash["error"]["signal"] == "SIGSEGV", crash
    assert crash["error"]["stage"] == "export" and crash["error"]["kind"] == "crash"
    assert sleep["status"] == "failed", sleep
    assert sleep["error"]["kind"] == "timeout" and sleep["error"]["limit"] == "time_limit_s=20", sleep
    assert sleep["error"]["signal"] == "SIGKILL" and sleep["error"]["stage"] == "export"
    assert 20 <= sleep["seconds"] < 60
    assert hog["status"] == "failed" and hog["error"]["kind"] == "memory", hog
    assert hog["error"]["limit"] == "memory_limit_mb=2500" and hog["error"]["signal"] == "SIGKILL"
    # the full error stays in the model's own report
    rep = json.loads((out / "sleep" / "report.json").read_text())
    assert "time limit exceeded" in rep["error"]["message"]
    md = (out / "summary.md").read_text()
    html = (out / "summary.html").read_text()
    for name in rows:
        assert f"| {name} |" in md and f"<td>{name}</td>" in html
    assert "time_limit_s=20" in md and "SIGSEGV" in html


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_zoo_isolates_failures_and_resumes(tmp_path, config, executor):
    out = tmp_path / "out"
    proc = zoo("--config", config, "--out", out, "--jobs", 2, "--executor", executor)
    check_first_run(proc, out)
    before = {n: zoo_record(out, n)["finished"] for n in load(out)}

    again = zoo("--config", config, "--out", out, "--jobs", 2, "--executor", executor)
    assert again.returncode == 1, again.stderr[-3000:]
    assert again.stderr.count("skipped (up to date") == 5, again.stderr
    assert {n: zoo_record(out, n)["finished"] for n in before} == before
    assert load(out)["conv1d_flatten_dense"]["status"] == "ok"

    forced = zoo("--config", config, "--out", out, "--executor", executor, "--force", "--only", GOOD[0])
    assert forced.returncode == 1, forced.stderr[-3000:]
    after = {n: zoo_record(out, n)["finished"] for n in before}
    assert after[GOOD[0]] != before[GOOD[0]]
    assert {n: t for n, t in after.items() if n != GOOD[0]} == {n: t for n, t in before.items() if n != GOOD[0]}
    assert load(out)[GOOD[0]]["status"] == "ok"


def test_zoo_redoes_a_model_whose_builder_changed(tmp_path):
    builders = tmp_path / "b.py"
    builders.write_text((REPO / "tests" / "models.py").read_text())
    cfg = tmp_path / "zoo.toml"
    cfg.write_text('[[models]]\nmodel = "b.py:conv1d_flatten_dense"\n')
    out = tmp_path / "out"
    assert zoo("--config", cfg, "--out", out).returncode == 0
    first = zoo_record(out, "conv1d_flatten_dense")["fingerprint"]
    builders.write_text(builders.read_text() + "\n# changed\n")
    proc = zoo("--config", cfg, "--out", out)
    assert proc.returncode == 0 and "skipped" not in proc.stderr
    assert zoo_record(out, "conv1d_flatten_dense")["fingerprint"] != first


@pytest.mark.parametrize("text, fragment", [
    ("[[models]]\nname = 'x'\n", "has no model"),
    ("[[models]]\nmodel = 'keras.applications.MobileNet'\ncolour = 1\n", "unknown keys ['colour']"),
    ("[zoo]\nthreads = 2\n[[models]]\nmodel = 'keras.applications.MobileNet'\n", "unknown keys ['threads']"),
    ("[[models]]\nmodel = 'keras.applications.MobileNet'\n[[models]]\nmodel = 'keras.applications.MobileNet'\n",
     "used twice"),
    ("seed = 0\n", "lists no [[models]]"),
], ids=["no-model", "unknown-model-key", "unknown-zoo-key", "duplicate-name", "no-models"])
def test_zoo_config_errors(tmp_path, text, fragment):
    cfg = tmp_path / "zoo.toml"
    cfg.write_text(text)
    proc = zoo("--config", cfg, "--out", tmp_path / "out", timeout=120)
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
