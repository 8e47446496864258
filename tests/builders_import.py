"""Keras builders for the import tests: an LSTM after a Conv1D, every padding form, transposed
convolutions (``MODEL=tests/builders_import.py:NAME``; the recurrent groups are in
``builders_recurrent.py``). Biases are perturbed so a wrong gate order or bias layout
changes the numbers."""

import sys
from pathlib import Path

import keras

sys.path.insert(0, str(Path(__file__).resolve().parent))   # loaded by file path from the export stage
from models import perturb  # noqa: E402

L = keras.layers
T, F = 7, 3   # time steps, features


def _seed():
    keras.utils.set_random_seed(2)


def _seq(name, layer_fn, shape=(T, F)):
    _seed()
    x = keras.Input(shape, name="x")
    out = layer_fn(x)
    return perturb(keras.Model(x, out, name=name))


def conv1d_lstm():
    """An LSTM fed by Conv1D features (the generated-code tests use it)."""
    return _seq("conv1d_lstm", lambda x: L.Dense(2, name="dense")(
        L.LSTM(4, name="lstm")(L.Conv1D(6, 3, activation="relu", name="conv1d")(x))), shape=(12, F))


# ---- padding forms ---------------------------------------------------------------------------
# Keras "same" with a stride or an even kernel pads more at the end than at the start
# (ONNX SAME_UPPER or asymmetric pads); "same" average pooling leaves pads out of the count.
_SHAPES = {1: (10, 3), 2: (10, 8, 3), 3: (6, 8, 4, 2)}   # even: "same" with stride 2 pads unevenly


def _conv_layer(n):
    return {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}[n]


def _max_pool(n):
    return {1: L.MaxPooling1D, 2: L.MaxPooling2D, 3: L.MaxPooling3D}[n]


def _avg_pool(n):
    return {1: L.AveragePooling1D, 2: L.AveragePooling2D, 3: L.AveragePooling3D}[n]


def _transpose_layer(n):
    return {1: L.Conv1DTranspose, 2: L.Conv2DTranspose, 3: L.Conv3DTranspose}[n]


PADDING_FORMS = ("conv_same_strided", "conv_same_even_kernel", "maxpool_same", "avgpool_same",
                 "deconv_same", "deconv_valid")


def _padding_forms(n):
    """One model per rank with an output per padding form (each compared on its own)."""
    _seed()
    x = keras.Input(_SHAPES[n], name="x")
    feat = _conv_layer(n)(4, 1, name="features")(x)
    outs = [
        _conv_layer(n)(4, 3, strides=2, padding="same", name="conv_same_strided")(x),
        _conv_layer(n)(4, 2, padding="same", name="conv_same_even_kernel")(x),
        _max_pool(n)(3, strides=2, padding="same", name="maxpool_same")(feat),
        _avg_pool(n)(3, strides=2, padding="same", name="avgpool_same")(feat),
        _transpose_layer(n)(3, 3, strides=2, padding="same", name="deconv_same")(x),
        _transpose_layer(n)(3, 4, strides=2, padding="valid", name="deconv_valid")(x),
    ]
    return perturb(keras.Model(x, outs, name=f"padding_{n}d"))


def padding_1d():
    return _padding_forms(1)


def padding_2d():
    return _padding_forms(2)


def padding_3d():
    return _padding_forms(3)
