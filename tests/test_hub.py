"""keras_hub backbones (the ``hub`` extra, ``requirements-hub.txt``; ``make venv`` installs it)
built from small configs, random perturbed weights, no download (``configs/hub_models.py``).
One tiny backbone here; the others run in ``make zoo CONFIG=configs/hub.toml``."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO, assert_ok, cli

# find_spec, not importorskip: importing keras_hub would bring TensorFlow into the pytest process
pytestmark = pytest.mark.skipif(importlib.util.find_spec("keras_hub") is None,
                                reason="keras_hub not installed (pip install --no-deps -r requirements-hub.txt)")


def test_bert_backbone_converts_with_parity_and_in_range_inputs(tmp_path):
    """BertBackbone (2 layers, 3 segments): the reference inputs are drawn where the model can
    index (token_ids below the vocabulary of its ReversibleEmbedding, segment_ids below
    num_segments, padding_mask 0/1), and every port matches Keras within rtol 1e-5 of the
    output's scale + atol 1e-7, with the sequence length free (the position embedding is
    sliced to it: a Slice whose end is computed from the input's shape)."""
    proc = cli("convert", "--model", REPO / "configs/hub_models.py:bert", "--out", tmp_path)
    rep = assert_ok(proc, tmp_path, "bert", rtol=1e-5, atol=1e-7)
    meta = json.loads((tmp_path / "bert" / "export" / "meta.json").read_text())
    assert meta["input_ranges"] == {"padding_mask": [0, 2], "segment_ids": [0, 3], "token_ids": [0, 100]}
    assert set(rep["outputs"]) == {"pooled_dense", "transformer_layer_1"}, rep["outputs"]
    assert not rep.get("failed_shapes"), rep.get("failed_shapes")
