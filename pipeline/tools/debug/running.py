"""Running the graphs whose tensors ``debug`` compares, one run per column of its table.

- ``onnx_raw``   onnxruntime on ``export/raw.onnx``      (a failure here blames export)
- ``onnx_nchw``  onnxruntime on ``rewrite/nchw.onnx``    (... the channels-first rewrite)
- ``onnx_torch`` onnxruntime on ``rewrite/torch.onnx``   (... the rewrite's Flatten fold)
- ``torch``      the onnx2torch module with the import stage's weights (... the import)

Memory: onnxruntime is run with the wanted tensors as extra outputs in chunks of at most
``chunk_mb`` MB (each chunk is one more run of the graph); torch runs once under an
``fx.Interpreter`` that hands each value to a sink as it is produced and keeps none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir

LAYER_RUNS = ("onnx_raw", "onnx_nchw", "onnx_torch", "torch")
# the step a run's first failing layer blames, and why
BLAME = {
    "onnx_raw": ("export", "tf2onnx's raw.onnx already differs from Keras"),
    "onnx_nchw": ("rewrite", "the channels-first rewrite (nchw.onnx) changed the numbers"),
    "onnx_torch": ("rewrite", "the rewrite's torch.onnx (Transpose folded into Dense) changed the numbers"),
    "torch": ("import", "the PyTorch module (onnx2torch + the import stage's weights) changed the numbers"),
}
CHUNK_MB = 512


def session(proto, names: list[str]):
    """An onnxruntime session with ``names`` as extra outputs; ``proto`` is left as it was
    (outputs appended, serialised, removed: no second copy of the weights)."""
    import onnx
    import onnxruntime as ort

    outputs = proto.graph.output
    n0 = len(outputs)
    have = {o.name for o in outputs}
    outputs.extend(onnx.helper.make_empty_tensor_value_info(t) for t in dict.fromkeys(names) if t not in have)
    try:
        data = proto.SerializeToString()
    finally:
        while len(outputs) > n0:
            outputs.pop()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # keep every tensor
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def onnx_tensors(path: Path, feeds: dict, tensors: list[str], sizes: dict, chunk_mb: float = CHUNK_MB):
    """Yield (tensor, value) for ``tensors``, running the graph once per chunk of at most
    ``chunk_mb`` MB of values (``sizes``: expected bytes per tensor)."""
    import onnx

    proto = onnx.load(str(path))
    chunks, cur, total = [], [], 0
    for t in tensors:
        if cur and total + sizes.get(t, 0) > chunk_mb * 2**20:
            chunks.append(cur)
            cur, total = [], 0
        cur.append(t)
        total += sizes.get(t, 0)
    if cur:
        chunks.append(cur)
    for chunk in chunks:
        sess = session(proto, chunk)
        ins = {i.name: feeds[i.name] for i in sess.get_inputs()}
        values = sess.run(chunk, ins)
        del sess
        for t, v in zip(chunk, values):
            yield t, v
        del values


def torch_tensors(module, feeds: list, tensors: dict, sink) -> None:
    """Run an onnx2torch GraphModule under an ``fx.Interpreter`` and call ``sink(tensor,
    value)`` as each wanted value is produced (nothing is kept); ``tensors`` maps ONNX
    tensor -> (onnx2torch module name, output index), those names being the fx targets."""
    import torch

    by_node: dict[str, list] = {}
    for t, (node, idx) in tensors.items():
        by_node.setdefault(node, []).append((t, idx))

    class Keeper(torch.fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            if n.op == "call_module" and n.target in by_node:
                for t, idx in by_node[n.target]:
                    sink(t, (v[idx] if isinstance(v, (tuple, list)) else v).detach().numpy())
            return v

    with torch.no_grad():
        Keeper(module).run(*[torch.from_numpy(np.ascontiguousarray(x)) for x in feeds])


def torch_module(mdir: ModelDir):
    """onnx2torch's port of ``torch.onnx`` with the import stage's weights (node names intact):
    ``runners.onnx2torch_module``, converted once per process (shared with compare's)."""
    from pipeline.runners import onnx2torch_module

    return onnx2torch_module(mdir)


def torch_targets(torch_onnx: Path) -> dict:
    """{ONNX tensor: (onnx2torch module name, output index)}: onnx2torch's own module names
    ('.' -> '/', duplicates numbered), which are the fx targets ``torch_tensors`` watches."""
    import onnx
    from onnx2torch.onnx_graph import OnnxGraph

    graph = OnnxGraph(onnx.load(str(torch_onnx), load_external_data=False).graph)
    return {o: (name, i) for name, n in graph.nodes.items() for i, o in enumerate(n.output_values)}
