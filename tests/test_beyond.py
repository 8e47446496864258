"""Keras 3 models beyond keras.applications (``tests/builders_beyond.py``), converted with the
CLI: padding modes on any rank, preprocessing layers inside the model, structured data on
int inputs (reference inputs in the range the model indexes, ``--input-range``), and the
layers tf2onnx cannot export stopping with a message that names them."""

from __future__ import annotations

import json

import pytest

from conftest import cli, report

BUILDERS = "tests/builders_beyond.py"
OK = ["pad_modes", "preprocessing_bilinear", "preprocessing_bilinear_crop", "preprocessing_nearest",
      "preprocessing_nearest_crop", "category_encoding", "embedding_ranges"]
KEPT = ("torch_codegen", "torch_pt2")   # the ports users keep; onnx2torch's is a cross-check (a warning)


def _assert_kept_ok(proc, out, name):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rep = report(out, name)
    assert rep["status"] == "ok", rep
    for output, stages in rep["outputs"].items():
        assert set(KEPT) <= set(stages), (output, stages)
        for stage in KEPT:
            r = stages[stage]
            assert r["max_abs_err"] <= 1e-5 * r["scale"] + 1e-6, (output, stage, r)
    return rep


@pytest.mark.parametrize("name", OK)
def test_converts_with_parity(tmp_path, name):
    _assert_kept_ok(cli("convert", "--model", f"{BUILDERS}:{name}", "--out", tmp_path), tmp_path, name)


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
