"""The generated ``model.py`` + ``model.safetensors`` and ``model.pt2``: standalone (a fresh
process where onnx2torch, onnx, TensorFlow, Keras and this pipeline cannot be imported
reproduces Keras), readable (submodules named after the Keras layers), and traceable
(``torch.compile`` and ``torch.export`` with two batch sizes). Unknown ops stop with an
error that names the node, op type, opset and Keras layer."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from conftest import ENV, cli, report
from pipeline import codegen
from pipeline.stages import importer
from pipeline.core.artifacts import ModelDir, read_json
from pipeline.core.errors import PipelineError
from pipeline.core.reference import inputs_for, load_reference, output_to_keras

RTOL, ATOL = 1e-5, 1e-6
MODELS = {"multi_io": "tests/models.py:multi_io", "conv1d_lstm": "tests/builders_import.py:conv1d_lstm"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("codegen")
    for name, model in MODELS.items():
        proc = cli("convert", "--model", model, "--out", out)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert report(out, name)["status"] == "ok"
    return out


def _feeds_and_refs(mdir: ModelDir):
    facts = read_json(mdir.stage("rewrite") / "rewrite.json")
    meta = read_json(mdir.stage("export") / "meta.json")
    ins, ref = load_reference(mdir.stage("export") / "reference.npz")
    feeds = inputs_for(facts, ins)
    return facts, [feeds[i["name"]] for i in meta["inputs"]], [ref[o["name"]] for o in meta["outputs"]], meta


STANDALONE = r"""
import sys
for blocked in ("onnx2torch", "onnx", "onnxruntime", "tensorflow", "keras", "tf_keras", "tf2onnx", "pipeline"):
    sys.modules[blocked] = None   # any import of these now raises ImportError
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from model import load
model = load()
with np.load(sys.argv[2], allow_pickle=False) as z:
    n_in = int(z["n_in"])
    ins = [torch.from_numpy(z[f"in{i}"]) for i in range(n_in)]
    with torch.no_grad():
        out = model(*ins)
    out = out if isinstance(out, tuple) else (out,)
    for i, o in enumerate(out):
        r = z[f"out{i}"]
        np.testing.assert_allclose(o.numpy(), r, rtol=0, atol=float(z["rtol"]) * float(np.abs(r).max()) + float(z["atol"]))
print("standalone-ok", len(out), type(model).__module__)
"""


@pytest.mark.parametrize("name", list(MODELS))
def test_generated_model_reproduces_keras_standalone(converted, tmp_path, name):
    mdir = ModelDir.of(converted, name)
    facts, ins, refs, meta = _feeds_and_refs(mdir)
    kept = tmp_path / "kept"
    kept.mkdir()
    for f in ("model.py", "model.safetensors"):
        shutil.copy(mdir.stage("import") / f, kept / f)
    # Keras' outputs in the generated model's layout (channels-first where the report says so)
    cf = set(facts["outputs_channels_first"])
    refs_cf = [np.transpose(r, [0, r.ndim - 1, *range(1, r.ndim - 1)]) if o["name"] in cf else r
               for r, o in zip(refs, meta["outputs"])]
    data = tmp_path / "data.npz"
    np.savez(data, n_in=len(ins), rtol=RTOL, atol=ATOL, **{f"in{i}": v for i, v in enumerate(ins)},
             **{f"out{i}": v for i, v in enumerate(refs_cf)})
    proc = subprocess.run([sys.executable, "-c", STANDALONE, str(kept), str(data)], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"standalone-ok {len(refs)}" in proc.stdout


def test_submodules_are_named_after_keras_layers(converted):
    src = (converted / "multi_io" / "import" / "model.py").read_text()
    assert "self.conv_a = nn.Conv2d(3, 4, 3)" in src
    assert "self.conv_b = nn.Conv1d(2, 4, 3)" in src
    assert "self.head1 = nn.Linear(76, 3)" in src
    assert "onnx" not in src.replace("onnx2torch", "")   # no ONNX runtime pieces in the source
    src = (converted / "conv1d_lstm" / "import" / "model.py").read_text()
    assert "self.lstm = nn.LSTM(6, 4)" in src and "self.conv1d = nn.Conv1d(3, 6, 3)" in src


def _batch(arrays, n):
    return [torch.from_numpy(np.ascontiguousarray(np.resize(a, (n, *a.shape[1:])))) for a in arrays]


@pytest.mark.parametrize("name", list(MODELS))
def test_compile_and_export_with_two_batch_sizes(converted, name):
    mdir = ModelDir.of(converted, name)
    _, ins, _, _ = _feeds_and_refs(mdir)
    module = importer.load_generated(mdir)
    compiled = torch.compile(module, dynamic=True)
    program = importer.export_program(module, tuple(_batch(ins, 2)))
    saved = importer.load_pt2(mdir)
    for n in (3, 6):
        args = _batch(ins, n)
        with torch.no_grad():
            eager = module(*args)
            eager = eager if isinstance(eager, tuple) else (eager,)
            for got in (compiled(*args), program.module()(*args), saved(*args)):
                got = got if isinstance(got, (tuple, list)) else (got,)
                assert len(got) == len(eager)
                for g, e in zip(got, eager):
                    assert g.shape[0] == n
                    torch.testing.assert_close(g, e, rtol=RTOL, atol=ATOL)


def _graph_with(op_type: str):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])
    nodes = [onnx.helper.make_node("Relu", ["x"], ["r"], name="functional_1/act_1/Relu"),
             onnx.helper.make_node(op_type, ["r"], ["y"], name="functional_1/my_layer_1/Odd", domain="")]
    return onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y]),
                                  opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_unknown_op_names_node_op_opset_and_keras_layer():
    layers = [{"name": "act", "class": "ReLU"}, {"name": "my_layer", "class": "MyLayer"}]
    with pytest.raises(PipelineError) as e:
        codegen.generate(_graph_with("Hardmax"), "m", layers)
    text = str(e.value)
    for part in ("functional_1/my_layer_1/Odd", "Hardmax", "opset 17", "'my_layer'", "MyLayer", "@converter"):
        assert part in text, (part, text)
    assert e.value.info.stage == "import" and e.value.info.layer == "my_layer"


def test_registered_converter_is_used():
    @codegen.converter("Hardmax")
    def _hardmax(gen, node):
        x = gen.t(node.input[0])
        gen.emit(node, f"F.one_hot(torch.argmax({x}, -1), {x}.shape[-1]).to({x}.dtype)")

    try:
        src = codegen.generate(_graph_with("Hardmax"), "m").source
    finally:
        del codegen.CONVERTERS["Hardmax"]
    assert "F.one_hot(torch.argmax(" in src
    with pytest.raises(ValueError):
        codegen.converter("Relu")(lambda gen, node: None)


def test_output_layout_helper_matches_transpose():
    """The standalone test puts Keras' outputs into channels-first order by hand; check that
    hand-made order against the pipeline's own inverse."""
    r = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    cf = np.transpose(r, [0, 3, 1, 2])
    np.testing.assert_array_equal(output_to_keras({"outputs_channels_first": ["o"]}, "o", cf), r)


# ---- single ops against onnxruntime (no TensorFlow needed) ---------------------------------
def _w(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# op, attributes, constant inputs (after x), input shape (batch first)
OPS = {
    "softmax": ("Softmax", {"axis": 1}, [], (2, 5, 3)),
    "resize_nearest": ("Resize", {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                  "nearest_mode": "floor"}, [None, np.array([1, 1, 2, 2], np.float32)], (2, 3, 4, 5)),
    "resize_bilinear": ("Resize", {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
                        [None, np.array([1, 1, 2, 3], np.float32)], (2, 3, 4, 5)),
    "depth_to_space_dcr": ("DepthToSpace", {"blocksize": 2, "mode": "DCR"}, [], (2, 8, 3, 4)),
    "depth_to_space_crd": ("DepthToSpace", {"blocksize": 2, "mode": "CRD"}, [], (2, 8, 3, 4)),
    "space_to_depth": ("SpaceToDepth", {"blocksize": 2}, [], (2, 3, 4, 6)),
    "pad_reflect": ("Pad", {"mode": "reflect"}, [np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)], (2, 3, 5, 6)),
    "reduce_mean": ("ReduceMean", {"axes": [1, 2], "keepdims": 0}, [], (2, 3, 4, 5)),
    "reduce_sum": ("ReduceSum", {"keepdims": 1}, [np.array([-1], np.int64)], (2, 3, 4)),
    "gather_axis1": ("Gather", {"axis": 1}, [np.array([2, 0, 1], np.int64)], (2, 4, 3)),
    "leaky_relu": ("LeakyRelu", {"alpha": 0.3}, [], (2, 7)),
    "hard_sigmoid": ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, [], (2, 7)),
    "clip": ("Clip", {}, [np.array(-0.5, np.float32), np.array(0.7, np.float32)], (2, 7)),
    "tile": ("Tile", {}, [np.array([1, 2, 3], np.int64)], (2, 2, 3)),
    "layer_norm": ("LayerNormalization", {"axis": -1, "epsilon": 1e-3}, [_w(6, seed=1), _w(6, seed=2)], (2, 4, 6)),
    "gemm_transb": ("Gemm", {"transB": 1, "alpha": 0.5, "beta": 2.0}, [_w(4, 6), _w(4, seed=3)], (3, 6)),
    "matmul_rank3": ("MatMul", {}, [_w(6, 4)], (2, 5, 6)),
    "batchnorm": ("BatchNormalization", {"epsilon": 1e-3},
                  [_w(3, seed=1), _w(3, seed=2), _w(3, seed=3), np.abs(_w(3, seed=4)) + 0.5], (2, 3, 4, 5)),
    "global_avg_pool": ("GlobalAveragePool", {}, [], (2, 3, 4, 5)),
    "einsum": ("Einsum", {"equation": "bij,jk->bik"}, [_w(4, 3)], (2, 5, 4)),
    "prelu": ("PRelu", {}, [_w(3, 1, 1)], (2, 3, 4, 4)),
    "transpose": ("Transpose", {"perm": [0, 2, 3, 1]}, [], (2, 3, 4, 5)),
    "split": ("Split", {"axis": 1}, [np.array([1, 2], np.int64)], (2, 3, 4)),
    # recurrent ops, input (seq, batch, features): gate orders and bias layouts differ from torch's
    "lstm": ("LSTM", {"hidden_size": 4}, [_w(1, 16, 3), _w(1, 16, 4, seed=1), _w(1, 32, seed=2)], (5, 2, 3)),
    "lstm_reverse": ("LSTM", {"hidden_size": 4, "direction": "reverse"},
                     [_w(1, 16, 3), _w(1, 16, 4, seed=1), _w(1, 32, seed=2)], (5, 2, 3)),
    "lstm_bidirectional": ("LSTM", {"hidden_size": 4, "direction": "bidirectional"},
                           [_w(2, 16, 3), _w(2, 16, 4, seed=1), _w(2, 32, seed=2)], (5, 2, 3)),
    "gru_reset_after": ("GRU", {"hidden_size": 4, "linear_before_reset": 1},
                        [_w(1, 12, 3), _w(1, 12, 4, seed=1), _w(1, 24, seed=2)], (5, 2, 3)),
    "gru_bidirectional": ("GRU", {"hidden_size": 4, "linear_before_reset": 1, "direction": "bidirectional"},
                          [_w(2, 12, 3), _w(2, 12, 4, seed=1), _w(2, 24, seed=2)], (5, 2, 3)),
    "rnn": ("RNN", {"hidden_size": 4}, [_w(1, 4, 3), _w(1, 4, 4, seed=1), _w(1, 8, seed=2)], (5, 2, 3)),
}


@pytest.mark.parametrize("case", list(OPS))
def test_single_op_matches_onnxruntime(tmp_path, case):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import save_file

    op, attrs, consts, shape = OPS[case]
    names, inits = ["x"], []
    for k, c in enumerate(consts):
        if c is None:
            names.append("")
            continue
        names.append(f"c{k}")
        inits.append(numpy_helper.from_array(c, f"c{k}"))
    outs = ["y0", "y1"] if op in ("Split", "GRU", "RNN") else ["y0", "y1", "y2"] if op == "LSTM" else ["y0"]
    node = helper.make_node(op, names, outs, name=f"functional_1/{case}_1/{op}", **attrs)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *shape[1:]])
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                 for o in outs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    gen = codegen.generate(model, case)
    (tmp_path / "model.py").write_text(gen.source)
    save_file({k: np.ascontiguousarray(v) for k, v in gen.state.items()}, str(tmp_path / "model.safetensors"))
    module = codegen.load_generated(tmp_path / "model.py")
    xv = _w(*shape, seed=9)
    refs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xv})
    with torch.no_grad():
        got = module(torch.from_numpy(xv))
    got = got if isinstance(got, tuple) else (got,)
    for g, r in zip(got, refs):
        np.testing.assert_allclose(g.numpy(), r, rtol=RTOL, atol=ATOL)
