"""The generated ``model.py`` + ``model.safetensors`` and ``model.pt2``: standalone (a fresh
process where onnx2torch, onnx, TensorFlow, Keras and this pipeline cannot be imported
reproduces Keras), readable (submodules named after the Keras layers), and traceable
(``torch.compile`` and ``torch.export`` with two batch sizes). Unknown ops stop with an
error that names the node, op type, opset and Keras layer. The converters one by one
against onnxruntime: ``test_codegen_ops.py``."""

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
from pipeline.runners import load_generated, load_pt2
from pipeline.stages import importer
from pipeline.core.artifacts import ModelDir, read_json
from pipeline.core.errors import PipelineError
from pipeline.core.registry import MAX_OPSET, Entry, Registry
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
    assert "self.lstm = nn.LSTM(6, 4, batch_first=True)" in src and "self.conv1d = nn.Conv1d(3, 6, 3)" in src


def _batch(arrays, n):
    return [torch.from_numpy(np.ascontiguousarray(np.resize(a, (n, *a.shape[1:])))) for a in arrays]


@pytest.mark.parametrize("name", list(MODELS))
def test_compile_and_export_with_two_batch_sizes(converted, name):
    mdir = ModelDir.of(converted, name)
    _, ins, _, _ = _feeds_and_refs(mdir)
    module = load_generated(mdir)
    compiled = torch.compile(module, dynamic=True)
    program = importer.export_program(module, tuple(_batch(ins, 2)))
    saved = load_pt2(mdir)
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


def _graph_with(op_type: str, opset: int = 17, **attrs):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])
    nodes = [onnx.helper.make_node("Relu", ["x"], ["r"], name="functional_1/act_1/Relu"),
             onnx.helper.make_node(op_type, ["r"], ["y"], name="functional_1/my_layer_1/Odd", domain="", **attrs)]
    return onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y]),
                                  opset_imports=[onnx.helper.make_opsetid("", opset)])


def test_unknown_op_names_node_op_opset_and_keras_layer():
    layers = [{"name": "act", "class": "ReLU"}, {"name": "my_layer", "class": "MyLayer"}]
    with pytest.raises(PipelineError) as e:
        codegen.generate(_graph_with("Hardmax"), "m", layers)
    text = str(e.value)
    for part in ("functional_1/my_layer_1/Odd", "Hardmax", "opset 17", "'my_layer'", "MyLayer", "@handles",
                 "pipeline/codegen/ops/"):
        assert part in text, (part, text)
    assert e.value.info.stage == "import" and e.value.info.layer == "my_layer"


def test_op_outside_its_opset_range_says_which_ranges_exist():
    with pytest.raises(PipelineError) as e:
        codegen.generate(_graph_with("Resize", opset=9), "m")    # Resize came with opset 10
    assert "no PyTorch converter for ONNX op Resize (opset 9)" in str(e.value)
    assert "converters exist for opsets 10, 11+" in str(e.value)
    assert '@handles("Resize", opsets=(9, 9))' in e.value.info.hint


def test_unsupported_form_names_the_converter_and_why():
    with pytest.raises(PipelineError) as e:
        codegen.generate(_graph_with("Selu", alpha=2.0), "m", [{"name": "my_layer", "class": "MyLayer"}])
    text = str(e.value)
    for part in ("cannot convert Selu (opset 17): Selu with non-default alpha/gamma", "'my_layer'",
                 "selu in pipeline/codegen/ops/elementwise.py"):
        assert part in text, (part, text)


def test_registered_converter_is_used():
    """A converter added to a registry (``generate(converters=...)``) converts its op; a
    second converter for an op and opset range already taken is refused."""
    def hardmax(gen, node):
        x = gen.t(node.input[0])
        gen.emit(node, f"F.one_hot(torch.argmax({x}, -1), {x}.shape[-1]).to({x}.dtype)")

    converters = Registry.collect("converter", codegen.FAMILIES)
    converters.add(Entry("Hardmax", (13, MAX_OPSET), hardmax, "test"))
    src = codegen.generate(_graph_with("Hardmax"), "m", converters=converters).source
    assert "F.one_hot(torch.argmax(" in src
    assert codegen.CONVERTERS.lookup("Hardmax", 17) is None     # the shared registry is untouched
    with pytest.raises(ValueError, match="Relu opsets 14-.* already registered by elementwise"):
        converters.add(Entry("Relu", (14, MAX_OPSET), hardmax, "test"))
    converters.add(Entry("Hardmax", (1, 12), hardmax, "test"))    # a disjoint range is a second entry
    assert [e.opsets for e in converters.entries()["Hardmax"]] == [(13, MAX_OPSET), (1, 12)]


def test_output_layout_helper_matches_transpose():
    """The standalone test puts Keras' outputs into channels-first order by hand; check that
    hand-made order against the pipeline's own inverse."""
    r = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    cf = np.transpose(r, [0, 3, 1, 2])
    np.testing.assert_array_equal(output_to_keras({"outputs_channels_first": ["o"]}, "o", cf), r)
