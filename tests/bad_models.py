"""Builders of models that cannot be converted as they are (``MODEL=tests/bad_models.py:NAME``)."""

import keras
import numpy as np

L = keras.layers


def nan_weights():
    """Keras itself outputs NaN: a Dense kernel holds a NaN."""
    keras.utils.set_random_seed(1)
    x = keras.Input((8,), name="x")
    m = keras.Model(x, L.Dense(3, name="dense")(x))
    k = m.get_layer("dense").kernel
    v = np.array(k.numpy())
    v[0, 0] = np.nan
    k.assign(v)
    return m



class TopValues(keras.layers.Layer):
    """The k largest values along the last axis (keras.ops.top_k: an ONNX TopK node)."""

    def call(self, x):
        return keras.ops.top_k(x, 2)[0]


def top_k():
    """A layer whose ONNX op (TopK) has no PyTorch converter in any stage."""
    keras.utils.set_random_seed(1)
    x = keras.Input((6, 3), name="x")
    return keras.Model(x, TopValues(name="top_values")(L.Dense(5, name="dense")(x)))


class InverseErf(keras.layers.Layer):
    """keras.ops.erfinv: the TensorFlow op Erfinv, which tf2onnx cannot convert."""

    def call(self, x):
        return keras.ops.erfinv(keras.ops.tanh(x))


def erfinv():
    """A layer whose TensorFlow op has no ONNX converter in tf2onnx."""
    keras.utils.set_random_seed(1)
    x = keras.Input((6,), name="x")
    return keras.Model(x, L.Dense(2, name="head")(InverseErf(name="inverse_erf")(L.Dense(5, name="dense")(x))))
