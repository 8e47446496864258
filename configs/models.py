"""Built-in model builders: ``MODEL=configs/models.py:NAME``.

Weights are Keras' seeded initialisation, with biases and normalisation statistics set
to seeded non-trivial values so that a wrong bias or axis cannot hide behind zeros.
"""

import keras
import numpy as np


def perturb(model, seed=0):
    """Give every zero-initialised weight (biases, BN statistics) seeded values."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        v = np.asarray(w.numpy())
        if np.all(v == v.flat[0]) if v.size else False:
            new = rng.uniform(0.5, 1.5, v.shape) if "variance" in w.path or "gamma" in w.path \
                else rng.normal(0, 0.1, v.shape)
            w.assign(new.astype(v.dtype))
    return model


def conv1d_flatten_dense():
    """The default: Input((128, 1)) -> Conv1D(2, 2) -> Flatten -> Dense(1)."""
    inp = keras.Input((128, 1), name="x")
    y = keras.layers.Conv1D(2, 2, name="conv1d")(inp)
    y = keras.layers.Flatten(name="flatten")(y)
    y = keras.layers.Dense(1, name="dense")(y)
    return perturb(keras.Model(inp, y, name="conv1d_flatten_dense"))


def gru64_1000():
    """A GRU(64) over 1,000 steps of 16 features, then Dense(1): ``make bench``'s recurrent
    row (one nn.GRU, weights once, against Keras' own GRU)."""
    inp = keras.Input((1000, 16), name="x")
    y = keras.layers.GRU(64, name="gru")(inp)
    y = keras.layers.Dense(1, name="dense")(y)
    return perturb(keras.Model(inp, y, name="gru64_1000"))


def _transfer(app, name: str, size: int, frozen: bool = True):
    """The Keras transfer-learning recipe (keras.io "Transfer learning & fine-tuning"): a
    ``keras.applications`` base (``weights=None``, seeded, batch norm statistics and affine
    parameters perturbed) frozen (``base.trainable = False``) and called with
    ``training=False``, then GlobalAveragePooling2D -> Dropout(0.2) -> Dense(1)."""
    keras.utils.set_random_seed(7)
    base = perturb(app(include_top=False, weights=None, input_shape=(size, size, 3)))
    base.trainable = not frozen
    inp = keras.Input((size, size, 3), name="image")
    y = base(inp, training=False)
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    y = keras.layers.Dropout(0.2, name="dropout")(y)
    y = keras.layers.Dense(1, name="head")(y)
    return perturb(keras.Model(inp, y, name=name))


def mobilenetv2_transfer():
    """MobileNetV2 (alpha 1.0, 96x96) frozen base + trainable head."""
    return _transfer(keras.applications.MobileNetV2, "mobilenetv2_transfer", 96)


def resnet50_transfer():
    """ResNet50 (64x64) frozen base + trainable head."""
    return _transfer(keras.applications.ResNet50, "resnet50_transfer", 64)


def efficientnetb0_transfer():
    """EfficientNetB0 (64x64) frozen base + trainable head."""
    return _transfer(keras.applications.EfficientNetB0, "efficientnetb0_transfer", 64)


def mobilenetv2_finetune():
    """The same MobileNetV2 model with the base unfrozen (fine-tuning: every batch norm in
    training mode, every weight trains)."""
    return _transfer(keras.applications.MobileNetV2, "mobilenetv2_finetune", 96, frozen=False)
