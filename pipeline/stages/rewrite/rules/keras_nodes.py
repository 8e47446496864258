"""The export stage's single-node Keras layers (``ai.keras2torch::<kind>``, ``core.trainable``).

- ``Dropout``, ``GaussianNoise``, ``GaussianDropout``, ``AlphaDropout`` and
  ``ActivityRegularization`` (an activity regularizer's identity node): element-wise,
  the Transpose passes through unchanged.
- ``BatchNormalization``, ``SpatialDropout1D/2D/3D``: per channel on the spec's ``axis``;
  the Transpose passes through and the axis becomes ``p[axis]`` in the ``keras``
  attribute. The node's function body (which has the axis built in) is rebuilt from the
  spec afterwards, once for the whole graph (``passes.keras_functions``).

The weights (inputs 1...) are per-channel vectors: only the data input moves.
"""

from __future__ import annotations

from pipeline.core.registry import handles
from pipeline.core.trainable import DOMAIN, from_json
from pipeline.stages.rewrite.rules.common import data_perm, push_same_layout


def _transposed_data(ctx, node):
    p = data_perm(ctx, node, [0])
    return p if p is not None else ctx.fail(node, "the transposed input is not the data input")


@handles(*(f"{DOMAIN}::{k}" for k in ("Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                                      "ActivityRegularization")))
def elementwise(ctx, node):
    p = _transposed_data(ctx, node)
    return push_same_layout(ctx, node, [0], p) if isinstance(p, tuple) else p


@handles(*(f"{DOMAIN}::{k}" for k in ("BatchNormalization", "SpatialDropout1D", "SpatialDropout2D",
                                      "SpatialDropout3D")))
def per_channel(ctx, node):
    p = _transposed_data(ctx, node)
    if not isinstance(p, tuple):
        return p
    spec = from_json(ctx.attr(node, "keras"))
    if spec.rank != len(p):
        return ctx.fail(node, f"the spec's rank {spec.rank} is not the data's {len(p)}")
    spec.axis = p[spec.axis]
    return push_same_layout(ctx, node, [0], p, {"keras": spec.to_json()})
