"""torchvision's model of the same architecture, with the converted weights where the
layers correspond one to one, and whether it agrees with the converted model."""

from __future__ import annotations

import numpy as np

from pipeline.core.artifacts import ModelDir
from pipeline.tools.bench.inputs import torch_inputs


def torchvision_twin(mdir: ModelDir, arch: str, converted) -> tuple:
    """torchvision's ``arch``; with the converted weights loaded where the layers correspond
    one to one (VGG: Conv and MatMul in graph order). Returns (module, agreement or reason)."""
    import torch
    import torchvision

    tv = getattr(torchvision.models, arch)(weights=None).eval()
    if not arch.startswith("vgg"):
        return tv, {"checked": False, "reason": f"Keras' {arch} pads stride-2 convs asymmetrically (ZeroPadding2D), "
                                             "torchvision symmetrically: the layers do not correspond one to one; "
                                             "timed with torchvision's own initial weights"}
    import onnx_ir as ir

    g = ir.load(mdir.stage("rewrite") / "torch.onnx").graph
    consts = {v.name: v.const_value for v in g.initializers.values()}

    def value(v):
        return torch.from_numpy(np.array(consts[v.name].numpy()))

    convs = [n for n in g if n.op_type == "Conv"]
    mms = [n for n in g if n.op_type in ("MatMul", "Gemm")]
    adds = {n.inputs[0].name: n for n in g if n.op_type == "Add" and n.inputs[1].name in consts}
    tv_convs = [m for m in tv.features if isinstance(m, torch.nn.Conv2d)]
    tv_lins = [m for m in tv.classifier if isinstance(m, torch.nn.Linear)]
    if len(convs) != len(tv_convs) or len(mms) != len(tv_lins):
        return tv, {"checked": False, "reason": f"{len(convs)} Conv / {len(mms)} MatMul in the graph, torchvision has "
                                                f"{len(tv_convs)} / {len(tv_lins)}"}
    with torch.no_grad():
        for n, m in zip(convs, tv_convs):
            # grappler drops a bias add of zeros (Keras initialises biases to zero)
            m.weight.copy_(value(n.inputs[1]))
            m.bias.copy_(value(n.inputs[2]) if len(n.inputs) > 2 else torch.zeros_like(m.bias))
        for n, m in zip(mms, tv_lins):
            add = adds.get(n.outputs[0].name)
            m.weight.copy_(value(n.inputs[1]).T)
            m.bias.copy_(value(add.inputs[1]) if add is not None else torch.zeros_like(m.bias))
    x = torch_inputs(mdir, 2)
    with torch.inference_mode():
        a, b = tv(*x).numpy(), converted(*x).numpy()
    atol, rtol = 1e-7, 1e-5
    err = float(np.max(np.abs(a.astype(np.float64) - b)))
    tol = atol + rtol * float(np.max(np.abs(b)))
    return tv, {"checked": True, "max_abs_err": err, "tolerance": tol, "atol": atol, "rtol": rtol, "ok": err <= tol}
