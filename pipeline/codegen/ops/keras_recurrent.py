"""Keras recurrent layers (``ai.keras2torch::GRU|LSTM|SimpleRNN``, one node per layer,
``core.recurrent``) as the module a PyTorch engineer writes: one ``nn.GRU``/``nn.LSTM``/
``nn.RNN`` with ``batch_first=True`` (``bidirectional=True`` for a Bidirectional), its
weights those of the Keras layer, once, gate blocks in torch's order. Where torch's
module computes something else (a GRU with ``reset_after=False``, activations torch's
modules do not have) a small cell module, ``KerasGRU``/``KerasLSTM``/``KerasSimpleRNN``,
loops over time with the weights held once.
"""

from __future__ import annotations

import numpy as np

from pipeline.codegen.gen import Gen, Unsupported, attrs
from pipeline.core.recurrent import DOMAIN, RecurrentSpec
from pipeline.core.registry import handles

# Keras gate blocks -> torch's (indices of Keras' blocks): GRU z r h -> r z n; LSTM i f c o = i f g o
_ORDER = {"GRU": [1, 0, 2], "LSTM": [0, 1, 2, 3], "SimpleRNN": [0]}
_NATIVE = {"GRU": "nn.GRU", "LSTM": "nn.LSTM", "SimpleRNN": "nn.RNN"}


def _reorder(m: np.ndarray, kind: str, h: int) -> np.ndarray:
    return np.concatenate([m[k * h:(k + 1) * h] for k in _ORDER[kind]], axis=0)


def _native(spec: RecurrentSpec) -> bool:
    """Does torch's own module compute this layer?"""
    if spec.kind == "SimpleRNN":
        return spec.activation in ("tanh", "relu")
    if spec.kind == "GRU" and not spec.reset_after:
        return False
    return spec.activation == "tanh" and spec.recurrent_activation == "sigmoid"


def _native_params(spec: RecurrentSpec, w: dict) -> dict:
    h, kind, out = spec.units, spec.kind, {}
    gates = {"GRU": 3, "LSTM": 4, "SimpleRNN": 1}[kind]
    for side, sfx in zip(spec.directions, ("", "_reverse")):
        out[f"weight_ih_l0{sfx}"] = _reorder(w[f"{side}/kernel"].T, kind, h)
        out[f"weight_hh_l0{sfx}"] = _reorder(w[f"{side}/recurrent_kernel"].T, kind, h)
        if spec.use_bias:
            b = w[f"{side}/bias"]
            if kind == "GRU":   # reset_after: (2, 3H), the input and the recurrent bias
                out[f"bias_ih_l0{sfx}"] = _reorder(b[0], kind, h)
                out[f"bias_hh_l0{sfx}"] = _reorder(b[1], kind, h)
            else:               # Keras has one bias; torch's second one stays zero
                out[f"bias_ih_l0{sfx}"] = _reorder(b, kind, h)
                out[f"bias_hh_l0{sfx}"] = np.zeros(gates * h, np.float32)
    return out


@handles(f"{DOMAIN}::GRU", f"{DOMAIN}::LSTM", f"{DOMAIN}::SimpleRNN")
def keras_recurrent(gen: Gen, node):
    spec = RecurrentSpec.from_json(attrs(node)["keras"])
    n_w = len(spec.weights)
    weights = {}
    for role, name in zip(spec.weights, node.input[1:1 + n_w]):
        w = gen.const(name)
        if w is None:
            raise Unsupported(f"weight {role} ({name!r}) is computed, not a constant")
        weights[role] = w
    states = [gen.t(s) for s in node.input[1 + n_w:] if s]
    x = gen.t(node.input[0])
    base = gen.var(spec.layer)
    if _native(spec):
        y, finals = _call_native(gen, node, spec, weights, x, states, base)
    else:
        y, finals = _call_loop(gen, node, spec, weights, x, states, base)
    _outputs(gen, node, spec, y, finals, base)


def _call_native(gen: Gen, node, spec: RecurrentSpec, w: dict, x: str, states: list[str], base: str):
    """``y (B, T, D*H)``, and the final states as ``[[h_fw, (c_fw)], [h_bw, (c_bw)]]`` expressions."""
    args = [str(spec.input_size), str(spec.units), "batch_first=True"]
    if spec.kind == "SimpleRNN" and spec.activation == "relu":
        args.append('nonlinearity="relu"')
    if not spec.use_bias:
        args.append("bias=False")
    if spec.bidirectional:
        args.append("bidirectional=True")
    mod = gen.submodule(node, f"{_NATIVE[spec.kind]}({', '.join(args)})", _native_params(spec, w))
    if spec.go_backwards:   # Keras reads the steps last to first and returns them in that order
        x = f"{x}.flip(1)"
    per, dirs = spec.states_per_direction, len(spec.directions)
    state_arg = ""
    if states:
        stack = (lambda xs: f"{xs[0]}.unsqueeze(0)") if dirs == 1 else (lambda xs: f"torch.stack([{', '.join(xs)}])")
        hs = [states[k * per] for k in range(dirs)]
        state_arg = ", " + stack(hs)
        if spec.kind == "LSTM":
            state_arg = f", ({stack(hs)}, {stack([states[k * per + 1] for k in range(dirs)])})"
    h = f"{base}_h"
    if spec.kind == "LSTM":
        gen.lines.append(f"{base}, ({h}, {base}_c) = {mod}({x}{state_arg})")
        finals = [[f"{h}[{k}]", f"{base}_c[{k}]"] for k in range(dirs)]
    else:
        gen.lines.append(f"{base}, {h} = {mod}({x}{state_arg})")
        finals = [[f"{h}[{k}]"] for k in range(dirs)]
    return base, finals


def _call_loop(gen: Gen, node, spec: RecurrentSpec, w: dict, x: str, states: list[str], base: str):
    """The layer through ``Keras<kind>`` cell modules (one per direction), weights as Keras has them."""
    cls = f"Keras{spec.kind}"
    gen.helper("_ACTIVATIONS", ACTIVATIONS_SOURCE)
    gen.helper(cls, LOOP_CELLS[spec.kind])
    per = spec.states_per_direction
    outs, finals = [], []
    for k, side in enumerate(spec.directions):
        params = {"kernel": w[f"{side}/kernel"], "recurrent_kernel": w[f"{side}/recurrent_kernel"]}
        if spec.use_bias:
            params["bias"] = w[f"{side}/bias"]
        acts = f"{spec.activation!r}" + (f", {spec.recurrent_activation!r}" if spec.kind != "SimpleRNN" else "")
        ctor = (f"{cls}({spec.input_size}, {spec.units}, {acts}"
                + (f", reset_after={spec.reset_after}" if spec.kind == "GRU" else "")
                + (", bias=False" if not spec.use_bias else "") + ")")
        name = spec.layer + ("" if not spec.bidirectional else f"_{side}")
        mod = gen.submodule(node, ctor, params, name=name)
        backwards = spec.go_backwards or side == "backward"
        arg = f"{x}.flip(1)" if backwards else x
        s = states[k * per:(k + 1) * per]
        s_arg = "" if not s else ", " + (s[0] if per == 1 else f"({s[0]}, {s[1]})")
        y = f"{base}_{side}" if spec.bidirectional else base
        fin = f"{y}_state"
        gen.lines.append(f"{y}, {fin} = {mod}({arg}{s_arg})")
        if spec.bidirectional and backwards:   # Bidirectional puts the backward steps back in time order
            gen.lines.append(f"{y} = {y}.flip(1)")
        outs.append(y)
        finals.append([f"{fin}[0]", f"{fin}[1]"] if per == 2 else [fin])
    if spec.bidirectional:
        gen.lines.append(f"{base} = torch.cat([{outs[0]}, {outs[1]}], -1)")
    return base, finals


def _outputs(gen: Gen, node, spec: RecurrentSpec, y: str, finals: list[list[str]], base: str) -> None:
    """Keras' outputs of the layer from ``y (B, T, D*H)`` and the final states."""
    h = spec.units
    outs = list(node.output)
    if spec.return_sequences:
        if spec.bidirectional:
            fw, bw = f"{y}[..., :{h}]", f"{y}[..., {h}:]"
            main = _merge(spec, fw, bw, y)
        else:
            main = [y]
    else:
        last = [f[0] for f in finals]
        main = [last[0]] if not spec.bidirectional else _merge(spec, last[0], last[1], None)
    states = [s for f in finals for s in f] if spec.return_state else []
    for name, expr in zip(outs, main + states):
        if name:
            gen.set_tensor(name, expr)


def _merge(spec: RecurrentSpec, fw: str, bw: str, both) -> list[str]:
    mode = spec.merge_mode
    if mode is None:
        return [fw, bw]
    if mode == "concat":
        return [both] if both is not None else [f"torch.cat([{fw}, {bw}], -1)"]
    if mode == "sum":
        return [f"({fw} + {bw})"]
    if mode == "mul":
        return [f"({fw} * {bw})"]
    if mode == "ave":
        return [f"(({fw} + {bw}) / 2)"]
    raise Unsupported(f"Bidirectional merge_mode {mode!r}")


ACTIVATIONS_SOURCE = '''_ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
                "hard_sigmoid": F.hardsigmoid, "linear": lambda v: v}
'''

LOOP_CELLS = {
    "GRU": '''

class KerasGRU(nn.Module):
    """A Keras GRU over a batch-first sequence, one step per time step, weights as Keras holds
    them (gates z, r, h). ``reset_after=False`` applies the reset gate before the recurrent
    product, which torch's ``nn.GRU`` cannot."""

    def __init__(self, input_size, units, activation="tanh", recurrent_activation="sigmoid", reset_after=True,
                 bias=True):
        super().__init__()
        self.units, self.reset_after = units, reset_after
        self.activation = _ACTIVATIONS[activation]
        self.recurrent_activation = _ACTIVATIONS[recurrent_activation]
        self.kernel = nn.Parameter(torch.empty(input_size, 3 * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, 3 * units))
        self.bias = nn.Parameter(torch.empty((2, 3 * units) if reset_after else (3 * units,))) if bias else None

    def forward(self, x, h=None):
        if h is None:
            h = x.new_zeros(x.shape[0], self.units)
        b_in = self.bias[0] if self.bias is not None and self.reset_after else self.bias
        b_rec = self.bias[1] if self.bias is not None and self.reset_after else None
        xs = x @ self.kernel if b_in is None else x @ self.kernel + b_in
        rz, rr, rh = self.recurrent_kernel.split(self.units, 1)
        ys = []
        for t in range(x.shape[1]):
            xz, xr, xh = xs[:, t].split(self.units, -1)
            if self.reset_after:
                inner = h @ self.recurrent_kernel if b_rec is None else h @ self.recurrent_kernel + b_rec
                hz, hr, hh = inner.split(self.units, -1)
                z = self.recurrent_activation(xz + hz)
                r = self.recurrent_activation(xr + hr)
                cand = self.activation(xh + r * hh)
            else:
                z = self.recurrent_activation(xz + h @ rz)
                r = self.recurrent_activation(xr + h @ rr)
                cand = self.activation(xh + (r * h) @ rh)
            h = z * h + (1 - z) * cand
            ys.append(h)
        return torch.stack(ys, 1), h
''',
    "LSTM": '''

class KerasLSTM(nn.Module):
    """A Keras LSTM over a batch-first sequence, one step per time step, weights as Keras holds
    them (gates i, f, c, o), for activations torch's ``nn.LSTM`` does not have."""

    def __init__(self, input_size, units, activation="tanh", recurrent_activation="sigmoid", bias=True):
        super().__init__()
        self.units = units
        self.activation = _ACTIVATIONS[activation]
        self.recurrent_activation = _ACTIVATIONS[recurrent_activation]
        self.kernel = nn.Parameter(torch.empty(input_size, 4 * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, 4 * units))
        self.bias = nn.Parameter(torch.empty(4 * units)) if bias else None

    def forward(self, x, state=None):
        h, c = state if state is not None else (x.new_zeros(x.shape[0], self.units),) * 2
        xs = x @ self.kernel if self.bias is None else x @ self.kernel + self.bias
        ys = []
        for t in range(x.shape[1]):
            i, f, g, o = (xs[:, t] + h @ self.recurrent_kernel).split(self.units, -1)
            c = self.recurrent_activation(f) * c + self.recurrent_activation(i) * self.activation(g)
            h = self.recurrent_activation(o) * self.activation(c)
            ys.append(h)
        return torch.stack(ys, 1), (h, c)
''',
    "SimpleRNN": '''

class KerasSimpleRNN(nn.Module):
    """A Keras SimpleRNN over a batch-first sequence, one step per time step, weights as Keras
    holds them, for activations torch's ``nn.RNN`` does not have."""

    def __init__(self, input_size, units, activation="tanh", bias=True):
        super().__init__()
        self.units = units
        self.activation = _ACTIVATIONS[activation]
        self.kernel = nn.Parameter(torch.empty(input_size, units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, units))
        self.bias = nn.Parameter(torch.empty(units)) if bias else None

    def forward(self, x, h=None):
        if h is None:
            h = x.new_zeros(x.shape[0], self.units)
        xs = x @ self.kernel if self.bias is None else x @ self.kernel + self.bias
        ys = []
        for t in range(x.shape[1]):
            h = self.activation(xs[:, t] + h @ self.recurrent_kernel)
            ys.append(h)
        return torch.stack(ys, 1), h
''',
}
