"""Every padding form against Keras and onnxruntime: Keras "same" with a stride or an even
kernel (ONNX SAME_UPPER / asymmetric pads) for Conv, MaxPool, AveragePool (pads left out
of the count) and ConvTranspose, in 1-D, 2-D and 3-D. One model per rank, one output per
form; each output is checked on its own in every stage."""

from __future__ import annotations

import pytest

from builders_import import PADDING_FORMS
from conftest import cli, report

RTOL, ATOL = 1e-5, 1e-6   # max|d| <= RTOL * max|keras| + ATOL
STAGES = ("onnx_raw", "onnx_nchw", "torch_codegen", "torch_pt2")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("padding")
    reports = {}
    for n in (1, 2, 3):
        name = f"padding_{n}d"
        proc = cli("convert", "--model", f"tests/builders_import.py:{name}", "--out", out, "--atol", ATOL)
        assert proc.returncode in (0, 1), proc.stderr[-3000:]
        reports[name] = report(out, name)
    return reports


@pytest.mark.parametrize("rank", [1, 2, 3], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("form", PADDING_FORMS)
def test_padding_form_matches_keras(converted, rank, form):
    rep = converted[f"padding_{rank}d"]
    per_stage = rep["outputs"][form]
    for stage in STAGES:
        r = per_stage[stage]
        assert r["max_abs_err"] is not None and r["max_abs_err"] <= RTOL * r["scale"] + ATOL, (form, stage, r)
        assert r["scale"] > 1e-3, "the output is too small to prove anything"


def test_padding_models_need_no_onnx2torch(converted):
    """The generated module and pt2 carry every padding form (onnx2torch rejects some)."""
    for name, rep in converted.items():
        assert rep["status"] == "ok", (name, rep.get("error"), rep["max_abs_err"])
        assert rep["passed"]["torch_codegen"] and rep["passed"]["torch_pt2"], name
        assert rep["torch_files"] == {"model.py": True, "model.safetensors": True, "model.pt2": True}
