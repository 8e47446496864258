"""What the port that trains needs to know of each Keras layer (TensorFlow side; imported by
``export`` only): ``meta.json`` ``keras_layers`` entries and the Keras weights themselves.

Per top-level layer, besides ``name`` and ``class`` (layers with weights only):

- ``trainable``: the layer's flag (False: a frozen layer; the port's parameters get
  ``requires_grad_(False)``);
- ``variables``: ``path``, ``shape``, ``trainable`` of each variable, and ``zero: true``
  where every element is 0 (tf2onnx folds an ``Add`` of an all-zero bias away: the
  generator then adds the bias back as a zero parameter, and only then);
- ``use_bias`` where the layer has the option; ``regularizers``: ``{"kernel": {"l1": .., "l2":
  ..}, ...}`` for its kernel/recurrent/bias/activity regularizers (``{"unsupported": class}``
  for one that is not L1/L2); a ``Bidirectional``: its forward layer's (``wrapped_class``),
  and ``backward_regularizers`` for the backward layer's.

``losses_reference``: ``sum(model.losses)`` and Keras' trainable weight count, the values
the port's ``regularization_loss()`` and its ``requires_grad`` parameters are checked against.
``weights_npz``: the Keras variables by path (``export/keras_weights.npz``), for
``import/weights_map.json``'s check, when they are small enough to keep twice.
"""

from __future__ import annotations

import numpy as np

WEIGHTS_NPZ = "keras_weights.npz"
MAX_NPZ_BYTES = 128 << 20   # above this (VGG16: 553 MB), the map is built without the Keras values (unverified)
_REGULARIZED = ("kernel", "recurrent", "bias", "activity")


def var_path(v) -> str:
    p = getattr(v, "path", None) or v.name   # tf_keras variables have no path: "dense/kernel:0"
    return p[:-2] if p.endswith(":0") else p


def _regularizer(r) -> dict | None:
    if r is None:
        return None
    try:
        cfg = r.get_config()
    except Exception:   # a custom regularizer without a config
        cfg = {}
    if type(r).__name__ in ("L1", "L2", "L1L2") and set(cfg) <= {"l1", "l2"}:
        return {"l1": float(cfg.get("l1", 0.0)), "l2": float(cfg.get("l2", 0.0))}
    return {"unsupported": type(r).__name__}


def _regularizers(layer) -> dict:
    """``{role: {"l1", "l2"}}`` of a layer's regularizers (a recurrent layer's are its cell's)."""
    own = getattr(layer, "cell", None)
    regs = {}
    for k in _REGULARIZED:
        r = getattr(layer, f"{k}_regularizer", None)
        if r is None and own is not None and k != "activity":
            r = getattr(own, f"{k}_regularizer", None)
        if (r := _regularizer(r)):
            regs[k] = r
    return regs


def layer_facts(model) -> list[dict]:
    """``meta.json`` ``keras_layers``: name, class and, for layers with weights, the facts above."""
    out = []
    for layer in getattr(model, "layers", []):
        entry = {"name": layer.name, "class": type(layer).__name__}
        out.append(entry)
        weights = list(getattr(layer, "weights", []))
        bidi = type(layer).__name__ == "Bidirectional"
        regs = _regularizers(layer.forward_layer if bidi else layer)
        if bidi:   # the wrapped layers' regularizers (Keras counts both directions); the wrapper's activity one
            entry["wrapped_class"] = type(layer.forward_layer).__name__
            regs.pop("activity", None)
            if (act := _regularizer(getattr(layer, "activity_regularizer", None))):
                regs["activity"] = act
            if (back := {k: v for k, v in _regularizers(layer.backward_layer).items() if k != "activity"}):
                entry["backward_regularizers"] = back
        if regs:
            entry["regularizers"] = regs
        if not weights:
            continue
        entry["trainable"] = bool(layer.trainable)
        if hasattr(layer, "use_bias"):
            entry["use_bias"] = bool(layer.use_bias)
        trainable = {id(v) for v in layer.trainable_weights}
        entry["variables"] = []
        for v in weights:
            arr = np.asarray(v.numpy())
            var = {"path": var_path(v), "shape": list(arr.shape), "trainable": id(v) in trainable}
            if arr.size and not arr.any():
                var["zero"] = True
            entry["variables"].append(var)
    return out


def losses_reference(model, call=None) -> dict:
    """``sum(model.losses)`` after an eager ``call()`` (the model on the reference inputs,
    ``training=False``): the weight regularizers and the activity regularizers' terms of that
    call (Keras keeps those of the last call; the traced reference call leaves symbolic ones),
    how many terms, and the count of trainable weight elements."""
    try:
        if call is not None and any(getattr(l, "activity_regularizer", None) is not None
                                    for l in model._flatten_layers(include_self=False)):
            call()
        losses = [float(np.asarray(v)) for v in model.losses]
    except Exception as e:   # a SavedModel signature, or a layer whose losses need a call
        return {"error": f"{type(e).__name__}: {e}"}
    return {"sum_losses": float(sum(losses)), "n_losses": len(losses),
            "trainable_params": int(sum(int(np.prod(v.shape)) for v in model.trainable_weights))}


def weights_npz(model) -> dict[str, np.ndarray] | None:
    """The model's variables by path, or None when they are over ``MAX_NPZ_BYTES``."""
    arrays, total = {}, 0
    for v in getattr(model, "weights", []):
        arr = np.asarray(v.numpy())
        total += arr.nbytes
        if total > MAX_NPZ_BYTES:
            return None
        arrays[var_path(v)] = arr
    return arrays
