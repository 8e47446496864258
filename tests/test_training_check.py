"""``trainable-check`` (``pipeline/tools/training``) can fail, and says where: a port edited
by hand to be wrong in one way (torch's batch norm momentum, a frozen layer that trains,
another dropout rate, torch's eps) fails exactly the check that covers it and names the
tensor or module; a recurrent layer's own dropout passes check 5 with Keras' masks, and a
port without them fails it. And the Keras transfer-learning recipe (a frozen MobileNetV2 base,
nested in the model, with a Dense head) passes all five.

The models are converted once; each edit works on a copy of the converted folder."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_ok, cli

EDITS = {   # id: (model, text in model.py, replacement, the check that must fail, what it names)
    "bn_momentum": ("conv2d_bn_dropout", "momentum=0.01", "momentum=0.1", "moving_statistics", "bn.running_mean"),
    "bn_eps": ("conv2d_bn_dropout", "eps=0.001", "eps=1e-05", "forward", None),
    "frozen_trains": ("conv_bn_dense_frozen", "        self.conv.requires_grad_(False)  # Keras: trainable=False\n",
                      "", "gradients", "conv.weight"),
    "dropout_rate": ("conv2d_bn_dropout", "nn.Dropout(0.3)", "nn.Dropout(0.5)", "noise", "drop"),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("training_check")
    names = ("conv2d_bn_dropout", "conv_bn_dense_frozen", *RECURRENT_DROPOUT)
    procs = {m: cli("convert", "--model", f"tests/builders_trainable.py:{m}", "--out", out) for m in names}
    for m, p in procs.items():
        assert_ok(p, out, m)
    return out


def _check(out, name, spec=None):
    proc = cli("trainable-check", "--model", spec or f"tests/builders_trainable.py:{name}", "--out", out)
    return proc, json.loads((out / name / "training" / "training.json").read_text())


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_wrong_port_fails_the_check_that_covers_it(converted, tmp_path, edit):
    name, old, new, check, names = EDITS[edit]
    shutil.copytree(converted / name, tmp_path / name)
    src = tmp_path / name / "import" / "model.py"
    text = src.read_text()
    assert old in text, f"the generated model.py no longer has {old!r}: update the edit"
    src.write_text(text.replace(old, new))
    proc, t = _check(tmp_path, name)
    assert proc.returncode == 1 and t["status"] == "mismatch", proc.stdout[-2000:]
    failed = [k for k, c in t["checks"].items() if not c["ok"]]
    assert check in failed, failed
    c = t["checks"][check]
    listed = json.dumps(c.get("failed", []) + c.get("frozen_training", []) + c.get("modules", []))
    assert names is None or names in listed, listed
    assert names is None or names in proc.stdout


def test_unchanged_port_passes(converted):
    """The same two models unedited pass: the edits above are what fails."""
    for name in ("conv2d_bn_dropout", "conv_bn_dense_frozen"):
        proc, t = _check(converted, name)
        assert proc.returncode == 0 and t["status"] == "ok", proc.stdout[-2000:]


RECURRENT_DROPOUT = {   # model: (module, gates, {Keras argument: rate})
    "lstm_recurrent_dropout": ("lstm", 4, {"dropout": 0.2, "recurrent_dropout": 0.1}),
    "gru_recurrent_dropout": ("gru", 3, {"dropout": 0.25, "recurrent_dropout": 0.15}),
    "simple_rnn_recurrent_dropout": ("rnn", 1, {"dropout": 0.3, "recurrent_dropout": 0.2}),
}


@pytest.mark.parametrize("name", list(RECURRENT_DROPOUT))
def test_recurrent_dropout_is_ported(converted, name):
    """A recurrent layer's own dropout/recurrent_dropout: the port is the Keras<kind> cell
    module, which draws Keras' masks once per call in train() (checks 1-4 at rate 0 pass;
    check 5 measures each mask's dropped fraction within 3 standard errors of the rate, kept
    entries 1/(1-rate), one (batch, features) mask per gate)."""
    module, gates, rates = RECURRENT_DROPOUT[name]
    proc, t = _check(converted, name)
    assert proc.returncode == 0 and t["status"] == "ok", proc.stdout[-2000:]
    src = (converted / name / "import" / "model.py").read_text()
    assert f"dropout={rates['dropout']!r}" in src and ("per_gate=True" in src) == (gates > 1)
    noise = {m["kind"]: m for m in t["checks"]["noise"]["modules"]}
    assert set(noise) == {f"recurrent {a}" for a in rates}
    for arg, rate in rates.items():
        m = noise[f"recurrent {arg}"]
        assert m["module"] == module and m["rate"] == pytest.approx(rate, rel=1e-9) and m["gates"] == gates
        assert abs(m["measured"] - rate) <= 3 * m["standard_error"] and m["scaled"] and m["per_call_mask"]
    assert t["zeroed"]["torch"] == {module: rates}


def test_recurrent_dropout_left_out_fails(converted, tmp_path):
    """The same port with the cell module's rates removed (a port that does not drop, as torch's
    nn.LSTM) fails check 5 only, naming the module."""
    name = "lstm_recurrent_dropout"
    shutil.copytree(converted / name, tmp_path / name)
    src = tmp_path / name / "import" / "model.py"
    text = src.read_text()
    assert "dropout=0.2, recurrent_dropout=0.1, per_gate=True" in text
    src.write_text(text.replace("dropout=0.2, recurrent_dropout=0.1, per_gate=True", "per_gate=True"))
    proc, t = _check(tmp_path, name)
    assert proc.returncode == 1 and not t["checks"]["noise"]["ok"], proc.stdout[-2000:]
    assert all(t["checks"][k]["ok"] for k in ("forward", "gradients", "sgd"))
    assert "lstm" in proc.stdout


def test_mobilenetv2_transfer_learning_passes(tmp_path):
    """keras.io's recipe: a frozen MobileNetV2 base called inside the model, then GAP ->
    Dropout -> Dense. The nested base is inlined at export: its 52 batch norms stay
    ``KerasBatchNorm2d`` in inference mode, its 260 variables map and do not train."""
    spec = "configs/models.py:mobilenetv2_transfer"
    proc = cli("convert", "--model", spec, "--out", tmp_path)
    assert_ok(proc, tmp_path, "mobilenetv2_transfer")
    meta = json.loads((tmp_path / "mobilenetv2_transfer" / "export" / "meta.json").read_text())
    assert meta["nested_models"]["inlined"] == ["mobilenetv2_1.00_96"]
    wmap = json.loads((tmp_path / "mobilenetv2_transfer" / "import" / "weights_map.json").read_text())
    assert not wmap["unmapped"] and len(wmap["map"]) == 262
    proc, t = _check(tmp_path, "mobilenetv2_transfer", spec)
    assert proc.returncode == 0 and t["status"] == "ok", proc.stdout[-3000:]
    g = t["checks"]["gradients"]
    assert g["tensors"] == 2 and g["frozen"] == 156   # head kernel and bias train; the base's 52x3 do not
    # every non-trainable variable after a train-mode forward: the base's 52 kernels, 52 x 4 batch norm variables
    assert t["checks"]["moving_statistics"]["tensors"] == 260
