"""Per-layer debugging (``python -m pipeline debug``): matching by name and layout, fault
injection at each step (export, rewrite, import), --bisect, and the HTML report in a real
headless browser (Debian's chromium, installed by the ``chromium`` fixture when missing)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import ENV, REPO, cli
from pipeline.tools import debug
from pipeline.tools.debug import running
from pipeline.core.names import layer_of_name

RTOL, ATOL = 1e-5, 1e-7   # the pipeline's defaults, used by debug for every layer
MODEL = "tests/debug_models.py:concat_channels"
NAME = "concat_channels"


# ---------------------------------------------------------------- matching rules, no model run

@pytest.mark.parametrize("node, keras3, layer", [
    ("functional_1/conv_1/BiasAdd", True, "conv"),
    ("functional_1/conv_1_1/BiasAdd", True, "conv_1"),           # a layer named conv_1 in Keras 3
    ("model/conv_1/BiasAdd", False, "conv_1"),                  # tf.keras: no scope suffix
    ("model/conv/BiasAdd", False, "conv"),
    ("functional_1/conv_b_1/BiasAdd/transpose__k2t11", True, "conv_b"),   # a node the rewrite added
    ("functional_1/flatten_1/Reshape", True, "flatten"),
    ("const_fold_opt__30", True, None),
    ("functional_1/unknown_1/Add", True, None),
], ids=["keras3", "keras3-name-with-suffix", "tf-keras-name-with-suffix", "tf-keras", "rewrite-node",
        "flatten", "no-scope", "not-a-layer"])
def test_layer_of_node(node, keras3, layer):
    layers = {"conv", "conv_1", "conv_b", "flatten", "dense"}
    assert layer_of_name(node, layers, keras3) == layer


def test_layout_rule_shape_first_then_graph_layout():
    rng = np.random.default_rng(0)
    keras_act = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)          # (N, H, W, C)
    cf = np.transpose(keras_act, (0, 3, 1, 2))
    # shapes decide when only one reading fits, whatever the propagated layout says
    np.testing.assert_array_equal(debug.to_keras_layout(cf, keras_act.shape, "cl"), keras_act)
    np.testing.assert_array_equal(debug.to_keras_layout(keras_act, keras_act.shape, "cf"), keras_act)
    assert debug.to_keras_layout(cf[:, :, :4], keras_act.shape, "cf") is None
    # square: (N, 4, 4, 4) fits both readings; the graph's layout decides
    sq = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(debug.to_keras_layout(sq, sq.shape, "cf"), np.transpose(sq, (0, 2, 3, 1)))
    np.testing.assert_array_equal(debug.to_keras_layout(sq, sq.shape, "cl"), sq)
    # a Flatten whose Transpose was folded into the Dense: features in channels-first order
    flat_keras = keras_act.reshape(2, -1)
    flat_cf = cf.reshape(2, -1)
    np.testing.assert_array_equal(debug.to_keras_layout(flat_cf, flat_keras.shape, "cfflat:3,5,6"), flat_keras)
    np.testing.assert_array_equal(debug.to_graph_layout(flat_keras, "cfflat:3,5,6"), flat_cf)


# ---------------------------------------------------------------- fault injection, end to end

@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """The concat model converted and debugged once, without faults."""
    out = tmp_path_factory.mktemp("debug_clean")
    proc = cli("debug", "--model", MODEL, "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_onnx_intermediates_in_bounded_chunks(clean, monkeypatch):
    """A small chunk budget runs the graph once per chunk and gives the same values."""
    from pipeline.core.reference import inputs_for, load_reference

    d = clean / NAME
    ins, _ = load_reference(d / "export" / "reference.npz")
    feeds = inputs_for(json.loads((d / "rewrite" / "rewrite.json").read_text()), ins)
    graph = onnx.load(str(_nchw(clean))).graph
    tensors = [n.output[0] for n in graph.node]
    whole = dict(debug.onnx_tensors(_nchw(clean), feeds, tensors, {}))
    sessions = []
    real = running.session
    monkeypatch.setattr(running, "session", lambda proto, names: sessions.append(len(names)) or real(proto, names))
    sizes = {t: v.nbytes for t, v in whole.items()}
    budget = 2 * max(sizes.values())
    chunked = dict(debug.onnx_tensors(_nchw(clean), feeds, tensors, sizes, chunk_mb=budget / 2**20))
    assert len(sessions) > 1 and sum(sessions) == len(tensors)
    for t in tensors:
        np.testing.assert_array_equal(chunked[t], whole[t])


def test_compare_per_layer_and_missing_layer_outputs(clean, tmp_path):
    proc = cli("compare", "--per-layer", "--model", MODEL, "--out", clean)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "every layer within tolerance" in proc.stdout
    assert layers_json(clean)["status"] == "ok"
    shutil.copytree(clean / NAME, tmp_path / NAME)
    (tmp_path / NAME / "layers" / "layers.npz").unlink()
    proc = cli("compare", "--per-layer", "--model", MODEL, "--out", tmp_path)
    assert proc.returncode == 2 and "layers.npz is missing" in proc.stderr and "--layers-only" in proc.stderr
    assert "Traceback" not in proc.stderr


def layers_json(out: Path) -> dict:
    return json.loads((out / NAME / "debug" / "debug.json").read_text())


def test_matching_model_every_layer_within_tolerance(clean):
    summary = layers_json(clean)
    assert summary["status"] == "ok" and summary["verdict"] is None
    assert [r["layer"] for r in summary["layers"]] == ["conv_a", "conv_b", "concat", "relu", "flatten", "dense"]
    for r in summary["layers"]:
        for stage in debug.LAYER_RUNS:
            c = r["stages"][stage]
            assert c is not None, (r["layer"], stage, "no tensor matched")
            assert c["max_abs_err"] <= RTOL * c["scale"] + ATOL, (r["layer"], stage, c)
    # channels-first tensors were transposed back (the rewrite has no Transpose before the conv outputs)
    assert summary["layers"][0]["stages"]["onnx_nchw"]["layout"] == "cf"
    assert summary["layers"][0]["stages"]["onnx_raw"]["layout"] == "cl"
    assert (clean / NAME / "debug" / "report.html").is_file()


def test_tf_keras_h5_with_batchnorm_fused_into_conv(model_files, tmp_path):
    """tf.keras scopes have no ``_N`` suffix, and tf2onnx fuses the BatchNormalization into
    the Conv before it: the Conv2D layer has no tensor of its own, the BN layer has the Conv's."""
    proc = cli("debug", "--model", model_files / "tf_keras_conv2d.h5", "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "tf_keras_conv2d" / "debug" / "debug.json").read_text())
    rows = {r["layer"]: r["stages"] for r in summary["layers"]}
    assert all(c is None for c in rows["conv"].values())
    assert rows["bn"]["onnx_nchw"]["tensor"] == "model/bn/FusedBatchNormV3:0"
    for layer in ("bn", "relu", "pool", "conv2", "flatten", "dense"):
        for stage, c in rows[layer].items():
            assert c is not None and c["max_abs_err"] <= RTOL * c["scale"] + ATOL, (layer, stage, c)


def _nchw(d: Path) -> Path:
    return d / NAME / "rewrite" / "nchw.onnx"


def flip_concat_axis(d: Path, file="nchw.onnx"):
    path = d / NAME / "rewrite" / file
    m = onnx.load(str(path))
    node = next(n for n in m.graph.node if n.op_type == "Concat")
    axis = next(a for a in node.attribute if a.name == "axis")
    assert axis.i == 1, "the rewritten Concat should join channels-first tensors on axis 1"
    axis.i = 2
    onnx.save(m, str(path))


def drop_transpose_before_flatten(d: Path):
    m = onnx.load(str(_nchw(d)))
    flat = next(n for n in m.graph.node if n.op_type == "Flatten")
    t = next(n for n in m.graph.node if n.output[0] == flat.input[0])
    assert t.op_type == "Transpose"
    flat.input[0] = t.input[0]
    m.graph.node.remove(t)
    onnx.save(m, str(_nchw(d)))


def perturb_torch_conv_b(d: Path):
    from safetensors.numpy import load_file, save_file

    path = d / NAME / "import" / "onnx2torch.safetensors"   # the port the per-layer debugger runs
    w = load_file(str(path))
    key = next(k for k in w if "conv_b" in k and k.endswith(".weight"))
    w[key] = w[key] + np.float32(0.05)
    save_file(w, str(path))


def perturb_raw_conv_a(d: Path):
    path = d / NAME / "export" / "raw.onnx"
    m = onnx.load(str(path))
    conv = next(n for n in m.graph.node if n.op_type == "Conv" and "conv_a" in n.name)
    init = next(t for t in m.graph.initializer if t.name == conv.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), init.name))
    onnx.save(m, str(path))


def break_dense_weight_shape(d: Path):
    """nchw.onnx no longer runs: onnxruntime refuses the MatMul (its error names the node)."""
    m = onnx.load(str(_nchw(d)))
    mm = next(n for n in m.graph.node if n.op_type == "MatMul")
    init = next(t for t in m.graph.initializer if t.name == mm.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:-1], init.name))
    onnx.save(m, str(_nchw(d)))


# fault: (inject, layer named, stage, step blamed, stages that must stay clean: they do not read the file)
FAULTS = {
    "rewrite-concat-axis": (flip_concat_axis, "concat", "onnx_nchw", "rewrite", ("onnx_raw", "onnx_torch", "torch")),
    "rewrite-no-transpose-before-flatten": (drop_transpose_before_flatten, "flatten", "onnx_nchw", "rewrite",
                                            ("onnx_raw", "onnx_torch", "torch")),
    "rewrite-torch-onnx-concat-axis": (lambda d: flip_concat_axis(d, "torch.onnx"), "concat", "onnx_torch", "rewrite",
                                       ("onnx_raw", "onnx_nchw")),
    "rewrite-graph-does-not-run": (break_dense_weight_shape, "dense", "onnx_nchw", "rewrite",
                                   ("onnx_raw", "onnx_torch", "torch")),
    "import-conv-weights": (perturb_torch_conv_b, "conv_b", "torch", "import", ("onnx_raw", "onnx_nchw", "onnx_torch")),
    "export-conv-weights": (perturb_raw_conv_a, "conv_a", "onnx_raw", "export", ("onnx_nchw", "onnx_torch", "torch")),
}


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_injected_fault_is_named_at_its_layer_and_step(clean, tmp_path, fault):
    inject, layer, stage, step, untouched = FAULTS[fault]
    shutil.copytree(clean / NAME, tmp_path / NAME)
    inject(tmp_path)
    proc = cli("debug", "--model", MODEL, "--out", tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = layers_json(tmp_path)
    v = summary["verdict"]
    assert (v["layer"], v["stage"], v["step"]) == (layer, stage, step), v
    assert f"first wrong: layer {layer!r} at stage {stage} -> step '{step}'" in proc.stdout
    if fault == "rewrite-graph-does-not-run":
        assert "onnxruntime cannot run nchw.onnx" in summary["stage_errors"]["onnx_nchw"]
        return
    # the stages that do not read the broken file are still within tolerance layer by layer
    for other in untouched:
        assert summary["first_failing"][other] is None, (other, summary["first_failing"])
    row = next(r for r in summary["layers"] if r["layer"] == layer)
    c = row["stages"][stage]
    assert not c["ok"] and (c["max_abs_err"] is None or c["max_abs_err"] > RTOL * c["scale"] + ATOL), c


def test_bisect_cuts_the_failing_layer_with_reference_inputs(clean, tmp_path):
    shutil.copytree(clean / NAME, tmp_path / NAME)
    drop_transpose_before_flatten(tmp_path)
    proc = cli("debug", "--model", MODEL, "--out", tmp_path, "--bisect")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    b = layers_json(tmp_path)["bisect"]
    assert b["layer"] == "flatten" and b["stage"] == "onnx_nchw" and b["reproduces"] is True, b
    sub = onnx.load(b["model"])
    assert [n.op_type for n in sub.graph.node] == ["Flatten"]
    assert list(b["inputs"].values()) == ["keras:relu"]    # the input is Keras' own activation
    import onnxruntime as ort

    with np.load(b["data"]) as z:
        feeds = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("input:")}
        expected = next(z[k] for k in z.files if k.startswith("expected:"))
    tol = RTOL * float(np.abs(expected).max()) + ATOL
    got = ort.InferenceSession(b["model"], providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert float(np.abs(got - expected).max()) > 100 * tol     # the faulty subgraph fails alone
    # the same cut from the correct graph, on the same inputs, matches Keras: the inputs are right
    good = tmp_path / "good_cut.onnx"
    onnx.utils.extract_model(str(_nchw(clean)), str(good), list(feeds), [sub.graph.output[0].name])
    got = ort.InferenceSession(str(good), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)


# ---------------------------------------------------------------- the HTML report in a browser

@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing (CI starts from a fresh machine)."""
    exe = shutil.which("chromium")
    if exe is None:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}"
        exe = shutil.which("chromium")
    assert exe, "chromium is not on PATH after apt-get install -y chromium"
    return exe


def browse(exe: str, page: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp / 'profile'}", *mode, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180, env=ENV, cwd=REPO)


def test_html_report_renders_in_headless_chromium(clean, tmp_path, chromium):
    shutil.copytree(clean / NAME, tmp_path / NAME)
    drop_transpose_before_flatten(tmp_path)
    assert cli("debug", "--model", MODEL, "--out", tmp_path).returncode == 1
    page = tmp_path / NAME / "debug" / "report.html"
    proc = browse(chromium, page, tmp_path, "--dump-dom")
    dom = proc.stdout
    assert "<svg" in dom and 'id="error-plot"' in dom, proc.stderr[-2000:]
    assert len(re.findall(r'<polyline class="stage-line"', dom)) == len(debug.LAYER_RUNS)
    rows = re.findall(r'<tr id="first-fail" class="([^"]*)" data-layer="([^"]*)"', dom)
    assert rows == [("first-fail fail", "flatten")], rows
    assert "First wrong: <b>flatten</b> at stage <b>onnx_nchw</b>" in dom
    assert 'class="first-fail-point"' in dom           # the first failing layer is marked on the plot
    shot = tmp_path / "report.png"
    proc = browse(chromium, page, tmp_path, f"--screenshot={shot}", "--window-size=1300,1000")
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    # the matching model's page renders too, with no row highlighted
    dom = browse(chromium, clean / NAME / "debug" / "report.html", tmp_path, "--dump-dom").stdout
    assert 'id="error-plot"' in dom and 'id="first-fail"' not in dom
    assert "Every layer is within tolerance at every stage" in dom


def test_match_layers_on_a_sequential_style_graph():
    """Keras 3 Sequential scopes: layer ``conv2d`` is ``conv2d_1``, layer ``conv2d_1`` is
    ``conv2d_1_1``; a layer's tensor is its last output read by another layer."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="seq_1/conv2d_1/BiasAdd"),
        helper.make_node("Relu", ["c1"], ["r1"], name="seq_1/conv2d_1/Relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="seq_1/conv2d_1_1/BiasAdd"),
        helper.make_node("Transpose", ["c2"], ["t2"], name="seq_1/conv2d_1_1/BiasAdd__k2t3", perm=[0, 2, 3, 1]),
        helper.make_node("Flatten", ["t2"], ["f"], name="seq_1/flatten_1/Reshape", axis=1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, None])],
                              [numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w1"),
                               numpy_helper.from_array(np.zeros((4, 4, 3, 3), np.float32), "w2")])
    m = debug.match_layers(graph, ["conv2d", "conv2d_1", "flatten", "dense"], cf_inputs={"x"})
    assert {k: (v.tensor, v.layout) for k, v in m.items()} == {
        "conv2d": ("r1", "cf"), "conv2d_1": ("t2", "cl"), "flatten": ("f", "cl")}
    assert m["conv2d_1"].nodes == ("seq_1/conv2d_1_1/BiasAdd", "seq_1/conv2d_1_1/BiasAdd__k2t3")
