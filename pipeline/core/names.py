"""Which Keras layer an ONNX name comes from: the one place that answers it.

tf2onnx names nodes and values after the TF name scopes Keras opens per layer
(``functional_1/conv_1/BiasAdd`` for layer ``conv``: Keras 3 adds ``_N`` to each scope,
tf.keras does not), and the rewrite keeps those names (new nodes are ``<old>__k2tN``).
Fused nodes get no scope (tf2onnx's ``LSTM__33``): for those, ``NameIndex.layer_of`` asks
the nearest scoped neighbour.

- ``layer_in_scope``: any scope segment that names a layer (errors, generated names);
- ``layer_of_name``: the strict reading the per-layer debugger needs (the model's own
  scope and the op name are not layers; Keras 3's ``_N`` suffix preferred);
- ``NameIndex``: a graph's names, with the neighbour search for unscoped nodes.
"""

from __future__ import annotations

import re

_SUFFIX = re.compile(r"^(.*)_\d+$")


def layer_in_scope(name: str, layers) -> str | None:
    """The first ``/``-segment of ``name`` that is a layer, with or without a ``_N`` suffix."""
    for seg in name.split("/"):
        if seg in layers:
            return seg
        base = re.sub(r"_\d+$", "", seg)
        if base in layers:
            return base
    return None


def layer_of_name(name: str, layers: set[str], keras3: bool) -> str | None:
    """The top-level Keras layer of a node or value name, skipping the model's scope (the
    first segment) and the op (the last); ``keras3``: a ``_N`` suffix is Keras' own."""
    parts = name.split("/")
    for comp in parts[1:-1] if len(parts) > 2 else parts[:-1]:
        comp = comp.split("__k2t")[0]
        m = _SUFFIX.match(comp)
        stripped = m.group(1) if m else None
        if keras3 and stripped in layers:
            return stripped
        if comp in layers:
            return comp
        if stripped in layers:
            return stripped
    return None


def is_keras3(graph) -> bool:
    """Keras 3 suffixes every name scope with ``_N``; tf.keras does not."""
    heads = [n.name.split("/")[0] for n in graph.node if "/" in n.name]
    return bool(heads) and sum(bool(_SUFFIX.match(h)) for h in heads) * 2 > len(heads)


class NameIndex:
    """The names of one ONNX graph (a ``GraphProto``) and the Keras layers they belong to."""

    def __init__(self, graph, layers):
        self.layers = set(layers or ())
        self.producers = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.initializers = {t.name for t in graph.initializer}
        self.by_name = {n.name: n for n in graph.node}

    def layer_of(self, node, depth: int = 4) -> str | None:
        """The layer of ``node`` (a NodeProto or its name): by its own scope, else by the
        nearest scoped neighbour (inputs first, then users) within ``depth`` steps. A value
        read by several nodes belongs to none of them in particular (the rewrite merges
        equal Transposes of one tensor), so the search does not pass through it."""
        node = self.by_name.get(node) if isinstance(node, str) else node
        if node is None:
            return None
        layer = layer_in_scope(node.name, self.layers)
        if layer or not self.layers:
            return layer
        seen, frontier = {node.name}, [node]
        for _ in range(depth):
            nxt = []
            for n in frontier:
                near = [self.producers.get(i) for i in n.input
                        if i and i not in self.initializers and len(self.consumers.get(i, [])) == 1]
                near += [c for o in n.output for c in self.consumers.get(o, [])]
                for m in near:
                    if m is None or m.name in seen:
                        continue
                    seen.add(m.name)
                    if (layer := layer_in_scope(m.name, self.layers)):
                        return layer
                    nxt.append(m)
            frontier = nxt
        return None
