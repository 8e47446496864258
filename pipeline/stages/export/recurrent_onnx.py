"""The ONNX side of the recurrent stubs (``recurrent.py``): the body of each recurrent
``ai.keras2torch::<kind>`` node (``core.recurrent``) that ``stubs.replace_stubs`` puts
where the stub's ``PyFunc`` was, a model-local function (overload: the layer) made of
standard ONNX ops so that onnxruntime runs it: a ``Transpose`` to time-major, the ONNX
``GRU``/``LSTM``/``RNN`` (gate blocks reordered from Keras' order), and the output forms
of Keras (sequences or last step, merge modes, states). No TensorFlow here.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.onnx_body import Body
from pipeline.core.recurrent import DOMAIN, RecurrentSpec

_ONNX_OP = {"GRU": "GRU", "LSTM": "LSTM", "SimpleRNN": "RNN"}
# Keras activation -> (ONNX activation, alpha, beta); Keras 3's hard_sigmoid is relu6(x + 3) / 6
_ACT = {"tanh": ("Tanh", None, None), "sigmoid": ("Sigmoid", None, None), "relu": ("Relu", None, None),
        "hard_sigmoid": ("HardSigmoid", 1 / 6, 0.5), "linear": ("Affine", 1.0, 0.0)}
# Keras LSTM gates i f c o -> ONNX i o f c
_LSTM_ORDER = [0, 3, 1, 2]
_INT64_MIN = -(2 ** 63)


def make_function(spec: RecurrentSpec, opset: int):
    """The model-local function (overload: the layer) that is the node's body for onnxruntime.
    Its inputs: ``x``, the weights in ``spec.weights`` order, the initial states."""
    return conv_lstm_function(spec, opset) if spec.kind == "ConvLSTM" else _function(spec, opset)


def _act(b: "Body", name: str, x: str) -> str:
    op, alpha, beta = _ACT[name]
    if op == "Affine":
        return x
    return b(op, [x], alpha=alpha, beta=beta) if alpha is not None else b(op, [x])


def conv_lstm_function(spec: RecurrentSpec, opset: int):
    """A ConvLSTM as a ``Scan`` over time-major channels-first frames: the input and the
    recurrent convolution of each step (Keras' "same" is ``SAME_UPPER``), gates i f c o."""
    from onnx import helper

    b, r, f = Body(), spec.rank, spec.units
    role = dict(zip(spec.weights, [f"w{k}" for k in range(len(spec.weights))]))
    to_oi = [r + 1, r] + list(range(r))          # (*k, in, out) -> (out, in, *k)
    kw = b("Transpose", [role["forward/kernel"]], perm=to_oi)
    kr = b("Transpose", [role["forward/recurrent_kernel"]], perm=to_oi)
    x = b("Transpose", ["x"], perm=[1, 0, r + 2] + list(range(2, r + 2)))   # (T, B, C, *S)
    conv = dict(strides=spec.strides, dilations=spec.dilation,
                auto_pad="SAME_UPPER" if spec.padding == "same" else "VALID")
    to_first = [0, r + 1] + list(range(1, r + 1))
    to_last = [0] + list(range(2, r + 2)) + [1]
    if spec.n_states:
        h0, c0 = b("Transpose", ["s0"], perm=to_first), b("Transpose", ["s1"], perm=to_first)
    else:   # zeros shaped as the input convolution's output
        first = b("Conv", [b("Gather", [x, b.const(np.array(0, np.int64))], axis=0), kw], **conv)
        part = b("Slice", [first, b.const(np.array([0], np.int64)), b.const(np.array([f], np.int64)),
                           b.const(np.array([1], np.int64))])
        h0 = c0 = b("Mul", [part, b.const(np.array(0, np.float32))])
    s = Body(prefix="s")
    xc = s("Conv", ["x_t", kw] + ([role["forward/bias"]] if spec.use_bias else []), **conv)
    hc = s("Conv", ["h_prev", kr], auto_pad="SAME_UPPER")
    gi, gf, gc, go = s("Split", [s("Add", [xc, hc]), s.const(np.array([f] * 4, np.int64))], n_out=4, axis=1)
    c_new = s("Add", [s("Mul", [_act(s, spec.recurrent_activation, gf), "c_prev"]),
                      s("Mul", [_act(s, spec.recurrent_activation, gi), _act(s, spec.activation, gc)])])
    h_new = s("Mul", [_act(s, spec.recurrent_activation, go), _act(s, spec.activation, c_new)])
    s.nodes += [helper.make_node("Identity", [h_new], ["h_out"]), helper.make_node("Identity", [c_new], ["c_out"]),
                helper.make_node("Identity", [h_new], ["y_t"])]
    vi = lambda n: helper.make_tensor_value_info(n, 1, None)   # noqa: E731
    body = helper.make_graph(s.nodes, "step", [vi("h_prev"), vi("c_prev"), vi("x_t")],
                             [vi("h_out"), vi("c_out"), vi("y_t")])
    h_t, c_t, ys = b("Scan", [h0, c0, x], n_out=3, body=body, num_scan_inputs=1,
                     scan_input_directions=[1 if spec.go_backwards else 0])
    outs = [b("Transpose", [ys], perm=[1, 0] + list(range(3, r + 3)) + [2]) if spec.return_sequences
            else b("Transpose", [h_t], perm=to_last)]
    if spec.return_state:
        outs += [b("Transpose", [h_t], perm=to_last), b("Transpose", [c_t], perm=to_last)]
    out_names = [f"y{k}" for k in range(len(outs))]
    b.nodes.extend(helper.make_node("Identity", [src], [dst]) for src, dst in zip(outs, out_names))
    return helper.make_function(DOMAIN, spec.op_type, ["x", *role.values(), *[f"s{k}" for k in range(spec.n_states)]],
                                out_names, b.nodes, [helper.make_opsetid("", opset)], overload=spec.layer)


def _gates(b: Body, m: str, spec: RecurrentSpec, axis: int) -> str:
    """``m`` with its gate blocks (along ``axis``) in ONNX's order."""
    if spec.kind != "LSTM":
        return m
    h = spec.units
    parts = b("Split", [m, b.const(np.array([h] * 4, np.int64))], n_out=4, axis=axis)
    return b("Concat", [parts[k] for k in _LSTM_ORDER], axis=axis)


def _function(spec: RecurrentSpec, opset: int):
    from onnx import helper

    b = Body()
    dirs = spec.directions
    w_in = [f"w{k}" for k in range(len(spec.weights))]
    s_in = [f"s{k}" for k in range(spec.n_states)]
    role = dict(zip(spec.weights, w_in))
    gates = {"GRU": 3, "LSTM": 4, "SimpleRNN": 1}[spec.kind]
    h = spec.units
    one = lambda v: b.const(np.array([v], np.int64))   # noqa: E731
    W, R, B = [], [], []
    for d in dirs:
        W.append(b("Unsqueeze", [_gates(b, b("Transpose", [role[f"{d}/kernel"]], perm=[1, 0]), spec, 0), one(0)]))
        R.append(b("Unsqueeze", [_gates(b, b("Transpose", [role[f"{d}/recurrent_kernel"]], perm=[1, 0]), spec, 0),
                                 one(0)]))
        if spec.use_bias:
            bias = role[f"{d}/bias"]
            if spec.kind == "GRU" and spec.reset_after:   # (2, 3H): input and recurrent biases
                flat = b("Reshape", [bias, b.const(np.array([1, -1], np.int64))])
            else:
                zeros = b.const(np.zeros(gates * h, np.float32))
                flat = b("Unsqueeze", [b("Concat", [_gates(b, bias, spec, 0), zeros], axis=0), one(0)])
            B.append(flat)
    cat = (lambda xs: xs[0]) if len(dirs) == 1 else (lambda xs: b("Concat", xs, axis=0))
    per = spec.states_per_direction
    init_h = init_c = ""
    if spec.n_states:
        init_h = cat([b("Unsqueeze", [s_in[k * per], one(0)]) for k in range(len(dirs))])
        if spec.kind == "LSTM":
            init_c = cat([b("Unsqueeze", [s_in[k * per + 1], one(0)]) for k in range(len(dirs))])
    acts = {"GRU": [spec.recurrent_activation, spec.activation],
            "LSTM": [spec.recurrent_activation, spec.activation, spec.activation],
            "SimpleRNN": [spec.activation]}[spec.kind] * len(dirs)
    masked = _Masked(b, spec) if spec.masked else None
    backwards_in = spec.go_backwards and masked is not None   # masked: flip first (as Keras does), run forward
    attrs = {"hidden_size": h, "activations": [_ACT[a][0] for a in acts],
             "direction": "bidirectional" if spec.bidirectional else
             "reverse" if spec.go_backwards and not backwards_in else "forward"}
    alphas = [_ACT[a][1] for a in acts if _ACT[a][1] is not None]
    if alphas:
        attrs["activation_alpha"] = alphas
        attrs["activation_beta"] = [_ACT[a][2] for a in acts if _ACT[a][2] is not None]
    if spec.kind == "GRU":
        attrs["linear_before_reset"] = int(spec.reset_after)
    x = masked.compact("x") if masked else "x"
    ins = [b("Transpose", [x], perm=[1, 0, 2]), cat(W), cat(R), cat(B) if B else "",
           masked.lengths if masked else "", init_h]
    if spec.kind == "LSTM":
        ins.append(init_c)
    while ins and not ins[-1]:
        ins.pop()
    y, yh, *yc = b(_ONNX_OP[spec.kind], ins, n_out=3 if spec.kind == "LSTM" else 2, **attrs)

    def gather(t, k, axis):
        return b("Gather", [t, b.const(np.array(k, np.int64))], axis=axis)

    def batch_major(t):   # (T, B, H) -> (B, T, H)
        t = b("Transpose", [t], perm=[1, 0, 2])
        return masked.expand(t) if masked else t

    def final(t, k, init):   # a direction's final state; a row with no valid step keeps the initial one
        v = gather(t, k, 0)
        return masked.final(v, gather(init, k, 0) if init else None) if masked else v

    if spec.return_sequences:
        seqs = [batch_major(gather(y, k, 1)) for k in range(len(dirs))]
        if not spec.bidirectional and spec.go_backwards and not backwards_in:
            # Keras returns the steps in the order it processed them
            seqs = [b("Slice", [seqs[0], one(-1), one(_INT64_MIN), one(1), one(-1)])]
        main = seqs if not spec.bidirectional else _merge(b, spec, seqs[0], seqs[1])
    else:
        lasts = [gather(yh, k, 0) for k in range(len(dirs))]
        if masked:   # Keras' last output: zeros when no step was valid
            lasts = [masked.final(v, None) for v in lasts]
        main = lasts if not spec.bidirectional else _merge(b, spec, lasts[0], lasts[1])
    states = []
    if spec.return_state:
        for k in range(len(dirs)):
            states.append(final(yh, k, init_h))
            if spec.kind == "LSTM":
                states.append(final(yc[0], k, init_c))
    outs = main + states
    out_names = [f"y{k}" for k in range(len(outs))]
    b.nodes.extend(helper.make_node("Identity", [src], [dst]) for src, dst in zip(outs, out_names))
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_function(DOMAIN, spec.op_type, ["x", *w_in, *s_in, *(["m"] if masked else [])], out_names,
                                b.nodes, opsets, overload=spec.layer)


class _Masked:
    """Keras' masking in ONNX terms: the valid steps of each sequence moved to its front
    (a stable sort of the time axis: TopK on ``invalid * T + t``), run with
    ``sequence_lens``, and spread back: a masked step repeats the last valid output
    (zeros with ``zero_output_for_mask``, and before the first valid step)."""

    def __init__(self, b: Body, spec: RecurrentSpec):
        self.b, self.spec = b, spec
        mask = "m"
        if spec.go_backwards:
            mask = self._flip(mask)
        self.mask = mask
        one = lambda v: b.const(np.array([v], np.int64))   # noqa: E731
        steps = b("Gather", [b("Shape", [mask]), one(1)], axis=0)
        invalid = b("Cast", [b("Not", [mask])], to=7)
        t = b("Range", [b.const(np.array(0, np.int64)), b("Squeeze", [steps, one(0)]), b.const(np.array(1, np.int64))])
        self.order = b("TopK", [b("Add", [b("Mul", [invalid, steps]), t]), steps], n_out=2, axis=1, largest=0,
                       sorted=1)[1]
        valid = b("Cast", [mask], to=7)
        count = b("ReduceSum", [valid, one(1)], keepdims=0)
        self.any = b("Greater", [count, b.const(np.array(0, np.int64))])
        self.lengths = b("Cast", [b("Max", [count, b.const(np.array(1, np.int64))])], to=6)
        self.last = b("Sub", [b("CumSum", [valid, b.const(np.array(1, np.int64))]), b.const(np.array(1, np.int64))])

    def _flip(self, v: str) -> str:
        one = lambda k: self.b.const(np.array([k], np.int64))   # noqa: E731
        return self.b("Slice", [v, one(-1), one(_INT64_MIN), one(1), one(-1)])

    def _take(self, v: str, index: str) -> str:
        """``v (B, T, F)`` gathered along time by ``index (B, T)``."""
        b = self.b
        idx = b("Expand", [b("Unsqueeze", [index, b.const(np.array([2], np.int64))]), b("Shape", [v])])
        return b("GatherElements", [v, idx], axis=1)

    def compact(self, x: str) -> str:
        return self._take(self._flip(x) if self.spec.go_backwards else x, self.order)

    def expand(self, y: str) -> str:
        b = self.b
        got = self._take(y, b("Max", [self.last, b.const(np.array(0, np.int64))]))
        keep = self.mask if self.spec.zero_output_for_mask else b("GreaterOrEqual", [self.last,
                                                                                       b.const(np.array(0, np.int64))])
        return b("Mul", [got, b("Cast", [b("Unsqueeze", [keep, b.const(np.array([2], np.int64))])], to=1)])

    def final(self, v: str, init: str | None) -> str:
        b = self.b
        cond = b("Unsqueeze", [self.any, b.const(np.array([1], np.int64))])
        other = init if init is not None else b("Mul", [v, b.const(np.array(0, np.float32))])
        return b("Where", [cond, v, other])


def _merge(b: Body, spec: RecurrentSpec, fw: str, bw: str) -> list[str]:
    """Keras' Bidirectional merge of the two directions' outputs."""
    mode = spec.merge_mode
    if mode is None:
        return [fw, bw]
    if mode == "concat":
        return [b("Concat", [fw, bw], axis=-1)]
    if mode == "sum":
        return [b("Add", [fw, bw])]
    if mode == "mul":
        return [b("Mul", [fw, bw])]
    if mode == "ave":
        return [b("Div", [b("Add", [fw, bw]), b.const(np.array(2, np.float32))])]
    raise PipelineError("export", f"Bidirectional merge_mode {mode!r}", layer=spec.layer)
