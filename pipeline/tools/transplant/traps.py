"""The known traps of a hand-written port, each tested by a measurement.

For the first of the user's modules whose output differs from its Keras layer, each trap
that can apply changes one thing of the user's module in place (``patch``: a context
manager that undoes it) and the per-layer comparison runs again; the trap explains the
divergence only when that module then reproduces Keras. Nothing is concluded from
configuration alone. The traps:

- ``flatten_order``: an ``nn.Linear`` after a Flatten of channels-first data; its input
  columns permuted into Keras' order (what ``--fold-flatten`` writes into the weights)
- ``same_padding``: a convolution padded as Keras' ``padding="same"`` pads for this input
  (asymmetric for stride 2 on even sizes: 0 before, 1 after), with ``padding=0``
- ``batchnorm_eps``: a batch norm with Keras' epsilon (Keras 1e-3, torch 1e-5)
- ``gru_reset_after``: an ``nn.GRU`` run as Keras' ``GRU(reset_after=False)`` computes
  (reset gate before the recurrent product), which no weights of ``nn.GRU`` reproduce
- ``gelu_approximate``: the ``nn.GELU`` modules around it (called since the previous
  paired module, or after it before the next: a Keras layer's fused activation) with the
  other ``approximate`` (Keras' ``gelu`` is exact by default, ``approximate=True`` is tanh)
- ``resize_mode``: the ``nn.Upsample`` modules around it with another mode or
  ``align_corners`` (Keras' ``UpSampling2D`` is nearest, ``Resizing`` bilinear, half-pixel)
- ``hard_sigmoid``: the hard sigmoids around it (``nn.Hardsigmoid``, or a module of the
  user's named so) computing, in turn, Keras 3's ``relu6(x + 3) / 6`` (= ``nn.Hardsigmoid``)
  and Keras 2's ``clip(0.2 x + 0.5, 0, 1)``
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Context:
    """What a trap may look at: the model, the failing module and its Keras layer."""

    model: object
    module: str                 # the user's module name
    layer: str                  # the Keras layer
    keras_class: str
    keras_facts: dict           # from the converted port: {"eps": .., "momentum": ..} for a batch norm, ...
    flatten_perm: list | None   # for a Dense after a Flatten of (N, *S, C)
    flatten_rank: int | None    # len((N, *S, C))
    before: list = field(default_factory=list)   # modules called since the previous paired one
    after: list = field(default_factory=list)    # modules called after it, before the next paired one
    found: dict = field(default_factory=dict)    # what a patch measured, for its message

    @property
    def mod(self):
        return self.model.get_submodule(self.module)


def _is(m, *names):
    return type(m).__name__ in names or any(c.__name__ in names for c in type(m).__mro__)


@contextmanager
def _attr(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


# ---------------------------------------------------------------- flatten order

def _flatten_applies(c: Context) -> bool:
    return _is(c.mod, "Linear") and c.flatten_perm is not None and c.mod.in_features == len(c.flatten_perm)


@contextmanager
def _flatten_patch(c: Context):
    import torch

    w = c.mod.weight
    old = w.data
    w.data = old[:, torch.as_tensor(c.flatten_perm)].contiguous()
    try:
        yield
    finally:
        w.data = old


def _flatten_msg(c: Context) -> str:
    perm = ", ".join(["0", *map(str, range(2, c.flatten_rank)), "1"])
    return (f"your forward flattens channels-first data before {c.module!r} (Keras layer {c.layer!r}): "
            f"Keras flattens {'(N, L, C)' if c.flatten_rank == 3 else '(N, *S, C)'}, channels last; insert "
            f"`x.permute({perm})` before `flatten`, or rerun with `--fold-flatten` to permute the Dense "
            f"weights instead")


# ---------------------------------------------------------------- padding="same"

def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = math.ceil(size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _padding_applies(c: Context) -> bool:
    m = c.mod
    return _is(m, "Conv1d", "Conv2d", "Conv3d") and getattr(m, "padding_mode", "zeros") == "zeros" \
        and not isinstance(m.padding, str)


@contextmanager
def _padding_patch(c: Context):
    import torch.nn.functional as F

    m = c.mod

    def pre(mod, args):
        x = args[0]
        nd = x.dim() - 2
        pads = [_same_pads(x.shape[2 + i], m.kernel_size[i], m.stride[i], m.dilation[i]) for i in range(nd)]
        c.found.update(pads=pads, stride=list(m.stride))
        flat = [p for pair in reversed(pads) for p in pair]
        return (F.pad(x, flat), *args[1:])

    c.found["user_padding"] = list(m.padding)
    h = m.register_forward_pre_hook(pre)
    try:
        with _attr(m, "padding", (0,) * len(m.padding)):
            yield
    finally:
        h.remove()


def _padding_msg(c: Context) -> str:
    pads, p, s = c.found.get("pads", []), c.found.get("user_padding", []), c.found.get("stride", [])
    flat = tuple(q for pair in reversed(pads) for q in pair)
    asym = any(a != b for a, b in pads)
    return (f"{c.module!r} (Keras layer {c.layer!r}) pads differently: Keras' padding=\"same\" with stride "
            f"{tuple(s)} pads {[tuple(x) for x in pads]} (before, after) per spatial axis for this input"
            f"{' (asymmetric)' if asym else ''}; this conv pads {tuple(p)} on both sides. Use padding=0 and "
            f"`x = F.pad(x, {flat})` (or nn.ZeroPad{len(pads)}d) before it")


# ---------------------------------------------------------------- batch norm epsilon

def _bn_applies(c: Context) -> bool:
    return _is(c.mod, "_BatchNorm") and "eps" in c.keras_facts and not math.isclose(c.mod.eps, c.keras_facts["eps"])


@contextmanager
def _bn_patch(c: Context):
    c.found["user_eps"] = c.mod.eps
    with _attr(c.mod, "eps", c.keras_facts["eps"]):
        yield


def _bn_msg(c: Context) -> str:
    k = c.keras_facts
    mom = f", momentum={1 - k['momentum']:g}" if "momentum" in k else ""
    return (f"{c.module!r} (Keras layer {c.layer!r}) has eps={c.found['user_eps']:g}, Keras' BatchNormalization eps="
            f"{k['eps']:g}: construct it as nn.{type(c.mod).__name__}(..., eps={k['eps']:g}{mom}) (Keras' "
            f"defaults are eps 1e-3 / momentum 0.99, torch's 1e-5 / 0.1, torch momentum = 1 - Keras momentum)")


# ---------------------------------------------------------------- GRU reset_after

def _gru_applies(c: Context) -> bool:
    m = c.mod
    return _is(m, "GRU") and c.keras_facts.get("reset_after") is False and m.num_layers == 1 \
        and not m.bidirectional


def _keras_gru_forward(m):
    import torch

    def forward(x, h0=None):
        xs = x if m.batch_first else x.transpose(0, 1)
        n_h = m.hidden_size
        gi = xs @ m.weight_ih_l0.T + (m.bias_ih_l0 if m.bias else 0)
        wr, wz, wn = m.weight_hh_l0.split(n_h, 0)
        br, bz, bn = m.bias_hh_l0.split(n_h) if m.bias else (0, 0, 0)
        h = xs.new_zeros(xs.shape[0], n_h) if h0 is None else h0[0]
        ys = []
        for t in range(xs.shape[1]):
            xr, xz, xn = gi[:, t].split(n_h, -1)
            r = torch.sigmoid(xr + h @ wr.T + br)
            z = torch.sigmoid(xz + h @ wz.T + bz)
            n = torch.tanh(xn + (r * h) @ wn.T + bn)
            h = (1 - z) * n + z * h
            ys.append(h)
        y = torch.stack(ys, 1)
        return (y if m.batch_first else y.transpose(0, 1)), h.unsqueeze(0)
    return forward


@contextmanager
def _gru_patch(c: Context):
    m = c.mod
    m.forward = _keras_gru_forward(m)
    try:
        yield
    finally:
        del m.forward


def _gru_msg(c: Context) -> str:
    return (f"{c.module!r} is nn.GRU, Keras layer {c.layer!r} is GRU(reset_after=False): Keras applies the reset "
            f"gate before the recurrent product (tanh(W x + b + U (r * h))), nn.GRU after it "
            f"(tanh(W x + b + r * (U h + b_hn))); no weights make nn.GRU compute it. Write the cell by hand "
            f"(import/model.py's KerasGRU is one) or use reset_after=True in Keras")


# ---------------------------------------------------------------- activations and resizing before the module

def _around_of(c: Context, *names, where=None):
    """The modules of ``c.before`` and ``c.after`` of one of these classes (or ``where(m)``)."""
    mods = [c.model.get_submodule(n) for n in [*c.before, *c.after]]
    return [m for m in mods if (_is(m, *names) if where is None else where(m))]


@contextmanager
def _gelu_patch(c: Context):
    mods = _around_of(c, "GELU")
    olds = [m.approximate for m in mods]
    for m in mods:
        m.approximate = "none" if m.approximate == "tanh" else "tanh"
    c.found["gelu"] = [(m.approximate, o) for m, o in zip(mods, olds)]
    try:
        yield
    finally:
        for m, o in zip(mods, olds):
            m.approximate = o


def _gelu_msg(c: Context) -> str:
    new, old = c.found["gelu"][0]
    return (f"the nn.GELU around {c.module!r} uses approximate={old!r}; the Keras model's gelu is "
            f"{'the tanh approximation' if new == 'tanh' else 'exact (erf)'}: use nn.GELU(approximate={new!r})")


_RESIZE_MODES = [("nearest", None), ("bilinear", False), ("bilinear", True), ("bicubic", False)]


def _resize_patches(c: Context):
    mods = _around_of(c, "Upsample")
    for mode, align in _RESIZE_MODES:
        if all((m.mode, m.align_corners) == (mode, align) for m in mods):
            continue

        @contextmanager
        def patch(c: Context, mode=mode, align=align):
            olds = [(m.mode, m.align_corners) for m in mods]
            for m in mods:
                m.mode, m.align_corners = mode, align
            c.found["resize"] = (mode, align, olds[0])
            try:
                yield
            finally:
                for m, (mo, al) in zip(mods, olds):
                    m.mode, m.align_corners = mo, al
        yield patch


def _resize_msg(c: Context) -> str:
    mode, align, (omode, oalign) = c.found["resize"]
    return (f"the nn.Upsample around {c.module!r} resizes with mode={omode!r}, align_corners={oalign}; Keras' "
            f"resize matches mode={mode!r}, align_corners={align}")


def _is_hard_sigmoid(m) -> bool:
    n = type(m).__name__.lower().replace("_", "")
    return _is(m, "Hardsigmoid") or "hardsigmoid" in n


def _hard_sigmoid_keras3(x):
    return (x + 3).clamp(0, 6) / 6


def _hard_sigmoid_keras2(x):
    return (0.2 * x + 0.5).clamp(0, 1)


# (name, definition): Keras 3's (= torch's nn.Hardsigmoid), and Keras 2's / tf.keras'
_HARD_SIGMOIDS = [("relu6(x + 3) / 6", _hard_sigmoid_keras3), ("clip(0.2 x + 0.5, 0, 1)", _hard_sigmoid_keras2)]


def _hard_sigmoid_patches(c: Context):
    mods = _around_of(c, where=_is_hard_sigmoid)
    for label, f in _HARD_SIGMOIDS:
        @contextmanager
        def patch(c: Context, label=label, f=f):
            for m in mods:
                m.forward = f
            c.found["hard_sigmoid"] = (label, [type(m).__name__ for m in mods])
            try:
                yield
            finally:
                for m in mods:
                    del m.forward
        yield patch


def _hard_sigmoid_msg(c: Context) -> str:
    label, types = c.found["hard_sigmoid"]
    fix = "nn.Hardsigmoid()" if label.startswith("relu6") else "`(0.2 * x + 0.5).clamp(0, 1)`"
    return (f"the hard sigmoid around {c.module!r} ({types[0]}) computes another function than Keras layer "
            f"{c.layer!r}'s, which is {label} (Keras 3's hard_sigmoid is relu6(x + 3) / 6, as nn.Hardsigmoid; "
            f"Keras 2 / tf.keras' was clip(0.2 x + 0.5, 0, 1)): use {fix}")


def candidates(c: Context):
    """(trap name, patch, message function) for each trap that can apply to ``c``."""
    if _flatten_applies(c):
        yield "flatten_order", _flatten_patch, _flatten_msg
    if _padding_applies(c):
        yield "same_padding", _padding_patch, _padding_msg
    if _bn_applies(c):
        yield "batchnorm_eps", _bn_patch, _bn_msg
    if _gru_applies(c):
        yield "gru_reset_after", _gru_patch, _gru_msg
    if _around_of(c, "GELU"):
        yield "gelu_approximate", _gelu_patch, _gelu_msg
    if _around_of(c, "Upsample"):
        for p in _resize_patches(c):
            yield "resize_mode", p, _resize_msg
    if _around_of(c, where=_is_hard_sigmoid):
        for p in _hard_sigmoid_patches(c):
            yield "hard_sigmoid", p, _hard_sigmoid_msg
