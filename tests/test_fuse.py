"""The inference form (``stages/importer/fuse.py``): batch norms folded into the conv or Dense
before them. On converted models with perturbed weights and moving statistics
(``builders_trainable.py:fuse_*``): the conversion is ok (compare checks ``model.pt2``, which
is exported from the folded form, against Keras), the folded module equals ``model.py`` in
eval, and exactly the foldable batch norms are gone (not the one whose conv also feeds a skip
connection). On hand-written modules: the reasons a pair is left, and a forward fx cannot trace."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_ok, cli, port

RTOL, ATOL = 1e-5, 1e-7     # folded vs unfused, in float32: max|d| <= RTOL * max|unfused| + ATOL
# builder -> (folded (layer, batch norm) pairs, batch norms left, Keras input shape without the batch)
CASES = {
    "fuse_conv1d": ([("conv", "bn")], 0, (16, 3)),
    "fuse_conv2d": ([("conv", "bn")], 0, (10, 10, 3)),
    "fuse_depthwise": ([("dw", "bn"), ("pw", "bn_pw")], 0, (10, 10, 4)),
    "fuse_conv3d": ([("conv", "bn")], 0, (6, 6, 6, 2)),
    "fuse_skip": ([("conv2", "bn2")], 1, (8, 8, 4)),
    "fuse_dense": ([("dense1", "bn")], 0, (7,)),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuse")
    procs = {m: cli("convert", "--model", f"tests/builders_trainable.py:{m}", "--out", out) for m in CASES}
    return out, procs




def _bns(module) -> list[str]:
    import torch

    return [n for n, m in module.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _channels_first(shape):
    return (shape[-1], *shape[:-1]) if len(shape) > 1 else shape


@pytest.mark.parametrize("name", list(CASES))
def test_converts_ok_with_the_pairs_folded(converted, name):
    out, procs = converted
    assert_ok(procs[name], out, name, rtol=RTOL, atol=ATOL)   # torch_pt2 (the folded program) included
    pairs, left, _ = CASES[name]
    info = json.loads((out / name / "import" / "import.json").read_text())
    assert info["format"] == "pt2"
    assert info["fused"]["pairs"] == [list(p) for p in pairs], info["fused"]
    assert len(info["fused"]["left"]) == left, info["fused"]


@pytest.mark.parametrize("name", list(CASES))
def test_folded_module_equals_model_py_in_eval(converted, name):
    import torch

    from pipeline.stages.importer.fuse import fuse

    out, _ = converted
    pairs, left, shape = CASES[name]
    module = port(out, name)
    for bn in _bns(module):   # perturbed statistics: a fold that ignored them would show
        m = module.get_submodule(bn)
        assert m.running_mean.abs().max() > 1e-2 and (m.running_var - 1).abs().max() > 1e-2, bn
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((6, *_channels_first(shape))).astype(np.float32))
    res = fuse(module, (x[:2],))
    assert res.error is None and res.pairs == pairs
    assert len(_bns(res.module)) == left and len(_bns(module)) == len(pairs) + left
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())   # the original untouched
    with torch.no_grad():
        want, got = module(x), res.module(x)
    assert (got - want).abs().max().item() <= RTOL * want.abs().max().item() + ATOL
    # the program in model.pt2 is the folded one: no running statistics of the folded batch norms
    prog = torch.export.load(str(out / name / "import" / "model.pt2"))
    keys = set(prog.state_dict)
    assert not {f"{bn}.running_mean" for _, bn in pairs} & keys, sorted(keys)
    assert all(f"{conv}.bias" in keys for conv, _ in pairs), sorted(keys)


# ---------------------------------------------------------------- hand-written modules


def _perturbed(module, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return module.eval()


def _hand(kind):
    import torch.nn as nn

    class AxisBN(nn.BatchNorm1d):   # as KerasBatchNorm: normalises ``axis``
        axis = 2

        def forward(self, x):
            return super().forward(x.movedim(2, 1)).movedim(1, 2)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, groups=2, bias=False) if kind != "axis" else nn.Conv1d(3, 5, 1)
            self.bn = nn.BatchNorm2d(8, eps=0.3) if kind != "axis" else AxisBN(5)
            self.lin = nn.Linear(4, 4)
            self.bn_lin = nn.BatchNorm1d(4)

        def forward(self, x):
            y = self.conv(x)
            if kind == "axis":   # (N, 5, 5): axis 2 is the conv's length, not its channels
                return self.bn(y)
            z = self.bn(y)
            if kind == "skip":
                z = z + y
            if kind == "values" and bool(z.sum() > 0):
                z = -z
            return self.bn_lin(self.lin(z[:, :, :, :4].mean(1)))   # a rank-3 Linear output: not foldable

    return _perturbed(M())


@pytest.mark.parametrize("kind, folded, reason", [
    ("grouped", [("conv", "bn")], None),
    ("skip", [], "2 users"),
    ("axis", [], "normalises axis 2"),
], ids=["grouped-no-bias-eps0.3", "skip", "bn-axis-2"])
def test_hand_written(kind, folded, reason):
    import torch

    from pipeline.stages.importer.fuse import fuse

    module = _hand(kind)
    x = torch.randn(3, 3, 5) if kind == "axis" else torch.randn(3, 4, 6, 6)
    res = fuse(module, (x,))
    assert res.pairs == folded
    if reason:
        assert reason in res.left["bn"], res.left
    if kind != "axis":
        assert "output rank is 3" in res.left["bn_lin"], res.left
    with torch.no_grad():
        want, got = module(x), res.module(x)
    assert (got - want).abs().max().item() <= RTOL * want.abs().max().item() + ATOL


def test_untraceable_forward_is_left_whole():
    import torch

    from pipeline.stages.importer.fuse import fuse

    module = _hand("values")
    res = fuse(module, (torch.randn(2, 4, 6, 6),))
    assert res.module is module and res.pairs == []
    assert res.error and "torch.fx could not trace" in res.error
