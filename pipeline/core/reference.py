"""Moving reference data between Keras' layout and the rewritten model's layout."""

from __future__ import annotations

import re

import numpy as np

from pipeline.core.perm import to_first, to_last


def load_reference(path) -> tuple[dict, dict]:
    """(inputs, Keras outputs) from ``export/reference.npz``, keyed by name."""
    with np.load(path, allow_pickle=False) as z:
        ins = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("input:")}
        outs = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("output:")}
    return ins, outs


def inputs_for(rewrite_facts: dict, inputs: dict) -> dict:
    """Keras-layout inputs -> the rewritten model's inputs (channels-first where it is)."""
    cf = set(rewrite_facts.get("inputs_channels_first", []))
    return {k: np.ascontiguousarray(np.transpose(v, to_first(v.ndim))) if k in cf else v for k, v in inputs.items()}


def output_to_keras(rewrite_facts: dict, name: str, value: np.ndarray) -> np.ndarray:
    """An output of the rewritten model -> Keras' layout."""
    if name in set(rewrite_facts.get("outputs_channels_first", [])):
        return np.transpose(value, to_last(value.ndim))
    return value


def flatten_outputs(result) -> list:
    """A Keras model call's result (a tensor, a list or a dict) as a list, in the order the
    export stage records outputs (the Keras runner lists them the same way)."""
    if isinstance(result, dict):
        return [result[k] for k in result]
    if isinstance(result, (list, tuple)):
        return list(result)
    return [result]


TF_NAME = re.compile(r"[^A-Za-z0-9_.\-/]")


def output_names(model, n: int) -> list[str]:
    """Keras' output names made safe and unique (the names of ``raw.onnx``'s outputs)."""
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != n:
        names = [f"output_{i}" for i in range(n)]
    out, seen = [], set()
    for nm in names:
        nm = TF_NAME.sub("_", str(nm)).replace("/", "_") or "output"
        while nm in seen:
            nm += "_"
        seen.add(nm)
        out.append(nm)
    return out


def draw_inputs(specs, vocab, seed: int, batch: int) -> dict:
    """Seeded inputs for [(name, shape, dtype)] with static non-batch dims (the export stage's
    reference inputs; compare draws its inputs at other shapes the same way). ``vocab``:
    integers are drawn in ``[0, vocab)``, or, a dict ``{name: [lo, hi]}`` (``"*"``: the
    others), in ``[lo, hi)`` per input."""
    rng = np.random.default_rng(seed)
    ranges = vocab if isinstance(vocab, dict) else {"*": [0, vocab]}
    feeds = {}
    for tname, shape, dtype in specs:
        full = (batch, *shape[1:])
        if np.issubdtype(dtype, np.integer):
            lo, hi = ranges.get(tname, ranges.get("*", [0, 10]))
            feeds[tname] = rng.integers(lo, hi, size=full).astype(dtype)
        elif dtype == np.bool_:
            feeds[tname] = rng.integers(0, 2, size=full).astype(bool)
        else:
            feeds[tname] = rng.standard_normal(full).astype(dtype)
    return feeds
