"""Keras 3 models beyond keras.applications (``tests/builders_beyond.py``), converted with the
CLI: padding modes on any rank, preprocessing layers inside the model, structured data on
int inputs (reference inputs in the range the model indexes, ``--input-range``), and the
layers tf2onnx cannot export stopping with a message that names them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import cli, report
from pipeline.core.artifacts import ModelDir
from pipeline.core.reference import inputs_for, load_reference
from pipeline.runners import load_generated, load_pt2

BUILDERS = "tests/builders_beyond.py"
OK = ["pad_modes", "preprocessing_bilinear", "preprocessing_bilinear_crop", "preprocessing_nearest",
      "preprocessing_nearest_crop", "category_encoding", "embedding_ranges"]
KEPT = ("torch_codegen", "torch_pt2")   # the ports users keep; onnx2torch's is a cross-check (a warning)


def _assert_kept_ok(proc, out, name, excluded=()):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rep = report(out, name)
    assert rep["status"] == "ok", rep
    assert sorted(rep.get("excluded", {})) == sorted(excluded), rep.get("excluded")
    for output, stages in rep["outputs"].items():
        assert set(KEPT) <= set(stages), (output, stages)
        if output in excluded:
            continue
        for stage in KEPT:
            r = stages[stage]
            assert r["max_abs_err"] <= 1e-5 * r["scale"] + 1e-6, (output, stage, r)
    return rep


@pytest.mark.parametrize("name", OK)
def test_converts_with_parity(tmp_path, name):
    _assert_kept_ok(cli("convert", "--model", f"{BUILDERS}:{name}", "--out", tmp_path), tmp_path, name)


# the keras.io-style suite: model -> layout Transposes a channels-first port needs none of
# (convs, separable convs, pooling, upsampling and residual adds only; a Transformer on
# tokens), or None where the model's own Reshape/Dot/attention fixes a layout
EXAMPLES = {"pointnet": None, "espcn": None, "text_transformer": 0, "audio_frontend": None,
            "timeseries_transformer": None, "unet_segmentation": 0}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_code_example_models_convert(tmp_path, name):
    """Parity in model.py and model.pt2 on outputs that are not degenerate (a tiny or
    constant output would prove little); no layout Transpose left where none is needed."""
    rep = _assert_kept_ok(cli("convert", "--model", f"{BUILDERS}:{name}", "--out", tmp_path), tmp_path, name)
    assert not rep["degenerate"], rep["warnings"]
    rw = json.loads((tmp_path / name / "rewrite" / "rewrite.json").read_text())
    if EXAMPLES[name] is not None:
        assert rw["transposes_torch_by_kind"]["layout"] == EXAMPLES[name], rw["remaining"]


def test_reference_ranges_follow_the_model_and_the_flag(tmp_path):
    proc = cli("convert", "--model", f"{BUILDERS}:embedding_ranges", "--out", tmp_path, "--input-range", "ids=5:7")
    _assert_kept_ok(proc, tmp_path, "embedding_ranges")
    meta = json.loads((tmp_path / "embedding_ranges" / "export" / "meta.json").read_text())
    assert meta["input_ranges"] == {"ids": [5, 7], "seg": [0, 3]}   # seg: Embedding(3) and CategoryEncoding(3)


@pytest.mark.parametrize("name,layer", [("integer_lookup", "lookup"), ("hashing", "hashing")])
def test_unexportable_layer_is_named(tmp_path, name, layer):
    proc = cli("convert", "--model", f"{BUILDERS}:{name}", "--out", tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = report(tmp_path, name)["error"]
    assert err["stage"] == "export" and err["layer"] == layer, err


def test_string_input_is_named_with_a_hint(tmp_path):
    """A StringLookup on a string input: strings have no torch tensor; export stops before
    drawing inputs, naming the input and the layer that reads it, with what to do instead."""
    proc = cli("convert", "--model", f"{BUILDERS}:string_lookup", "--out", tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = report(tmp_path, "string_lookup")["error"]
    assert err["stage"] == "export" and err["layer"] == "string_lookup" and err["kind"] == "string-input", err
    assert "'word'" in err["message"] and "StringLookup" in err["message"], err
    assert "outside the model" in err["hint"], err


def test_random_layer_converts_and_its_output_is_left_out(tmp_path):
    """A VAE encoder whose Sampling layer draws keras.random.normal at inference: z_mean and
    z_log_var match Keras (rtol 1e-5 of scale + 1e-6) in model.py and model.pt2; z is left out of
    parity with the reason in report.json, and is drawn as Keras draws it: over 2,000 draws per
    sample, (z - z_mean) / exp(z_log_var / 2) has mean 0 (within 5 standard errors) and std 1
    (within 5%), in both ports."""
    rep = _assert_kept_ok(cli("convert", "--model", f"{BUILDERS}:vae_encoder", "--out", tmp_path), tmp_path,
                          "vae_encoder", excluded=["sampling"])
    why = rep["excluded"]["sampling"]
    assert "random numbers at inference" in why and "'sampling'" in why and "keras.random.normal" in why, why
    assert why in rep["warnings"]
    for stage in KEPT:
        assert rep["outputs"]["sampling"][stage]["ok"] and rep["outputs"]["sampling"][stage]["excluded"] == why
    mdir = ModelDir.of(tmp_path, "vae_encoder")
    facts = json.loads((mdir.stage("rewrite") / "rewrite.json").read_text())
    inputs, _ = load_reference(mdir.stage("export") / "reference.npz")
    x = torch.from_numpy(inputs_for(facts, inputs)["image"])
    draws = 2000   # model.pt2 takes a batch up to 4096
    for module in (load_generated(mdir), load_pt2(mdir)):
        names = [o["name"] for o in json.loads((mdir.stage("export") / "meta.json").read_text())["outputs"]]
        torch.manual_seed(0)
        with torch.no_grad():
            out = dict(zip(names, module(x.repeat(draws, 1, 1, 1))))
        eps = ((out["sampling"] - out["z_mean"]) / torch.exp(0.5 * out["z_log_var"])).numpy()
        eps = eps.reshape(draws, x.shape[0], -1)
        assert np.all(np.abs(eps.mean(0)) <= 5 / np.sqrt(draws)), eps.mean(0)
        assert np.all(np.abs(eps.std(0) - 1) <= 0.05), eps.std(0)


def test_unconvertible_random_draw_is_named(tmp_path):
    """keras.random.truncated_normal at inference (no ONNX op): export stops with our message
    naming the layer and the draw, not tf2onnx's."""
    proc = cli("convert", "--model", f"{BUILDERS}:truncated_noise", "--out", tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = report(tmp_path, "truncated_noise")["error"]
    assert err["stage"] == "export" and err["layer"] == "noise" and err["kind"] == "random-at-inference", err
    assert "keras.random.truncated_normal" in err["message"] and "at inference" in err["message"], err


def test_permute_folds_into_the_dense(tmp_path):
    """Permute -> Flatten -> Dense (rank 4; rank 3 beside it, through a Concat): parity of the kept
    ports (rtol 1e-5 of scale + 1e-6), nchw.onnx keeps the Permute's Transpose (1), the torch
    graph has none: it is folded into the Dense rows, and weights_map.json says how."""
    rep = _assert_kept_ok(cli("convert", "--model", f"{BUILDERS}:permute_flatten_dense", "--out", tmp_path), tmp_path,
                          "permute_flatten_dense")
    facts = json.loads((tmp_path / "permute_flatten_dense" / "rewrite" / "rewrite.json").read_text())
    assert (facts["transposes"], facts["transposes_torch"]) == (1, 0), facts["remaining"]
    assert rep["transposes_torch"] == 0
    assert [t for t in facts["folded_into_dense"] if "permute_hw" in t], facts["folded_into_dense"]
    wmap = json.loads((tmp_path / "permute_flatten_dense" / "import" / "weights_map.json").read_text())
    dense = next(r for r in wmap["map"] if r["keras"] == "dense/kernel")
    assert "row_permutation" in dense["transform"], dense


def test_attention_head_transposes_are_told_apart(tmp_path):
    """A hand-written head-split attention beside Keras' MultiHeadAttention (Einsum) and a
    Flatten -> Dense: parity of the kept ports (rtol 1e-5 of scale + 1e-6); rewrite.json marks
    the q/v split and the merge Transposes as the attention's own (3) and the one before the
    Flatten as a layout left-over (1), which the torch graph folds away."""
    rep = _assert_kept_ok(cli("convert", "--model", f"{BUILDERS}:attention_heads", "--out", tmp_path), tmp_path,
                          "attention_heads")
    facts = json.loads((tmp_path / "attention_heads" / "rewrite" / "rewrite.json").read_text())
    assert facts["transposes_by_kind"] == {"attention_heads": 3, "layout": 1}, facts["remaining"]
    assert facts["transposes_torch_by_kind"] == {"attention_heads": 3, "layout": 0}
    roles = sorted((t.get("role") or "-", t["kind"], "attn_1/" in t["node"]) for t in facts["remaining"])
    assert roles == [("-", "layout", False), ("merge", "attention_heads", True), ("split", "attention_heads", True),
                     ("split", "attention_heads", True)], roles
    layout_left = [t for t in facts["remaining"] if t["kind"] == "layout"]
    assert any("Flatten" in r for r in layout_left[0]["reasons"]), layout_left
    assert rep["transposes_by_kind"]["torch"] == facts["transposes_torch_by_kind"]
