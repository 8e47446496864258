"""Batch norms and the dropout family at export time (TensorFlow side; imported by ``export``
only).

For inference, TF's grappler folds a ``BatchNormalization`` into the convolution before it
and the dropout family is the identity, so neither would reach the port at all. For a port
that trains, each such layer is a stub (``stubs.py``): a ``tf.numpy_function`` with the
layer's input and shape, which ``stubs.replace_stubs`` turns into one
``ai.keras2torch::<kind>`` node with its spec and weights (``core.trainable``).

A layer with an ``activity_regularizer`` (``activity_of``) is wrapped (``activity_wrapper``):
its copy (or its stub) runs, then each of its outputs goes through a stub that becomes an
identity node ``ai.keras2torch::ActivityRegularization`` with the L1/L2 factors, which the
generator makes a module that records Keras' term of that output.

``spec_of`` says why a layer cannot be one node (renorm, a Dropout's ``noise_shape``); that
layer stays as it was (folded or gone, as before), and ``meta.json`` says why.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.trainable import ACTIVITY, ActivitySpec, BatchNormSpec, DropoutSpec


def spec_of(layer) -> tuple[BatchNormSpec | DropoutSpec, list[np.ndarray]] | str:
    """The spec and weights of a layer of ``core.trainable.KINDS``, or why it is not one node."""
    kind = type(layer).__name__
    if kind == "BatchNormalization":
        if getattr(layer, "renorm", False):
            return "renorm=True"
        if not isinstance(layer.axis, int):
            return f"axis {layer.axis} (more than one axis)"
        weights, roles, paths = [], [], []
        for role in ("gamma", "beta", "moving_mean", "moving_variance"):
            v = getattr(layer, role, None)
            if v is not None:
                weights.append(np.asarray(v.numpy(), np.float32))
                roles.append(role)
                paths.append(v.path)
        spec = BatchNormSpec(kind=kind, layer=layer.name, axis=int(layer.axis), epsilon=float(layer.epsilon),
                             momentum=float(layer.momentum), center=bool(layer.center), scale=bool(layer.scale),
                             trainable=bool(layer.trainable), weights=roles, variables=paths)
        return spec, weights
    if getattr(layer, "noise_shape", None) is not None:
        return f"noise_shape={layer.noise_shape}"
    axis = -1
    if kind.startswith("SpatialDropout") and getattr(layer, "data_format", "channels_last") == "channels_first":
        axis = 1
    spec = DropoutSpec(kind=kind, layer=layer.name, rate=float(getattr(layer, "rate", 0.0)),
                       stddev=float(getattr(layer, "stddev", 0.0)), axis=axis, seed=getattr(layer, "seed", None))
    return spec, []


def stub_class():
    import keras
    import tensorflow as tf

    class LayerStub(keras.layers.Layer):
        """Stands for a layer of ``core.trainable.KINDS`` in the graph tf2onnx sees; holds a copy of the
        layer so that the model's weights keep their order."""

        def __init__(self, original, index: int, stubs):
            super().__init__(name=original.name, dtype=original.dtype_policy)
            self.inner = type(original).from_config(original.get_config())
            self.index = index
            self._stubs = stubs
            self.supports_masking = True

        def build(self, input_shape):
            self.inner.build(input_shape)

        def compute_output_shape(self, input_shape):
            return input_shape

        def call(self, x, training=None, mask=None):
            spec = self._stubs.specs[self.index][0]
            spec.rank = len(x.shape)
            spec.axis = spec.axis % spec.rank
            y = tf.numpy_function(_never_run, [x], [x.dtype], stateful=True, name=f"{self._stubs.op}_{self.index}")
            return tf.ensure_shape(y[0], x.shape)   # tf2onnx reads shapes from the graph

    return LayerStub


def _never_run(*_):
    raise RuntimeError("a layer stub ran: it exists for tf2onnx's trace only")


def activity_of(layer) -> tuple[float, float] | str | None:
    """``(l1, l2)`` of the layer's activity regularizer, None when it has none, or why it is
    not ported (a regularizer that is not Keras' L1/L2/L1L2)."""
    r = getattr(layer, "activity_regularizer", None)
    if r is None:
        return None
    cfg = r.get_config() if hasattr(r, "get_config") else {}
    if type(r).__name__ not in ("L1", "L2", "L1L2") or not set(cfg) <= {"l1", "l2"}:
        return f"activity regularizer {type(r).__name__} (only L1/L2/L1L2 are ported)"
    return float(cfg.get("l1", 0.0)), float(cfg.get("l2", 0.0))


def activity_wrapper():
    """A layer class that runs ``inner`` (the layer's copy or stub) and passes each output
    through an activity stub (``stubs.replace_stubs`` makes it an ``ActivityRegularization``
    node). ``indices`` reserves one stub index per output, filled on the trace."""
    import keras
    import tensorflow as tf

    class ActivityStub(keras.layers.Layer):
        def __init__(self, original, inner, l1: float, l2: float, stubs):
            super().__init__(name=original.name, dtype=original.dtype_policy)
            self.inner = inner
            self.l1, self.l2 = l1, l2
            self._stubs = stubs
            self._indices: dict[int, int] = {}
            self._original_mask = original.compute_mask
            self.supports_masking = True

        def compute_mask(self, inputs, mask=None):
            return self._original_mask(inputs, mask)

        def call(self, *args, training=None, mask=None, **kwargs):
            if training is not None and getattr(self.inner, "_call_has_training_arg", False):
                kwargs["training"] = training
            if any(m is not None for m in tf.nest.flatten(mask)) and getattr(self.inner, "_call_has_mask_arg", False):
                kwargs["mask"] = mask
            ys = self.inner(*args, **kwargs)
            flat = tf.nest.flatten(ys)
            out = []
            for k, y in enumerate(flat):
                if k not in self._indices:
                    self._indices[k] = self._stubs.next_index()
                    self._stubs.specs[self._indices[k]] = (
                        ActivitySpec(kind=ACTIVITY, layer=self.name, l1=self.l1, l2=self.l2, output=k), [])
                i = self._indices[k]
                z = tf.numpy_function(_never_run, [y], [y.dtype], stateful=True, name=f"{self._stubs.op}_{i}")
                out.append(tf.ensure_shape(z[0], y.shape))
            return tf.nest.pack_sequence_as(ys, out)

    return ActivityStub
