"""``python -m pipeline transplant``: Keras weights into hand-written PyTorch modules
(``transplant_nets.py``) for Keras models with perturbed weights (``transplant_models.py``,
the seed model of ``configs/``), the parity check, and the traps named by measurement.

Every case runs the CLI (the stages in processes of their own, TensorFlow never here);
the numbers are checked again here from the files it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TESTS, cli

RTOL, ATOL = 1e-5, 1e-7   # the compare stage's defaults, which transplant uses
SEED = ("configs/models.py:conv1d_flatten_dense", "conv1d_flatten_dense")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("transplant")


def transplant(out, model, net, *extra):
    proc = cli("transplant", "--model", model, "--out", out, "--into", f"tests/transplant_nets.py:{net}", *extra)
    name = model.rsplit(":", 1)[-1] if ":" in model else model.rsplit(".", 1)[-1]
    folder = out / name / "transplant"
    rep = json.loads((folder / "report.json").read_text()) if (folder / "report.json").exists() else None
    return proc, rep, folder


def _within(rep):
    for n, r in rep["outputs"].items():
        assert r["max_abs_err"] <= RTOL * r["scale"] + ATOL, (n, r)


# ---------------------------------------------------------------- the seed model: the Flatten trap

def test_seed_without_permute_is_named_and_explained(out):
    proc, rep, _ = transplant(out, SEED[0], "SeedNoPermute")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert rep["status"] == "mismatch"
    r = rep["outputs"]["dense"]
    assert r["max_abs_err"] > 100 * (RTOL * r["scale"] + ATOL), r   # wrong, not rounding
    assert rep["first_diverging"]["module"] == "fc" and rep["first_diverging"]["layer"] == "dense"
    assert [f["trap"] for f in rep["findings"]] == ["flatten_order"]
    assert rep["findings"][0]["max_rel_err_after"] <= RTOL
    assert "x.permute(0, 2, 1)" in proc.stdout and "--fold-flatten" in proc.stdout
    assert "first diverging module: 'fc' (Keras layer 'dense')" in proc.stdout


@pytest.mark.parametrize("net, extra", [("SeedNoPermute", ["--fold-flatten"]), ("SeedPermute", [])],
                         ids=["fold-flatten", "permute-in-forward"])
def test_seed_parity(out, net, extra):
    proc, rep, folder = transplant(out, SEED[0], net, *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert rep["status"] == "ok" and rep["findings"] == [] and not rep["unmatched_user"]
    _within(rep)
    # the file alone: a fresh module with state_dict.safetensors reproduces Keras' output
    import importlib.util
    spec = importlib.util.spec_from_file_location("transplant_nets", TESTS / "transplant_nets.py")
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    m = getattr(nets, net)().eval()
    m.load_state_dict(load_file(str(folder / "state_dict.safetensors")), strict=True)
    with np.load(out / SEED[1] / "export" / "reference.npz", allow_pickle=False) as z:
        x, ref = z["input:x"], z["output:dense"]
    with torch.no_grad():
        got = m(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=RTOL * np.abs(ref).max() + ATOL)
    # the Dense weight: Keras' kernel transposed, rows permuted only with --fold-flatten
    with np.load(out / SEED[1] / "export" / "keras_weights.npz", allow_pickle=False) as w:
        k = w["dense/kernel"]
    p = np.arange(254).reshape(127, 2).T.reshape(-1)
    want = k[p].T if extra else k.T
    np.testing.assert_array_equal(m.fc.weight.detach().numpy(), want)
    mapping = json.loads((folder / "mapping.json").read_text())
    row = next(r for r in mapping["map"] if r["keras"] == "dense/kernel")
    assert row["user"] == "fc.weight" and ("row_permutation" in row["transform"]) == bool(extra)


@pytest.mark.parametrize("net, extra, rc", [("SeedNoPermute", ["--fold-flatten"], 0), ("SeedPermute", [], 0),
                                            ("SeedNoPermute", [], 1)], ids=["fold-flatten", "permute", "no-permute"])
def test_values_from_the_port_when_keras_weights_were_not_kept(out, tmp_path, net, extra, rc):
    """Over 128 MB the export keeps no keras_weights.npz (VGG16): the port's tensors, the
    Flatten fold undone unless asked for, give the same state_dict."""
    import shutil

    test_seed_parity(out, "SeedPermute", []) if not (out / SEED[1] / "import").exists() else None
    shutil.copytree(out / SEED[1], tmp_path / SEED[1])
    (tmp_path / SEED[1] / "export" / "keras_weights.npz").unlink()
    proc, rep, folder = transplant(tmp_path, SEED[0], net, *extra)
    assert proc.returncode == rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((folder / "mapping.json").read_text())["map"]
    assert all("from_port" in r["transform"] for r in rows), rows
    if rc == 0:
        _within(rep)
    else:
        assert rep["findings"][0]["trap"] == "flatten_order"


def test_unmatched_module_listed_with_shapes(out):
    proc, rep, _ = transplant(out, SEED[0], "SeedExtra")
    assert proc.returncode == 1
    assert rep["status"] == "mismatch"
    assert [(u["module"], u["tensors"]) for u in rep["unmatched_user"]] == \
        [("extra", {"weight": [1, 1], "bias": [1]})]
    assert "unmatched module 'extra'" in proc.stdout


def test_bad_target_is_one_clear_error_and_keeps_the_previous_results(out):
    before = (out / SEED[1] / "transplant" / "report.json").read_bytes()
    proc = cli("transplant", "--model", SEED[0], "--out", out, "--into", "tests/transplant_nets.py:NoSuchNet")
    assert proc.returncode == 2
    assert "stage transplant" in proc.stderr and "NoSuchNet" in proc.stderr
    assert (out / SEED[1] / "transplant" / "report.json").read_bytes() == before
    assert not list((out / SEED[1]).glob(".transplant.tmp-*"))
    proc = cli("transplant", "--model", SEED[0], "--out", out, "--into", "tests/transplant_nets.py:SeedPermute",
               "--input-layout", "channels_last")
    assert proc.returncode == 2
    assert "module 'conv'" in proc.stderr and "channels_last" in proc.stderr


# ---------------------------------------------------------------- layer kinds and traps

@pytest.mark.parametrize("model, net, ok, trap, module", [
    ("lstm_text", "LstmText", True, None, None),
    ("resnet_block", "ResBlock", True, None, None),
    ("resnet_block", "res_block_torch_eps", False, "batchnorm_eps", "bn1"),
    ("gru_reset_after", "GruNet", True, None, None),
    ("gru_reset_before", "GruNet", False, "gru_reset_after", "gru"),
    ("strided_same", "StridedConv", False, "same_padding", "conv"),
    ("gelu_exact", "GeluNet", True, None, None),
    ("gelu_tanh", "gelu_net_tanh", True, None, None),
    ("hard_sigmoid", "HardSigmoidNet", True, None, None),
    ("upsample_bilinear", "UpNet", True, None, None),
], ids=["lstm-text", "resnet-block", "resnet-block-torch-eps", "gru-reset-after", "gru-reset-before",
        "strided-same-padding", "gelu-exact", "gelu-tanh", "hard-sigmoid", "upsample-bilinear"])
def test_layer_kinds(out, model, net, ok, trap, module):
    proc, rep, folder = transplant(out, f"tests/transplant_models.py:{model}", net)
    assert proc.returncode == (0 if ok else 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not rep["unmatched_user"] and not rep["unmatched_keras"]
    if ok:
        _within(rep)
        assert all(r["ok"] for r in rep["layers"]), rep["layers"]
        return
    assert rep["first_diverging"]["module"] == module
    assert rep["findings"][0]["trap"] == trap and rep["findings"][0]["module"] == module
    assert rep["findings"][0]["max_rel_err_after"] <= RTOL < rep["findings"][0]["max_rel_err_before"]
    assert rep["explained"], rep["findings"]
    assert f"[{trap}]" in proc.stdout
    keys = set(load_file(str(folder / "state_dict.safetensors")))
    assert keys >= {r["user"] for r in json.loads((folder / "mapping.json").read_text())["map"]}


@pytest.mark.parametrize("model, net, module, says", [
    # fused in Keras' Dense: the GELU after the failing module
    ("gelu_exact", "gelu_net_tanh", "fc1", "approximate='tanh'; the Keras model's gelu is exact (erf): use "
                                           "nn.GELU(approximate='none')"),
    # an Activation layer of its own: the GELU before the failing module
    ("gelu_tanh", "GeluNet", "fc2", "approximate='none'; the Keras model's gelu is the tanh approximation: use "
                                    "nn.GELU(approximate='tanh')"),
    ("hard_sigmoid", "hard_sigmoid_net_old", "fc1", "(OldHardSigmoid) computes another function than Keras layer "
                                                    "'fc1''s, which is relu6(x + 3) / 6"),
    ("upsample_bilinear", "up_net_nearest", "conv2", "mode='nearest', align_corners=None; Keras' resize matches "
                                                     "mode='bilinear', align_corners=False"),
    ("upsample_bilinear", "up_net_align_corners", "conv2", "mode='bilinear', align_corners=True; Keras' resize "
                                                           "matches mode='bilinear', align_corners=False"),
], ids=["gelu-tanh-for-exact", "gelu-exact-for-tanh", "hard-sigmoid-keras2", "resize-nearest", "resize-align-corners"])
def test_activation_and_resize_traps(out, model, net, module, says):
    """The wrong GELU, hard sigmoid or resize mode: the module it feeds (or follows) named,
    the trap explaining it by measurement (within tolerance with the other definition)."""
    proc, rep, _ = transplant(out, f"tests/transplant_models.py:{model}", net)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = next(iter(rep["outputs"].values()))
    assert r["max_abs_err"] > 10 * (RTOL * r["scale"] + ATOL), r   # off by more than rounding
    assert rep["first_diverging"]["module"] == module
    f = rep["findings"][0]
    assert f["module"] == module and f["explained"] and rep["explained"], rep["findings"]
    assert f["max_rel_err_after"] <= RTOL < f["max_rel_err_before"]
    assert says in f["message"], f["message"]


def test_batchnorm_momentum_is_a_warning_naming_the_layer(out):
    """torch's default momentum 0.1 is not 1 - Keras' 0.99: the same in eval (exit 0), a
    warning per batch norm in report.json; momentum=0.01 gives none."""
    proc, rep, _ = transplant(out, "tests/transplant_models.py:resnet_block", "ResBlock")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ws = [w for w in rep["warnings"] if w["kind"] == "batchnorm_momentum"]
    assert [(w["module"], w["layer"]) for w in ws] == [("bn1", "bn1"), ("bn2", "bn2")]
    assert ws[0]["user_momentum"] == pytest.approx(0.1, rel=1e-6)
    assert ws[0]["keras_momentum"] == pytest.approx(0.99, rel=1e-6)
    assert "momentum=0.01" in ws[0]["message"] and "warning [batchnorm_momentum]" in proc.stdout
    proc, rep, _ = transplant(out, "tests/transplant_models.py:resnet_block", "res_block_keras_momentum")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert rep["warnings"] == []


def test_module_called_twice_is_said_compared_on_its_first_call(out):
    proc, rep, _ = transplant(out, SEED[0], "SeedConvTwice")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [(w["kind"], w["module"], w["layer"], w["calls"]) for w in rep["warnings"]] == \
        [("called_more_than_once", "conv", "conv1d", 2)]
    assert "first call only" in rep["warnings"][0]["message"]
    proc, rep, _ = transplant(out, SEED[0], "SeedPermute")
    assert proc.returncode == 0 and rep["warnings"] == []


# ---------------------------------------------------------------- torchvision modules for keras.applications

@pytest.mark.slow
def test_mobilenet_v2_names_asymmetric_padding(out):
    proc = cli("transplant", "--model", "keras.applications.MobileNetV2", "--input-shape", "96,96,3", "--out", out,
               "--into", "tests/transplant_nets.py:mobilenet_v2", timeout=1800)
    rep = json.loads((out / "MobileNetV2" / "transplant" / "report.json").read_text())
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not rep["unmatched_user"] and not rep["unmatched_keras"]
    assert rep["first_diverging"] == {**rep["first_diverging"], "module": "features.0.0", "layer": "Conv1"}
    f = rep["findings"][0]
    assert (f["trap"], f["module"], f["layer"]) == ("same_padding", "features.0.0", "Conv1")
    assert "asymmetric" in f["message"]
    assert "same_padding" in {g["trap"] for g in rep["traps"]}


@pytest.mark.slow
def test_vgg16_flatten_order_then_parity_with_fold_flatten(out):
    """torchvision's vgg16 for keras.applications.VGG16 (224x224, He-scaled kernels, no
    softmax: tests/transplant_models.py:vgg16). Keras flattens block5_pool's 7x7x512
    channels-last; torchvision's classifier.0 takes the channels-first flatten. Measured
    (2 cores): 190 s and 4.0 GB peak RSS for this test (the stages and both transplants)."""
    model = "tests/transplant_models.py:vgg16"
    proc, rep, _ = transplant(out, model, "vgg16")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not rep["unmatched_user"] and not rep["unmatched_keras"]
    assert (rep["first_diverging"]["module"], rep["first_diverging"]["layer"]) == ("classifier.0", "fc1")
    assert [(f["trap"], f["module"], f["layer"]) for f in rep["findings"]] == [("flatten_order", "classifier.0", "fc1")]
    assert rep["explained"] and "x.permute(0, 2, 3, 1)" in rep["findings"][0]["message"]
    assert all(r["ok"] for r in rep["layers"][:13]), rep["layers"][:13]    # the 13 convs match
    proc, rep, folder = transplant(out, model, "vgg16", "--fold-flatten")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert rep["status"] == "ok" and rep["findings"] == [] and all(r["ok"] for r in rep["layers"])
    _within(rep)
    row = next(r for r in json.loads((folder / "mapping.json").read_text())["map"] if r["user"] == "classifier.0.weight")
    assert "row_permutation" in row["transform"] and "from_port" in row["transform"]
