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
