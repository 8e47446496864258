"""Keras recurrent layers (``ai.keras2torch::GRU|LSTM|SimpleRNN``, one node per layer,
``core.recurrent``) as the module a PyTorch engineer writes: one ``nn.GRU``/``nn.LSTM``/
``nn.RNN`` with ``batch_first=True`` (``bidirectional=True`` for a Bidirectional), its
weights those of the Keras layer, once, gate blocks in torch's order. Where torch's
module computes something else (a GRU with ``reset_after=False``, activations torch's
modules do not have, Keras' ``dropout``/``recurrent_dropout``) a small cell module,
``KerasGRU``/``KerasLSTM``/``KerasSimpleRNN``, loops over time with the weights held once.

Keras' recurrent dropout (keras/src/layers/rnn/dropout_rnn_cell.py, lstm.py, gru.py,
simple_rnn.py, Keras 3.15.1), which the cell modules apply in ``train()``: per call, one mask
for the input (rate ``dropout``) and one for the previous state (``recurrent_dropout``), of
ones dropped and scaled by ``1 / (1 - rate)``, the same at every step; an LSTM/GRU with
``implementation=1`` (which ``recurrent_dropout > 0`` forces) draws one mask per gate for
each, else one shared by the gates. The masks of the last train-mode call are kept in
``masks`` (the training check measures them). Inference is unchanged.
"""

from __future__ import annotations

import numpy as np

from pipeline.codegen.gen import Gen, Unsupported, attrs
from pipeline.core.recurrent import DOMAIN, TORCH_GATE_ORDER, RecurrentSpec, reorder_gates
from pipeline.core.registry import handles

_NATIVE = {"GRU": "nn.GRU", "LSTM": "nn.LSTM", "SimpleRNN": "nn.RNN"}


def _reorder(m: np.ndarray, kind: str, h: int) -> np.ndarray:
    return reorder_gates(m, TORCH_GATE_ORDER[kind], len(TORCH_GATE_ORDER[kind]))


def _native(spec: RecurrentSpec) -> bool:
    """Does torch's own module compute this layer?"""
    if spec.dropout or spec.recurrent_dropout:   # torch's modules have no per-call fixed masks
        return False
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
    mask = states.pop() if spec.masked else None
    x = gen.t(node.input[0])
    base = gen.var(spec.layer)
    call = _call_native if _native(spec) else _call_loop
    y, lasts, finals = call(gen, node, spec, weights, x, states, mask, base)
    _outputs(gen, node, spec, y, lasts, finals)


def _call_native(gen: Gen, node, spec: RecurrentSpec, w: dict, x: str, states: list[str], mask, base: str):
    """``y (B, T, D*H)``, each direction's last output, and the final states as
    ``[[h_fw, (c_fw)], [h_bw, (c_bw)]]`` (expressions)."""
    args = [str(spec.input_size), str(spec.units), "batch_first=True"]
    if spec.kind == "SimpleRNN" and spec.activation == "relu":
        args.append('nonlinearity="relu"')
    if not spec.use_bias:
        args.append("bias=False")
    if spec.bidirectional:
        args.append("bidirectional=True")
    mod = gen.submodule(node, f"{_NATIVE[spec.kind]}({', '.join(args)})", _native_params(spec, w))
    if spec.use_bias and spec.kind != "GRU":   # one trainable parameter per Keras weight element
        for sfx in ("", "_reverse")[:len(spec.directions)]:
            gen.init_lines.append(f"{mod}.bias_hh_l0{sfx}.requires_grad_(False)  # Keras has one bias: "
                                  "torch's second stays 0")
    if spec.go_backwards:   # Keras reads the steps last to first and returns them in that order
        x = f"{x}.flip(1)"
        mask = f"{mask}.flip(1)" if mask else None
    per, dirs = spec.states_per_direction, len(spec.directions)
    state = None
    if states:
        stack = (lambda xs: f"{xs[0]}.unsqueeze(0)") if dirs == 1 else (lambda xs: f"torch.stack([{', '.join(xs)}])")
        hs = [states[k * per] for k in range(dirs)]
        state = stack(hs) if spec.kind != "LSTM" else f"({stack(hs)}, {stack([states[k * per + 1] for k in range(dirs)])})"
    h = f"{base}_h"
    targets = f"{base}, ({h}, {base}_c)" if spec.kind == "LSTM" else f"{base}, {h}"
    if mask is None:
        gen.lines.append(f"{targets} = {mod}({x}{', ' + state if state else ''})")
        last = h
    else:   # Keras' masking: the valid steps packed (``keras_masked``)
        gen.helper("keras_masked", MASKED_SOURCE)
        last = f"{base}_last"
        gen.lines.append(f"{targets}, {last} = keras_masked({mod}, {x}, {mask}"
                         + (f", {state}" if state else "") + (", zero_output=True" if spec.zero_output_for_mask else "")
                         + ")")
    finals = [[f"{h}[{k}]", f"{base}_c[{k}]"] if spec.kind == "LSTM" else [f"{h}[{k}]"] for k in range(dirs)]
    return base, [f"{last}[{k}]" for k in range(dirs)], finals


def _call_loop(gen: Gen, node, spec: RecurrentSpec, w: dict, x: str, states: list[str], mask, base: str):
    """The layer through ``Keras<kind>`` cell modules (one per direction), weights as Keras has them."""
    cls = f"Keras{spec.kind}"
    gen.helper("_ACTIVATIONS", ACTIVATIONS_SOURCE)
    gen.helper(cls, LOOP_CELLS[spec.kind])
    per = spec.states_per_direction
    outs, lasts, finals = [], [], []
    for k, side in enumerate(spec.directions):
        params = {"kernel": w[f"{side}/kernel"], "recurrent_kernel": w[f"{side}/recurrent_kernel"]}
        if spec.use_bias:
            params["bias"] = w[f"{side}/bias"]
        acts = f"{spec.activation!r}" + (f", {spec.recurrent_activation!r}" if spec.kind != "SimpleRNN" else "")
        drops = (f", dropout={spec.dropout!r}" if spec.dropout else "") \
            + (f", recurrent_dropout={spec.recurrent_dropout!r}" if spec.recurrent_dropout else "")
        if drops and spec.kind != "SimpleRNN" and (spec.implementation == 1 or spec.recurrent_dropout):
            drops += ", per_gate=True"
        ctor = (f"{cls}({spec.input_size}, {spec.units}, {acts}"
                + (f", reset_after={spec.reset_after}" if spec.kind == "GRU" else "")
                + (", bias=False" if not spec.use_bias else "") + drops + ")")
        name = spec.layer + ("" if not spec.bidirectional else f"_{side}")
        mod = gen.submodule(node, ctor, params, name=name)
        backwards = spec.go_backwards or side == "backward"
        arg = f"{x}.flip(1)" if backwards else x
        s = states[k * per:(k + 1) * per]
        s_arg = "" if not s else ", " + (s[0] if per == 1 else f"({s[0]}, {s[1]})")
        if mask:
            s_arg += f", mask={mask}.flip(1)" if backwards else f", mask={mask}"
            s_arg += ", zero_output=True" if spec.zero_output_for_mask else ""
        y = f"{base}_{side}" if spec.bidirectional else base
        fin = f"{y}_state"
        gen.lines.append(f"{y}, {fin} = {mod}({arg}{s_arg})")
        lasts.append(f"{y}[:, -1]")   # Keras' last output: the last step it ran
        if spec.bidirectional and backwards:   # Bidirectional puts the backward steps back in time order
            lasts[-1] = f"{y}_last"
            gen.lines.append(f"{y}_last, {y} = {y}[:, -1], {y}.flip(1)")
        outs.append(y)
        finals.append([f"{fin}[0]", f"{fin}[1]"] if per == 2 else [fin])
    if spec.bidirectional:
        gen.lines.append(f"{base} = torch.cat([{outs[0]}, {outs[1]}], -1)")
    return base, lasts, finals


def _outputs(gen: Gen, node, spec: RecurrentSpec, y: str, lasts: list[str], finals: list[list[str]]) -> None:
    """Keras' outputs of the layer from ``y (B, T, D*H)``, the last outputs and the final states."""
    h = spec.units
    if spec.return_sequences:
        main = [y] if not spec.bidirectional else _merge(spec, f"{y}[..., :{h}]", f"{y}[..., {h}:]", y)
    else:
        main = [lasts[0]] if not spec.bidirectional else _merge(spec, lasts[0], lasts[1], None)
    states = [s for f in finals for s in f] if spec.return_state else []
    for name, expr in zip(node.output, main + states):
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


def _dropout_masks(training, rate, like, n):
    """Keras' dropout masks of one call (``DropoutRNNCell``): ``n`` tensors shaped ``like``
    (batch, features) of ones dropped at ``rate`` and scaled by ``1 / (1 - rate)``, used at every
    step; None outside training or at rate 0."""
    if not training or not 0.0 < rate < 1.0:
        return None
    return [F.dropout(torch.ones_like(like), rate, True) for _ in range(n)]


def _dropped_matmul(v, kernel, masks, units):
    """``v @ kernel`` with ``v`` dropped by ``masks`` (None: no mask; one: shared by the gates;
    one per gate: each gate's kernel block gets its own); ``v`` (batch, [steps,] features)."""
    if masks is None:
        return v @ kernel
    if v.dim() == 3:
        masks = [m.unsqueeze(1) for m in masks]
    if len(masks) == 1:
        return (v * masks[0]) @ kernel
    return torch.cat([(v * m) @ k for m, k in zip(masks, kernel.split(units, 1))], -1)


def _masked_step(new, h, ys, mask, t, zero_output):
    """(state, output) of step ``t`` as Keras masks it: a masked step keeps the state and
    repeats the last output (zeros with ``zero_output``, and before any valid step)."""
    if mask is None:
        return new, new
    m = mask[:, t, None]
    before = ys[-1] if ys and not zero_output else torch.zeros_like(new)
    return torch.where(m, new, h), torch.where(m, new, before)
'''

MASKED_SOURCE = '''
def keras_masked(rnn, x, mask, state=None, zero_output=False):
    """``rnn`` (an ``nn.GRU``/``nn.LSTM``/``nn.RNN``, batch first) on ``x`` as Keras runs a
    recurrent layer under ``mask`` (batch, steps): each sequence's valid steps, wherever they
    are, run packed; a masked step repeats the last valid output (zeros with
    ``zero_output``, and before the first valid step); a sequence with no valid step keeps
    its initial state. Returns (outputs, final state as ``rnn`` gives it, last outputs).
    ``torch.export`` cannot trace packed sequences: there, ``keras_masked_steps``."""
    if torch.compiler.is_exporting():
        return keras_masked_steps(rnn, x, mask, state, zero_output)
    mask = mask.bool()
    count = mask.sum(1)
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)   # valid steps first, in order
    packed = nn.utils.rnn.pack_padded_sequence(x.gather(1, order.unsqueeze(-1).expand_as(x)),
                                               count.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    y, final = rnn(packed) if state is None else rnn(packed, state)
    y = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])[0]
    last = mask.long().cumsum(1) - 1   # the last valid step at or before each step
    y = y.gather(1, last.clamp(min=0).unsqueeze(-1).expand(-1, -1, y.shape[-1]))
    y = y * (mask if zero_output else last >= 0).unsqueeze(-1).to(y.dtype)
    empty = (count == 0).view(1, -1, 1)
    h = final[0] if isinstance(final, tuple) else final
    lasts = h.masked_fill(empty, 0.0)
    states = final if isinstance(final, tuple) else (final,)
    starts = state if isinstance(state, tuple) else (state,) * len(states)
    kept = tuple(torch.where(empty, s if s is not None else torch.zeros_like(f), f) for f, s in zip(states, starts))
    return y, (kept if isinstance(final, tuple) else kept[0]), lasts


def keras_masked_steps(rnn, x, mask, state=None, zero_output=False):
    """``keras_masked`` one step at a time, with ``rnn``'s own weights and torch's cell
    functions: a masked step keeps the state and repeats the last output."""
    mask = mask.bool()
    lstm = isinstance(rnn, nn.LSTM)
    if lstm or isinstance(rnn, nn.GRU):
        cell = torch.lstm_cell if lstm else torch.gru_cell
    else:
        cell = torch.rnn_relu_cell if rnn.nonlinearity == "relu" else torch.rnn_tanh_cell
    dirs, steps = (2 if rnn.bidirectional else 1), x.shape[1]
    zeros = x.new_zeros(dirs, x.shape[0], rnn.hidden_size)
    h0 = zeros if state is None else state[0] if lstm else state
    c0 = zeros if state is None or not lstm else state[1]
    ys, hs, cs, lasts = [], [], [], []
    for d in range(dirs):
        sfx = "_reverse" if d else ""
        weights = [getattr(rnn, f"{n}_l0{sfx}") for n in ("weight_ih", "weight_hh")]
        biases = [getattr(rnn, f"{n}_l0{sfx}") for n in ("bias_ih", "bias_hh")] if rnn.bias else [None, None]
        h, c, out = h0[d], c0[d], torch.zeros_like(h0[d])
        seq = [out] * steps
        for t in (range(steps - 1, -1, -1) if d else range(steps)):
            m = mask[:, t, None]
            if lstm:
                h_new, c_new = cell(x[:, t], (h, c), *weights, *biases)
                c = torch.where(m, c_new, c)
            else:
                h_new = cell(x[:, t], h, *weights, *biases)
            h = torch.where(m, h_new, h)
            out = torch.where(m, h_new, torch.zeros_like(h_new) if zero_output else out)
            seq[t] = out
        ys.append(torch.stack(seq, 1))
        hs.append(h)
        cs.append(c)
        lasts.append(out)
    final = (torch.stack(hs), torch.stack(cs)) if lstm else torch.stack(hs)
    return torch.cat(ys, -1), final, torch.stack(lasts)
'''

LOOP_CELLS = {
    "GRU": '''

class KerasGRU(nn.Module):
    """A Keras GRU over a batch-first sequence, one step per time step, weights as Keras holds
    them (gates z, r, h). ``reset_after=False`` applies the reset gate before the recurrent
    product, which torch's ``nn.GRU`` cannot."""

    def __init__(self, input_size, units, activation="tanh", recurrent_activation="sigmoid", reset_after=True,
                 bias=True, dropout=0.0, recurrent_dropout=0.0, per_gate=False):
        super().__init__()
        self.units, self.reset_after = units, reset_after
        self.dropout, self.recurrent_dropout, self.gates = dropout, recurrent_dropout, 3 if per_gate else 1
        self.masks = None
        self.activation = _ACTIVATIONS[activation]
        self.recurrent_activation = _ACTIVATIONS[recurrent_activation]
        self.kernel = nn.Parameter(torch.empty(input_size, 3 * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, 3 * units))
        self.bias = nn.Parameter(torch.empty((2, 3 * units) if reset_after else (3 * units,))) if bias else None

    def forward(self, x, h=None, mask=None, zero_output=False):
        if h is None:
            h = x.new_zeros(x.shape[0], self.units)
        b_in = self.bias[0] if self.bias is not None and self.reset_after else self.bias
        b_rec = self.bias[1] if self.bias is not None and self.reset_after else None
        dp = _dropout_masks(self.training, self.dropout, x[:, 0], self.gates)
        rdp = _dropout_masks(self.training, self.recurrent_dropout, h, self.gates)
        self.masks = (dp, rdp) if self.training else None
        xs = _dropped_matmul(x, self.kernel, dp, self.units)
        xs = xs if b_in is None else xs + b_in
        rz, rr, rh = self.recurrent_kernel.split(self.units, 1)
        ys = []
        for t in range(x.shape[1]):
            xz, xr, xh = xs[:, t].split(self.units, -1)
            hs = [h] * 3 if rdp is None else [h * m for m in rdp] * (3 // len(rdp))
            if self.reset_after:
                inner = _dropped_matmul(h, self.recurrent_kernel, rdp, self.units)
                inner = inner if b_rec is None else inner + b_rec
                hz, hr, hh = inner.split(self.units, -1)
                z = self.recurrent_activation(xz + hz)
                r = self.recurrent_activation(xr + hr)
                cand = self.activation(xh + r * hh)
            else:
                z = self.recurrent_activation(xz + hs[0] @ rz)
                r = self.recurrent_activation(xr + hs[1] @ rr)
                cand = self.activation(xh + (r * hs[2]) @ rh)
            h, y = _masked_step(z * h + (1 - z) * cand, h, ys, mask, t, zero_output)
            ys.append(y)
        return torch.stack(ys, 1), h
''',
    "LSTM": '''

class KerasLSTM(nn.Module):
    """A Keras LSTM over a batch-first sequence, one step per time step, weights as Keras holds
    them (gates i, f, c, o), for activations torch's ``nn.LSTM`` does not have."""

    def __init__(self, input_size, units, activation="tanh", recurrent_activation="sigmoid", bias=True,
                 dropout=0.0, recurrent_dropout=0.0, per_gate=False):
        super().__init__()
        self.units = units
        self.dropout, self.recurrent_dropout, self.gates = dropout, recurrent_dropout, 4 if per_gate else 1
        self.masks = None
        self.activation = _ACTIVATIONS[activation]
        self.recurrent_activation = _ACTIVATIONS[recurrent_activation]
        self.kernel = nn.Parameter(torch.empty(input_size, 4 * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, 4 * units))
        self.bias = nn.Parameter(torch.empty(4 * units)) if bias else None

    def forward(self, x, state=None, mask=None, zero_output=False):
        h, c = state if state is not None else (x.new_zeros(x.shape[0], self.units),) * 2
        dp = _dropout_masks(self.training, self.dropout, x[:, 0], self.gates)
        rdp = _dropout_masks(self.training, self.recurrent_dropout, h, self.gates)
        self.masks = (dp, rdp) if self.training else None
        xs = _dropped_matmul(x, self.kernel, dp, self.units)
        xs = xs if self.bias is None else xs + self.bias
        ys = []
        for t in range(x.shape[1]):
            i, f, g, o = (xs[:, t] + _dropped_matmul(h, self.recurrent_kernel, rdp, self.units)).split(self.units, -1)
            c_new = self.recurrent_activation(f) * c + self.recurrent_activation(i) * self.activation(g)
            h_new = self.recurrent_activation(o) * self.activation(c_new)
            c = c_new if mask is None else torch.where(mask[:, t, None], c_new, c)
            h, y = _masked_step(h_new, h, ys, mask, t, zero_output)
            ys.append(y)
        return torch.stack(ys, 1), (h, c)
''',
    "SimpleRNN": '''

class KerasSimpleRNN(nn.Module):
    """A Keras SimpleRNN over a batch-first sequence, one step per time step, weights as Keras
    holds them, for activations torch's ``nn.RNN`` does not have."""

    def __init__(self, input_size, units, activation="tanh", bias=True, dropout=0.0, recurrent_dropout=0.0):
        super().__init__()
        self.units = units
        self.dropout, self.recurrent_dropout, self.gates = dropout, recurrent_dropout, 1
        self.masks = None
        self.activation = _ACTIVATIONS[activation]
        self.kernel = nn.Parameter(torch.empty(input_size, units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, units))
        self.bias = nn.Parameter(torch.empty(units)) if bias else None

    def forward(self, x, h=None, mask=None, zero_output=False):
        if h is None:
            h = x.new_zeros(x.shape[0], self.units)
        dp = _dropout_masks(self.training, self.dropout, x[:, 0], 1)
        rdp = _dropout_masks(self.training, self.recurrent_dropout, h, 1)
        self.masks = (dp, rdp) if self.training else None
        xs = _dropped_matmul(x, self.kernel, dp, self.units)
        xs = xs if self.bias is None else xs + self.bias
        ys = []
        for t in range(x.shape[1]):
            new = self.activation(xs[:, t] + _dropped_matmul(h, self.recurrent_kernel, rdp, self.units))
            h, y = _masked_step(new, h, ys, mask, t, zero_output)
            ys.append(y)
        return torch.stack(ys, 1), h
''',
}
