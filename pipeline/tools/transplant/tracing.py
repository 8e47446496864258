"""Running the user's module with forward hooks: the order its modules are called in, and
each paired module's output against the Keras layer's recorded activation.

A Keras layer may end where the user's module does not (``Conv2D(activation="relu")`` is
``nn.Conv2d`` then ``nn.ReLU``, or ``F.relu`` in ``forward``), so a paired module's layer
is compared with, in turn: the module's output, the outputs of the hook-visible modules
without weights called after it, and the input of the next paired module (or the model's
output); it reproduces Keras when one of them is within ``rtol·max|Keras| + atol``
(``compare_arrays``); the module's output also through the usual activations (``ACTIVATIONS``:
Keras' ``activation=`` written as ``F.relu`` in ``forward``, which no hook sees). Activations are compared as they are produced and not kept
(``capture`` keeps one module's inputs, for the diagnosis).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from pipeline.stages.compare import compare_arrays
from pipeline.tools.debug.matching import to_keras_layout


def tensors_of(value) -> list:
    """The tensors in a module's output (a tensor, or nested tuples/lists of them)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_of(v)]
    return []


@contextmanager
def _hooks(model, pre, post):
    handles = []
    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_pre_hook(lambda mod, args, n=name: pre(n, args)))
            handles.append(m.register_forward_hook(lambda mod, args, out, n=name: post(n, out)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class ForwardError(Exception):
    """The user's forward raised; ``module`` is the innermost module it was in."""

    def __init__(self, cause: Exception, module: str | None):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause, self.module = cause, module


def call_order(model, feeds: list, counts: dict | None = None) -> tuple[list, list[str]]:
    """(the model's output tensors, module names in first-call order); ``counts``, when
    given, gets how many times each module was called."""
    import torch

    order, stack = [], []
    counts = {} if counts is None else counts

    def pre(n, args):
        stack.append(n)
        counts[n] = counts.get(n, 0) + 1
        if n not in order:
            order.append(n)

    def post(n, out):
        if stack and stack[-1] == n:
            stack.pop()

    with _hooks(model, pre, post), torch.no_grad():
        try:
            out = model(*feeds)
        except Exception as e:  # the user's forward: any error, reported with the module it was in
            raise ForwardError(e, stack[-1] if stack else None) from e
    return tensors_of(out), order


def _leaves(model) -> set[str]:
    return {n for n, m in model.named_modules() if n and not any(True for _ in m.children())}


def per_layer(model, feeds: list, pairs: dict, activations, channels_first: bool, rtol: float, atol: float,
              capture: str | None = None) -> tuple[list, list[dict], tuple | None]:
    """(model outputs, one row per paired module in call order, ``capture``'s inputs).

    ``pairs``: {user module: Keras layer}; ``activations``: the recorded Keras layer outputs
    (``layers.npz``, keys ``layer:<name>``)."""
    import torch

    layout = "cf" if channels_first else "cl"
    leaves = _leaves(model)
    rows: list[dict] = []
    state = {"open": None, "captured": None, "seen": set()}

    def check(row, value, where, only_if_ok=False):
        if row["ok"] or row["layer_key"] not in activations.files:
            return
        ref = activations[row["layer_key"]]
        got = to_keras_layout(value.detach().float().numpy(), ref.shape, layout)
        if got is None:
            return
        r = compare_arrays(ref, got, rtol, atol)
        if only_if_ok and not r["ok"]:
            return
        best = row.get("result")
        if best is None or r["ok"] or (r["max_rel_err"] or 0) < (best["max_rel_err"] or 0):
            row["result"], row["where"] = r, where
        row["ok"] = bool(r["ok"])

    def close(value_candidates, where, activations_too=False):
        row = state["open"]
        if row is not None:
            for v in value_candidates:
                check(row, v, where)
                for act, f in (ACTIVATIONS if activations_too else []):
                    check(row, f(v), f"{where} + {act}", only_if_ok=True)

    def pre(n, args):
        if n == capture and state["captured"] is None:
            state["captured"] = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)
        if n in pairs and n not in state["seen"]:
            close(tensors_of(args), f"input of {n}")
            row = {"module": n, "layer": pairs[n], "layer_key": f"layer:{pairs[n]}", "ok": False}
            rows.append(row)
            state["open"] = row

    def post(n, out):
        if n in pairs and n not in state["seen"]:
            state["seen"].add(n)
            close(tensors_of(out), n, activations_too=True)
        elif n in leaves and n not in pairs:
            close(tensors_of(out), n)

    with _hooks(model, pre, post), torch.no_grad():
        out = tensors_of(model(*feeds))
    close(out, "the model's output")
    for row in rows:
        r = row.pop("result", None)
        key = row.pop("layer_key")
        if key not in activations.files:
            row.update(ok=None, note="Keras' activation of this layer was not recorded")
        elif r is None:
            row.update(ok=None, note="no output of this module or after it has the Keras activation's shape "
                                     f"{list(activations[key].shape)}")
        else:
            row.update(max_abs_err=r["max_abs_err"], max_rel_err=r["max_rel_err"], tolerance=r["tolerance"])
    return out, rows, state["captured"]


def _act(name):
    import torch
    import torch.nn.functional as F

    return {"relu": F.relu, "relu6": F.relu6, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
            "softmax": lambda v: torch.softmax(v, -1 if v.dim() == 2 else 1)}[name]


# a Keras layer's own activation, applied in the user's forward as a function (F.relu(self.conv(x))):
# the module's output is also compared through each of these
ACTIVATIONS = [(n, lambda v, n=n: _act(n)(v)) for n in ("relu", "relu6", "sigmoid", "tanh", "softmax")]


def first_failing(rows: list[dict]) -> dict | None:
    return next((r for r in rows if r["ok"] is False), None)


def to_numpy(t) -> np.ndarray:
    return t.detach().float().numpy()
