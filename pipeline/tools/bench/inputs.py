"""The seeded inputs every candidate is timed on, laid out as the converted model takes them."""

from __future__ import annotations

import numpy as np

from pipeline.core.artifacts import ModelDir, read_json


def torch_inputs(mdir: ModelDir, batch: int) -> list:
    import torch

    meta = read_json(mdir.stage("export") / "meta.json")
    facts = read_json(mdir.stage("rewrite") / "rewrite.json")
    from pipeline.core.reference import inputs_for

    rng = np.random.default_rng(0)
    ins = {i["name"]: rng.standard_normal((batch, *i["shape"][1:])).astype(i["dtype"]) for i in meta["inputs"]}
    feeds = inputs_for(facts, ins)
    return [torch.from_numpy(np.ascontiguousarray(feeds[i["name"]])) for i in meta["inputs"]]
