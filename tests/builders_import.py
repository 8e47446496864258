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


# ---- recurrent -------------------------------------------------------------------------------
def lstm():
    return _seq("lstm", lambda x: L.LSTM(5, name="lstm")(x))


def lstm_sequences():
    return _seq("lstm_sequences", lambda x: L.LSTM(5, return_sequences=True, name="lstm")(x))


def lstm_state():
    _seed()
    x = keras.Input((T, F), name="x")
    y, h, c = L.LSTM(4, return_sequences=True, return_state=True, name="lstm")(x)
    return perturb(keras.Model(x, [y, h, c]))


def lstm_backwards():
    return _seq("lstm_backwards", lambda x: L.LSTM(4, go_backwards=True, name="lstm")(x))


def lstm_stacked():
    return _seq("lstm_stacked", lambda x: L.LSTM(3, name="lstm2")(L.LSTM(5, return_sequences=True, name="lstm1")(x)))


def conv1d_lstm():
    return _seq("conv1d_lstm", lambda x: L.Dense(2, name="dense")(
        L.LSTM(4, name="lstm")(L.Conv1D(6, 3, activation="relu", name="conv1d")(x))), shape=(12, F))


def gru():
    return _seq("gru", lambda x: L.GRU(5, name="gru")(x))


def gru_reset_before():
    return _seq("gru_reset_before", lambda x: L.GRU(5, reset_after=False, return_sequences=True, name="gru")(x))


def gru_backwards_state():
    _seed()
    x = keras.Input((T, F), name="x")
    y, h = L.GRU(4, go_backwards=True, return_state=True, name="gru")(x)
    return perturb(keras.Model(x, [y, h]))


def simple_rnn():
    return _seq("simple_rnn", lambda x: L.SimpleRNN(5, return_sequences=True, name="rnn")(x))


def simple_rnn_backwards():
    return _seq("simple_rnn_backwards", lambda x: L.SimpleRNN(4, go_backwards=True, name="rnn")(x))


def _bidi(mode, cell=L.LSTM, seqs=True):
    return lambda: _seq(f"bidirectional_{mode}", lambda x: L.Bidirectional(
        cell(4, return_sequences=seqs), merge_mode=mode, name="bidi")(x))


bidirectional_concat = _bidi("concat")
bidirectional_sum = _bidi("sum")
bidirectional_mul = _bidi("mul", seqs=False)
bidirectional_ave = _bidi("ave")
bidirectional_gru = _bidi("concat", cell=L.GRU)


def conv_lstm1d():
    return _seq("conv_lstm1d", lambda x: L.ConvLSTM1D(3, 3, padding="same", name="convlstm")(x), shape=(4, 8, 2))


def conv_lstm2d():
    return _seq("conv_lstm2d", lambda x: L.ConvLSTM2D(3, 3, name="convlstm")(x), shape=(3, 6, 6, 2))
