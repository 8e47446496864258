"""Nested Keras models inlined into one flat functional model (TensorFlow side).

The Keras transfer-learning recipe nests a whole ``keras.applications`` base inside the
model (``y = base(inputs, training=False)``). Exported as it is, the base is one layer: its
batch norms are not stubbed (grappler folds them into the convs), every generated submodule
is named after the base, and ``weights_map.json`` cannot place its variables (measured on a
frozen MobileNetV2 base + Dense head: 260 of 262 Keras variables unmapped). Inlined, each
inner layer is a top-level layer of its own, with its own name, ``trainable`` flag and
variables: the same layer objects, so the same weights and the same numbers.

The ``training=False`` of the nested call is not kept: Keras 3 does not keep it either when
the outer model is called with an explicit ``training`` (``Functional.call`` passes the
outer value to every operation, nested models included); a frozen base's batch norms stay
in inference mode through their own ``trainable=False``.
"""

from __future__ import annotations


def _graph(m):
    """The functional graph of a Keras 3 Functional or built Sequential model, else None."""
    from keras.src.models.functional import Functional
    from keras.src.models.sequential import Sequential

    if isinstance(m, Sequential):
        return getattr(m, "_functional", None)
    return m if isinstance(m, Functional) else None


def inline_nested(model) -> tuple[object, dict]:
    """``(model, facts)``: the model with every nested functional/sequential model inlined
    (recursively), and ``{"inlined": [names]}``, or the model unchanged with
    ``{"kept": reason}`` where it cannot be flattened; ``(model, {})`` when nothing is nested."""
    import keras

    graph = _graph(model)
    if graph is None or not any(_graph(layer) is not None for layer in getattr(model, "layers", [])):
        return model, {}
    inlined: list[str] = []

    def run(m, args):
        def op_fn(op):
            if op is not m and isinstance(op, keras.Model) and _graph(op) is not None:
                inlined.append(op.name)
                return lambda *a, **kw: run(op, a[0] if len(a) == 1 else list(a))
            return op
        return _graph(m)._run_through_graph(args, operation_fn=op_fn)

    try:
        if isinstance(graph._inputs_struct, dict):
            return model, {"kept": "the model takes a dict of inputs"}
        inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in graph.inputs]
        outputs = run(model, inputs if len(inputs) > 1 else inputs[0])
        flat = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)
    except Exception as e:   # e.g. two layers of the same name once flat: keep the nesting
        return model, {"kept": f"{type(e).__name__}: {str(e)[:300]}"}
    return flat, {"inlined": inlined}
