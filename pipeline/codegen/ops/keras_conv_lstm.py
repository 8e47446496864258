"""Keras ConvLSTM1D/2D/3D (``ai.keras2torch::ConvLSTM<n>D``, one node per layer,
``core.recurrent``) as one ``KerasConvLSTM`` module: its input convolution and its
recurrent convolution held once (``nn.Conv<n>d``), the input convolution run on all frames
at once, a loop over time for the recurrent one, as a hand-written port has it.

The node reads and writes Keras' channels-last frames; the module works on channels-first
frames ``(B, T, C, *spatial)``, so the call moves the channel axis in and out.
"""

from __future__ import annotations

import numpy as np

from pipeline.codegen.gen import Gen, Unsupported, attrs
from pipeline.codegen.ops.keras_recurrent import ACTIVATIONS_SOURCE
from pipeline.core.recurrent import DOMAIN, RecurrentSpec
from pipeline.core.registry import handles


@handles(f"{DOMAIN}::ConvLSTM1D", f"{DOMAIN}::ConvLSTM2D", f"{DOMAIN}::ConvLSTM3D")
def keras_conv_lstm(gen: Gen, node):
    spec = RecurrentSpec.from_json(attrs(node)["keras"])
    r = spec.rank
    w = {}
    for role, name in zip(spec.weights, node.input[1:1 + len(spec.weights)]):
        v = gen.const(name)
        if v is None:
            raise Unsupported(f"weight {role} ({name!r}) is computed, not a constant")
        w[role] = v
    to_oi = (r + 1, r, *range(r))   # Keras (*k, in, out) -> torch (out, in, *k)
    params = {"input_conv.weight": np.ascontiguousarray(w["forward/kernel"].transpose(to_oi)),
              "recurrent_conv.weight": np.ascontiguousarray(w["forward/recurrent_kernel"].transpose(to_oi))}
    if spec.use_bias:
        params["input_conv.bias"] = w["forward/bias"]
    gen.helper("_ACTIVATIONS", ACTIVATIONS_SOURCE)
    gen.helper("KerasConvLSTM", CONV_LSTM_CELL)
    args = [str(r), str(spec.input_size), str(spec.units), _tuple(spec.kernel_size)]
    if any(s != 1 for s in spec.strides):
        args.append(f"stride={_tuple(spec.strides)}")
    if spec.padding != "valid":
        args.append(f"padding={spec.padding!r}")
    if any(d != 1 for d in spec.dilation):
        args.append(f"dilation={_tuple(spec.dilation)}")
    if (spec.activation, spec.recurrent_activation) != ("tanh", "sigmoid"):
        args += [f"activation={spec.activation!r}", f"recurrent_activation={spec.recurrent_activation!r}"]
    if not spec.use_bias:
        args.append("bias=False")
    mod = gen.submodule(node, f"KerasConvLSTM({', '.join(args)})", params)
    x = f"{gen.t(node.input[0])}.movedim(-1, 2)"   # (B, T, *S, C) -> (B, T, C, *S)
    if spec.go_backwards:
        x = f"{x}.flip(1)"
    states = [gen.t(s) for s in node.input[1 + len(spec.weights):] if s]
    s_arg = f", ({states[0]}.movedim(-1, 1), {states[1]}.movedim(-1, 1))" if states else ""
    y = gen.var(spec.layer)
    gen.lines.append(f"{y}, ({y}_h, {y}_c) = {mod}({x}{s_arg})")
    outs = [f"{y}.movedim(2, -1)" if spec.return_sequences else f"{y}_h.movedim(1, -1)"]
    if spec.return_state:
        outs += [f"{y}_h.movedim(1, -1)", f"{y}_c.movedim(1, -1)"]
    for name, expr in zip(node.output, outs):
        if name:
            gen.set_tensor(name, expr)


def _tuple(v) -> str:
    v = [int(i) for i in v]
    return str(v[0]) if len(set(v)) == 1 else f"({', '.join(map(str, v))})"


CONV_LSTM_CELL = '''
class KerasConvLSTM(nn.Module):
    """A Keras ConvLSTM over channels-first frames ``(B, T, C, *spatial)``: the input
    convolution runs on all frames at once, the recurrent one ("same", stride 1) step by
    step; gates i, f, c, o as Keras orders them. ``padding="same"`` pads as Keras does
    (the odd one at the end, also with a stride)."""

    def __init__(self, rank, in_channels, filters, kernel_size, stride=1, padding="valid", dilation=1,
                 activation="tanh", recurrent_activation="sigmoid", bias=True):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1]
        as_tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * rank   # noqa: E731
        self.filters, self.padding = filters, padding
        self.kernel_size, self.stride, self.dilation = as_tuple(kernel_size), as_tuple(stride), as_tuple(dilation)
        self.activation = _ACTIVATIONS[activation]
        self.recurrent_activation = _ACTIVATIONS[recurrent_activation]
        self.input_conv = conv(in_channels, 4 * filters, kernel_size, stride, dilation=dilation, bias=bias)
        self.odd = all(k % 2 for k in self.kernel_size)   # torch's "same" pads evenly only for odd kernels
        self.recurrent_conv = conv(filters, 4 * filters, kernel_size, padding="same" if self.odd else 0, bias=False)

    def _same(self, x, stride, dilation):
        pads = []
        for size, k, s, d in reversed(list(zip(x.shape[2:], self.kernel_size, stride, dilation))):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)

    def forward(self, x, state=None):
        frames = x.flatten(0, 1)
        if self.padding == "same":
            frames = self._same(frames, self.stride, self.dilation)
        xs = self.input_conv(frames)
        xs = xs.unflatten(0, x.shape[:2])
        if state is None:
            h = c = xs.new_zeros(xs[:, 0, :self.filters].shape)
        else:
            h, c = state
        ys = []
        for t in range(xs.shape[1]):
            hs = self.recurrent_conv(h if self.odd else self._same(h, (1,) * len(self.stride), (1,) * len(self.stride)))
            i, f, g, o = (xs[:, t] + hs).chunk(4, 1)
            c = self.recurrent_activation(f) * c + self.recurrent_activation(i) * self.activation(g)
            h = self.recurrent_activation(o) * self.activation(c)
            ys.append(h)
        return torch.stack(ys, 1), (h, c)
'''
