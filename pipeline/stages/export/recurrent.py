"""Recurrent layers at export time (TensorFlow side; imported by ``export`` only).

tf2onnx writes Keras 3 ``GRU``, ``SimpleRNN`` and ``ConvLSTM*`` as an ONNX ``Loop`` that
neither onnx2torch nor ``torch.export`` can use, and an ``LSTM`` as an ONNX ``LSTM``
without the Keras weights it folded (zero biases). So the model tf2onnx sees is a copy in
which each ``GRU``/``LSTM``/``SimpleRNN`` (bare or in a ``Bidirectional``) and each
``ConvLSTM1D/2D/3D`` is a stub (``stubs.py``, which stubs every layer family): a
``tf.numpy_function`` named ``k2t_stub_<i>`` with the layer's inputs and output
shapes, which tf2onnx passes through as a ``PyFunc`` node. ``stubs.replace_stubs``
then puts one ``ai.keras2torch::<kind>`` node per layer there, with the Keras weights once
(``core.recurrent``; its body from ``recurrent_onnx``). Nothing is unrolled, and any sequence length stays possible.

What the stub cannot express falls back to the old way, a copy with ``unroll=True`` (one
step per time step, same weights): a ConvLSTM in a Bidirectional or with a mask
(``Embedding(mask_zero=True)``, ``Masking``), activations outside ``STUB_ACTIVATIONS``, a Bidirectional whose two layers
differ. ``meta.json`` lists the layers of each kind.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.recurrent import RecurrentSpec
from pipeline.stages.export.savedmodel import SavedModelSignature

RECURRENT = ("LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "RNN")
STUB_KINDS = ("GRU", "LSTM", "SimpleRNN")   # and ConvLSTM1D/2D/3D (``_conv_lstm_spec``)
# activations the ONNX body (recurrent_onnx) and the generated module both express
STUB_ACTIVATIONS = ("tanh", "sigmoid", "relu", "hard_sigmoid", "linear")


def recurrent_layers(model) -> list[str]:
    """Names of the recurrent layers (Bidirectional wrappers included) of a Keras model."""
    out = []
    for layer in getattr(model, "layers", []):
        kind = type(layer).__name__
        if kind in RECURRENT or kind == "Bidirectional":
            out.append(layer.name)
    return out


def _unrolled_config(config: dict) -> dict:
    config = dict(config)
    if "unroll" in config:
        config["unroll"] = True
    for key in ("layer", "backward_layer"):
        sub = config.get(key)
        if isinstance(sub, dict) and isinstance(sub.get("config"), dict):
            config[key] = {**sub, "config": _unrolled_config(sub["config"])}
    return config


def unrolled_layer(layer):
    return type(layer).from_config(_unrolled_config(layer.get_config()))


def unrolled(model):
    """A copy of ``model`` with ``unroll=True`` on every recurrent layer, same weights."""
    import keras

    def clone(layer):
        if type(layer).__name__ in RECURRENT or type(layer).__name__ == "Bidirectional":
            return unrolled_layer(layer)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def may_unroll(model) -> bool:
    """Whether the model has recurrent layers (that tf2onnx may write as a Loop)."""
    return not isinstance(model, SavedModelSignature) and bool(recurrent_layers(model))


def unroll_if_loop(proto, model):
    """(an unrolled copy of ``model``, its recurrent layers) when tf2onnx wrote a Loop."""
    if model is None or isinstance(model, SavedModelSignature) or not any(n.op_type == "Loop" for n in proto.graph.node):
        return None
    names = recurrent_layers(model)
    return (unrolled(model), names) if names else None


# ---- stubs (``stubs.stubbed`` calls ``spec_of`` and ``stub_class``) ---------------------------
def _activation(fn) -> str:
    return getattr(fn, "__name__", str(fn))


def spec_of(layer) -> tuple[RecurrentSpec, list[np.ndarray]] | str:
    """The spec and weights of a stub-able layer, or why it is not stub-able."""
    bidi = type(layer).__name__ == "Bidirectional"
    sides = [layer.forward_layer, layer.backward_layer] if bidi else [layer]
    kind = type(sides[0]).__name__
    if kind.startswith("ConvLSTM") and not bidi:
        return _conv_lstm_spec(layer)
    if kind not in STUB_KINDS:
        return f"{kind} has no single-node form" + (" in a Bidirectional" if bidi else "")
    cells = [s.cell for s in sides]
    if bidi:
        a, b = sides
        if type(b).__name__ != kind or a.units != b.units or any(
                _activation(getattr(a.cell, k, None)) != _activation(getattr(b.cell, k, None))
                for k in ("activation", "recurrent_activation")) or getattr(a.cell, "reset_after", True) != \
                getattr(b.cell, "reset_after", True) or a.cell.use_bias != b.cell.use_bias or a.go_backwards \
                or not b.go_backwards:
            return "a Bidirectional whose two layers differ"
    cell = cells[0]
    acts = [_activation(cell.activation)] + ([_activation(cell.recurrent_activation)] if kind != "SimpleRNN" else [])
    if any(a not in STUB_ACTIVATIONS for a in acts):
        return f"activation {acts}"
    weights, roles, paths = [], [], []
    for side, c in zip(("forward", "backward"), cells):
        for role in ("kernel", "recurrent_kernel", "bias"):
            v = getattr(c, role, None)
            if v is None:
                continue
            weights.append(np.asarray(v.numpy(), np.float32))
            roles.append(f"{side}/{role}")
            paths.append(v.path)
    spec = RecurrentSpec(kind=kind, layer=layer.name, units=int(cell.units), input_size=int(weights[0].shape[0]),
                         activation=acts[0], recurrent_activation=acts[1] if len(acts) > 1 else "sigmoid",
                         use_bias=bool(cell.use_bias), reset_after=bool(getattr(cell, "reset_after", True)),
                         go_backwards=bool(sides[0].go_backwards) and not bidi,
                         return_sequences=bool(sides[0].return_sequences), return_state=bool(sides[0].return_state),
                         bidirectional=bidi, merge_mode=layer.merge_mode if bidi else "concat",
                         zero_output_for_mask=bool(getattr(sides[0], "zero_output_for_mask", False)),
                         dropout=float(getattr(cell, "dropout", 0.0) or 0.0),
                         recurrent_dropout=float(getattr(cell, "recurrent_dropout", 0.0) or 0.0),
                         implementation=int(getattr(cell, "implementation", 2) or 2),
                         weights=roles, variables=paths)
    return spec, weights


def _conv_lstm_spec(layer):
    cell = layer.cell
    if cell.data_format != "channels_last":
        return "ConvLSTM with data_format='channels_first'"
    acts = [_activation(cell.activation), _activation(cell.recurrent_activation)]
    if any(a not in STUB_ACTIVATIONS for a in acts):
        return f"activation {acts}"
    weights, roles, paths = [], [], []
    for role in ("kernel", "recurrent_kernel", "bias"):
        v = getattr(cell, role, None)
        if v is not None:
            weights.append(np.asarray(v.numpy(), np.float32))
            roles.append(f"forward/{role}")
            paths.append(v.path)
    rank = int(cell.rank)
    spec = RecurrentSpec(kind="ConvLSTM", layer=layer.name, units=int(cell.filters),
                         input_size=int(weights[0].shape[rank]), activation=acts[0], recurrent_activation=acts[1],
                         use_bias=bool(cell.use_bias), go_backwards=bool(layer.go_backwards),
                         return_sequences=bool(layer.return_sequences), return_state=bool(layer.return_state),
                         rank=rank, kernel_size=[int(k) for k in cell.kernel_size],
                         strides=[int(k) for k in cell.strides], dilation=[int(k) for k in cell.dilation_rate],
                         padding=str(cell.padding), weights=roles, variables=paths)
    return spec, weights


def stub_class():
    import keras
    import tensorflow as tf

    class RecurrentStub(keras.layers.Layer):
        """Stands for a recurrent layer in the graph tf2onnx sees (see the module docstring)."""

        def __init__(self, original, unrolled_copy, index: int, stubs):
            super().__init__(name=original.name, dtype=original.dtype_policy)
            self.unrolled_copy = unrolled_copy
            self.index = index
            self._stubs = stubs
            self._original_shape = original.compute_output_shape
            self._original_mask = original.compute_mask   # the mask goes on as the layer passes it
            self.supports_masking = True

        def compute_mask(self, inputs, mask=None):
            return self._original_mask(inputs, mask)

        def build(self, input_shape):
            self.unrolled_copy.build(input_shape)

        def call(self, sequences, initial_state=None, mask=None, training=None):
            spec = self._stubs.specs[self.index][0]
            if mask is not None and spec.kind == "ConvLSTM":   # the unrolled copy has Keras' masking
                self._stubs.unrolled[self.name] = "a masked ConvLSTM call"
                self._stubs.specs.pop(self.index, None)
                return self.unrolled_copy(sequences, initial_state=initial_state, mask=mask, training=False)
            states = [] if initial_state is None else list(tf.nest.flatten(initial_state))
            spec.n_states = len(states)
            if mask is not None:
                mask = tf.nest.flatten(mask)[0]
                spec.masked = True
                states.append(tf.cast(mask, tf.bool))
            shapes = self._original_shape(tuple(sequences.shape))
            many = isinstance(shapes, (list, tuple)) and len(shapes) and isinstance(shapes[0], (list, tuple))
            shapes = list(shapes) if many else [shapes]
            ys = tf.numpy_function(_never_run, [sequences, *states], [sequences.dtype] * len(shapes), stateful=True,
                                   name=f"{self._stubs.op}_{self.index}")
            # EnsureShape: tf2onnx reads shapes from the graph, where a PyFunc's are unknown
            ys = [tf.ensure_shape(y, s) for y, s in zip(ys, shapes)]
            return list(ys) if many else ys[0]

    return RecurrentStub


def _never_run(*_):
    raise RuntimeError("a recurrent stub ran: it exists for tf2onnx's trace only")
