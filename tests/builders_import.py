"""Keras builders for the import tests: recurrent layers, every padding form, transposed
convolutions (``MODEL=tests/builders_import.py:NAME``). Biases are perturbed so a wrong
gate order or bias layout changes the numbers."""

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


# ---- recurrent groups (one model each; an output per configuration, each compared alone) -------
def recurrent_lstm():
    """Layers that tf2onnx writes as ONNX LSTM: they become ``nn.LSTM``."""
    _seed()
    x = keras.Input((T, F), name="x")
    y, h, c = L.LSTM(4, return_sequences=True, return_state=True, name="lstm_state")(x)
    outs = {
        "lstm_last": L.LSTM(5, name="lstm_last")(x),
        "lstm_sequences": L.LSTM(5, return_sequences=True, name="lstm_sequences")(x),
        "state_sequences": y,
        "state_h": h,
        "state_c": c,
        "lstm_backwards": L.LSTM(4, go_backwards=True, name="lstm_backwards")(x),
        "lstm_stacked": L.LSTM(3, name="lstm_top")(L.LSTM(5, return_sequences=True, name="lstm_bottom")(x)),
        "conv1d_lstm": L.LSTM(4, name="lstm_after_conv")(L.Conv1D(6, 3, activation="relu", name="conv1d")(x)),
    }
    for mode in ("concat", "sum", "mul", "ave"):
        outs[f"bidi_{mode}"] = L.Bidirectional(L.LSTM(4, return_sequences=mode != "mul"), merge_mode=mode,
                                               name=f"bidi_{mode}")(x)
    return _named_outputs(x, outs, "recurrent_lstm")


def conv_lstm():
    """ConvLSTM1D and ConvLSTM2D (tf2onnx: Loop; converted unrolled)."""
    _seed()
    a = keras.Input((4, 8, 2), name="seq1d")
    b = keras.Input((3, 6, 6, 2), name="seq2d")
    outs = [L.ConvLSTM1D(3, 3, padding="same", name="convlstm1d")(a),
            L.ConvLSTM2D(3, 3, return_sequences=True, name="convlstm2d")(b)]
    return perturb(keras.Model([a, b], outs, name="conv_lstm"))


def recurrent_loop():
    """Layers that tf2onnx writes as an ONNX Loop: the export stage converts them unrolled."""
    _seed()
    x = keras.Input((T, F), name="x")
    g, gh = L.GRU(4, go_backwards=True, return_state=True, name="gru_backwards_state")(x)
    outs = {
        "gru": L.GRU(5, name="gru")(x),
        "gru_reset_before": L.GRU(5, reset_after=False, return_sequences=True, name="gru_reset_before")(x),
        "gru_backwards": g,
        "gru_backwards_h": gh,
        "simple_rnn": L.SimpleRNN(5, return_sequences=True, name="simple_rnn")(x),
        "simple_rnn_backwards": L.SimpleRNN(4, go_backwards=True, name="simple_rnn_backwards")(x),
        "bidi_gru": L.Bidirectional(L.GRU(3, return_sequences=True), name="bidi_gru")(x),
        "bidi_rnn_sum": L.Bidirectional(L.SimpleRNN(3), merge_mode="sum", name="bidi_rnn_sum")(x),
    }
    return _named_outputs(x, outs, "recurrent_loop")


def _named_outputs(x, outs: dict, name: str):
    """Outputs named ``out_<configuration>`` (the names the tests look up)."""
    return perturb(keras.Model(x, [L.Identity(name=f"out_{k}")(v) for k, v in outs.items()], name=name))


RECURRENT_LSTM = ("lstm_last", "lstm_sequences", "state_sequences", "state_h", "state_c", "lstm_backwards",
                  "lstm_stacked", "conv1d_lstm", "bidi_concat", "bidi_sum", "bidi_mul", "bidi_ave")
RECURRENT_LOOP = ("gru", "gru_reset_before", "gru_backwards", "gru_backwards_h", "simple_rnn",
                  "simple_rnn_backwards", "bidi_gru", "bidi_rnn_sum")


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
