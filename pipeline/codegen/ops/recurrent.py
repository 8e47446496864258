"""Recurrent layers: LSTM, GRU and RNN as ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (gate
blocks reordered to torch's), and ReverseSequence as the flip Keras' ``go_backwards`` and
``Bidirectional`` mean.

What torch's modules cannot express stops with ``Unsupported``: other activations, clip,
input_forget, layout=1, sequence lengths (masking), GRU with ``linear_before_reset=0``.
"""

from __future__ import annotations

import numpy as np

from pipeline.codegen.gen import Gen, Unsupported, attrs
from pipeline.codegen.values import Const, Shape
from pipeline.core.registry import handles

# ONNX gate order -> torch gate order (indices into ONNX's blocks)
_GATES = {"LSTM": [0, 2, 3, 1],   # ONNX i o f c -> torch i f g o
          "GRU": [1, 0, 2],       # ONNX z r h -> torch r z n
          "RNN": [0]}
_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def _reorder(m: np.ndarray, order: list[int], hidden: int) -> np.ndarray:
    return np.concatenate([m[k * hidden:(k + 1) * hidden] for k in order], axis=0)


def _check(node, a: dict, dirs: int) -> None:
    op = node.op_type
    acts = [s.decode() if isinstance(s, bytes) else s for s in a.get("activations", [])]
    if acts and acts != _ACTIVATIONS[op] * dirs:
        raise Unsupported(f"{op} with activations {acts} (torch's {op} has {_ACTIVATIONS[op]})")
    if a.get("clip") is not None or a.get("input_forget", 0) or a.get("layout", 0):
        raise Unsupported(f"{op} with clip, input_forget or layout=1")
    if op == "GRU" and not a.get("linear_before_reset", 0):
        raise Unsupported("GRU with linear_before_reset=0 (Keras reset_after=False): torch's GRU resets after")
    if len(node.input) > 4 and node.input[4]:
        raise Unsupported(f"{op} with sequence_lens (masking)")


@handles("LSTM", "GRU", "RNN")
def recurrent(gen: Gen, node):
    a = attrs(node)
    op = node.op_type
    hidden = a["hidden_size"]
    direction = a.get("direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    w, r, b = gen.const(node.input[1]), gen.const(node.input[2]), gen.opt_const(node, 3)
    _check(node, a, dirs)
    if w is None or r is None:
        raise Unsupported(f"{op} with computed weights")
    order = _GATES[op]
    gates = len(order)
    if b is None:
        b = np.zeros((dirs, 2 * gates * hidden), np.float32)
    params = {}
    for d in range(dirs):
        sfx = "_reverse" if d == 1 else ""
        params[f"weight_ih_l0{sfx}"] = _reorder(w[d], order, hidden)
        params[f"weight_hh_l0{sfx}"] = _reorder(r[d], order, hidden)
        params[f"bias_ih_l0{sfx}"] = _reorder(b[d][:gates * hidden], order, hidden)
        params[f"bias_hh_l0{sfx}"] = _reorder(b[d][gates * hidden:], order, hidden)
    mod = gen.submodule(node, f"nn.{op}({w.shape[2]}, {hidden}" + (", bidirectional=True" if dirs == 2 else "") + ")",
                        params)
    x = gen.t(node.input[0])
    if direction == "reverse":
        x = f"torch.flip({x}, (0,))"
    states = list(node.input[5:8])
    h0 = gen.t(states[0]) if len(states) > 0 and states[0] else None
    c0 = gen.t(states[1]) if op == "LSTM" and len(states) > 1 and states[1] else None
    if op == "LSTM" and (h0 is None) != (c0 is None):
        raise Unsupported("an LSTM with only one of initial_h / initial_c")
    state_arg = "" if h0 is None else (f", ({h0}, {c0})" if op == "LSTM" else f", {h0}")
    y = gen.var(gen.keras_layer(node.name) or op)
    hs = f"{y}_h"
    gen.lines.append(f"{y}, {hs} = {mod}({x}{state_arg})" if op != "LSTM" else
                     f"{y}, ({hs}, {y}_c) = {mod}({x}{state_arg})")
    if direction == "reverse":
        gen.lines.append(f"{y} = torch.flip({y}, (0,))")
    outs = list(node.output) + [""] * 3
    if outs[0]:
        # torch (seq, batch, dirs*H) -> ONNX (seq, dirs, batch, H)
        gen.lines.append(f"{y} = {y}.reshape({y}.shape[0], {y}.shape[1], {dirs}, {hidden}).permute(0, 2, 1, 3)")
        gen.set_tensor(outs[0], y)
    if outs[1]:
        gen.set_tensor(outs[1], hs)
    if op == "LSTM" and outs[2]:
        gen.set_tensor(outs[2], f"{y}_c")


def _uniform_length(gen: Gen, name: str):
    """The one value of a lengths vector built as ``Expand(scalar, [batch])`` or a constant."""
    c = gen.const(name)
    if c is not None:
        return int(c.reshape(-1)[0]) if c.size and np.all(c == c.reshape(-1)[0]) else None
    p = gen.producers.get(name)
    if p is not None and p.op_type == "Expand":
        v = gen.values.get(p.input[0])
        if isinstance(v, Shape) and len(v.items) == 1:
            return v.items[0]
        if isinstance(v, Const) and v.value.size == 1:
            return int(v.value.reshape(-1)[0])
    return None


@handles("ReverseSequence")
def reverse_sequence(gen: Gen, node):
    """Keras go_backwards / Bidirectional: every sequence has the full length -> a flip."""
    time_axis = attrs(node).get("time_axis", 0)
    length = _uniform_length(gen, node.input[1])
    full = gen.dims(node.input[0])[time_axis]
    if length is None or str(length) != str(full):
        raise Unsupported("sequence lengths other than the full time axis (masked sequences)")
    gen.emit(node, f"torch.flip({gen.t(node.input[0])}, ({time_axis},))")
