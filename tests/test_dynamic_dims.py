"""Dims Keras leaves None stay free: export keeps them symbolic, model.py and model.pt2 take
any size, compare checks more shapes than the reference (issue 13, "Ports that keep their
shape"). Keras runs in the Keras runner's process of its own (never in the pytest process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_ok, cli
from pipeline.core.artifacts import ModelDir, read_json
from pipeline.core.config import Settings
from pipeline.core.reference import draw_inputs, inputs_for, output_to_keras
from pipeline.stages.compare import shapes

RTOL, ATOL = 1e-5, 1e-6   # max|d| <= RTOL * max|Keras| + ATOL


def _convert(out, builder, *flags):
    return assert_ok(cli("convert", "--model", f"tests/models.py:{builder}", "--out", out, *flags), out, builder)


@pytest.fixture(scope="module")
def conv1d(tmp_path_factory):
    out = tmp_path_factory.mktemp("dyn")
    return out, _convert(out, "unknown_length_conv1d")


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    out = tmp_path_factory.mktemp("dyn")
    return out, _convert(out, "free_size_unet")


def _check_ports_at(mdir: ModelDir, sizes: list[dict]):
    """model.py and model.pt2 against Keras (its runner) at each {input: full shape}."""
    from pipeline.runners import GeneratedRunner, KerasRunner, Pt2Runner

    meta = read_json(mdir.stage("export") / "meta.json")
    facts = read_json(mdir.stage("rewrite") / "rewrite.json")
    seen = []
    with KerasRunner(mdir, "pipeline.stages.compare:keras_model") as keras:
        for shape in sizes:
            feeds = draw_inputs([(i["name"], shape[i["name"]], np.dtype(i["dtype"])) for i in meta["inputs"]],
                                meta["input_vocab"], 0, 2)
            want = keras.infer(feeds)
            for port in (GeneratedRunner(mdir), Pt2Runner(mdir)):
                got = port.infer(inputs_for(facts, feeds))
                for k, v in want.items():
                    g = output_to_keras(facts, k, got[k])
                    assert g.shape == v.shape, (port.name, shape, k)
                    err, scale = float(np.max(np.abs(g - v))), float(np.max(np.abs(v)))
                    assert err <= RTOL * scale + ATOL, (port.name, shape, k, err, scale)
                seen.append((port.name, json.dumps(shape)))
    return seen


def test_unknown_length_stays_free_in_every_port(conv1d):
    out, rep = conv1d
    mdir = ModelDir.of(out, "unknown_length_conv1d")
    meta = read_json(mdir.stage("export") / "meta.json")
    x = meta["inputs"][0]
    assert x["shape"] == [None, None, 3] and x["free_dims"] == [1] and x["reference_shape"] == [None, 16, 3]
    assert x["fixed_dims"] == []
    imp = read_json(mdir.stage("import") / "import.json")
    assert imp["format"] == "pt2" and imp["dynamic_dims"] == {"x": {"1": "x_len"}} and imp["fixed_dims"] == []
    import onnx

    dims = onnx.load(str(mdir.stage("export") / "raw.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_param and not dims[1].dim_value   # symbolic in raw.onnx
    seen = _check_ports_at(mdir, [{"x": [None, n, 3]} for n in (7, 16, 100)])
    assert len(seen) == 6
    # the report: the reference and three more shapes; length 1 is below Conv1D's kernel: Keras rejects it
    by_label = {e.get("label"): e for e in rep["shapes"][1:]}
    assert set(by_label) == {"x=17x3", "x=1x3", "x=128x3"}
    assert "Keras rejects this shape" in by_label["x=1x3"]["skipped"]
    for lab in ("x=17x3", "x=128x3"):
        assert by_label[lab]["passed"]["torch_codegen"] and by_label[lab]["passed"]["torch_pt2"]
        for stage in ("torch_codegen", "torch_pt2"):
            for r in by_label[lab]["outputs"]["gmp"].values():
                assert r["max_abs_err"] <= RTOL * r["scale"] + ATOL
    assert rep["dims"]["free"] == {"x": [1]} and rep["dims"]["fixed"] == [] and rep["failed_shapes"] == {}


def test_free_size_image_model_matches_keras_at_odd_sizes(unet):
    out, rep = unet
    mdir = ModelDir.of(out, "free_size_unet")
    meta = read_json(mdir.stage("export") / "meta.json")
    assert meta["inputs"][0]["free_dims"] == [1, 2] and meta["inputs"][0]["reference_shape"] == [None, 32, 32, 3]
    imp = read_json(mdir.stage("import") / "import.json")
    assert imp["dynamic_dims"] == {"img": {"1": "img_height", "2": "img_width"}} and imp["fixed_dims"] == []
    labels = [e["label"] for e in rep["shapes"][1:]]
    assert labels == ["img=33x47x3", "img=64x64x3"]
    assert all(e["passed"]["torch_codegen"] and e["passed"]["torch_pt2"] for e in rep["shapes"][1:])
    # checked here again, and at sizes compare does not use (odd both ways, small, non-square)
    _check_ports_at(mdir, [{"img": [None, h, w, 3]} for h, w in ((32, 32), (33, 47), (64, 64), (17, 9))])
    # the segmentation map follows the input's size: a strided SAME pads by a size expression in model.py
    src = (mdir.stage("import") / "model.py").read_text()
    assert "pad_total" in src and ".shape[2]" in src


def test_reference_shape_sets_the_reference_size_and_the_dim_stays_free(tmp_path):
    rep = _convert(tmp_path, "unknown_length_conv1d", "--reference-shape", "24,3")
    mdir = ModelDir.of(tmp_path, "unknown_length_conv1d")
    x = read_json(mdir.stage("export") / "meta.json")["inputs"][0]
    assert x["reference_shape"] == [None, 24, 3] and x["free_dims"] == [1] and x["shape"] == [None, None, 3]
    with np.load(mdir.stage("export") / "reference.npz") as z:
        assert z["input:x"].shape == (2, 24, 3)
    assert [e["label"] for e in rep["shapes"]] == ["x=24x3", "x=25x3", "x=1x3", "x=192x3"]
    assert rep["shapes"][0]["inputs"] == {"x": [None, 24, 3]}


def test_input_shape_fixes_the_dim_for_good(tmp_path):
    rep = _convert(tmp_path, "unknown_length_conv1d", "--input-shape", "40,3")
    mdir = ModelDir.of(tmp_path, "unknown_length_conv1d")
    x = read_json(mdir.stage("export") / "meta.json")["inputs"][0]
    assert x["shape"] == [None, 40, 3] and x["free_dims"] == [] and x["reference_shape"] == [None, 40, 3]
    assert read_json(mdir.stage("import") / "import.json")["dynamic_dims"] == {}
    assert rep["shapes"] == [] and rep["dims"]["free"] == {}


def test_a_size_the_graph_pins_is_fixed_in_pt2_with_the_reason(tmp_path):
    """Reshape((8, 4)) -> Flatten -> Dense after a free length: Keras takes length 8 only;
    torch.export specializes the dim, and import.json says so."""
    proc = cli("convert", "--model", "tests/models.py:free_length_flatten_dense", "--out", tmp_path)
    assert proc.returncode == 2 and "--reference-shape" in proc.stderr   # the default 16 does not fit Reshape
    rep = _convert(tmp_path, "free_length_flatten_dense", "--reference-shape", "8,3")
    imp = read_json(ModelDir.of(tmp_path, "free_length_flatten_dense").stage("import") / "import.json")
    assert imp["format"] == "pt2" and imp["dynamic_dims"] == {}
    [f] = imp["fixed_dims"]
    assert (f["input"], f["dim"], f["size"], f["name"], f["by"]) == ("x", 1, 8, "x_len", "torch.export")
    assert "specialized" in f["reason"] or "Constraints violated" in f["reason"]
    assert rep["dims"]["fixed"][0]["reason"] == f["reason"]
    assert all("Keras rejects this shape" in e["skipped"] for e in rep["shapes"][1:])


def test_a_port_failing_at_an_extra_shape_is_a_mismatch_naming_it(conv1d):
    import torch

    from pipeline.runners.pytorch import load_generated
    from pipeline.stages import compare

    out, _ = conv1d
    mdir = ModelDir.of(out, "unknown_length_conv1d")
    good = load_generated(mdir)

    class OnlyAtSixteen(torch.nn.Module):   # right at the reference length, off elsewhere
        def forward(self, x):
            y = good(x)
            return y if x.shape[2] == 16 else y + 1.0

    summary = compare.run(mdir, Settings(), modules={"torch_codegen": OnlyAtSixteen()})
    assert summary["status"] == "mismatch"
    assert summary["failed_shapes"] == {"torch_codegen": ["x=128x3", "x=17x3"]}
    assert summary["passed"]["torch_codegen"] is False and summary["passed"]["torch_pt2"] is True
    assert summary["outputs"]["gmp"]["torch_codegen"]["ok"]   # at the reference it is right


def test_shape_cases():
    seq = {"inputs": [{"name": "x", "shape": [None, None, 3], "reference_shape": [None, 16, 3], "free_dims": [1]}]}
    assert [(c["case"], c["inputs"]["x"]) for c in shapes.cases(seq)] == [
        ("odd", [None, 17, 3]), ("one", [None, 1, 3]), ("large", [None, 128, 3])]
    img = {"inputs": [{"name": "i", "shape": [None, None, None, 3], "reference_shape": [None, 32, 32, 3],
                       "free_dims": [1, 2]}]}
    assert [(c["case"], c["inputs"]["i"]) for c in shapes.cases(img)] == [
        ("odd", [None, 33, 47, 3]), ("large", [None, 64, 64, 3])]
    fixed = {"inputs": [{"name": "x", "shape": [None, 8, 3], "reference_shape": [None, 8, 3], "free_dims": []}]}
    assert shapes.cases(fixed) == []


def test_dense_on_every_step_of_a_free_length(tmp_path):
    rep = _convert(tmp_path, "free_length_dense")
    assert [e["label"] for e in rep["shapes"]] == ["x=16x4", "x=17x4", "x=1x4", "x=128x4"]
    for e in rep["shapes"]:
        assert e["passed"]["torch_codegen"], e
        assert e["passed"].get("torch_pt2") or "torch_pt2" in e.get("port_skipped", {}), e
    mdir = ModelDir.of(tmp_path, "free_length_dense")
    src = (mdir.stage("import") / "model.py").read_text()
    assert ".shape[2]), 8)" in src   # the Tensordot's reshape keeps the length symbolic
    _check_ports_at(mdir, [{"x": [None, n, 4]} for n in (9, 40)])
