"""Shared test helpers. TensorFlow never runs in the pytest process: model files are
written by ``tests/save_models.py`` and conversions run through the CLI, one process per
stage, as users run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The tests run torch on the CPU only. Importing triton's native module (torch.compile and
# torch.export probe for it) crashed the whole pytest process once here with a segfault
# (see also DESIGN.md on triton); without triton, torch uses its CPU paths, as it would on
# a machine without it.
sys.modules.setdefault("triton", None)

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def cli(*args, timeout=900) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def port(out: Path, name: str):
    """The generated ``model.py`` of ``out/name`` with its weights, in eval mode."""
    from pipeline.core.artifacts import ModelDir
    from pipeline.runners import load_generated

    return load_generated(ModelDir.of(out, name))


def report(out: Path, name: str) -> dict:
    return json.loads((Path(out) / name / "report.json").read_text())


def assert_ok(proc, out, name, rtol=1e-5, atol=1e-7) -> dict:
    """The conversion exited 0 with status ok, and every output of every compared stage is
    within ``rtol * max|Keras| + atol`` (the pipeline's defaults), checked here again."""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rep = report(out, name)
    assert rep["status"] == "ok", rep
    for output, stages in rep["outputs"].items():
        for stage, r in stages.items():
            assert r["max_abs_err"] <= rtol * r["scale"] + atol, (output, stage, r)
    return rep


def _written_by(script: str, folder: Path) -> Path:
    """``folder``, filled by ``tests/<script> folder`` in a process of its own (TensorFlow)."""
    proc = subprocess.run([sys.executable, str(TESTS / script), str(folder)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> Path:
    """.keras, tf.keras .h5 and SavedModel files, written once per session."""
    return _written_by("save_models.py", tmp_path_factory.mktemp("model_files"))


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory) -> Path:
    """Valid, bad and untrusted model files from tests/bad_inputs.py, written once per session."""
    return _written_by("bad_inputs.py", tmp_path_factory.mktemp("bad_inputs"))
