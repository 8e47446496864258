"""One trainable parameter per Keras weight element (issue 14): the sum of ``numel`` over the
port's parameters with ``requires_grad`` equals Keras' trainable weight count (zero biases
tf2onnx dropped are parameters again, a frozen layer's parameters and nn.LSTM's second bias
do not train), and ``regularization_loss()`` equals ``sum(keras_model.losses)`` (recorded at
export, TensorFlow side). Models: ``builders_trainable.py``, freshly initialised."""

from __future__ import annotations

import json

import pytest

from conftest import assert_ok, cli, port

MODELS = ("fresh_seed", "conv_bn_dense_frozen", "embed_lstm", "gru_model")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("params")
    return out, {m: cli("convert", "--model", f"tests/builders_trainable.py:{m}", "--out", out) for m in MODELS}




def _meta(out, name) -> dict:
    return json.loads((out / name / "export" / "meta.json").read_text())


@pytest.mark.parametrize("name", MODELS)
def test_trainable_count_equals_keras(converted, name):
    out, procs = converted
    assert_ok(procs[name], out, name)
    model = port(out, name)
    ours = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert ours == _meta(out, name)["losses_reference"]["trainable_params"]


def test_seed_model_biases_are_parameters(converted):
    out, _ = converted
    model = port(out, "fresh_seed")
    assert model.conv1d.bias is not None and model.dense.bias is not None
    assert float(model.conv1d.bias.detach().abs().sum()) == 0.0
    assert sum(p.numel() for p in model.parameters()) == 261   # 258 before (tf2onnx folded the zero biases)


def test_frozen_layer_is_readable(converted):
    out, _ = converted
    src = (out / "conv_bn_dense_frozen" / "import" / "model.py").read_text()
    assert "self.conv.requires_grad_(False)  # Keras: trainable=False" in src
    assert "self.lstm.bias_hh_l0.requires_grad_(False)" in (out / "embed_lstm" / "import" / "model.py").read_text()


@pytest.mark.parametrize("name", ["conv_bn_dense_frozen", "embed_lstm", "fresh_seed"])
def test_regularization_loss_equals_keras(converted, name):
    out, _ = converted
    ref = _meta(out, name)["losses_reference"]
    got = float(port(out, name).regularization_loss())
    assert got == pytest.approx(ref["sum_losses"], rel=1e-5, abs=1e-7)
    if name == "conv_bn_dense_frozen":   # the frozen conv's L2 does not count, as in Keras
        assert ref["n_losses"] == 2 and ref["sum_losses"] > 1.0


@pytest.mark.parametrize("name", ["fresh_seed", "embed_lstm", "gru_model", "conv_bn_dense_frozen"])
def test_weights_map_reproduces_the_state_dict(converted, name):
    """Every Keras variable (export/keras_weights.npz) is placed, and its transform applied to
    the Keras value gives the torch tensor exactly."""
    import numpy as np
    from safetensors.numpy import load_file

    from pipeline.stages.importer.weights_map import apply

    out, _ = converted
    wmap = json.loads((out / name / "import" / "weights_map.json").read_text())
    state = load_file(str(out / name / "import" / "model.safetensors"))
    with np.load(out / name / "export" / "keras_weights.npz") as z:
        keras = {k: z[k] for k in z.files}
    assert not wmap["unmapped"], wmap["unmapped"]
    assert {r["keras"] for r in wmap["map"]} == set(keras)
    for row in wmap["map"]:
        assert np.array_equal(apply(row["transform"], keras[row["keras"]]), state[row["torch"]]), row["keras"]
    if name == "fresh_seed":
        assert {r["keras"]: r["transform"] for r in wmap["map"]}["conv1d/kernel"] == {"transpose": [2, 1, 0]}
        assert sum(bool(r["transform"].get("added_zero")) for r in wmap["map"]) == 2
    if name == "gru_model":
        rows = [r for r in wmap["map"] if r["keras"] == "gru/gru_cell/kernel"]
        assert rows[0]["transform"] == {"transpose": [1, 0], "gate_order": [1, 0, 2], "gates": 3}


@pytest.mark.parametrize("name", MODELS)
def test_training_check_passes(converted, name):
    """``trainable-check`` on fresh models (zero biases as parameters, frozen layers, L1/L2
    regularizers in the loss, nn.LSTM's frozen second bias, a GRU's two bias rows): status ok."""
    out, _ = converted
    proc = cli("trainable-check", "--model", f"tests/builders_trainable.py:{name}", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    t = json.loads((out / name / "training" / "training.json").read_text())
    assert t["status"] == "ok", t
    g = t["checks"]["gradients"]
    assert not g["port_only_trainable"] and not g["frozen_training"] and g["max_err_over_tolerance"] <= 1.0
    if name == "conv_bn_dense_frozen":   # the regularizers are part of the loss, in both
        assert t["checks"]["forward"]["regularization"]["keras"] > 1.0
        assert t["checks"]["forward"]["regularization"]["torch"] == pytest.approx(
            t["checks"]["forward"]["regularization"]["keras"], rel=1e-5)
        assert g["frozen"] == 2   # the frozen conv's kernel and bias
