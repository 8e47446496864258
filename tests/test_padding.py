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


# ---- the ONNX forms themselves (auto_pad, asymmetric pads) against onnxruntime -------------
# tf2onnx writes Keras' "same" as explicit pads; ONNX files from elsewhere use auto_pad.
SPATIAL = {1: [9], 2: [9, 8], 3: [5, 6, 7]}


def _onnx_model(op: str, rank: int, attrs: dict):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(rank)
    c_in, c_out = 3, 4
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c_in, *SPATIAL[rank]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits, inputs = [], ["x"]
    k = [3] * rank
    if op in ("Conv", "ConvTranspose"):
        shape = [c_out, c_in, *k] if op == "Conv" else [c_in, c_out, *k]
        inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "w"),
                 numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b")]
        inputs += ["w", "b"]
    else:
        attrs = {"kernel_shape": k, **attrs}
    node = helper.make_node(op, inputs, ["y"], name=f"functional_1/{op.lower()}_1/{op}", **attrs)
    graph = helper.make_graph([node], "g", [x], [y], initializer=inits)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


FORMS = {"same_upper": "SAME_UPPER", "same_lower": "SAME_LOWER", "asymmetric": None}


@pytest.mark.parametrize("rank", [1, 2, 3], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("op", ["Conv", "ConvTranspose", "MaxPool", "AveragePool"])
def test_onnx_padding_attribute_matches_onnxruntime(tmp_path, op, form, rank):
    import numpy as np
    import onnxruntime as ort
    import torch
    from safetensors.numpy import save_file

    from pipeline import codegen

    attrs = {"strides": [2] * rank}
    if form.startswith("same"):
        attrs["auto_pad"] = FORMS[form]
    else:
        attrs["pads"] = [0] * rank + [1] * rank   # nothing at the start, one at the end
    model = _onnx_model(op, rank, attrs)
    gen = codegen.generate(model, "pads")
    (tmp_path / "model.py").write_text(gen.source)
    save_file({k: np.ascontiguousarray(v) for k, v in gen.state.items()}, str(tmp_path / "model.safetensors"))
    module = codegen.load_generated(tmp_path / "model.py")
    x = np.random.default_rng(0).standard_normal((2, 3, *SPATIAL[rank])).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
