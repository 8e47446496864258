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

MODELS = {
    "conv1d_flatten_dense": f'model = "{REPO}/tests/models.py:conv1d_flatten_dense"',
    "conv2d_flatten_dense": f'model = "{REPO}/tests/models.py:conv2d_flatten_dense"',
    "crash": f'model = "{REPO}/tests/zoo_models.py:crash"',
    "sleep": f'model = "{REPO}/tests/zoo_models.py:sleep"\ntime_limit_s = 20',
    "memory_hog": f'model = "{REPO}/tests/zoo_models.py:memory_hog"\nmemory_limit_mb = 2500',
    "missing": 'model = "/nonexistent/missing.keras"',
}
# the Ray run repeats the local one on fewer models: one good one and the two worker deaths
NAMES = {"local": list(MODELS), "ray": ["conv1d_flatten_dense", "crash", "sleep"]}


def zoo_config(names) -> str:
    head = f"seed = 0\nrtol = {RTOL}\natol = {ATOL}\n\n[zoo]\ntime_limit_s = 300\nmemory_limit_mb = 4000\n"
    return head + "".join(f"\n[[models]]\n{MODELS[n]}\n" for n in names)


def zoo(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "pipeline", "zoo", "--no-progress", *map(str, args)], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def load(out):
    return {m["name"]: m for m in json.loads((out / "summary.json").read_text())["models"]}


def zoo_record(out, name):
    return json.loads((out / name / "zoo.json").read_text())


def check_first_run(proc, out, names):
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]   # not every model is ok
    rows = load(out)
    assert list(rows) == names
    for name in set(GOOD) & set(names):
        r = rows[name]
        assert r["status"] == "ok", r
        rep = json.loads((out / name / "report.json").read_text())
        for output, stages in rep["outputs"].items():
            for stage, c in stages.items():
                assert c["max_abs_err"] <= RTOL * c["scale"] + ATOL, (name, output, stage, c)
        assert r["params"] > 0 and set(r["stages"]) == {"export", "rewrite", "import", "compare"}
        assert r["peak_rss_mb"] > 0 and r["seconds"] > 0
    crash, sleep = rows["crash"], rows["sleep"]
    assert crash["status"] == "failed" and crash["error"]["signal"] == "SIGSEGV", crash
    assert crash["error"]["stage"] == "export" and crash["error"]["kind"] == "crash"
    assert sleep["status"] == "failed", sleep
    assert sleep["error"]["kind"] == "timeout" and sleep["error"]["limit"] == "time_limit_s=20", sleep
    assert sleep["error"]["signal"] == "SIGKILL" and sleep["error"]["stage"] == "export"
    assert 20 <= sleep["seconds"] < 60
    if "memory_hog" in rows:
        hog = rows["memory_hog"]
        assert hog["status"] == "failed" and hog["error"]["kind"] == "memory", hog
        assert hog["error"]["limit"] == "memory_limit_mb=2500" and hog["error"]["signal"] == "SIGKILL"
        assert hog["peak_rss_mb"] > 2500
    if "missing" in rows:   # a spec that does not resolve fails alone, without a worker
        miss = rows["missing"]
        assert miss["status"] == "failed" and miss["error"]["kind"] == "spec", miss
        assert "does not exist" in miss["error"]["first_line"]
    # the full error stays in the model's own report
    rep = json.loads((out / "sleep" / "report.json").read_text())
    assert "time limit exceeded" in rep["error"]["message"]
    md = (out / "summary.md").read_text()
    html = (out / "summary.html").read_text()
    for name in rows:
        assert f"| {name} |" in md and f"<td>{name}</td>" in html
    assert "time_limit_s=20" in md and "SIGSEGV" in html


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_zoo_isolates_failures_and_resumes(tmp_path, executor):
    config, out, names = tmp_path / "zoo.toml", tmp_path / "out", NAMES[executor]
    config.write_text(zoo_config(names))
    proc = zoo("--config", config, "--out", out, "--jobs", 2, "--executor", executor)
    check_first_run(proc, out, names)
    before = {n: zoo_record(out, n)["finished"] for n in load(out)}

    again = zoo("--config", config, "--out", out, "--jobs", 2, "--executor", executor)
    assert again.returncode == 1, again.stderr[-3000:]
    assert again.stderr.count("skipped (up to date") == len(names), again.stderr
    assert {n: zoo_record(out, n)["finished"] for n in before} == before
    assert load(out)["conv1d_flatten_dense"]["status"] == "ok"

    # --force redoes what it is given (the crash: cheap), and only that
    forced = zoo("--config", config, "--out", out, "--executor", executor, "--force", "--only", "crash")
    assert forced.returncode == 1, forced.stderr[-3000:]
    after = {n: zoo_record(out, n)["finished"] for n in before}
    assert after["crash"] != before["crash"]
    assert {n: t for n, t in after.items() if n != "crash"} == {n: t for n, t in before.items() if n != "crash"}
    assert load(out)["crash"]["error"]["signal"] == "SIGSEGV"
    assert load(out)[GOOD[0]]["status"] == "ok"


def test_fingerprint_follows_builder_settings_limits_and_versions(tmp_path):
    from pipeline.core import runstate
    from pipeline.tools import zoo as z

    builders = tmp_path / "b.py"
    builders.write_text("def m():\n    pass\n")
    cfg = tmp_path / "zoo.toml"
    cfg.write_text('[[models]]\nmodel = "b.py:m"\n')
    vers = runstate.versions()
    base = z.fingerprint(z.load_zoo(cfg).models[0], vers, "src")
    assert z.fingerprint(z.load_zoo(cfg).models[0], vers, "src") == base
    assert z.fingerprint(z.load_zoo(cfg).models[0], {**vers, "torch": "0"}, "src") != base
    assert z.fingerprint(z.load_zoo(cfg).models[0], vers, "other pipeline source") != base
    for text in ('[[models]]\nmodel = "b.py:m"\nrtol = 1e-3\n', 'seed = 3\n[[models]]\nmodel = "b.py:m"\n',
                 '[[models]]\nmodel = "b.py:m"\ntime_limit_s = 5\n', '[[models]]\nmodel = "b.py:m"\ninput_shape = "4,3"\n'):
        cfg.write_text(text)
        assert z.fingerprint(z.load_zoo(cfg).models[0], vers, "src") != base, text
    cfg.write_text('[[models]]\nmodel = "b.py:m"\n')
    builders.write_text("def m():\n    return 1\n")
    assert z.fingerprint(z.load_zoo(cfg).models[0], vers, "src") != base


def test_conversion_code_leaves_out_the_zoo_and_the_bench_only():
    """One definition of conversion code for the stage fingerprints and the zoo's."""
    from pipeline.core import runstate

    files = {str(f.relative_to(REPO / "pipeline")) for f in runstate.conversion_code()}
    assert not [f for f in files if f.startswith(("tools/zoo/", "tools/bench"))], files
    assert {"cli.py", "stages/export/__init__.py", "runners/keras_tf.py", "tools/debug/__init__.py"} <= files
    assert {"pipeline", "onnx", "torch", "tf2onnx"} <= set(runstate.versions())


def test_started_stage_is_read_back(tmp_path):
    """What the zoo reads when a worker dies: the stage ``convert`` started last."""
    from pipeline.core import runstate
    from pipeline.core.artifacts import ModelDir

    mdir = ModelDir.of(tmp_path, "m")
    assert runstate.started_stage(mdir) is None
    runstate.stage_started(mdir, "export")
    runstate.stage_started(mdir, "rewrite")
    assert runstate.started_stage(mdir) == "rewrite"
    assert [p.name for p in mdir.root.iterdir()] == ["run.json"]   # beside the stage folders, no temporary left
    (mdir.root / "run.json").write_text("{not json")
    assert runstate.started_stage(mdir) is None


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
