"""Which tensor of a graph carries each Keras layer's output, and in which layout.

Matching by name: tf2onnx names nodes after the Keras name scope
(``functional_1/conv_1/BiasAdd`` for layer ``conv``; Keras 3 adds ``_N`` to each scope,
tf.keras does not), and the rewrite keeps those names (new nodes are ``<old>__k2tN``).
A name belongs to the first path component, after the model's own scope, that names a
top-level layer; a node belongs to the layer of its first output's name, else of its own
name (tf2onnx fuses a BatchNormalization into the Conv before it: node ``conv/BiasAdd``,
output ``bn/FusedBatchNormV3:0``; that Conv2D layer then has no tensor of its own).
A layer's tensor in a graph is the last (in graph order) output of its nodes that a node
of another layer, or the graph output, reads; a Transpose of another layer's (or the
model's) tensor is layout plumbing for the next op, not a layer's output.

Layout rule, per tensor: the converted value ``v`` is compared as it is when its shape
is Keras' shape, and as ``transpose(v, (0, 2, ..., r-1, 1))`` (channels-first back to
channels-last) when that shape is. When both fit (square shapes, C == H ...), the
layout propagated through the graph decides: model inputs are channels-first where
``rewrite.json`` says so, a Transpose by ``to_first``/``to_last`` sets channels-first /
channels-last (at rank 3 the two are the same perm, so it flips the layout), other ops
keep their first computed input's layout; an unknown layout counts as channels-last. When neither fits,
the layer fails with a shape error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.core.names import is_keras3, layer_of_name
from pipeline.core.perm import to_first, to_last


@dataclass(frozen=True)
class Match:
    """Where one Keras layer's output lives in one graph."""

    tensor: str
    layout: str          # "cf", "cl" or "?" (propagated through the graph)
    nodes: tuple         # names of the layer's nodes in this graph


def match_layers(graph, layers: list[str], cf_inputs: set[str], folded: bool = False) -> dict[str, Match]:
    """{layer: Match} for the layers that have nodes in ``graph`` (an ``onnx.GraphProto``);
    ``folded``: the graph is ``torch.onnx`` of a rewrite that folded Transposes into Dense."""
    names = set(layers)
    keras3 = is_keras3(graph)
    # a node belongs to the layer its first output's name says (tf2onnx names a Conv with a fused
    # BatchNormalization after the conv, its output after the BN), else to the layer of its own name
    owner = {n.name: (layer_of_name(n.output[0], names, keras3) if n.output else None)
             or layer_of_name(n.name, names, keras3) for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output if o}
    graph_outputs = {o.name for o in graph.output}
    layout = propagate_layout(graph, cf_inputs, folded)
    boundary: dict[str, str] = {}
    nodes: dict[str, list[str]] = {}
    for n in graph.node:
        if owner[n.name]:
            nodes.setdefault(owner[n.name], []).append(n.name)
    def plumbing(p) -> bool:
        if p.op_type != "Transpose" or not p.input:
            return False
        perm = next((tuple(a.ints) for a in p.attribute if a.name == "perm"), ())
        src = producer.get(p.input[0])
        return len(perm) > 2 and perm in (to_first(len(perm)), to_last(len(perm))) and \
            (src is None or owner[src.name] != owner[p.name])

    for n in graph.node:   # graph order is topological: the last boundary output wins
        for i in n.input:
            p = producer.get(i)
            if p is not None and owner[p.name] and owner[p.name] != owner[n.name] and not plumbing(p):
                boundary[owner[p.name]] = _later(boundary.get(owner[p.name]), i, producer, graph)
    for o in graph_outputs:
        p = producer.get(o)
        if p is not None and owner[p.name] and not plumbing(p):
            boundary[owner[p.name]] = _later(boundary.get(owner[p.name]), o, producer, graph)
    return {k: Match(v, layout.get(v, "?"), tuple(nodes[k])) for k, v in boundary.items()}


def _later(current: str | None, candidate: str, producer: dict, graph) -> str:
    if current is None:
        return candidate
    order = {n.name: i for i, n in enumerate(graph.node)}
    return candidate if order[producer[candidate].name] > order[producer[current].name] else current


def propagate_layout(graph, cf_inputs: set[str], folded: bool = False) -> dict[str, str]:
    inits = {t.name for t in graph.initializer}
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    layout = {i.name: ("cf" if i.name in cf_inputs else "cl") for i in graph.input if i.name not in inits}
    for n in graph.node:
        if n.op_type == "Transpose":
            perm = next((tuple(a.ints) for a in n.attribute if a.name == "perm"), None)
            r = len(perm) if perm else 0
            src = layout.get(n.input[0], "?")
            if r == 3 and perm == to_first(3):   # rank 3: to_first == to_last, the Transpose flips the layout
                out = {"cf": "cl", "cl": "cf"}.get(src, "?")
            else:
                out = "cf" if r > 3 and perm == to_first(r) else "cl" if r > 3 and perm == to_last(r) else "?"
        elif folded and (n.op_type == "Flatten" or n.op_type == "Reshape" and len(dims.get(n.output[0], [])) == 2) \
                and layout.get(n.input[0]) == "cf" \
                and len(dims.get(n.input[0], [])) > 2 and all(dims[n.input[0]][1:]):
            # a Flatten (or Reshape to 2-D) straight on a channels-first tensor exists only where the
            # rewrite folded the Transpose before it into the Dense rows: features in channels-first order
            out = "cfflat:" + ",".join(map(str, dims[n.input[0]][1:]))
        else:
            out = next((layout[i] for i in n.input if i in layout), "?")
        for o in n.output:
            layout[o] = out
    return layout


def to_keras_layout(value: np.ndarray, keras_shape: tuple, layout: str) -> np.ndarray | None:
    """``value`` in Keras' channels-last layout by the rule of the module docstring, or None."""
    if layout.startswith("cfflat:"):   # Flatten of (N, C, *S) -> Flatten of (N, *S, C)
        cf = [int(d) for d in layout[7:].split(",")]
        if value.ndim != 2 or math.prod(cf) != value.shape[1] or tuple(value.shape) != tuple(keras_shape):
            return None
        v = value.reshape(value.shape[0], *cf)
        return np.transpose(v, to_last(v.ndim)).reshape(value.shape[0], -1)
    as_is = tuple(value.shape) == tuple(keras_shape)
    back = value.ndim > 2 and tuple(value.shape[i] for i in to_last(value.ndim)) == tuple(keras_shape)
    if back and (not as_is or layout == "cf"):
        return np.transpose(value, to_last(value.ndim))
    return value if as_is else None


def to_graph_layout(keras_value: np.ndarray, layout: str) -> np.ndarray:
    """A Keras activation in the layout a graph tensor has (inverse of ``to_keras_layout``)."""
    if layout.startswith("cfflat:"):
        cf = [int(d) for d in layout[7:].split(",")]
        v = keras_value.reshape(keras_value.shape[0], *cf[1:], cf[0])
        return np.ascontiguousarray(np.transpose(v, to_first(v.ndim)).reshape(keras_value.shape[0], -1))
    if layout == "cf" and keras_value.ndim > 2:
        return np.ascontiguousarray(np.transpose(keras_value, to_first(keras_value.ndim)))
    return keras_value
