"""Recurrent layers at export time (TensorFlow side; imported by ``export`` only).

tf2onnx turns a Keras LSTM into an ONNX ``LSTM`` node, but Keras 3 ``GRU``, ``SimpleRNN``
and ``ConvLSTM*`` (and some LSTM configurations) arrive as an ONNX ``Loop`` that neither
onnx2torch nor ``torch.export`` can use. For such models the export stage converts a copy
of the model whose recurrent layers run with ``unroll=True`` (same weights, same maths,
one step per time step), which tf2onnx writes as plain ops.
"""

from __future__ import annotations

from pipeline.stages.export.savedmodel import SavedModelSignature

RECURRENT = ("LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "RNN")


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


def unrolled(model):
    """A copy of ``model`` with ``unroll=True`` on every recurrent layer, same weights."""
    import keras

    def clone(layer):
        if type(layer).__name__ in RECURRENT or type(layer).__name__ == "Bidirectional":
            return type(layer).from_config(_unrolled_config(layer.get_config()))
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
