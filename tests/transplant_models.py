"""Keras models for ``test_transplant.py`` (``MODEL=tests/transplant_models.py:NAME``), with
perturbed weights (``models.perturb``: biases, batch-norm statistics, gamma and beta) so that
a wrong bias, epsilon or statistic changes the numbers."""

import sys
from pathlib import Path

import keras

sys.path.insert(0, str(Path(__file__).resolve().parent))   # loaded by file path from the export stage
from models import perturb  # noqa: E402

L = keras.layers


def lstm_text():
    keras.utils.set_random_seed(5)
    x = keras.Input((12,), dtype="int32", name="ids")
    y = L.Embedding(50, 8, name="emb")(x)
    y = L.LSTM(16, name="lstm")(y)
    return perturb(keras.Model(x, L.Dense(3, name="fc")(y), name="lstm_text"))


def resnet_block():
    keras.utils.set_random_seed(5)
    x = keras.Input((8, 8, 3), name="x")
    y = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x)
    y = L.BatchNormalization(name="bn1")(y)
    y = L.ReLU(name="relu1")(y)
    y = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv2")(y)
    y = L.BatchNormalization(name="bn2")(y)
    s = L.Conv2D(8, 1, name="short")(x)
    y = L.ReLU(name="relu2")(L.Add(name="add")([y, s]))
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return perturb(keras.Model(x, L.Dense(4, name="fc")(y), name="resnet_block"))


def _gru(reset_after):
    keras.utils.set_random_seed(5)
    x = keras.Input((10, 4), name="x")
    y = L.GRU(6, reset_after=reset_after, name="gru")(x)
    return perturb(keras.Model(x, L.Dense(2, name="fc")(y), name=f"gru_reset_{'after' if reset_after else 'before'}"))


def gru_reset_before():
    return _gru(False)


def gru_reset_after():
    return _gru(True)


def strided_same():
    keras.utils.set_random_seed(5)
    x = keras.Input((16, 16, 3), name="x")
    y = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv")(x)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return perturb(keras.Model(x, L.Dense(2, name="fc")(y), name="strided_same"))


def vgg16():
    """keras.applications.VGG16 at 224x224 without softmax, kernels redrawn He-normal
    (``std = sqrt(2 / fan_in)``, so that activations keep their size through 13 ReLU convs
    and 3 Dense) and biases perturbed: Glorot's kernels shrink them layer by layer."""
    import numpy as np

    keras.utils.set_random_seed(5)
    m = keras.applications.VGG16(weights=None, classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in m.layers:
        if getattr(layer, "kernel", None) is not None:
            k = layer.kernel
            fan_in = int(np.prod(k.shape[:-1]))
            layer.kernel.assign(rng.standard_normal(k.shape, dtype=np.float32) * np.float32(np.sqrt(2 / fan_in)))
    return perturb(m)


def _dense_act(name, act):
    keras.utils.set_random_seed(5)
    x = keras.Input((8,), name="x")
    y = L.Dense(16, activation=act, name="fc1")(x)
    return perturb(keras.Model(x, L.Dense(3, name="fc2")(y), name=name))


def gelu_exact():
    """Dense(activation="gelu"): Keras' gelu is exact (erf) by default; fused in the layer."""
    return _dense_act("gelu_exact", "gelu")


def gelu_tanh():
    """Dense -> Activation(gelu(approximate=True)) -> Dense: the tanh approximation, a layer of its own."""
    keras.utils.set_random_seed(5)
    x = keras.Input((8,), name="x")
    y = L.Dense(16, name="fc1")(x)
    y = L.Activation(lambda v: keras.activations.gelu(v, approximate=True), name="gelu")(y)
    return perturb(keras.Model(x, L.Dense(3, name="fc2")(y), name="gelu_tanh"))


def hard_sigmoid():
    """Dense(activation="hard_sigmoid"): Keras 3's relu6(x + 3) / 6."""
    return _dense_act("hard_sigmoid", "hard_sigmoid")


def upsample_bilinear():
    """Conv2D -> UpSampling2D(2, bilinear) -> Conv2D(relu) -> GAP -> Dense."""
    keras.utils.set_random_seed(5)
    x = keras.Input((8, 8, 3), name="x")
    y = L.Conv2D(4, 3, padding="same", name="conv1")(x)
    y = L.UpSampling2D(2, interpolation="bilinear", name="up")(y)
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="conv2")(y)   # relu: the mean alone keeps no trace of the mode
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return perturb(keras.Model(x, L.Dense(2, name="fc")(y), name="upsample_bilinear"))
