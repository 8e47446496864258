"""The inference form of a generated module: batch norms folded into the conv or Dense before them.

``fuse(module, example_args)`` returns a copy of the generated ``Model`` in ``eval()`` in which
every batch norm (``nn.BatchNorm*d``, so the generated ``KerasBatchNorm*d`` too) that only
normalises the output of one conv or Dense is folded into that layer's weight and bias (a bias
is created where the layer has none) and replaced by ``nn.Identity``; ``module`` is left as
it is. ``model.py`` stays the trainable module; the import stage exports ``model.pt2`` from
this copy, and compare checks it against Keras on every conversion.

Guaranteed: in ``eval()`` the copy computes what ``module`` computes in ``eval()`` (Keras'
inference: moving statistics, the module's own ``eps``; a frozen batch norm is the same affine
map), up to float32 rounding of the folded weights (folded in float64, then cast). The copy
is for inference only: ``train()`` on it has no batch statistics left to use.

A pair is folded (the cases, see ``_check``) when, in the module's ``torch.fx`` graph (every
submodule a leaf):
- the batch norm's input is the output of an ``nn.Conv1d/2d/3d`` call (grouped and depthwise
  too: the scale is per output channel) or, given ``example_args``, of an ``nn.Linear`` whose
  output is rank 2 (the batch norm's channels are then the Linear's features);
- that output has no other user (a conv that also feeds a skip connection is left alone);
- the batch norm normalises axis 1 (a ``KerasBatchNorm`` with ``axis != 1`` is not on the
  conv's channels), has running statistics, and both modules are called once and held once.
Every batch norm left says why (``FuseResult.left``). A forward that ``torch.fx`` cannot trace
(control flow on values) is not fused at all, with the reason (``FuseResult.error``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FuseResult:
    module: object                               # the eval() copy (``module`` itself when nothing was fused)
    pairs: list = field(default_factory=list)    # [(conv or linear name, batch norm name)], in graph order
    left: dict = field(default_factory=dict)     # batch norm name -> why it was not folded
    error: str | None = None                     # why nothing was tried (the module did not trace)

    def to_json(self) -> dict:
        return {"fused": len(self.pairs), "pairs": [list(p) for p in self.pairs], "left": self.left,
                **({"error": self.error} if self.error else {})}


def _graph(module):
    """The fx graph of ``module.forward`` with every submodule a leaf (only the top level matters)."""
    import torch.fx

    class Leaves(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return True

    return Leaves().trace(module)


def _ranks(module, graph, example_args) -> dict:
    """{node name: output rank} from one run of the traced graph (``ShapeProp``)."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    gm = torch.fx.GraphModule(module, graph)
    with torch.no_grad():
        ShapeProp(gm).propagate(*example_args)
    return {n.name: len(n.meta["tensor_meta"].shape) for n in graph.nodes
            if hasattr(n.meta.get("tensor_meta"), "shape")}


def _check(bn_node, modules: dict, calls: dict, held: dict, ranks: dict | None) -> str | None:
    """None if ``bn_node``'s batch norm folds into the layer before it; else why not."""
    import torch.nn as nn

    name = bn_node.target
    bn = modules[name]
    if calls[name] != 1 or held[id(bn)] != 1:
        return f"called {calls[name]} times / held under {held[id(bn)]} names"
    if getattr(bn, "axis", 1) != 1:
        return f"normalises axis {bn.axis}, not the channels (axis 1) of the layer before it"
    if bn.running_mean is None or bn.running_var is None:
        return "no running statistics"
    src = bn_node.args[0] if bn_node.args else None
    if getattr(src, "op", None) != "call_module":
        return f"its input is {getattr(src, 'op', src)} {getattr(src, 'target', '')}, not a conv or Dense module"
    layer = modules[src.target]
    conv = isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    if not conv and not isinstance(layer, nn.Linear):
        return f"its input comes from {src.target} ({type(layer).__name__}), not a conv or Dense"
    if isinstance(layer, nn.Linear) and (ranks is None or ranks.get(src.name) != 2):
        return (f"{src.target} is a Linear whose output rank is " + ("unknown (no example inputs)" if ranks is None
                else f"{ranks.get(src.name)}, so its features are not the batch norm's channels"))
    if len(src.users) != 1:
        return f"{src.target}'s output has {len(src.users)} users (it feeds more than this batch norm)"
    if calls[src.target] != 1 or held[id(layer)] != 1:
        return f"{src.target} is called {calls[src.target]} times / held under {held[id(layer)]} names"
    if layer.weight.shape[0] != bn.num_features:
        return f"{src.target} has {layer.weight.shape[0]} output channels, the batch norm {bn.num_features}"
    return None


def _fold(layer, bn) -> None:
    """``bn(layer(x))`` in eval as one layer: W' = W * s, b' = (b - mean) * s + beta, with
    s = gamma / sqrt(var + eps) per output channel, computed in float64."""
    import torch

    with torch.no_grad():
        var, mean = bn.running_var.double(), bn.running_mean.double()
        s = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            s = s * bn.weight.double()
        b = layer.bias.double() if layer.bias is not None else torch.zeros_like(mean)
        b = (b - mean) * s + (bn.bias.double() if bn.bias is not None else 0.0)
        w = layer.weight.double() * s.reshape(-1, *([1] * (layer.weight.dim() - 1)))
        layer.weight = torch.nn.Parameter(w.to(layer.weight.dtype), requires_grad=False)
        layer.bias = torch.nn.Parameter(b.to(layer.weight.dtype), requires_grad=False)


def _set(root, qualname: str, value) -> None:
    parent, _, attr = qualname.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, value)


def fuse(module, example_args=None) -> FuseResult:
    """The eval() copy of ``module`` with its conv/Dense -> batch norm pairs folded (see the
    module docstring); ``example_args`` (the module's inputs) let Dense pairs fold too."""
    import torch.nn as nn

    try:
        graph = _graph(module)
    except Exception as e:   # fx raises TraceError, TypeError, ... on control flow over values
        return FuseResult(module, error=f"torch.fx could not trace the forward: {type(e).__name__}: "
                                        f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
    modules = dict(module.named_modules())
    held: dict = {}
    for _, m in module.named_modules(remove_duplicate=False):
        held[id(m)] = held.get(id(m), 0) + 1
    calls: dict = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    bns = [n for n in graph.nodes if n.op == "call_module"
           and isinstance(modules[n.target], nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return FuseResult(module)
    fused = copy.deepcopy(module).eval()   # also what the shapes are taken on: eval() updates no statistics
    ranks, left = None, {}
    after_linear = any(getattr(n.args[0], "op", None) == "call_module" and n.args[0].target in modules
                       and isinstance(modules[n.args[0].target], nn.Linear) for n in bns if n.args)
    if example_args is not None and after_linear:   # one run of the model, for the Dense pairs only
        try:
            ranks = _ranks(fused, graph, example_args)
        except Exception as e:   # Dense pairs then stay; conv pairs need no shapes
            left["*"] = f"shapes unknown, Dense pairs not folded: {type(e).__name__}: {str(e)[:200]}"
    pairs = []
    for n in bns:
        why = _check(n, modules, calls, held, ranks)
        if why:
            left[n.target] = why
            continue
        layer_name = n.args[0].target
        _fold(fused.get_submodule(layer_name), fused.get_submodule(n.target))
        _set(fused, n.target, nn.Identity())
        pairs.append((layer_name, n.target))
    return FuseResult(fused if pairs else module, pairs, left)
