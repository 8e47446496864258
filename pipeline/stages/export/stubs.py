"""Keras layers as single ONNX nodes: the one place that stubs them (TensorFlow side for
``stubbed``, ONNX side for ``replace_stubs``; imported by ``export`` only).

tf2onnx (and grappler before it) writes some Keras layers in a form the port cannot keep:
recurrent layers as a ``Loop`` (``recurrent.py``), batch norms folded into the
convolution, the dropout family dropped and activity regularizers nowhere (``trainable.py``). ``stubbed`` clones the
model with each such layer replaced by a stub whose call is a ``tf.numpy_function`` named
``k2t_stub_<i>`` (one index space for all families), which tf2onnx passes through as a
``PyFunc`` node; ``replace_stubs`` then puts one ``ai.keras2torch::<kind>`` node per layer
there, its weights initializers named after their Keras variables, its attribute ``keras``
the layer's spec (``core.recurrent``, ``core.trainable``) and its body a model-local
function of standard ONNX ops (``recurrent_onnx.make_function``, ``core.trainable.function``).

A family supplies ``spec_of(layer) -> (spec, weights) | reason`` and ``stub_class()``. What
a spec cannot express stays as before: recurrent layers unrolled, the others plain (their
reasons in ``Stubs.unrolled`` and ``Stubs.plain``).
"""

from __future__ import annotations

import re

from pipeline.core.errors import PipelineError
from pipeline.core.recurrent import DOMAIN, RecurrentSpec
from pipeline.core.trainable import KINDS as TRAINABLE_KINDS
from pipeline.core.trainable import ActivitySpec
from pipeline.core.trainable import function as trainable_function
from pipeline.stages.export import recurrent, trainable
from pipeline.stages.export.recurrent_onnx import make_function as recurrent_function
from pipeline.stages.export.savedmodel import SavedModelSignature

STUB_OP = "k2t_stub"


class Stubs:
    """The stubbed copy of a model and what each stub stands for.

    ``specs``: stub index -> (spec, weights); ``unrolled``: recurrent layers kept as unrolled
    copies, with the reason (a mask arrives at trace time, or ``recurrent.spec_of`` says
    why); ``plain``: other layers kept as they were, with the reason; ``done``: the layers
    that became one node (``replace_stubs``)."""

    op = STUB_OP

    def __init__(self):
        self.specs: dict[int, tuple] = {}
        self.unrolled: dict[str, str] = {}
        self.plain: dict[str, str] = {}
        self.activity_plain: dict[str, str] = {}   # activity regularizers not ported, with the reason
        self.done: list[str] = []
        self.model = None

    def next_index(self) -> int:
        return max(self.specs, default=-1) + 1

    def layers(self, recurrent_kinds: bool) -> dict[str, str]:
        """layer -> kind of the layers done, recurrent ones or the others (activity nodes apart)."""
        kinds = {s.layer: s.kind for s, _ in self.specs.values()
                 if isinstance(s, RecurrentSpec) == recurrent_kinds and not isinstance(s, ActivitySpec)}
        return {k: v for k, v in kinds.items() if k in self.done}

    def activity_layers(self) -> list[str]:
        """The layers whose activity regularizer became nodes."""
        return sorted({s.layer for s, _ in self.specs.values() if isinstance(s, ActivitySpec) and s.layer in self.done})


def _is_recurrent(layer) -> bool:
    kind = type(layer).__name__
    return kind in recurrent.RECURRENT or kind == "Bidirectional"


def stubbed(model) -> Stubs | None:
    """A copy of ``model`` with stubs for its recurrent layers, batch norms and dropout
    layers (None when it has none)."""
    if isinstance(model, SavedModelSignature):
        return None
    top = getattr(model, "layers", [])
    if not any(_is_recurrent(l) or type(l).__name__ in TRAINABLE_KINDS or trainable.activity_of(l) for l in top):
        return None
    import keras

    stubs = Stubs()
    rnn_stub, layer_stub, activity = recurrent.stub_class(), trainable.stub_class(), trainable.activity_wrapper()

    def clone(layer):
        inner = clone_one(layer)
        factors = trainable.activity_of(layer)
        if isinstance(factors, str):
            stubs.activity_plain[layer.name] = factors
        elif factors is not None:
            return activity(layer, inner, *factors, stubs)
        return inner

    def clone_one(layer):
        kind = type(layer).__name__
        if _is_recurrent(layer):
            got = recurrent.spec_of(layer)
            if isinstance(got, str):
                stubs.unrolled[layer.name] = got
                return recurrent.unrolled_layer(layer)
        elif kind in TRAINABLE_KINDS:
            got = trainable.spec_of(layer)
            if isinstance(got, str):
                stubs.plain[layer.name] = got
                return layer.__class__.from_config(layer.get_config())
        else:
            return layer.__class__.from_config(layer.get_config())
        index = stubs.next_index()
        stubs.specs[index] = got
        if _is_recurrent(layer):
            return rnn_stub(layer, recurrent.unrolled_layer(layer), index, stubs)
        return layer_stub(layer, index, stubs)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    stubs.model = copy
    return stubs


def _function(spec, opset: int):
    return recurrent_function(spec, opset) if isinstance(spec, RecurrentSpec) else trainable_function(spec, opset)


def replace_stubs(proto, specs: dict, op_prefix: str, model_name: str) -> list[str]:
    """Replace each stub node of ``proto`` by its layer's node; returns the layers done.

    ``specs``: stub index -> (spec, weights). Raises when a stub is left over."""
    from onnx import helper, numpy_helper

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    pattern = re.compile(rf"(?:^|/){re.escape(op_prefix)}_(\d+)(?:_\d+)?$")
    taken = {t.name for t in proto.graph.initializer}
    nodes, functions, done, bodies = [], [], [], set()
    for node in proto.graph.node:
        m = pattern.search(node.name) if node.op_type == "PyFunc" else None
        if m is None:
            nodes.append(node)
            continue
        index = int(m.group(1))
        if index not in specs:
            raise PipelineError("export", f"layer stub {node.name!r} has no layer", model=model_name)
        spec, weights = specs[index]
        names = []
        for path, w in zip(spec.variables, weights):
            name = path
            while name in taken:
                name += "_"
            taken.add(name)
            names.append(name)
            proto.graph.initializer.append(numpy_helper.from_array(w, name))
        inputs = [node.input[0], *names, *node.input[1:]]
        scope = node.name.rsplit("/", 1)[0] + "/" if "/" in node.name else ""
        nodes.append(helper.make_node(spec.op_type, inputs, list(node.output), name=f"{scope}{spec.op_type}",
                                      domain=DOMAIN, overload=spec.layer, keras=spec.to_json()))
        if (spec.op_type, spec.layer) not in bodies:   # a layer called twice has one function
            functions.append(_function(spec, opset))
            bodies.add((spec.op_type, spec.layer))
        if spec.layer not in done:
            done.append(spec.layer)
    if not done:
        return done
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    proto.functions.extend(functions)
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    proto.ir_version = max(proto.ir_version, 10)   # function overloads
    _shapes(proto, {o for n in nodes if n.domain == DOMAIN for o in n.output})
    return done


def _shapes(proto, stub_outputs: set[str]) -> None:
    """Types for what tf2onnx could not infer through a stub: the stubs' outputs and the
    graph outputs after them (ONNX's inference reads the new nodes' function bodies)."""
    import onnx

    keep = [v for v in proto.graph.value_info if v.name not in stub_outputs and v.type.tensor_type.HasField("shape")]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    missing = [o for o in proto.graph.output if not o.type.tensor_type.HasField("shape")]
    if not missing:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for g in (probe.graph,):
        for o in g.output:
            if not o.type.tensor_type.HasField("shape"):
                o.type.tensor_type.ClearField("elem_type")
    for t in probe.graph.initializer:   # shapes only: no tensor data needed
        if t.data_location == onnx.TensorProto.EXTERNAL:
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    inferred = onnx.shape_inference.infer_shapes(probe)
    found = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]
             if v.type.tensor_type.HasField("shape")}
    for o in missing:
        if o.name in found:
            o.type.CopyFrom(found[o.name].type)
        else:   # rank unknown: a shape of unknown dims is still a valid type
            o.type.tensor_type.shape.SetInParent()


