"""Keras model builders used by the tests (``MODEL=tests/models.py:NAME``).

Every builder seeds Keras and gives biases and normalisation statistics non-trivial
values (``perturb``), so that a wrong bias or axis changes the numbers.
"""

import keras
import numpy as np

L = keras.layers


def perturb(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        v = np.asarray(w.numpy())
        path = getattr(w, "path", None) or w.name
        if v.size and np.all(v == v.flat[0]):
            if "variance" in path or "gamma" in path:
                new = rng.uniform(0.5, 1.5, v.shape)
            else:
                new = rng.normal(0, 0.3, v.shape)
            w.assign(new.astype(v.dtype))
    return model


def _seed():
    keras.utils.set_random_seed(1)


def conv1d_flatten_dense():
    _seed()
    x = keras.Input((32, 3), name="x")
    y = L.Conv1D(4, 3, activation="relu", name="conv")(x)
    y = L.MaxPooling1D(2, name="pool")(y)
    y = L.Flatten(name="flatten")(y)
    return perturb(keras.Model(x, L.Dense(5, name="dense")(y)))


def conv2d_flatten_dense():
    _seed()
    x = keras.Input((12, 10, 3), name="image")
    y = L.Conv2D(6, 3, padding="same", name="conv")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.ReLU(name="relu")(y)
    y = L.MaxPooling2D(name="pool")(y)
    y = L.Conv2D(4, 3, name="conv2")(y)
    y = L.Flatten(name="flatten")(y)
    return perturb(keras.Model(x, L.Dense(7, name="dense")(y)))


def conv3d_flatten_dense():
    _seed()
    x = keras.Input((6, 8, 8, 2), name="volume")
    y = L.Conv3D(3, 3, activation="tanh", name="conv")(x)
    y = L.Flatten(name="flatten")(y)
    return perturb(keras.Model(x, L.Dense(4, name="dense")(y)))


def sequential_conv2d():
    _seed()
    m = keras.Sequential([
        keras.Input((16, 16, 3)),
        L.Conv2D(8, 3, strides=2, padding="valid", activation="relu"),
        L.Conv2D(8, 3, padding="valid"),
        L.Flatten(),
        L.Dense(10, activation="sigmoid"),
    ], name="seq")
    return perturb(m)


def multi_io():
    _seed()
    a = keras.Input((16, 16, 3), name="image")
    b = keras.Input((20, 2), name="signal")
    ya = L.Conv2D(4, 3, activation="relu", name="conv_a")(a)
    ya = L.GlobalAveragePooling2D(name="gap")(ya)
    yb = L.Conv1D(4, 3, name="conv_b")(b)
    yb = L.Flatten(name="flatten_b")(yb)
    z = L.Concatenate(name="concat")([ya, yb])
    out1 = L.Dense(3, name="head1")(z)
    out2 = L.Conv2D(2, 1, name="head2")(L.Conv2D(4, 3, padding="same", name="conv_a2")(a))
    return perturb(keras.Model([a, b], [out1, out2]))


def embedding_conv1d():
    _seed()
    x = keras.Input((24,), dtype="int32", name="tokens")
    y = L.Embedding(50, 8, name="embed")(x)
    y = L.Conv1D(6, 3, activation="relu", name="conv")(y)
    y = L.Flatten(name="flatten")(y)
    return perturb(keras.Model(x, L.Dense(2, name="dense")(y)))


BUILDERS = ["conv1d_flatten_dense", "conv2d_flatten_dense", "conv3d_flatten_dense", "sequential_conv2d",
            "multi_io", "embedding_conv1d"]


def unknown_length_conv1d():
    """A non-batch dimension Keras does not know: it stays free (any length) in every port."""
    _seed()
    x = keras.Input((None, 3), name="x")
    y = L.Conv1D(4, 3, name="conv")(x)
    return perturb(keras.Model(x, L.GlobalMaxPooling1D(name="gmp")(y)))


def dense_chain():
    """Dense layers only: exact float64 math on its ONNX graph is easy to compute elsewhere."""
    _seed()
    x = keras.Input((16,), name="x")
    y = L.Dense(64, activation="relu", name="d1")(x)
    y = L.Dense(64, activation="relu", name="d2")(y)
    return perturb(keras.Model(x, L.Dense(8, name="out")(y)))


def conv_bn_out():
    """A batch norm (no scale, no offset) as the output: its statistics decide the numbers."""
    _seed()
    x = keras.Input((10, 8, 3), name="x")
    y = L.Conv2D(4, 3, name="conv")(x)
    return perturb(keras.Model(x, L.BatchNormalization(center=False, scale=False, name="bn")(y)))


def free_size_unet():
    """An image model of any height and width: strided SAME convs (odd sizes pad
    asymmetrically), pooling, UpSampling2D, Concatenate skips, global pooling; a logits and
    a segmentation-map output (whose size follows the input's)."""
    _seed()
    x = keras.Input((None, None, 3), name="img")
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    a = L.BatchNormalization(name="bn1")(a)
    b = L.Conv2D(12, 3, strides=2, padding="same", activation="relu", name="down1")(a)   # ceil(H/2)
    p = L.MaxPooling2D(2, padding="same", name="pool")(a)                                # ceil(H/2)
    c = L.Concatenate(name="skip1")([b, p])
    d = L.Conv2D(16, 3, strides=2, padding="same", name="down2")(c)                     # ceil(H/4)
    u = L.UpSampling2D(2, name="up")(c)
    u = L.Conv2D(8, 3, padding="same", name="c_up")(u)
    e = L.AveragePooling2D(2, padding="same", name="avg")(u)                             # ceil(H/2) again
    f = L.Concatenate(name="skip2")([e, c])
    seg = L.Conv2D(4, 1, name="seg")(f)
    g = L.Concatenate(name="heads")([L.GlobalAveragePooling2D(name="gap")(d), L.GlobalMaxPooling2D(name="gmp")(f)])
    return perturb(keras.Model(x, [L.Dense(5, name="logits")(g), seg]))


def free_length_flatten_dense():
    """A free length that a Reshape pins (to 8): Flatten -> Dense needs that fixed size."""
    _seed()
    x = keras.Input((None, 3), name="x")
    y = L.Conv1D(4, 3, padding="same", name="conv")(x)
    y = L.Reshape((8, 4), name="pin")(y)
    y = L.Flatten(name="flatten")(y)
    return perturb(keras.Model(x, L.Dense(5, name="dense")(y)))


def free_flatten_dense():
    """Flatten -> Dense straight after a free length: Keras cannot build it."""
    _seed()
    x = keras.Input((None, 3), name="x")
    y = L.Flatten(name="flatten")(L.Conv1D(4, 3, name="conv")(x))
    return perturb(keras.Model(x, L.Dense(5, name="dense")(y)))


def free_length_dense():
    """A Dense on every step of a free length (tf2onnx's Tensordot: Shape -> ReduceProd ->
    Reshape), after a strided SAME Conv1D, pooling and a LayerNormalization."""
    _seed()
    x = keras.Input((None, 4), name="x")
    y = L.Conv1D(8, 3, strides=2, padding="same", activation="relu", name="conv")(x)
    y = L.MaxPooling1D(2, padding="same", name="pool")(y)
    y = L.LayerNormalization(name="ln")(y)
    return perturb(keras.Model(x, L.Dense(3, name="dense")(y)))
