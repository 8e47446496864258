"""The import stage runs the generated module once on the reference inputs: code torch
refuses at run time fails the import stage (exit 2, the previous import/ folder left as it
was), naming the line of ``model.py``, the ONNX node whose converter wrote it, its op type
and Keras layer. ``Generated.line_nodes`` maps every line of ``forward`` to that node.
NaN or inf in the outputs is not an import error (compare judges numbers)."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

from conftest import ENV, REPO, cli, report
from pipeline import codegen
from pipeline.codegen import CONVERTERS
from pipeline.core.artifacts import ModelDir, read_json
from pipeline.core.errors import PipelineError
from pipeline.core.registry import Registry
from pipeline.stages.importer.first_run import failure, run_once

LAYERS = [{"name": "conv", "class": "Conv1D"}, {"name": "relu", "class": "ReLU"},
          {"name": "pool", "class": "MaxPooling1D"}, {"name": "flatten", "class": "Flatten"}]


def _graph() -> onnx.ModelProto:
    """Conv1D -> ReLU -> MaxPooling1D (asymmetric pads: two lines of code) -> Flatten -> an
    unscoped Sigmoid (its layer comes from its neighbour), with tf2onnx's node names."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3)).astype(np.float32), "functional_1/conv_1/kernel")
    nodes = [
        helper.make_node("Conv", ["x", w.name], ["c"], name="functional_1/conv_1/convolution", pads=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="functional_1/relu_1/Relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="functional_1/pool_1/MaxPool1d", kernel_shape=[2],
                         strides=[2], pads=[0, 1]),
        helper.make_node("Flatten", ["p"], ["f"], name="functional_1/flatten_1/Reshape"),
        helper.make_node("Sigmoid", ["f"], ["y"], name="Sigmoid__7"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 20])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _with(op_type: str, fn) -> Registry:
    """``CONVERTERS`` with ``fn`` as the converter of ``op_type``."""
    reg = Registry("converter")
    for entries in CONVERTERS.entries().values():
        for e in entries:
            reg.add(dataclasses.replace(e, fn=fn) if e.op_type == op_type else e)
    return reg


def reflect_pad_3d(gen, node):
    """A broken Relu converter: a reflect pad of three dims, which torch refuses on a rank-3 tensor."""
    gen.emit(node, f"F.pad({gen.t(node.input[0])}, [1, 1, 1, 1, 1, 1], mode='reflect')")


def _written(gen, folder):
    (folder / "model.py").write_text(gen.source)
    save_file({k: np.ascontiguousarray(v) for k, v in gen.state.items()}, str(folder / "model.safetensors"))
    return codegen.load_generated(folder / "model.py")


def _forward_body(source: str) -> list[int]:
    """The line numbers (from 1) of ``forward``'s body, ``return`` excluded."""
    lines = source.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("    def forward(")) + 2
    end = next(i for i in range(start, len(lines) + 1) if lines[i - 1].strip().startswith("return"))
    return list(range(start, end))


def _masked(code: str) -> str:
    """``code`` parsed, every variable renamed ``v``: a line as written and as renamed by
    ``codegen.liveness`` compare equal."""
    import ast

    tree = ast.parse(code)
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and n.id not in ("self", "torch", "F", "nn"):
            n.id = "v"
    return ast.dump(tree)


def test_every_forward_line_maps_to_the_node_that_wrote_it():
    written = []   # (line of code, node), as each converter writes it

    def recording(fn):
        @functools.wraps(fn)
        def wrapper(gen, node):
            start = len(gen.lines)
            fn(gen, node)
            written.extend((line, node.name) for line in gen.lines[start:])
        return wrapper

    reg = Registry("converter")
    for entries in CONVERTERS.entries().values():
        for e in entries:
            reg.add(dataclasses.replace(e, fn=recording(e.fn)))
    gen = codegen.generate(_graph(), "lines", LAYERS, converters=reg)
    body = _forward_body(gen.source)
    src = gen.source.splitlines()
    dels = [line for line in body if src[line - 1].strip().startswith("del ")]   # codegen.liveness, case 5
    code = [line for line in body if line not in dels]
    assert len(code) == len(written) > len(_graph().graph.node), gen.source   # the pool writes two lines
    assert sorted(gen.line_nodes) == body
    for line, (text, node) in zip(code, written):
        assert _masked(src[line - 1].strip()) == _masked(text)   # as written, but for the names reused
        assert gen.line_nodes[line].node == node, (line, text)
    assert [src[line - 1].strip() for line in dels] == ["del padded"], gen.source
    assert all(gen.line_nodes[line] == gen.line_nodes[line - 1] for line in dels)   # the code of the line before
    layers = {o.node: (o.op_type, o.layer) for o in gen.line_nodes.values()}
    assert layers == {"functional_1/conv_1/convolution": ("Conv", "conv"), "functional_1/relu_1/Relu": ("Relu", "relu"),
                      "functional_1/pool_1/MaxPool1d": ("MaxPool", "pool"),
                      "functional_1/flatten_1/Reshape": ("Flatten", "flatten"), "Sigmoid__7": ("Sigmoid", "flatten")}
    assert gen.line_nodes[body[0]].converter == "conv in pipeline/codegen/ops/conv.py"
    assert gen.origin(body[-1] + 1) is None and gen.origin(1) is None   # return, docstring


def test_runtime_failure_names_node_op_layer_and_line(tmp_path):
    gen = codegen.generate(_graph(), "broken", LAYERS, converters=_with("Relu", reflect_pad_3d))
    module = _written(gen, tmp_path)
    line = next(i for i, l in enumerate(gen.source.splitlines(), 1) if "mode='reflect'" in l)
    x = torch.randn(2, 3, 9)
    with pytest.raises(PipelineError) as err:
        run_once(module, (x,), gen, tmp_path / "model.py", "broken", {l["name"]: l["class"] for l in LAYERS})
    info = err.value.info
    assert (info.stage, info.model, info.node, info.op_type, info.layer) == (
        "import", "broken", "functional_1/relu_1/Relu", "Relu", "relu")
    assert info.message == (f"running the generated model.py on the reference inputs failed at model.py line {line}, "
                            "`x1 = F.pad(x1, [1, 1, 1, 1, 1, 1], mode='reflect')`, the code of ONNX Relu node "
                            "'functional_1/relu_1/Relu' of Keras layer 'relu' (ReLU): NotImplementedError: "
                            "Padding size 6 is not supported for 3D input tensor.")
    assert "reflect_pad_3d in test_import_run.py" in info.hint
    assert isinstance(err.value.__cause__, NotImplementedError)
    assert str(err.value).startswith("[model 'broken', stage import, layer 'relu', node 'functional_1/relu_1/Relu' "
                                     "(Relu)] running the generated model.py")


def test_a_failure_outside_model_py_names_no_node(tmp_path):
    gen = codegen.generate(_graph(), "g", LAYERS)
    e = failure(ValueError("wrong input\nmore"), gen, tmp_path / "model.py", "g", {})
    assert (e.info.stage, e.info.node, e.info.layer) == ("import", None, None)
    assert e.info.message == "running the generated model.py on the reference inputs failed: ValueError: wrong input"


def test_nan_and_inf_outputs_are_not_an_import_error(tmp_path):
    nodes = [helper.make_node("Sqrt", ["x"], ["s"], name="functional_1/sqrt_1/Sqrt"),
             helper.make_node("Reciprocal", ["s"], ["y"], name="functional_1/inv_1/Reciprocal")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])])
    gen = codegen.generate(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "nan", [])
    module = _written(gen, tmp_path)
    x = torch.tensor([[-1.0, 0.0, 4.0]])
    run_once(module, (x,), gen, tmp_path / "model.py", "nan")
    out = module(x)
    assert torch.isnan(out[0, 0]) and torch.isinf(out[0, 1])


# ---- end to end: the import stage alone, in a process whose Relu converter is broken ----------------
MODEL = "tests/models.py:conv1d_flatten_dense"
BROKEN_IMPORT = r"""
import dataclasses, sys
from pipeline.codegen import CONVERTERS, walk
from pipeline.core.registry import Registry

def reflect_pad_3d(gen, node):
    gen.emit(node, f"F.pad({gen.t(node.input[0])}, [1, 1, 1, 1, 1, 1], mode='reflect')")

reg = Registry("converter")
for entries in CONVERTERS.entries().values():
    for e in entries:
        reg.add(dataclasses.replace(e, fn=reflect_pad_3d) if e.op_type == "Relu" else e)
walk.CONVERTERS = reg
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_import_stage_fails_naming_the_node_and_keeps_the_previous_import(tmp_path):
    out = tmp_path / "out"
    proc = cli("convert", "--model", MODEL, "--out", out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert report(out, "conv1d_flatten_dense")["status"] == "ok"
    mdir = ModelDir.of(out, "conv1d_flatten_dense")
    imp = mdir.stage("import")
    before = {p.name: p.read_bytes() for p in imp.iterdir()}
    line_nodes = read_json(imp / "import.json")["line_nodes"]
    relu_line = next(int(k) for k, o in line_nodes.items() if o["op_type"] == "Relu")
    assert line_nodes[str(relu_line)] == {"node": "functional_1/conv_1/Relu", "op_type": "Relu", "layer": "conv",
                                          "converter": "unary in pipeline/codegen/ops/elementwise.py"}
    assert "F.relu(" in (imp / "model.py").read_text().splitlines()[relu_line - 1]

    proc = subprocess.run([sys.executable, "-c", BROKEN_IMPORT, "import", "--model", MODEL, "--out", str(out)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("error: [model 'conv1d_flatten_dense', stage import, layer 'conv', "
                            "node 'functional_1/conv_1/Relu' (Relu)] running the generated model.py on the "
                            f"reference inputs failed at model.py line {relu_line}, `"), proc.stderr
    assert first.endswith("mode='reflect')`, the code of ONNX Relu node 'functional_1/conv_1/Relu' of Keras layer "
                          "'conv' (Conv1D): NotImplementedError: Padding size 6 is not supported for 3D input tensor.")
    err = read_json(mdir.error)
    assert (err["stage"], err["node"], err["op_type"], err["layer"]) == (
        "import", "functional_1/conv_1/Relu", "Relu", "conv")
    assert {p.name: p.read_bytes() for p in imp.iterdir()} == before   # the stage wrote nothing
    assert not [p.name for p in mdir.root.iterdir() if p.name.startswith(".import")]
