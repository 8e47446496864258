"""Recurrent layers against Keras and onnxruntime, one output per configuration: LSTM
(last step, sequences, return_state h and c, go_backwards, stacked, fed by Conv1D,
Bidirectional concat/sum/mul/ave) as ``nn.LSTM``; GRU (reset_after True and False,
go_backwards with state), SimpleRNN and Bidirectional GRU/SimpleRNN, which tf2onnx writes
as an ONNX Loop and the export stage converts unrolled; ConvLSTM1D/2D."""

from __future__ import annotations

import re

import pytest

from builders_import import RECURRENT_LOOP, RECURRENT_LSTM
from conftest import cli, report

RTOL, ATOL = 1e-5, 1e-6   # max|d| <= RTOL * max|keras| + ATOL
STAGES = ("onnx_raw", "onnx_nchw", "torch_codegen", "torch_pt2")
GROUPS = {"recurrent_lstm": RECURRENT_LSTM, "recurrent_loop": RECURRENT_LOOP}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("recurrent")
    for name in GROUPS:
        proc = cli("convert", "--model", f"tests/builders_import.py:{name}", "--out", out, "--atol", ATOL)
        assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


def _check(rep, output):
    for stage in STAGES:
        r = rep["outputs"][f"out_{output}"][stage]
        assert r["max_abs_err"] is not None and r["max_abs_err"] <= RTOL * r["scale"] + ATOL, (output, stage, r)
    assert rep["outputs"][f"out_{output}"]["onnx_raw"]["scale"] > 1e-3, "output too small to prove anything"


@pytest.mark.parametrize("output", RECURRENT_LSTM)
def test_lstm_configuration_matches_keras(converted, output):
    _check(report(converted, "recurrent_lstm"), output)


@pytest.mark.parametrize("output", RECURRENT_LOOP)
def test_gru_and_simple_rnn_configuration_matches_keras(converted, output):
    _check(report(converted, "recurrent_loop"), output)


def test_lstm_becomes_nn_lstm_named_after_its_layer(converted):
    src = (converted / "recurrent_lstm" / "import" / "model.py").read_text()
    lstms = dict(re.findall(r"self\.(\w+) = (nn\.LSTM\([^)]*\))", src))
    assert lstms["lstm_last"] == "nn.LSTM(3, 5)"
    assert lstms["lstm_top"] == "nn.LSTM(5, 3)" and lstms["lstm_bottom"] == "nn.LSTM(3, 5)"
    assert lstms["bidi_concat"] == "nn.LSTM(3, 4, bidirectional=True)"
    assert "Loop" not in src
    assert report(converted, "recurrent_lstm")["status"] == "ok"


def test_loop_layers_are_unrolled_at_export(converted):
    import json

    meta = json.loads((converted / "recurrent_loop" / "export" / "meta.json").read_text())
    assert {"gru", "gru_reset_before", "simple_rnn", "bidi_gru"} <= set(meta["unrolled_recurrent"])
    rep = report(converted, "recurrent_loop")
    assert rep["status"] == "ok", rep["max_abs_err"]
    assert rep["torch_files"]["model.pt2"]


def test_conv_lstm_matches_keras(tmp_path):
    proc = cli("convert", "--model", "tests/builders_import.py:conv_lstm", "--out", tmp_path, "--atol", ATOL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = report(tmp_path, "conv_lstm")
    for output in ("convlstm1d", "convlstm2d"):
        for stage in STAGES:
            r = rep["outputs"][output][stage]
            assert r["max_abs_err"] <= RTOL * r["scale"] + ATOL, (output, stage, r)
