"""The seeded inputs every candidate is timed on: in Keras' layout (Keras), and laid out as
the converted model takes them (torch, onnxruntime on ``nchw.onnx``)."""

from __future__ import annotations

import numpy as np

from pipeline.core.artifacts import ModelDir, read_json


def keras_inputs(mdir: ModelDir, batch: int) -> dict:
    """{input name: array} in Keras' layout, as ``export/meta.json`` describes the inputs
    (standard normal, seed 0, in the model's input order)."""
    meta = read_json(mdir.stage("export") / "meta.json")
    rng = np.random.default_rng(0)
    return {i["name"]: rng.standard_normal((batch, *(i.get("reference_shape") or i["shape"])[1:])).astype(i["dtype"])
            for i in meta["inputs"]}


def converted_inputs(mdir: ModelDir, batch: int) -> dict:
    """``keras_inputs`` laid out as the rewritten model takes them, by input name."""
    from pipeline.core.reference import inputs_for

    return inputs_for(read_json(mdir.stage("rewrite") / "rewrite.json"), keras_inputs(mdir, batch))


def torch_inputs(mdir: ModelDir, batch: int) -> list:
    """``converted_inputs`` as torch tensors, in the model's input order."""
    import torch

    feeds = converted_inputs(mdir, batch)
    return [torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()]
