"""The small shared core: errors, the atomic file helper, Keras layer names, the op registry."""

from __future__ import annotations

import types

import onnx
import pytest
from onnx import helper

from pipeline.core.artifacts import atomic_file, write_json, read_json
from pipeline.core.errors import PipelineError
from pipeline.core.names import NameIndex, layer_in_scope
from pipeline.core.registry import Registry, handles


def test_error_names_a_model_set_after_it_was_raised():
    """A caller up the stack knows the model; the printed line must show it."""
    e = PipelineError("import", "no converter", node="n1", op_type="Hardmax")
    assert "model" not in str(e)
    e.info.model = "my_model"
    assert str(e).startswith("[model 'my_model', stage import, node 'n1' (Hardmax)] no converter")


def test_atomic_file_keeps_the_old_file_on_failure(tmp_path):
    p = tmp_path / "data.json"
    write_json(p, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert read_json(p) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["data.json"]   # no temporary file left


def test_atomic_file_keeps_the_suffix(tmp_path):
    """np.savez appends .npz unless the name has it: the temporary path must keep it."""
    with atomic_file(tmp_path / "layers.npz") as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "layers.npz").read_bytes() == b"x"


@pytest.mark.parametrize("name,layer", [
    ("functional_1/conv_1/BiasAdd", "conv"),
    ("model/dense/MatMul", "dense"),
    ("LSTM__33", None),
], ids=["keras3", "tf-keras", "unscoped"])
def test_layer_in_scope(name, layer):
    assert layer_in_scope(name, {"conv", "dense"}) == layer


def test_unscoped_node_is_named_after_the_neighbour_that_alone_feeds_it():
    """tf2onnx's fused LSTM has no scope: its layer is found through a value only it reads,
    never through a value shared by several nodes."""
    nodes = [helper.make_node("Relu", ["x"], ["functional_1/lstm_1/pre:0"], name="functional_1/lstm_1/pre"),
             helper.make_node("Relu", ["functional_1/lstm_1/pre:0"], ["h"], name="LSTM__33"),
             helper.make_node("Relu", ["x"], ["y"], name="Unscoped__2"),
             helper.make_node("Relu", ["x"], ["z"], name="functional_1/dense_1/Relu")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, [1]) for v in ("h", "y", "z")])
    names = NameIndex(g, ["lstm", "dense"])
    assert names.layer_of("LSTM__33") == "lstm"
    assert names.layer_of("Unscoped__2") is None   # x feeds three nodes: it names none of them


def test_registry_refuses_overlapping_opsets_and_keeps_ranges_apart():
    mod = types.ModuleType("fake_family")

    @handles("Squeeze", opsets=(1, 12))
    def old(node):
        return "attribute axes"

    @handles("Squeeze", opsets=(13, None))
    def new(node):
        return "input axes"

    old.__module__ = new.__module__ = mod.__name__
    mod.old, mod.new = old, new
    reg = Registry.collect("converter", [mod])
    assert reg.lookup("Squeeze", 11).fn is old and reg.lookup("Squeeze", 17).fn is new
    assert reg.lookup("Unsqueeze", 17) is None

    @handles("Squeeze", opsets=(12, 14))
    def overlapping(node):
        return None

    overlapping.__module__ = mod.__name__
    mod.overlapping = overlapping
    with pytest.raises(ValueError, match="Squeeze opsets 12-14 already registered"):
        Registry.collect("converter", [mod])
