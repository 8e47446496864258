"""The recurrent converters (``ai.keras2torch::GRU|LSTM|SimpleRNN|ConvLSTM<n>D``) on one-node
ONNX models against onnxruntime, which runs each node's body (a model-local function of
standard ONNX ops, ``stages/export/recurrent_onnx.py``). Weights are random with non-zero
biases and initial states, so a wrong gate order, bias split or direction fails; each case
runs at two sequence lengths. No TensorFlow needed (the Keras side: ``test_recurrent.py``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from safetensors.numpy import save_file

from pipeline import codegen
from pipeline.core.recurrent import DOMAIN, RecurrentSpec
from pipeline.stages.export.recurrent_onnx import make_function

RTOL, ATOL = 1e-5, 1e-6   # |torch - onnxruntime| <= ATOL + RTOL * |onnxruntime|, per element
F, H = 3, 4


def _weights(spec: RecurrentSpec, rng) -> dict:
    gates = {"GRU": 3, "LSTM": 4, "SimpleRNN": 1, "ConvLSTM": 4}[spec.kind] * spec.units
    k = tuple(spec.kernel_size)
    shapes = {"kernel": (*k, spec.input_size, gates), "recurrent_kernel": (*k, spec.units, gates),
              "bias": (2, gates) if spec.kind == "GRU" and spec.reset_after else (gates,)}
    roles = [f"{d}/{r}" for d in spec.directions for r in ("kernel", "recurrent_kernel", "bias")
             if r != "bias" or spec.use_bias]
    spec.weights = roles
    spec.variables = [f"{spec.layer}/{r}" for r in roles]
    return {r: (rng.standard_normal(shapes[r.split("/")[1]]) * 0.5).astype(np.float32) for r in roles}


def _model(spec: RecurrentSpec, x_shape, state_shape):
    rng = np.random.default_rng(3)
    weights = _weights(spec, rng)
    per = spec.states_per_direction * len(spec.directions)
    spec.n_states = per if state_shape else 0
    states = [f"s{k}" for k in range(spec.n_states)] + (["m"] if spec.masked else [])
    outs = [f"y{k}" for k in range(spec.n_outputs())]
    node = helper.make_node(spec.op_type, ["x", *spec.variables, *states], outs, name=f"functional_1/{spec.layer}_1/op",
                            domain=DOMAIN, overload=spec.layer, keras=spec.to_json())
    inputs = [helper.make_tensor_value_info("x", 1, ["N", None, *x_shape[2:]])]
    inputs += [helper.make_tensor_value_info(s, 1, ["N", *state_shape]) for s in states if s != "m"]
    if spec.masked:
        inputs.append(helper.make_tensor_value_info("m", onnx.TensorProto.BOOL, ["N", None]))
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(o, 1, None) for o in outs],
                              initializer=[numpy_helper.from_array(w, n) for n, w in zip(spec.variables,
                                                                                         weights.values())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
                              functions=[make_function(spec, 17)], ir_version=10)
    return model, spec.n_states


def _spec(kind="GRU", **kw) -> RecurrentSpec:
    return RecurrentSpec(kind=kind, layer=kw.pop("layer", "rnn"), units=kw.pop("units", H),
                         input_size=kw.pop("input_size", F), **kw)


CASES = {
    "gru": _spec("GRU"),
    "gru-sequences-backwards": _spec("GRU", return_sequences=True, go_backwards=True),
    "gru-reset-before-states": _spec("GRU", reset_after=False, return_sequences=True, return_state=True),
    "gru-hard-sigmoid-no-bias": _spec("GRU", recurrent_activation="hard_sigmoid", use_bias=False),
    "gru-bidi-concat-initial": _spec("GRU", bidirectional=True, return_sequences=True),
    "gru-bidi-none-states": _spec("GRU", bidirectional=True, merge_mode=None, return_state=True),
    "lstm": _spec("LSTM", return_sequences=True),
    "lstm-states-initial": _spec("LSTM", return_state=True),
    "lstm-bidi-ave": _spec("LSTM", bidirectional=True, merge_mode="ave"),
    "lstm-bidi-mul-sequences-states": _spec("LSTM", bidirectional=True, merge_mode="mul", return_sequences=True,
                                            return_state=True),
    "lstm-relu-backwards": _spec("LSTM", activation="relu", go_backwards=True, return_sequences=True),
    "simplernn": _spec("SimpleRNN", return_sequences=True),
    "simplernn-relu-bidi-sum": _spec("SimpleRNN", activation="relu", bidirectional=True, merge_mode="sum"),
    "simplernn-linear-states": _spec("SimpleRNN", activation="linear", return_state=True),
    "gru-masked-backwards-sequences": _spec("GRU", masked=True, go_backwards=True, return_sequences=True),
    "lstm-masked-bidi-states-initial": _spec("LSTM", masked=True, bidirectional=True, return_state=True,
                                             return_sequences=True, zero_output_for_mask=True),
    "simplernn-masked-relu-last": _spec("SimpleRNN", masked=True, activation="relu", return_state=True),
    "gru-masked-reset-before-cell": _spec("GRU", masked=True, reset_after=False, return_sequences=True),
    "lstm-masked-hard-sigmoid-cell-backwards": _spec("LSTM", masked=True, recurrent_activation="hard_sigmoid",
                                                     go_backwards=True, return_state=True),
    "convlstm1d-same": _spec("ConvLSTM", rank=1, kernel_size=[3], strides=[1], dilation=[1], padding="same",
                             return_sequences=True),
    "convlstm2d-strided-same-states": _spec("ConvLSTM", rank=2, kernel_size=[3, 2], strides=[2, 2], dilation=[1, 1],
                                            padding="same", return_state=True),
    "convlstm2d-valid-dilated-backwards": _spec("ConvLSTM", rank=2, kernel_size=[2, 2], strides=[1, 1],
                                                dilation=[2, 1], go_backwards=True, return_sequences=True,
                                                recurrent_activation="hard_sigmoid"),
    "convlstm3d": _spec("ConvLSTM", rank=3, kernel_size=[2, 2, 2], strides=[1, 1, 1], dilation=[1, 1, 1]),
}
WITH_STATES = {"gru-bidi-concat-initial", "lstm-states-initial", "convlstm2d-strided-same-states",
               "lstm-masked-bidi-states-initial"}


def _shapes(spec: RecurrentSpec, length: int):
    if spec.kind != "ConvLSTM":
        return (2, length, spec.input_size), (spec.units,)
    space = {1: (9,), 2: (7, 6), 3: (5, 4, 5)}[spec.rank]
    out = [((s + st - 1) // st if spec.padding == "same" else (s - d * (k - 1) - 1) // st + 1)
           for s, k, st, d in zip(space, spec.kernel_size, spec.strides, spec.dilation)]
    return (2, length, *space, spec.input_size), (*out, spec.units)


@pytest.mark.parametrize("case_id", list(CASES))
def test_recurrent_node_matches_onnxruntime(tmp_path, case_id):
    spec = RecurrentSpec.from_json(CASES[case_id].to_json())
    x_shape, state_shape = _shapes(spec, 5)
    model, n_states = _model(spec, x_shape, state_shape if case_id in WITH_STATES else None)
    gen = codegen.generate(model, case_id.replace("-", "_"), [{"name": "rnn", "class": spec.kind}])
    (tmp_path / "model.py").write_text(gen.source)
    save_file({k: np.ascontiguousarray(v) for k, v in gen.state.items()}, str(tmp_path / "model.safetensors"))
    module = codegen.load_generated(tmp_path / "model.py")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(9)
    for length in (5, 2):   # two lengths: the module has no length in it
        x_shape, _ = _shapes(spec, length)
        feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
        feeds.update({f"s{k}": rng.standard_normal((2, *state_shape)).astype(np.float32) for k in range(n_states)})
        if spec.masked:   # a left-padded row with a hole, and a row with no valid step
            mask = np.ones((2, length), bool)
            mask[0, 0] = mask[0, length // 2] = False
            mask[1] = False
            feeds["m"] = mask
        refs = session.run(None, feeds)
        with torch.no_grad():
            got = module(*[torch.from_numpy(feeds[n]) for n in gen.input_names])
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(refs)
        for g, r in zip(got, refs):
            np.testing.assert_allclose(g.numpy(), r, rtol=RTOL, atol=ATOL)


def test_every_recurrent_op_has_a_case():
    ops = {op.split("::")[1] for op, entries in codegen.CONVERTERS.entries().items()
           if any(e.family in ("keras_recurrent", "keras_conv_lstm") for e in entries)}
    assert ops == {c.op_type for c in CASES.values()}


def test_weights_stored_once_as_torch_modules(tmp_path):
    spec = RecurrentSpec.from_json(CASES["gru-bidi-concat-initial"].to_json())
    model, _ = _model(spec, *_shapes(spec, 5))
    gen = codegen.generate(model, "m", [{"name": "rnn", "class": "Bidirectional"}])
    assert "nn.GRU(3, 4, batch_first=True, bidirectional=True)" in gen.source
    keras = sum(onnx.numpy_helper.to_array(t).size for t in model.graph.initializer)
    assert sum(v.size for v in gen.state.values()) == keras
