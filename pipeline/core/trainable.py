"""Keras layers that act differently in training as the export stage hands them on:
``BatchNormSpec`` (``BatchNormalization``) and ``DropoutSpec`` (``Dropout``,
``SpatialDropout1D/2D/3D``, ``GaussianNoise``, ``GaussianDropout``, ``AlphaDropout``), and
``ActivitySpec``: the output of a layer with an L1/L2 ``activity_regularizer`` (an identity
node after the layer's output, ``ActivityRegularization``, whose module records Keras' term).

As the recurrent layers (``core.recurrent``), each is one ONNX node
``ai.keras2torch::<kind>`` (overload: the layer) whose ``keras`` attribute is its spec as
JSON, whose inputs are the data and the layer's weights (one initializer per Keras
variable, named after it), and whose body is a model-local ONNX function of standard ops
for onnxruntime, with Keras' inference semantics: a per-channel affine on the Keras axis
for a batch norm, ``Identity`` for the dropout family and an activity regularizer. ``function`` builds that body from
the spec; the export stage writes it, and the rewrite builds it again when it moves a
node's axis (channels-first). The generator reads the spec and writes
``nn.BatchNorm*d``/``nn.Dropout*`` or a small module that trains as Keras does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.core.onnx_body import Body
from pipeline.core.recurrent import DOMAIN

NORM_KINDS = ("BatchNormalization",)
DROPOUT_KINDS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                 "GaussianDropout", "AlphaDropout")
KINDS = NORM_KINDS + DROPOUT_KINDS
# the identity node after an activity-regularized layer's output (not a Keras layer kind of its own:
# Keras' ``ActivityRegularization`` layer is a layer with an activity regularizer, stubbed as any other)
ACTIVITY = "ActivityRegularization"
# kinds that act on whole channels (an axis the layout rewrite remaps); the others are element-wise
PER_CHANNEL = ("BatchNormalization", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D")


class _Spec:
    kind: str

    @property
    def op_type(self) -> str:
        return self.kind

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class BatchNormSpec(_Spec):
    kind: str                       # BatchNormalization
    layer: str
    axis: int = -1                  # the channel axis, of ``rank`` dims (batch included); >= 0 once traced
    rank: int = 0                   # the input's rank (set when the stub is traced)
    epsilon: float = 1e-3
    momentum: float = 0.99          # Keras': moving = moving * momentum + batch * (1 - momentum)
    center: bool = True
    scale: bool = True
    trainable: bool = True          # False: inference mode even in training (Keras' frozen batch norm)
    weights: list[str] = field(default_factory=list)    # roles in input order: gamma, beta, moving_mean, ...
    variables: list[str] = field(default_factory=list)  # the Keras variable path of each weight


@dataclass
class DropoutSpec(_Spec):
    kind: str                       # one of DROPOUT_KINDS
    layer: str
    rate: float = 0.0               # GaussianNoise: 0
    stddev: float = 0.0             # GaussianNoise only
    axis: int = -1                  # SpatialDropout*: the channel axis (whole channels are dropped)
    rank: int = 0
    seed: int | None = None
    weights: list[str] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)


@dataclass
class ActivitySpec(_Spec):
    """Keras' activity regularizer of ``layer``'s output ``output`` (of its outputs, in
    ``tree.flatten`` order): ``(l1 * sum|y| + l2 * sum y**2) / batch`` added to ``model.losses``
    on every call (keras/src/layers/layer.py, Keras 3.15.1: ``divide_no_nan`` by ``shape[0]``)."""
    kind: str                       # ACTIVITY
    layer: str
    l1: float = 0.0
    l2: float = 0.0
    output: int = 0
    weights: list[str] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)

    @property
    def op_type(self) -> str:
        return ACTIVITY


def from_json(text: str) -> BatchNormSpec | DropoutSpec | ActivitySpec:
    d = json.loads(text)
    if d["kind"] == ACTIVITY:
        return ActivitySpec(**d)
    return (BatchNormSpec if d["kind"] in NORM_KINDS else DropoutSpec)(**d)


def function(spec: BatchNormSpec | DropoutSpec | ActivitySpec, opset: int):
    """The model-local function (overload: the layer) that is the node's body for
    onnxruntime: Keras' inference. Inputs ``x`` and the weights in ``spec.weights`` order."""
    from onnx import helper

    b = Body()
    w = {role: f"w{k}" for k, role in enumerate(spec.weights)}
    if isinstance(spec, BatchNormSpec):
        # as tf.nn.batch_normalization: inv = rsqrt(var + eps) * gamma; x * inv + (beta - mean * inv)
        inv = b("Reciprocal", [b("Sqrt", [b("Add", [w["moving_variance"], b.const(np.float32(spec.epsilon))])])])
        if spec.scale:
            inv = b("Mul", [inv, w["gamma"]])
        shift = b("Mul", [w["moving_mean"], inv])
        shift = b("Sub", [w["beta"], shift]) if spec.center else b("Neg", [shift])
        trailing = spec.rank - 1 - spec.axis
        if trailing > 0:   # (C,) -> (C, 1, ..., 1): broadcast on the channel axis
            shape = b.const(np.array([-1] + [1] * trailing, np.int64))
            inv, shift = b("Reshape", [inv, shape]), b("Reshape", [shift, shape])
        y = b("Add", [b("Mul", ["x", inv]), shift])
    else:
        y = "x"
    b.nodes.append(helper.make_node("Identity", [y], ["y"]))
    return helper.make_function(DOMAIN, spec.op_type, ["x", *w.values()], ["y"], b.nodes,
                                [helper.make_opsetid("", opset)], overload=spec.layer)
