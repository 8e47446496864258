"""Small models for ``configs/zoo.toml``: one per family of layers whose layout the
channels-first rewrite must get right (axis-dependent ops, Flatten/Reshape, Permute,
padding, resampling, depthwise/separable/transposed convolutions, normalisations).

Weights are seeded; biases and normalisation statistics get non-trivial values.
"""

import keras
import numpy as np

L = keras.layers


def perturb(model, seed=1):
    """Give every constant-initialised weight (biases, normalisation statistics) seeded values."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        v = np.asarray(w.numpy())
        if v.size and np.all(v == v.flat[0]):
            scale = "variance" in w.path or "gamma" in w.path
            w.assign((rng.uniform(0.5, 1.5, v.shape) if scale else rng.normal(0, 0.3, v.shape)).astype(v.dtype))
    return model


def _model(inp, out, name):
    return perturb(keras.Model(inp, out, name=name), seed=1)


def _image(shape=(16, 16, 3)):
    keras.utils.set_random_seed(1)
    return keras.Input(shape, name="image")


def concat_softmax():
    """Concatenate and Softmax over channels, reductions over space."""
    x = _image()
    a = L.Conv2D(4, 3, padding="same", name="a")(x)
    b = L.Conv2D(5, 1, name="b")(x)
    y = L.Concatenate(axis=-1, name="concat")([a, b])
    y = L.Softmax(axis=-1, name="softmax")(y)
    y = L.GlobalMaxPooling2D(name="gmp")(y)
    return _model(x, L.Dense(6, name="dense")(y), "concat_softmax")


def reshape_permute_dense():
    """Reshape and Permute that mix channels and space; Dense on a rank-3 tensor."""
    x = _image((8, 8, 4))
    y = L.Conv2D(6, 3, padding="same", name="conv")(x)
    y = L.Reshape((64, 6), name="reshape")(y)
    y = L.Permute((2, 1), name="permute")(y)
    y = L.Dense(5, name="dense_rank3")(y)
    y = L.Flatten(name="flatten")(y)
    return _model(x, L.Dense(3, name="head")(y), "reshape_permute_dense")


def pad_crop_resample():
    """ZeroPadding, Cropping, UpSampling and pooling with odd sizes."""
    x = _image((15, 13, 3))
    y = L.ZeroPadding2D(((1, 2), (0, 3)), name="pad")(x)
    y = L.Conv2D(4, 3, strides=2, name="conv")(y)
    y = L.UpSampling2D(2, name="up")(y)
    y = L.Cropping2D(((1, 0), (2, 1)), name="crop")(y)
    y = L.AveragePooling2D(3, strides=2, padding="same", name="avg")(y)
    y = L.MaxPooling2D(2, name="max")(y)
    return _model(x, L.Conv2D(3, 1, name="head")(y), "pad_crop_resample")


def depthwise_separable_transpose():
    """DepthwiseConv2D, SeparableConv2D and Conv2DTranspose, with BatchNormalization."""
    x = _image()
    y = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.SeparableConv2D(8, 3, strides=2, name="sep")(y)
    y = L.Conv2DTranspose(4, 3, strides=2, padding="same", name="deconv")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return _model(x, L.Dense(5, name="dense")(y), "depthwise_separable_transpose")


def layernorm_add_multiply():
    """LayerNormalization over channels, residual Add and gating Multiply."""
    x = _image((12, 12, 8))
    y = L.Conv2D(8, 3, padding="same", name="conv")(x)
    y = L.LayerNormalization(axis=-1, name="ln")(y)
    g = L.Conv2D(8, 1, activation="sigmoid", name="gate")(x)
    y = L.Multiply(name="mul")([y, g])
    y = L.Add(name="add")([x, y])
    return _model(x, L.Conv2D(4, 1, name="head")(y), "layernorm_add_multiply")


def slice_split_mean():
    """Channel slices (Split), a spatial Lambda-free slice and a channel-mean reduction."""
    x = _image((10, 10, 6))
    y = L.Conv2D(6, 3, padding="same", name="conv")(x)
    a, b = keras.ops.split(y, 2, axis=-1)
    c = keras.ops.mean(y, axis=-1, keepdims=True)
    y = L.Concatenate(name="concat")([b, a, c])
    y = y[:, 1:-1, ::2, :]
    y = L.Flatten(name="flatten")(y)
    return _model(x, L.Dense(4, name="dense")(y), "slice_split_mean")


def conv1d_conv3d():
    """Conv1D and Conv3D with pooling and Flatten (the rewrite's rank-3 and rank-5 paths)."""
    keras.utils.set_random_seed(1)
    s = keras.Input((40, 3), name="signal")
    v = keras.Input((6, 8, 8, 2), name="volume")
    a = L.Conv1D(4, 5, strides=2, name="c1")(s)
    a = L.MaxPooling1D(2, name="p1")(a)
    a = L.Flatten(name="f1")(a)
    b = L.Conv3D(3, 3, padding="same", name="c3")(v)
    b = L.MaxPooling3D(2, name="p3")(b)
    b = L.Flatten(name="f3")(b)
    y = L.Concatenate(name="concat")([a, b])
    return _model([s, v], L.Dense(5, name="dense")(y), "conv1d_conv3d")
