"""``--bisect``: the first failing layer of a rewritten graph, cut out with its inputs.

The cut (``onnx.utils.extract_model``) takes the layer's nodes; its inputs are Keras' own
activations where a layer's tensor feeds it (so a fault before the layer does not hide in
them), else the model's inputs, else onnxruntime's values; the expected output is Keras'.
The cut is run once more to tell whether it reproduces the error alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.core.config import Settings
from pipeline.stages.compare import compare_arrays
from pipeline.tools.debug.matching import to_graph_layout
from pipeline.tools.debug.running import onnx_tensors, session


def write_bisect(rewrite: Path, summary: dict, matches: dict, keras_npz, feeds_cf: dict, settings: Settings,
                 dest: Path, final: Path) -> dict:
    """The failing layer's nodes cut out of the rewritten graph (in the ``rewrite`` folder) as
    ``dest/<layer>.onnx``, with its inputs and Keras' expected output in ``<layer>.npz``.
    ``dest`` is written now, ``final`` is where it will be (the paths the result names)."""
    import onnx
    import onnx.utils

    stage = next((s for s in ("onnx_nchw", "onnx_torch") if summary["first_failing"][s]), None)
    if stage is None:
        return {"skipped": "the rewritten graphs match Keras layer by layer; nothing to cut"}
    layer = summary["first_failing"][stage]
    src = rewrite / ("nchw.onnx" if stage == "onnx_nchw" else "torch.onnx")
    graph = onnx.load(str(src), load_external_data=False).graph
    m = matches[stage][layer]
    inits = {t.name for t in graph.initializer}
    own = set(m.nodes)
    produced_inside = {o for n in graph.node if n.name in own for o in n.output}
    cut_inputs = list(dict.fromkeys(i for n in graph.node if n.name in own for i in n.input
                                    if i and i not in inits and i not in produced_inside))
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", layer)
    dest.mkdir(parents=True, exist_ok=True)
    onnx.utils.extract_model(str(src), str(dest / f"{safe}.onnx"), cut_inputs, [m.tensor])
    # input values: Keras' activation of the layer whose tensor it is, else a model input, else onnxruntime
    tensor_layer = {mm.tensor: (lname, mm.layout) for lname, mm in matches[stage].items()}
    values, source = {}, {}
    need_ort = []
    for t in cut_inputs:
        if t in tensor_layer:
            lname, lay = tensor_layer[t]
            values[t], source[t] = to_graph_layout(keras_npz[f"layer:{lname}"], lay), f"keras:{lname}"
        elif t in feeds_cf:
            values[t], source[t] = feeds_cf[t], "model input"
        else:
            need_ort.append(t)
    if need_ort:
        for t, v in onnx_tensors(src, feeds_cf, need_ort, {}):
            values[t], source[t] = v, "onnxruntime"
    expected = to_graph_layout(keras_npz[f"layer:{layer}"], m.layout)
    np.savez(dest / f"{safe}.npz", **{f"input:{k}": v for k, v in values.items()}, **{f"expected:{m.tensor}": expected})
    sess = session(onnx.load(str(dest / f"{safe}.onnx")), [])
    got = sess.run([m.tensor], {i.name: values[i.name] for i in sess.get_inputs()})[0]
    check = compare_arrays(expected, got, settings.rtol, settings.atol) if got.shape == expected.shape else \
        {"ok": False, "error": f"shape {list(got.shape)} != expected {list(expected.shape)}"}
    return {"stage": stage, "layer": layer, "model": str(final / f"{safe}.onnx"), "data": str(final / f"{safe}.npz"),
            "nodes": list(m.nodes), "inputs": source, "output": m.tensor,
            "reproduces": not check["ok"], "check": check}
