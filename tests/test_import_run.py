"""``Generated.line_nodes`` maps every line of ``forward`` in ``model.py`` to the ONNX node
whose converter wrote it, with its op type and Keras layer."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline import codegen
from pipeline.codegen import CONVERTERS
from pipeline.core.registry import Registry

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


def _forward_body(source: str) -> list[int]:
    """The line numbers (from 1) of ``forward``'s body, ``return`` excluded."""
    lines = source.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("    def forward(")) + 2
    end = next(i for i in range(start, len(lines) + 1) if lines[i - 1].strip().startswith("return"))
    return list(range(start, end))


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
    assert len(body) == len(written) > len(_graph().graph.node), gen.source   # the pool writes two lines
    assert sorted(gen.line_nodes) == body
    for line, (code, node) in zip(body, written):
        assert src[line - 1].strip() == code
        assert gen.line_nodes[line].node == node, (line, code)
    layers = {o.node: (o.op_type, o.layer) for o in gen.line_nodes.values()}
    assert layers == {"functional_1/conv_1/convolution": ("Conv", "conv"), "functional_1/relu_1/Relu": ("Relu", "relu"),
                      "functional_1/pool_1/MaxPool1d": ("MaxPool", "pool"),
                      "functional_1/flatten_1/Reshape": ("Flatten", "flatten"), "Sigmoid__7": ("Sigmoid", "flatten")}
    assert gen.line_nodes[body[0]].converter == "conv in pipeline/codegen/ops/conv.py"
    assert gen.origin(body[-1] + 1) is None and gen.origin(1) is None   # return, docstring
