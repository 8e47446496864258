"""One small Keras model per layer kind of the channels-first rewrite (``tests/layers.py:NAME``).

Each builder feeds the layer channels-last conv features (so its axes matter), seeds
Keras and perturbs constant weights (``models.perturb``) so a wrong axis changes numbers.
``LAYERS`` lists them all; ``tests/export_many.py`` exports them in one process.
"""

import sys
from pathlib import Path

import keras
import numpy as np
from keras import ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import perturb  # noqa: E402

L = keras.layers
SHAPES = {1: (10, 3), 2: (8, 6, 3), 3: (6, 6, 4, 3)}
CONV = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}


def _model(rank, body, name, conv=True, shape=None):
    keras.utils.set_random_seed(1)
    x = keras.Input(shape or SHAPES[rank], name="x")
    y = CONV[rank](4, 1, name="conv_in")(x) if conv else x
    return perturb(keras.Model(x, body(y), name=name))


LAYERS = {}


def layer(name, fn):
    LAYERS[name] = fn
    globals()[name] = fn


for d in (1, 2, 3):
    k = (3,) * d
    layer(f"conv{d}d", lambda d=d: _model(d, lambda y: CONV[d](5, 3, padding="same", strides=1, name="conv")(y),
                                          f"conv{d}d"))
    layer(f"conv{d}d_strided", lambda d=d: _model(d, lambda y: CONV[d](5, 2, strides=2, name="conv")(y),
                                                  f"conv{d}d_strided"))
    layer(f"maxpool{d}d", lambda d=d: _model(d, lambda y: getattr(L, f"MaxPooling{d}D")(2)(y), "pool"))
    layer(f"avgpool{d}d", lambda d=d: _model(d, lambda y: getattr(L, f"AveragePooling{d}D")(2, padding="same")(y),
                                             "pool"))
    layer(f"cropping{d}d", lambda d=d: _model(d, lambda y: getattr(L, f"Cropping{d}D")((1, 1) if d == 1 else
                                                                                         ((1, 0),) * d)(y), "crop"))
    layer(f"zeropadding{d}d", lambda d=d: _model(d, lambda y: getattr(L, f"ZeroPadding{d}D")((1, 2) if d == 1 else
                                                                                               ((1, 2),) * d)(y), "pad"))
    layer(f"upsampling{d}d", lambda d=d: _model(d, lambda y: getattr(L, f"UpSampling{d}D")(2)(y), "up"))
    layer(f"conv{d}d_transpose", lambda d=d: _model(
        d, lambda y: getattr(L, f"Conv{d}DTranspose")(3, 3, strides=2, padding="same")(y), "convt"))
    layer(f"global_avgpool{d}d", lambda d=d: _model(d, lambda y: getattr(L, f"GlobalAveragePooling{d}D")()(y), "gap"))
    layer(f"global_maxpool{d}d_keepdims", lambda d=d: _model(
        d, lambda y: getattr(L, f"GlobalMaxPooling{d}D")(keepdims=True)(y), "gmp"))
    layer(f"dense_rank{d + 2}", lambda d=d: _model(d, lambda y: L.Dense(6)(y), "dense"))
    layer(f"flatten_dense{d}d", lambda d=d: _model(d, lambda y: L.Dense(3)(L.Flatten()(y)), "flatten_dense"))

for d in (1, 2):
    layer(f"separable_conv{d}d", lambda d=d: _model(d, lambda y: getattr(L, f"SeparableConv{d}D")(5, 3, depth_multiplier=2)(y),
                                                    "sep"))
    layer(f"depthwise_conv{d}d", lambda d=d: _model(d, lambda y: getattr(L, f"DepthwiseConv{d}D")(3, depth_multiplier=2)(y),
                                                    "dw"))

for axis in (-1, 1, 2):
    tag = f"m{-axis}" if axis < 0 else axis
    layer(f"concat_axis{tag}", lambda axis=axis: _model(
        2, lambda y: L.Concatenate(axis=axis)([y, L.Conv2D(4, 1)(y)]), "concat"))
    layer(f"softmax_axis{tag}", lambda axis=axis: _model(2, lambda y: L.Softmax(axis=axis)(y), "softmax"))
layer("concat_axis3_rank5", lambda: _model(3, lambda y: L.Concatenate(axis=3)([y, L.Conv3D(4, 1)(y)]), "concat"))
layer("softmax_axis1_rank3", lambda: _model(1, lambda y: L.Softmax(axis=1)(y), "softmax"))

# Keras' TF backend runs grouped convs through an XLA-compiled function (ConvNeXt); exact GELU uses Erfc
layer("grouped_conv2d", lambda: _model(2, lambda y: L.Conv2D(6, 3, groups=2)(y), "gconv"))
layer("grouped_conv1d", lambda: _model(1, lambda y: L.Conv1D(6, 3, groups=2)(y), "gconv"))
layer("gelu_exact", lambda: _model(2, lambda y: L.Activation("gelu")(y), "gelu"))
layer("batchnorm", lambda: _model(2, lambda y: L.BatchNormalization()(y), "bn"))
layer("batchnorm_axis1", lambda: _model(2, lambda y: L.BatchNormalization(axis=1)(y), "bn"))
layer("layernorm", lambda: _model(2, lambda y: L.LayerNormalization()(y), "ln"))
layer("layernorm_hw", lambda: _model(2, lambda y: L.LayerNormalization(axis=[1, 2])(y), "ln"))
layer("groupnorm", lambda: _model(2, lambda y: L.GroupNormalization(groups=2)(y), "gn"))
layer("permute", lambda: _model(2, lambda y: L.Conv2D(2, 1)(L.Permute((2, 1, 3))(y)), "permute"))
layer("reshape", lambda: _model(2, lambda y: L.Reshape((24, 8))(y), "reshape"))
layer("reshape_split_channels", lambda: _model(2, lambda y: L.Reshape((8, 6, 2, 2))(y), "reshape"))
layer("repeat_vector", lambda: _model(2, lambda y: L.Conv1D(3, 2)(L.RepeatVector(5)(L.GlobalAveragePooling2D()(y))),
                                      "repeat"))
layer("time_distributed", lambda: _model(2, lambda y: L.TimeDistributed(L.Conv1D(3, 2))(y), "td"))
layer("resizing", lambda: _model(2, lambda y: L.Resizing(12, 9)(y), "resize"))
layer("resizing_nearest", lambda: _model(2, lambda y: L.Resizing(16, 12, interpolation="nearest")(y), "resize"))
layer("center_crop", lambda: _model(2, lambda y: L.CenterCrop(4, 4)(y), "crop"))
layer("rescaling", lambda: _model(2, lambda y: L.Rescaling(0.5, offset=0.1)(y), "rescale"))
layer("normalization", lambda: _model(2, lambda y: L.Normalization(mean=[0.1, 0.2, 0.3, 0.4],
                                                                   variance=[1.0, 2.0, 0.5, 4.0])(y), "norm"))
layer("normalization_adapted", lambda: _model(2, lambda y: _adapted(L.Normalization(), (8, 6, 4))(y), "norm"))
layer("prelu_shared", lambda: _model(2, lambda y: L.PReLU(shared_axes=[1, 2])(y), "prelu"))
layer("prelu", lambda: _model(2, lambda y: L.PReLU()(y), "prelu"))
layer("mha_conv_features", lambda: _model(1, lambda y: L.MultiHeadAttention(2, 3)(y, y), "mha"))
layer("lstm_conv_features", lambda: _model(1, lambda y: L.LSTM(5)(y), "lstm"))
layer("add_broadcast_const", lambda: _model(2, lambda y: y * ops.convert_to_tensor(
    np.linspace(0.5, 1.5, 4, dtype="float32")) + ops.convert_to_tensor(np.linspace(-1, 1, 6 * 4, dtype="float32").reshape(6, 4)),
    "bcast"))
# keras.ops on conv features: one per axis-dependent ONNX op
layer("op_split", lambda: _model(2, lambda y: L.Concatenate(axis=2)(ops.split(y, 2, axis=-1)), "split"))
layer("op_slice", lambda: _model(2, lambda y: y[:, 1:5, ::2, 1:3], "slice"))
layer("op_gather", lambda: _model(2, lambda y: ops.take(y, [3, 0, 1], axis=-1), "gather"))
layer("op_pad", lambda: _model(2, lambda y: ops.pad(y, [[0, 0], [1, 0], [0, 2], [1, 1]]), "pad"))
layer("op_reduce_channels", lambda: _model(2, lambda y: ops.sum(y, axis=-1, keepdims=True), "reduce"))
layer("op_reduce_mean_hw", lambda: _model(2, lambda y: ops.mean(y, axis=[1, 2]), "reduce"))
layer("op_reduce_max_h", lambda: _model(2, lambda y: ops.max(y, axis=1), "reduce"))
layer("op_argmax", lambda: _model(2, lambda y: L.Lambda(_argmax)(y), "argmax"))
layer("op_argmin_w", lambda: _model(2, lambda y: L.Lambda(_argmin)(y), "argmin"))
layer("op_squeeze_unsqueeze", lambda: _model(2, lambda y: ops.expand_dims(ops.squeeze(y[:, :1], axis=1), 1), "sq"))
layer("op_tile", lambda: _model(2, lambda y: ops.tile(y, [1, 2, 1, 3]), "tile"))
layer("op_expand", lambda: _model(2, lambda y: L.Lambda(_expand)(y), "expand"))
layer("op_transpose_hw", lambda: _model(2, lambda y: ops.transpose(y, (0, 2, 1, 3)), "transpose"))
layer("op_einsum", lambda: _model(2, lambda y: ops.einsum("nhwc,cd->nhwd", y, ops.convert_to_tensor(
    np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3))), "einsum"))
layer("op_cumsum", lambda: _model(2, lambda y: ops.cumsum(y, axis=2), "cumsum"))
layer("op_logsoftmax", lambda: _model(2, lambda y: ops.log_softmax(y, axis=-1), "logsoftmax"))
layer("op_depth_to_space", lambda: _model(2, lambda y: L.Lambda(_d2s)(y), "d2s"))
layer("op_space_to_depth", lambda: _model(2, lambda y: L.Lambda(_s2d)(y), "s2d"))
layer("op_instance_norm", lambda: _model(2, lambda y: (y - ops.mean(y, axis=[1, 2], keepdims=True)) /
                                         ops.sqrt(ops.var(y, axis=[1, 2], keepdims=True) + 1e-3), "inorm"))


def _adapted(layer, shape):
    layer.adapt(np.random.default_rng(0).normal(1.0, 2.0, (4, *shape)).astype("float32"))
    return layer


def _argmax(t):  # keras.ops.argmax exports with Bitcast, which ONNX lacks
    import tensorflow as tf
    return tf.cast(tf.argmax(t, axis=-1), "float32")


def _argmin(t):
    import tensorflow as tf
    return tf.cast(tf.argmin(t, axis=2), "float32")


def _d2s(t):
    import tensorflow as tf
    return tf.nn.depth_to_space(t, 2)


def _expand(t):
    import tensorflow as tf
    return tf.broadcast_to(t[:, :1], tf.shape(t))


def _s2d(t):
    import tensorflow as tf
    return tf.nn.space_to_depth(t, 2)


def multi_branch():
    """Conv / pool / concat / residual graph: everything cancels, nothing is left."""
    keras.utils.set_random_seed(1)
    x = keras.Input((12, 12, 3), name="x")
    a = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    b = L.MaxPooling2D(3, strides=1, padding="same")(x)
    y = L.Concatenate()([a, b])
    y = L.Add()([y, L.Conv2D(7, 1)(y)])
    y = L.BatchNormalization()(y)
    return perturb(keras.Model(x, L.GlobalAveragePooling2D()(y)))


LAYERS["multi_branch"] = multi_branch
