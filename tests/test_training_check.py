"""``trainable-check`` (``pipeline/tools/training``) can fail, and says where: a port edited
by hand to be wrong in one way (torch's batch norm momentum, a frozen layer that trains,
another dropout rate, torch's eps) fails exactly the check that covers it and names the
tensor or module; a recurrent layer's own dropout, which the port does not apply, fails
check 5 with the reason. And the Keras transfer-learning recipe (a frozen MobileNetV2 base,
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
    names = ("conv2d_bn_dropout", "conv_bn_dense_frozen", "lstm_recurrent_dropout")
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


def test_recurrent_dropout_is_reported_not_ported(converted):
    proc, t = _check(converted, "lstm_recurrent_dropout")
    assert proc.returncode == 1 and t["status"] == "mismatch"
    noise = t["checks"]["noise"]
    assert [m["module"] for m in noise["modules"] if not m["ok"]] == ["lstm"]
    assert "not ported" in noise["modules"][0]["error"]
    assert t["zeroed"]["keras"] == {} and all(t["checks"][k]["ok"] for k in ("forward", "gradients", "sgd"))


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
