"""Keras recurrent models for ``test_recurrent.py`` (``MODEL=tests/builders_recurrent.py:NAME``):
one model per group, an output per configuration (each compared alone), the time axis free
(``Input((None, F))``). Weights and biases are perturbed (``models.perturb``) so that a
wrong gate order, bias split or direction changes the numbers."""

import sys
from pathlib import Path

import keras

sys.path.insert(0, str(Path(__file__).resolve().parent))   # loaded by file path from the export stage
from models import perturb  # noqa: E402

L = keras.layers
T, F = 7, 3   # reference time steps, features


def _seed():
    keras.utils.set_random_seed(2)


def _named_outputs(inputs, outs: dict, name: str):
    """Outputs named ``out_<configuration>`` (the names the tests look up)."""
    return perturb(keras.Model(inputs, [L.Identity(name=f"out_{k}")(v) for k, v in outs.items()], name=name))


def recurrent_lstm():
    """LSTM configurations: each an ``nn.LSTM``."""
    _seed()
    x = keras.Input((None, F), name="x")
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


def recurrent_gru_rnn():
    """GRU (both reset_after) and SimpleRNN configurations: ``nn.GRU``/``nn.RNN``, or the
    ``KerasGRU`` cell where torch's GRU resets after."""
    _seed()
    x = keras.Input((None, F), name="x")
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
    return _named_outputs(x, outs, "recurrent_gru_rnn")


def recurrent_more():
    """Initial states, merge_mode=None, Bidirectional states, reset_after=False both ways,
    relu SimpleRNN, non-default activations (cell modules), no bias, stacked layers."""
    _seed()
    x = keras.Input((None, F), name="x")
    h0 = keras.Input((4,), name="h0")
    c0 = keras.Input((4,), name="c0")
    bi_y, bh_f, bc_f, bh_b, bc_b = L.Bidirectional(L.LSTM(4, return_state=True), name="bidi_lstm_state")(x)
    bi_fw, bi_bw = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode=None, name="bidi_none")(x)
    outs = {
        "gru_initial": L.GRU(4, return_sequences=True, name="gru_initial")(x, initial_state=h0),
        "lstm_initial": L.LSTM(4, name="lstm_initial")(x, initial_state=[h0, c0]),
        "bidi_initial": L.Bidirectional(L.GRU(4), name="bidi_initial")(x, initial_state=[h0, c0]),
        "bidi_none_fw": bi_fw,
        "bidi_none_bw": bi_bw,
        "bidi_state_y": bi_y,
        "bidi_state_h_bw": bh_b,
        "bidi_state_c_fw": bc_f,
        "bidi_reset_before": L.Bidirectional(L.GRU(3, reset_after=False, return_sequences=True),
                                             merge_mode="ave", name="bidi_reset_before")(x),
        "rnn_relu": L.SimpleRNN(4, activation="relu", return_sequences=True, name="rnn_relu")(x),
        "gru_hard_sigmoid": L.GRU(4, recurrent_activation="hard_sigmoid", name="gru_hard_sigmoid")(x),
        "lstm_relu": L.LSTM(4, activation="relu", return_sequences=True, name="lstm_relu")(x),
        "rnn_linear_backwards": L.SimpleRNN(3, activation="linear", go_backwards=True, return_sequences=True,
                                            name="rnn_linear_backwards")(x),
        "gru_no_bias": L.GRU(4, use_bias=False, name="gru_no_bias")(x),
        "gru_then_rnn": L.SimpleRNN(6, name="rnn_top")(L.GRU(12, return_sequences=True, name="gru_bottom")(x)),
    }
    return _named_outputs([x, h0, c0], outs, "recurrent_more")


def gru_stack():
    """The issue's example: GRU(12, return_sequences=True) -> SimpleRNN(6) -> Dense, 15 steps."""
    _seed()
    x = keras.Input((None, 5), name="x")
    y = L.SimpleRNN(6, name="simple_rnn")(L.GRU(12, return_sequences=True, name="gru")(x))
    return perturb(keras.Model(x, L.Dense(2, name="dense")(y), name="gru_stack"))


def conv_lstm():
    """ConvLSTM1D/2D/3D: "same" (with a stride: asymmetric), "valid", dilation, states,
    go_backwards, non-default activations, a Conv2D after (the layout changes around it)."""
    _seed()
    a = keras.Input((None, 8, 2), name="seq1d")
    b = keras.Input((None, 7, 6, 2), name="seq2d")
    c = keras.Input((None, 4, 5, 4, 1), name="seq3d")
    y2, h2, c2 = L.ConvLSTM2D(3, 2, padding="same", return_sequences=True, return_state=True,
                              name="convlstm2d_state")(b)
    outs = {
        "convlstm1d": L.ConvLSTM1D(3, 3, padding="same", name="convlstm1d")(a),
        "convlstm1d_backwards": L.ConvLSTM1D(2, 2, go_backwards=True, return_sequences=True,
                                             dilation_rate=2, name="convlstm1d_backwards")(a),
        "convlstm2d": L.ConvLSTM2D(3, 3, return_sequences=True, name="convlstm2d")(b),
        "convlstm2d_strided": L.ConvLSTM2D(2, 3, strides=2, padding="same", recurrent_activation="hard_sigmoid",
                                           name="convlstm2d_strided")(b),
        "convlstm2d_seq": y2,
        "convlstm2d_h": h2,
        "convlstm2d_c": c2,
        "convlstm2d_conv": L.Conv2D(4, 3, name="conv_after")(L.ConvLSTM2D(3, 3, activation="relu",
                                                                           name="convlstm2d_relu")(b)),
        "convlstm3d": L.ConvLSTM3D(2, 2, name="convlstm3d")(c),
    }
    return _named_outputs([a, b, c], outs, "conv_lstm")


def recurrent_masked():
    """Masks from ``Embedding(mask_zero=True)`` and ``Masking`` into each kind: nn modules
    run the valid steps packed, cell modules mask step by step."""
    _seed()
    ids = keras.Input((None,), dtype="int32", name="ids")
    x = keras.Input((None, F), name="x")
    e = L.Embedding(12, 4, mask_zero=True, name="embedding")(ids)
    m = L.Masking(0.0, name="masking")(x)
    y, h, c = L.LSTM(4, return_sequences=True, return_state=True, name="lstm_masked_state")(e)
    outs = {
        "lstm": L.LSTM(5, name="lstm_masked")(e),
        "lstm_sequences": y,
        "lstm_h": h,
        "lstm_c": c,
        "gru_stacked": L.GRU(3, name="gru_top")(L.GRU(4, return_sequences=True, name="gru_bottom")(e)),
        "bidi_gru": L.Bidirectional(L.GRU(3, return_sequences=True), name="bidi_gru_masked")(e),
        "bidi_lstm_last": L.Bidirectional(L.LSTM(3), merge_mode="sum", name="bidi_lstm_masked")(e),
        "rnn_backwards": L.SimpleRNN(4, go_backwards=True, return_sequences=True, name="rnn_backwards_masked")(m),
        "gru_reset_before": L.GRU(4, reset_after=False, return_sequences=True, name="gru_reset_before_masked")(m),
        "lstm_relu_backwards": L.LSTM(3, activation="relu", go_backwards=True, name="lstm_relu_masked")(m),
        "bidi_reset_before": L.Bidirectional(L.GRU(3, reset_after=False, return_sequences=True),
                                             name="bidi_reset_before_masked")(m),
    }
    return _named_outputs([ids, x], outs, "recurrent_masked")


RECURRENT = {
    "recurrent_lstm": ("lstm_last", "lstm_sequences", "state_sequences", "state_h", "state_c", "lstm_backwards",
                       "lstm_stacked", "conv1d_lstm", "bidi_concat", "bidi_sum", "bidi_mul", "bidi_ave"),
    "recurrent_gru_rnn": ("gru", "gru_reset_before", "gru_backwards", "gru_backwards_h", "simple_rnn",
                          "simple_rnn_backwards", "bidi_gru", "bidi_rnn_sum"),
    "recurrent_more": ("gru_initial", "lstm_initial", "bidi_initial", "bidi_none_fw", "bidi_none_bw",
                       "bidi_state_y", "bidi_state_h_bw", "bidi_state_c_fw", "bidi_reset_before", "rnn_relu",
                       "gru_hard_sigmoid", "lstm_relu", "rnn_linear_backwards", "gru_no_bias", "gru_then_rnn"),
    "recurrent_masked": ("lstm", "lstm_sequences", "lstm_h", "lstm_c", "gru_stacked", "bidi_gru", "bidi_lstm_last",
                         "rnn_backwards", "gru_reset_before", "lstm_relu_backwards", "bidi_reset_before"),
    "conv_lstm": ("convlstm1d", "convlstm1d_backwards", "convlstm2d", "convlstm2d_strided", "convlstm2d_seq",
                  "convlstm2d_h", "convlstm2d_c", "convlstm2d_conv", "convlstm3d"),
}
