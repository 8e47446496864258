"""Activity regularizers and recurrent layers' weight regularizers (issue 14): the port's
``regularization_loss()`` after a forward equals ``sum(keras_model.losses)`` after a Keras
call on the same batch (Keras adds each activity term, ``(l1 * sum|y| + l2 * sum y**2) /
batch``, on every call; recorded at export by an eager call, TensorFlow side), and the
training check passes without an "activity regularizers not ported" warning.

Models (``builders_trainable.py``, perturbed weights): ``activity_regularized`` (Conv2D
L1L2 and Dense L2 activity regularizers, Keras' ``ActivityRegularization`` layer, a Dense
kernel L2) and ``recurrent_regularized`` (a Bidirectional LSTM with kernel/recurrent/bias
regularizers, both directions counted; a GRU with a recurrent L2 and an activity L1)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_ok, cli, port

MODELS = ("activity_regularized", "recurrent_regularized")
RTOL, ATOL = 1e-5, 1e-7


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("activity")
    procs = {m: cli("convert", "--model", f"tests/builders_trainable.py:{m}", "--out", out) for m in MODELS}
    for m, p in procs.items():
        assert_ok(p, out, m)
    return out




@pytest.mark.parametrize("name", MODELS)
def test_regularization_loss_after_forward_equals_keras_losses(converted, name):
    import torch

    from pipeline.core.reference import inputs_for, load_reference

    meta = json.loads((converted / name / "export" / "meta.json").read_text())
    facts = json.loads((converted / name / "rewrite" / "rewrite.json").read_text())
    ref = meta["losses_reference"]
    inputs, _ = load_reference(converted / name / "export" / "reference.npz")
    feeds = inputs_for(facts, inputs)
    model = port(converted, name)
    weights_only = float(model.regularization_loss().detach())
    with torch.no_grad():
        model(*[torch.from_numpy(np.ascontiguousarray(feeds[i["name"]])) for i in meta["inputs"]])
    got = float(model.regularization_loss().detach())
    assert got == pytest.approx(ref["sum_losses"], rel=RTOL, abs=ATOL)
    if name == "activity_regularized":   # conv, dense, act_reg: three activity terms, one kernel L2
        assert ref["n_losses"] == 4 and meta["trainable"]["activity_regularizers"]["nodes"] == [
            "act_reg", "conv", "dense"]
        assert got - weights_only > 0.5   # the activity terms are most of the sum: a port without them fails
    else:   # 2 x 3 LSTM weight terms, the GRU's recurrent L2 and its activity L1
        assert ref["n_losses"] == 8 and meta["trainable"]["activity_regularizers"]["nodes"] == ["gru"]
        src = (converted / name / "import" / "model.py").read_text()
        assert "weight_hh_l0_reverse.abs().sum()" in src and "self.gru_activity.loss" in src


@pytest.mark.parametrize("name", MODELS)
def test_training_check_counts_activity_terms(converted, name):
    proc = cli("trainable-check", "--model", f"tests/builders_trainable.py:{name}", "--out", converted)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    t = json.loads((converted / name / "training" / "training.json").read_text())
    assert t["status"] == "ok" and not t["warnings"], t["warnings"]
    reg = t["checks"]["forward"]["regularization"]
    assert reg["ok"] and reg["torch"] == pytest.approx(reg["keras"], rel=RTOL, abs=ATOL)
