"""Recurrent layers as shared-weight modules: every configuration against Keras at the
reference length and at lengths not seen at export, one module per Keras layer (nothing
unrolled, each weight stored once), and a training smoke test.

Groups (``builders_recurrent.py``): LSTM (last step, sequences, states, go_backwards,
stacked, after a Conv1D, Bidirectional concat/sum/mul/ave) as ``nn.LSTM``; GRU (both
``reset_after``), SimpleRNN, Bidirectional GRU/SimpleRNN; initial states, merge_mode None,
Bidirectional states, non-default activations and no bias (cell modules where torch's
differ); ConvLSTM1D/2D/3D as one ``KerasConvLSTM`` with a loop over time."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from builders_recurrent import RECURRENT
from conftest import REPO, cli, report

RTOL, ATOL = 1e-5, 1e-6   # max|d| <= RTOL * max|keras| + ATOL
STAGES = ("onnx_raw", "onnx_nchw", "torch_codegen", "torch_pt2")
# the reference shapes at export (--reference-shape): the time axis stays free in every port
SHAPES = {"recurrent_lstm": "x=7,3", "recurrent_gru_rnn": "x=7,3", "recurrent_more": "x=7,3;h0=4;c0=4",
          "recurrent_masked": "ids=9;x=9,3",
          "conv_lstm": "seq1d=4,8,2;seq2d=4,7,6,2;seq3d=4,4,5,4,1", "gru_stack": "x=15,5"}
# lengths the export never saw (ConvLSTM: 9 frames; 1 step; more steps than at export)
LENGTHS = {"conv_lstm": (9, 1), "recurrent_lstm": (11, 3)}   # its Conv1D(kernel 3) needs 3 steps


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("recurrent")
    for name, shape in SHAPES.items():
        proc = cli("convert", "--model", f"tests/builders_recurrent.py:{name}", "--out", out, "--atol", ATOL,
                   "--reference-shape", shape)
        assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


def _within(ref, got, what):
    err = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    assert ref.shape == got.shape and err <= RTOL * float(np.max(np.abs(ref))) + ATOL, (what, ref.shape, got.shape,
                                                                                         err)


@pytest.mark.parametrize("group,output", [(g, o) for g, outs in RECURRENT.items() for o in outs])
def test_configuration_matches_keras(converted, group, output):
    rep = report(converted, group)
    for stage in STAGES:
        r = rep["outputs"][f"out_{output}"][stage]
        assert r["max_abs_err"] is not None and r["max_abs_err"] <= RTOL * r["scale"] + ATOL, (output, stage, r)
    assert rep["outputs"][f"out_{output}"]["onnx_raw"]["scale"] > 1e-3, "output too small to prove anything"


@pytest.mark.parametrize("group", [*(set(RECURRENT) - {"recurrent_masked"}), "gru_stack"])
def test_lengths_not_seen_at_export_match_keras(converted, group):
    """``model.py`` at other sequence lengths against Keras run at the same lengths."""
    from pipeline.core.artifacts import ModelDir
    from pipeline.core.reference import inputs_for, output_to_keras
    from pipeline.runners.keras_tf import KerasRunner
    from pipeline.runners.pytorch import GeneratedRunner

    mdir = ModelDir.of(converted, group)
    meta = json.loads((mdir.root / "export" / "meta.json").read_text())
    facts = json.loads((mdir.root / "rewrite" / "rewrite.json").read_text())
    torch_port = GeneratedRunner(mdir)
    rng = np.random.default_rng(5)
    with KerasRunner(mdir, "pipeline.stages.compare:keras_model", cwd=REPO) as keras:
        for length in LENGTHS.get(group, (11, 1)):
            feeds = {i["name"]: rng.standard_normal(
                [2, *([length] + i["shape"][2:] if len(i["shape"]) > 2 else i["shape"][1:])]).astype(np.float32)
                for i in meta["inputs"]}
            ref = keras.infer(feeds)
            got = torch_port.infer(inputs_for(facts, feeds))
            assert set(got) == set(ref)
            for name, g in got.items():
                _within(ref[name], output_to_keras(facts, name, g), (group, length, name))


def _padded(length: int, rng) -> dict:
    """Token ids and float frames, zero (masked) where padded: right-padded, left-padded,
    holes, and a row with no valid step at all."""
    valid = np.ones((4, length), bool)
    valid[0, length // 2 + 1:] = False
    valid[1, :length // 2] = False
    valid[2, 1::3] = False
    valid[3] = False
    ids = rng.integers(1, 12, (4, length)).astype(np.int32) * valid
    x = rng.standard_normal((4, length, 3)).astype(np.float32) * valid[..., None]
    return {"ids": ids, "x": x}


@pytest.mark.parametrize("runner", ["torch_codegen", "torch_pt2"])
def test_masked_padded_batches_match_keras(converted, runner):
    """Right- and left-padded batches, holes and an all-padding row, at the export length
    and at two others: the nn modules' packed run (eager), their step run (model.pt2) and
    the cell modules against Keras."""
    from pipeline.core.artifacts import ModelDir
    from pipeline.runners.keras_tf import KerasRunner
    from pipeline.runners.pytorch import GeneratedRunner, Pt2Runner

    mdir = ModelDir.of(converted, "recurrent_masked")
    assert json.loads((mdir.root / "import" / "import.json").read_text())["format"] == "pt2"
    port = (GeneratedRunner if runner == "torch_codegen" else Pt2Runner)(mdir)
    rng = np.random.default_rng(11)
    lengths = (9, 6, 13) if runner == "torch_codegen" else (9,)   # model.pt2: the export length (static)
    with KerasRunner(mdir, "pipeline.stages.compare:keras_model", cwd=REPO) as keras:
        for length in lengths:
            feeds = _padded(length, rng)
            ref, got = keras.infer(feeds), port.infer(feeds)
            for name in ref:
                _within(ref[name], got[name], (runner, length, name))
                assert float(np.max(np.abs(ref[name]))) > 1e-3, name


@pytest.mark.parametrize("group", [*RECURRENT, "gru_stack"])
def test_one_module_per_layer_nothing_unrolled(converted, group):
    meta = json.loads((converted / group / "export" / "meta.json").read_text())
    src = (converted / group / "import" / "model.py").read_text()
    assert meta["recurrent"]["unrolled"] == {} and meta["recurrent"]["modules"], meta["recurrent"]
    forward = src[src.index("class Model("):]
    assert "for " not in forward, "the model's own forward loops: a layer was unrolled"
    modules = dict(re.findall(r"self\.(\w+) = ((?:nn\.\w+|Keras\w+)\()", forward))
    for layer in meta["recurrent"]["modules"]:
        assert layer in modules or {f"{layer}_forward", f"{layer}_backward"} <= set(modules), (layer, modules)
    assert len(forward.splitlines()) < 100, "the model class (helpers apart) grows with the layers, not the steps"
    assert report(converted, group)["status"] == "ok"


def test_lstm_and_gru_are_torch_modules_named_after_their_layers(converted):
    src = (converted / "recurrent_lstm" / "import" / "model.py").read_text()
    mods = dict(re.findall(r"self\.(\w+) = (nn\.\w+\([^)]*\))", src))
    assert mods["lstm_last"] == "nn.LSTM(3, 5, batch_first=True)"
    assert mods["lstm_top"] == "nn.LSTM(5, 3, batch_first=True)"
    assert mods["bidi_concat"] == "nn.LSTM(3, 4, batch_first=True, bidirectional=True)"
    src = (converted / "recurrent_gru_rnn" / "import" / "model.py").read_text()
    mods = dict(re.findall(r"self\.(\w+) = ((?:nn\.|Keras)\w+\([^)]*\))", src))
    assert mods["gru"] == "nn.GRU(3, 5, batch_first=True)"
    assert mods["gru_reset_before"].startswith("KerasGRU(3, 5,") and "reset_after=False" in mods["gru_reset_before"]
    assert mods["bidi_gru"] == "nn.GRU(3, 3, batch_first=True, bidirectional=True)"
    assert mods["simple_rnn"] == "nn.RNN(3, 5, batch_first=True)"


def test_weights_are_stored_once(converted):
    """The GRU -> SimpleRNN -> Dense port's tensors hold Keras' weights once: their bytes are
    within 1% of Keras' (nn.RNN's second bias, all zeros, is the 6 extra floats)."""
    from safetensors.numpy import load_file

    meta = json.loads((converted / "gru_stack" / "export" / "meta.json").read_text())
    tensors = load_file(str(converted / "gru_stack" / "import" / "model.safetensors"))
    stored = sum(t.nbytes for t in tensors.values())
    keras_bytes = meta["params"] * 4
    assert keras_bytes <= stored <= 1.01 * keras_bytes, (stored, keras_bytes)
    assert set(tensors) == {"gru.weight_ih_l0", "gru.weight_hh_l0", "gru.bias_ih_l0", "gru.bias_hh_l0",
                            "simple_rnn.weight_ih_l0", "simple_rnn.weight_hh_l0", "simple_rnn.bias_ih_l0",
                            "simple_rnn.bias_hh_l0", "dense.weight", "dense.bias"}


def test_training_smoke_gru_weights_shared_across_steps(converted):
    """One optimizer step on the GRU port: every weight gets a gradient, the GRU's weights
    are single tensors used at every step (its gradient is the sum over steps, so it changes
    with the sequence length), and the step lowers the loss."""
    import torch

    from pipeline.core.artifacts import ModelDir
    from pipeline.runners.pytorch import load_generated

    module = load_generated(ModelDir.of(converted, "gru_stack")).train()
    gru = module.gru
    assert isinstance(gru, torch.nn.GRU) and gru.weight_ih_l0.shape == (36, 5)
    gen = torch.Generator().manual_seed(0)
    x, target = torch.randn(4, 15, 5, generator=gen), torch.randn(4, 2, generator=gen)
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    loss = torch.nn.functional.mse_loss(module(x), target)
    opt.zero_grad()
    loss.backward()
    for name, p in module.named_parameters():
        if name != "simple_rnn.bias_hh_l0":   # Keras has no such bias: its gradient equals bias_ih's
            assert p.grad is not None and float(p.grad.abs().max()) > 0, name
    grad_15 = gru.weight_hh_l0.grad.clone()
    opt.step()
    assert float(torch.nn.functional.mse_loss(module(x), target)) < float(loss)
    module.zero_grad()
    torch.nn.functional.mse_loss(module(x[:, :3]), target).backward()
    assert not torch.allclose(gru.weight_hh_l0.grad, grad_15), "the same weight tensor serves every length"
