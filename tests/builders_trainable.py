"""Keras models with batch norms and dropout layers for ``test_trainable_layers.py``
(``MODEL=tests/builders_trainable.py:NAME``). Weights and statistics are perturbed
(``models.perturb``) so that a wrong axis, epsilon or statistic changes the numbers; the
``*_rate0`` variants have every dropout rate 0, so that Keras' ``training=True`` output is
deterministic and the port's train-mode forward can be compared with it."""

import sys
from pathlib import Path

import keras

sys.path.insert(0, str(Path(__file__).resolve().parent))   # loaded by file path from the export stage
from models import perturb  # noqa: E402

L = keras.layers


def _seed():
    keras.utils.set_random_seed(3)


def _conv2d_bn(rate: float, frozen: bool = False):
    _seed()
    x = keras.Input((12, 12, 3), name="x")
    y = L.Conv2D(8, 3, name="conv1")(x)
    bn = L.BatchNormalization(name="bn")
    y = bn(y)
    y = L.ReLU(name="relu")(y)
    y = L.SpatialDropout2D(rate, name="sdrop")(y)
    y = L.Conv2D(6, 3, padding="same", name="conv2")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    y = L.Dropout(rate, name="drop")(y)
    model = perturb(keras.Model(x, L.Dense(5, name="dense")(y), name="conv2d_bn"))
    bn.trainable = not frozen
    return model


def conv2d_bn_dropout():
    """Conv2D -> BN -> ReLU -> SpatialDropout2D -> Conv2D -> GAP -> Dropout -> Dense."""
    return _conv2d_bn(0.3)


def conv2d_bn_rate0():
    return _conv2d_bn(0.0)


def conv2d_bn_frozen():
    """The same with the batch norm frozen (``trainable=False``)."""
    return _conv2d_bn(0.0, frozen=True)


def _conv1d_bn(stddev: float):
    _seed()
    x = keras.Input((16, 3), name="x")
    y = L.Conv1D(4, 3, name="conv")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.GaussianNoise(stddev, name="noise")(y)
    y = L.Flatten(name="flatten")(y)
    return perturb(keras.Model(x, L.Dense(5, name="dense")(y), name="conv1d_bn"))


def conv1d_bn_noise():
    """Conv1D -> BN -> GaussianNoise -> Flatten -> Dense."""
    return _conv1d_bn(0.2)


def conv1d_bn_rate0():
    return _conv1d_bn(0.0)


def dropout_family():
    """Each other dropout layer between Dense layers, and a channels-first SpatialDropout."""
    _seed()
    x = keras.Input((6, 6, 4), name="x")
    y = L.Conv2D(4, 1, name="conv")(x)
    y = L.GaussianDropout(0.2, name="gdrop")(y)
    y = L.AlphaDropout(0.2, name="adrop")(y)
    y = L.SpatialDropout1D(0.2, name="sdrop1")(L.Reshape((36, 4), name="seq")(y))
    y = L.Flatten(name="flatten")(y)
    return perturb(keras.Model(x, L.Dense(3, name="dense")(y), name="dropout_family"))


# ---- one trainable parameter per Keras weight element (test_trainable_params.py): fresh
# initialisation (zero biases, as Keras leaves them), frozen layers, regularizers

def fresh_seed():
    """The seed model (Conv1D(2, 2) -> Flatten -> Dense(1)) as Keras initialises it: zero biases."""
    _seed()
    x = keras.Input((128, 1), name="x")
    y = L.Flatten(name="flatten")(L.Conv1D(2, 2, name="conv1d")(x))
    return keras.Model(x, L.Dense(1, name="dense")(y), name="fresh_seed")


def conv_bn_dense_frozen():
    """Conv2D (frozen, L2 kernel) -> BN -> Flatten -> Dense (L1L2 kernel, L1 bias); zero biases."""
    _seed()
    R = keras.regularizers
    x = keras.Input((6, 6, 2), name="x")
    conv = L.Conv2D(3, 3, kernel_regularizer=R.L2(0.01), name="conv")
    y = L.BatchNormalization(name="bn")(conv(x))
    y = L.Flatten(name="flatten")(y)
    y = L.Dense(4, kernel_regularizer=R.L1L2(l1=0.003, l2=0.02), bias_regularizer=R.L1(0.5), name="dense")(y)
    model = keras.Model(x, y, name="conv_bn_dense_frozen")
    model.get_layer("dense").bias.assign(keras.ops.linspace(-1.0, 1.0, 4))   # a bias term that is not 0
    conv.trainable = False
    return model


def embed_lstm():
    """Embedding -> Dropout -> LSTM(6) -> Dense(1), fresh (the LSTM's one bias per gate)."""
    _seed()
    x = keras.Input((7,), dtype="int32", name="ids")
    y = L.Embedding(20, 5, name="emb")(x)
    y = L.Dropout(0.2, name="drop")(y)
    y = L.LSTM(6, kernel_regularizer=keras.regularizers.L2(0.001), name="lstm")(y)
    return keras.Model(x, L.Dense(1, name="dense")(y), name="embed_lstm")


def gru_model():
    """GRU(5) -> Dense(2), fresh (reset_after: two biases, as torch's)."""
    _seed()
    x = keras.Input((9, 3), name="x")
    return keras.Model(x, L.Dense(2, name="dense")(L.GRU(5, name="gru")(x)), name="gru_model")


def activity_regularized():
    """Conv2D (activity L1L2) -> Flatten -> Dense (relu, activity L2, kernel L2) ->
    ActivityRegularization (L1) -> Dense; perturbed weights. Keras adds each activity term,
    divided by the batch size, to ``model.losses`` on every call."""
    _seed()
    R = keras.regularizers
    x = keras.Input((6, 6, 2), name="x")
    y = L.Conv2D(3, 3, activity_regularizer=R.L1L2(l1=0.01, l2=0.02), name="conv")(x)
    y = L.Flatten(name="flatten")(y)
    y = L.Dense(4, activation="relu", activity_regularizer=R.L2(0.05), kernel_regularizer=R.L2(0.01),
                name="dense")(y)
    y = L.ActivityRegularization(l1=0.03, name="act_reg")(y)
    return perturb(keras.Model(x, L.Dense(2, name="head")(y), name="activity_regularized"))


def recurrent_regularized():
    """Bidirectional(LSTM) with kernel L2, recurrent L1 and bias L2 (both directions count in
    Keras) -> GRU with a recurrent L2 and an activity L1 -> Dense; perturbed weights."""
    _seed()
    R = keras.regularizers
    x = keras.Input((5, 3), name="x")
    y = L.Bidirectional(L.LSTM(4, return_sequences=True, kernel_regularizer=R.L2(0.01),
                               recurrent_regularizer=R.L1(0.02), bias_regularizer=R.L2(0.03)), name="bidi")(x)
    y = L.GRU(3, recurrent_regularizer=R.L2(0.04), activity_regularizer=R.L1(0.05), name="gru")(y)
    return perturb(keras.Model(x, L.Dense(2, name="dense")(y), name="recurrent_regularized"))


def lstm_recurrent_dropout():
    """Embedding -> LSTM(6, dropout=0.2, recurrent_dropout=0.1) -> Dense(1): the LSTM's own
    dropout arguments (one mask per gate: recurrent_dropout forces Keras' implementation 1)."""
    _seed()
    x = keras.Input((7,), dtype="int32", name="ids")
    y = L.Embedding(20, 5, name="emb")(x)
    y = L.LSTM(6, dropout=0.2, recurrent_dropout=0.1, name="lstm")(y)
    return perturb(keras.Model(x, L.Dense(1, name="dense")(y), name="lstm_recurrent_dropout"))


def gru_recurrent_dropout():
    """GRU(5, dropout=0.25, recurrent_dropout=0.15) -> Dense(2): three masks per gate set."""
    _seed()
    x = keras.Input((8, 3), name="x")
    y = L.GRU(5, dropout=0.25, recurrent_dropout=0.15, name="gru")(x)
    return perturb(keras.Model(x, L.Dense(2, name="dense")(y), name="gru_recurrent_dropout"))


def simple_rnn_recurrent_dropout():
    """SimpleRNN(4, dropout=0.3, recurrent_dropout=0.2) -> Dense(1): one mask each."""
    _seed()
    x = keras.Input((6, 3), name="x")
    y = L.SimpleRNN(4, dropout=0.3, recurrent_dropout=0.2, name="rnn")(x)
    return perturb(keras.Model(x, L.Dense(1, name="dense")(y), name="simple_rnn_recurrent_dropout"))


# ---- batch norms after convs and Dense layers, for the inference form's folding (test_fuse.py):
# perturbed weights, biases and moving statistics (a fresh model's mean 0 / variance 1 hides errors)

def fuse_conv1d():
    """Conv1D without bias -> BN -> ReLU -> GlobalAveragePooling1D -> Dense."""
    _seed()
    x = keras.Input((16, 3), name="x")
    y = L.BatchNormalization(epsilon=0.05, name="bn")(L.Conv1D(4, 3, use_bias=False, name="conv")(x))
    y = L.GlobalAveragePooling1D(name="gap")(L.ReLU(name="relu")(y))
    return perturb(keras.Model(x, L.Dense(3, name="dense")(y), name="fuse_conv1d"))


def fuse_conv2d():
    """Conv2D (stride 2, same) -> BN -> ReLU -> Flatten -> Dense."""
    _seed()
    x = keras.Input((10, 10, 3), name="x")
    y = L.BatchNormalization(name="bn")(L.Conv2D(6, 3, strides=2, padding="same", name="conv")(x))
    y = L.Flatten(name="flatten")(L.ReLU(name="relu")(y))
    return perturb(keras.Model(x, L.Dense(3, name="dense")(y), name="fuse_conv2d"))


def fuse_depthwise():
    """DepthwiseConv2D (depth multiplier 2) -> BN -> ReLU -> Conv2D 1x1 -> BN (frozen) -> GAP -> Dense."""
    _seed()
    x = keras.Input((10, 10, 4), name="x")
    y = L.BatchNormalization(name="bn")(L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x))
    y = L.Conv2D(5, 1, name="pw")(L.ReLU(name="relu")(y))
    frozen = L.BatchNormalization(name="bn_pw")
    y = L.GlobalAveragePooling2D(name="gap")(frozen(y))
    model = perturb(keras.Model(x, L.Dense(3, name="dense")(y), name="fuse_depthwise"))
    frozen.trainable = False
    return model


def fuse_conv3d():
    """Conv3D -> BN -> GlobalAveragePooling3D -> Dense."""
    _seed()
    x = keras.Input((6, 6, 6, 2), name="x")
    y = L.BatchNormalization(name="bn")(L.Conv3D(4, 3, name="conv")(x))
    y = L.GlobalAveragePooling3D(name="gap")(y)
    return perturb(keras.Model(x, L.Dense(3, name="dense")(y), name="fuse_conv3d"))


def fuse_skip():
    """conv1's output feeds its BN and the skip Add (not foldable); conv2 -> bn2 folds."""
    _seed()
    x = keras.Input((8, 8, 4), name="x")
    c = L.Conv2D(4, 3, padding="same", name="conv1")(x)
    y = L.Add(name="add")([c, L.BatchNormalization(name="bn1")(c)])
    y = L.BatchNormalization(name="bn2")(L.Conv2D(6, 3, name="conv2")(L.ReLU(name="relu")(y)))
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return perturb(keras.Model(x, L.Dense(3, name="dense")(y), name="fuse_skip"))


def fuse_dense():
    """Dense -> BN -> ReLU -> Dense: the batch norm folds into the first Dense."""
    _seed()
    x = keras.Input((7,), name="x")
    y = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(L.Dense(6, name="dense1")(x)))
    return perturb(keras.Model(x, L.Dense(3, name="dense2")(y), name="fuse_dense"))
