"""Batch norms and dropout layers as modules that train (``core.trainable``,
``codegen/ops/keras_trainable.py``): the ports convert with parity and without new
Transposes, ``model.py`` holds ``KerasBatchNorm2d``/``nn.Dropout``, and in ``train()`` the
port does what Keras does with ``training=True``: the same output and moving statistics
after one step (dropout rates 0, ``builders_trainable.py``), a frozen batch norm stays in
inference mode, a dropout drops its rate.

Keras runs in a subprocess (TensorFlow never shares the pytest process with torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ENV, REPO, assert_ok, cli, port, report
from pipeline.core.trainable import DOMAIN, KINDS, BatchNormSpec, DropoutSpec, function

RTOL, ATOL = 1e-5, 1e-7           # parity: max|d| <= RTOL * max|keras| + ATOL (the pipeline's defaults)
TRAIN_RTOL = 1e-5                 # train-mode output, of the output's scale
STATS_ATOL = 1e-6                 # moving mean / variance after one step
MODELS = ("conv2d_bn_dropout", "conv1d_bn_noise", "dropout_family", "conv2d_bn_rate0", "conv1d_bn_rate0",
          "conv2d_bn_frozen")
# Transposes left in the torch graph by the plain path (batch norm folded, dropouts gone), measured
TRANSPOSES_BEFORE = {"conv2d_bn_dropout": 0, "conv1d_bn_noise": 0, "dropout_family": 0}
TO_FIRST = {4: (0, 3, 1, 2), 3: (0, 2, 1)}

KERAS_STEP = r"""
import sys, importlib.util, numpy as np, keras
path, name, x_file, out_file = sys.argv[1:]
spec = importlib.util.spec_from_file_location("builders", path)
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
model = getattr(mod, name)()
x = np.load(x_file)
y_inf = np.asarray(model(x, training=False))
y = np.asarray(model(x, training=True))
bn = model.get_layer("bn")
np.savez(out_file, y=y, y_inf=y_inf, mean=np.asarray(bn.moving_mean), var=np.asarray(bn.moving_variance))
"""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainable")
    procs = {m: cli("convert", "--model", f"tests/builders_trainable.py:{m}", "--out", out) for m in MODELS}
    return out, procs




def _keras_step(tmp_path, name, x):
    """Keras' training=True output and the batch norm's moving statistics after that call."""
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", KERAS_STEP, str(REPO / "tests" / "builders_trainable.py"), name,
                           str(tmp_path / "x.npy"), str(tmp_path / "keras.npz")], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(tmp_path / "keras.npz"))


@pytest.mark.parametrize("name", MODELS)
def test_converts_with_parity(converted, name):
    out, procs = converted
    assert_ok(procs[name], out, name, rtol=RTOL, atol=ATOL)
    meta = json.loads((out / name / "export" / "meta.json").read_text())
    assert "bn" in meta["trainable"]["nodes"] or name == "dropout_family", meta["trainable"]
    assert not meta["trainable"]["plain"] and "fallback" not in meta["trainable"], meta["trainable"]


@pytest.mark.parametrize("name", sorted(TRANSPOSES_BEFORE))
def test_no_new_transposes(converted, name):
    out, _ = converted
    assert report(out, name)["transposes_torch"] <= TRANSPOSES_BEFORE[name]


def test_model_py_holds_the_modules(converted):
    out, _ = converted
    src = {m: (out / m / "import" / "model.py").read_text() for m in ("conv2d_bn_dropout", "conv1d_bn_noise",
                                                                       "dropout_family", "conv2d_bn_frozen")}
    assert "class KerasBatchNorm2d(_KerasBatchNorm, nn.BatchNorm2d)" in src["conv2d_bn_dropout"]
    assert "self.bn = KerasBatchNorm2d(8, eps=0.001, momentum=0.01)" in src["conv2d_bn_dropout"]
    assert "self.drop = nn.Dropout(0.3)" in src["conv2d_bn_dropout"]
    assert "self.sdrop = nn.Dropout2d(0.3)" in src["conv2d_bn_dropout"]
    assert "self.bn = KerasBatchNorm1d(4, eps=0.001, momentum=0.01)" in src["conv1d_bn_noise"]
    assert "self.noise = KerasGaussianNoise(0.2)" in src["conv1d_bn_noise"]
    for line in ("self.gdrop = KerasGaussianDropout(0.2)", "self.adrop = nn.AlphaDropout(0.2)",
                 "self.sdrop1 = nn.Dropout1d(0.2)"):
        assert line in src["dropout_family"]
    assert "trainable=False)" in src["conv2d_bn_frozen"]


@pytest.mark.parametrize("name", ["conv2d_bn_rate0", "conv1d_bn_rate0"])
def test_train_step_matches_keras(converted, tmp_path, name):
    """One train-mode forward: output and the updated moving mean / variance as Keras'."""
    import torch

    out, _ = converted
    model = port(out, name)
    shape = [8, 12, 12, 3] if name.startswith("conv2d") else [8, 16, 3]
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    ref = _keras_step(tmp_path, name, x)
    model.train()
    with torch.no_grad():
        y = model(torch.from_numpy(np.ascontiguousarray(x.transpose(TO_FIRST[x.ndim])))).numpy()
    assert np.abs(ref["y"] - ref["y_inf"]).max() > 1e-2, "training=True must differ from inference to prove anything"
    assert np.abs(y - ref["y"]).max() <= TRAIN_RTOL * np.abs(ref["y"]).max() + ATOL
    np.testing.assert_allclose(model.bn.running_mean.numpy(), ref["mean"], rtol=0, atol=STATS_ATOL)
    np.testing.assert_allclose(model.bn.running_var.numpy(), ref["var"], rtol=0, atol=STATS_ATOL)


def test_frozen_batchnorm_stays_in_inference(converted, tmp_path):
    import torch

    out, _ = converted
    model = port(out, "conv2d_bn_frozen")
    x = np.random.default_rng(7).standard_normal([8, 12, 12, 3]).astype(np.float32)
    ref = _keras_step(tmp_path, "conv2d_bn_frozen", x)
    mean0, var0 = model.bn.running_mean.clone(), model.bn.running_var.clone()
    model.train()
    with torch.no_grad():
        y = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(ref["y"], ref["y_inf"], rtol=0, atol=0)   # Keras: inference even in training
    assert np.abs(y - ref["y"]).max() <= TRAIN_RTOL * np.abs(ref["y"]).max() + ATOL
    assert torch.equal(model.bn.running_mean, mean0) and torch.equal(model.bn.running_var, var0)
    assert not model.bn.weight.requires_grad and not model.bn.bias.requires_grad
    assert model.conv1.weight.requires_grad


def _bn(axis, rank, center=True, scale=True):
    roles = [r for r, on in (("gamma", scale), ("beta", center), ("moving_mean", True), ("moving_variance", True))
             if on]
    return BatchNormSpec(kind="BatchNormalization", layer="bn", axis=axis, rank=rank, epsilon=1e-3, momentum=0.9,
                         center=center, scale=scale, weights=roles, variables=[f"bn/{r}" for r in roles])


# each node alone: (spec, input shape); the batch norm on every axis the rewrite can give it
NODE_CASES = {
    "bn-2d-axis1": (_bn(1, 4), (2, 5, 4, 3)),
    "bn-2d-axis3": (_bn(3, 4), (2, 4, 3, 5)),
    "bn-1d-axis2-no-center": (_bn(2, 3, center=False), (2, 4, 5)),
    "bn-dense-no-scale": (_bn(1, 2, scale=False), (3, 5)),
    "bn-3d-axis1-plain": (_bn(1, 5, center=False, scale=False), (2, 5, 2, 3, 2)),
    **{f"{k.lower()}": (DropoutSpec(kind=k, layer="d", rate=0.25, stddev=0.1, axis=1, rank=r), s)
       for k, r, s in (("Dropout", 2, (3, 5)), ("SpatialDropout1D", 3, (2, 5, 4)), ("SpatialDropout2D", 4, (2, 5, 3, 3)),
                       ("SpatialDropout3D", 5, (2, 5, 2, 2, 2)), ("GaussianNoise", 3, (2, 5, 4)),
                       ("GaussianDropout", 3, (2, 5, 4)), ("AlphaDropout", 3, (2, 5, 4)))},
    "spatialdropout2d-axis3": (DropoutSpec(kind="SpatialDropout2D", layer="d", rate=0.25, axis=3, rank=4),
                               (2, 3, 3, 5)),
}


def test_every_trainable_op_has_a_case():
    assert {spec.kind for spec, _ in NODE_CASES.values()} == set(KINDS)


@pytest.mark.parametrize("case_id", list(NODE_CASES))
def test_node_matches_onnxruntime(tmp_path, case_id):
    """The node's ONNX body (onnxruntime) and its generated module in eval() agree; in
    train() the module keeps the shape (and, at rate 0.25, changes the values)."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import helper, numpy_helper
    from safetensors.numpy import save_file

    from pipeline import codegen

    spec, shape = NODE_CASES[case_id]
    rng = np.random.default_rng(4)
    c = shape[spec.axis]
    inits = [numpy_helper.from_array((rng.uniform(0.5, 1.5, c) if r in ("gamma", "moving_variance")
                                      else rng.normal(0, 0.3, c)).astype(np.float32), f"w_{r}") for r in spec.weights]
    node = helper.make_node(spec.op_type, ["x", *[t.name for t in inits]], ["y"], domain=DOMAIN, overload=spec.layer,
                            keras=spec.to_json(), name=spec.op_type)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, ["N", *shape[1:]])],
                              [helper.make_tensor_value_info("y", 1, ["N", *shape[1:]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
                              functions=[function(spec, 17)], ir_version=10)
    model = onnx.shape_inference.infer_shapes(model)
    gen = codegen.generate(model, case_id.replace("-", "_"), [{"name": spec.layer, "class": spec.kind}])
    (tmp_path / "model.py").write_text(gen.source)
    save_file({k: np.ascontiguousarray(v) for k, v in gen.state.items()}, str(tmp_path / "model.safetensors"))
    module = codegen.load_generated(tmp_path / "model.py")
    x = rng.standard_normal(shape).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
        module.train()
        trained = module(torch.from_numpy(x)).numpy()
    assert trained.shape == ref.shape and not np.allclose(trained, ref, rtol=0, atol=1e-6)


def _zero_fraction_ok(zeros: int, n: int, p: float):
    se = (p * (1 - p) / n) ** 0.5
    assert abs(zeros / n - p) <= 3 * se, (zeros / n, p, se)


def test_dropout_rates_in_train(converted):
    import torch

    out, _ = converted
    model = port(out, "conv2d_bn_dropout").train()
    torch.manual_seed(0)
    ones = torch.ones(200, 500)
    y = model.drop(ones)
    _zero_fraction_ok(int((y == 0).sum()), ones.numel(), 0.3)
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7), rtol=1e-6, atol=0)
    y = model.sdrop(torch.ones(400, 50, 3, 3))   # whole channels
    per_channel = (y == 0).reshape(400, 50, 9)
    assert bool((per_channel.all(-1) == per_channel.any(-1)).all())
    _zero_fraction_ok(int(per_channel.all(-1).sum()), 400 * 50, 0.3)
    model.eval()
    assert torch.equal(model.drop(ones), ones)


def test_noise_layers_in_train(converted):
    """GaussianNoise adds N(0, stddev), GaussianDropout multiplies by N(1, sqrt(p/(1-p))),
    AlphaDropout keeps mean 0 and variance 1 of standard normal inputs (its point)."""
    import torch

    out, _ = converted
    noise = port(out, "conv1d_bn_noise").noise.train()
    fam = port(out, "dropout_family").train()
    torch.manual_seed(0)
    n = 100_000
    x = torch.zeros(n)
    assert abs(float(noise(x).std()) - 0.2) <= 3 * 0.2 / (2 * n) ** 0.5 + 1e-3
    g = fam.gdrop(torch.ones(n))
    assert abs(float(g.std()) - (0.2 / 0.8) ** 0.5) <= 0.01 and abs(float(g.mean()) - 1) <= 0.01
    a = fam.adrop(torch.randn(n))
    assert abs(float(a.mean())) <= 0.02 and abs(float(a.var()) - 1) <= 0.03
    noise.eval()
    assert torch.equal(noise(x), x)


@pytest.mark.parametrize("name", MODELS)
def test_training_check_passes(converted, name):
    """``trainable-check`` (checks 1-5 of issue 14) on each model: exit 0, status ok, and
    every figure within the issue's bars, checked here again from training.json."""
    out, _ = converted
    proc = cli("trainable-check", "--model", f"tests/builders_trainable.py:{name}", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    t = json.loads((out / name / "training" / "training.json").read_text())
    assert t["status"] == "ok" and report(out, name)["training"]["status"] == "ok"
    c = t["checks"]
    for r in c["forward"]["outputs"].values():
        assert r["max_abs_err"] <= 1e-5 * r["scale"] + 1e-7, r
    assert c["gradients"]["tensors"] >= 4 and c["gradients"]["max_err_over_tolerance"] <= 1.0
    assert len(c["sgd"]["keras_losses"]) == len(c["sgd"]["torch_losses"]) == 10
    assert c["sgd"]["torch_losses"][-1] < c["sgd"]["torch_losses"][0]   # it trained
    if "bn" in json.loads((out / name / "export" / "meta.json").read_text())["trainable"]["nodes"]:
        assert c["moving_statistics"]["tensors"] >= 2
    rates = c["noise"]["modules"]
    for m in rates:   # within 3 standard errors of the rate (a fraction) or of the noise's std
        got, want = (m["measured"], m["rate"]) if "measured" in m else (m["measured_std"], m["expected_std"])
        assert abs(got - want) <= 3 * m["standard_error"], m
    assert bool(rates) == ("rate0" not in name and name != "conv2d_bn_frozen")
