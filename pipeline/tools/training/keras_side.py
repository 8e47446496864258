"""The Keras half of the training check, in a TensorFlow process of its own:
``python -m pipeline.tools.training.keras_side REQUEST.json``.

The request names the model folder, an ``.npz`` of inputs (Keras' layout, ``in:<name>``)
and targets (``target:<output>``), the learning rate and the step count, and where to
write the result. The model is the one export exported (``compare.keras_model``), with the
dropout family's rates set to 0 (``ZEROED``) so that ``training=True`` is deterministic.
On a fixed batch and loss = sum over outputs of mean((y - target)**2) + sum(model.losses):

- step 0 (``GradientTape``): the outputs of ``model(x, training=True)``, the loss, the
  gradient of every trainable variable (by path; an unused one: zeros), and every
  variable after that call (the batch norms' moving statistics are updated by it);
- then every variable back to its value before step 0, and ``steps`` steps of plain SGD
  (``v -= lr * grad``): each step's loss, and every variable at the end.

Writes ``out:<i>``, ``grad:<path>``, ``after:<path>``, ``final:<path>`` arrays and a JSON
of the scalars, the trainable paths and what was zeroed.
"""

from __future__ import annotations

import json
import sys

import numpy as np

# the dropout family and the attribute that makes each deterministic (0: identity in training)
ZEROED = {"Dropout": "rate", "SpatialDropout1D": "rate", "SpatialDropout2D": "rate", "SpatialDropout3D": "rate",
          "GaussianDropout": "rate", "AlphaDropout": "rate", "GaussianNoise": "stddev"}
# recurrent layers' own dropout arguments (the port's Keras<kind> cell modules apply them in train())
RECURRENT_DROPOUT = ("dropout", "recurrent_dropout")


def zero_rates(model) -> tuple[dict, dict]:
    """Set the dropout family's rates to 0; ``({layer: {attr: old}}, {recurrent layer: {arg: rate}})``."""
    zeroed, recurrent = {}, {}
    for layer in model._flatten_layers(include_self=False):
        attr = ZEROED.get(type(layer).__name__)
        if attr and getattr(layer, attr, 0):
            zeroed[layer.name] = {attr: float(getattr(layer, attr))}
            setattr(layer, attr, 0.0)
        cell = getattr(layer, "cell", None)
        for arg in RECURRENT_DROPOUT:
            rate = getattr(cell, arg, 0) or 0
            if rate:
                recurrent.setdefault(layer.name, {})[arg] = float(rate)
                setattr(cell, arg, 0.0)
    return zeroed, recurrent


def main(request: str) -> int:
    import os

    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    from pipeline.stages.export import tfenv

    tf = tfenv.import_tf()
    from pipeline.core.artifacts import ModelDir
    from pipeline.core.reference import flatten_outputs
    from pipeline.stages.compare import keras_model
    from pipeline.stages.export.variables import var_path

    req = json.loads(open(request).read())
    model = keras_model(ModelDir(__import__("pathlib").Path(req["mdir"])))
    zeroed, recurrent = zero_rates(model)
    with np.load(req["feeds"], allow_pickle=False) as z:
        xs = [tf.constant(z[f"in:{n}"]) for n in req["inputs"]]
        targets = [tf.constant(z[f"target:{n}"]) for n in req["outputs"]]
    x = xs if len(xs) > 1 else xs[0]
    trainable = list(model.trainable_weights)

    def loss_of():
        outs = flatten_outputs(model(x, training=True))
        mse = tf.add_n([tf.reduce_mean(tf.square(tf.cast(o, tf.float32) - t)) for o, t in zip(outs, targets)])
        reg = tf.add_n([tf.cast(r, tf.float32) for r in model.losses]) if model.losses else tf.constant(0.0)
        return outs, mse, reg

    def grads_of(tape, loss):
        gs = tape.gradient(loss, trainable)
        return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for v, g in zip(trainable, gs)]

    before = {var_path(v): np.asarray(v.numpy()) for v in model.weights}
    with tf.GradientTape() as tape:
        outs, mse, reg = loss_of()
        loss = mse + reg
    grads = grads_of(tape, loss)
    arrays = {f"out:{i}": np.asarray(o) for i, o in enumerate(outs)}
    arrays.update({f"grad:{var_path(v)}": np.asarray(g) for v, g in zip(trainable, grads)})
    arrays.update({f"after:{var_path(v)}": np.asarray(v.numpy()) for v in model.weights})
    scalars = {"loss": float(loss), "mse": float(mse), "regularization": float(reg)}
    for v in model.weights:
        v.assign(before[var_path(v)])
    losses = []
    for _ in range(req["steps"]):
        with tf.GradientTape() as tape:
            _, mse, reg = loss_of()
            loss = mse + reg
        for v, g in zip(trainable, grads_of(tape, loss)):
            v.assign_sub(req["lr"] * g)
        losses.append(float(loss))
    arrays.update({f"final:{var_path(v)}": np.asarray(v.numpy()) for v in model.weights})
    np.savez(req["dest"], **arrays)
    info = {**scalars, "sgd_losses": losses, "trainable": [var_path(v) for v in trainable],
            "zeroed": zeroed, "recurrent_dropout": recurrent,
            "activity_regularized": [layer.name for layer in model._flatten_layers(include_self=False)
                                     if getattr(layer, "activity_regularizer", None) is not None]}
    with open(req["dest"] + ".json", "w") as f:
        json.dump(info, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
