"""Random numbers drawn at inference (TensorFlow side for ``stateful_draws``; imported by
``export`` only).

A Keras 3 layer that calls ``keras.random.normal(shape, seed=SeedGenerator)`` at inference
(a VAE's ``Sampling``) draws with a stateless TF op seeded from a state variable that every
call advances. Freezing makes that variable a constant and its update (``AssignVariableOp``)
then breaks the freeze before tf2onnx sees the graph. While the export traces the model for
tf2onnx, ``stateful_draws`` makes ``keras.random.normal`` and ``keras.random.uniform`` (float)
TF's stateful ``RandomStandardNormal``/``RandomUniform``, which tf2onnx writes as ONNX
``RandomNormal(Like)``/``RandomUniform(Like)``: the same distribution, no state (the
generator writes ``torch.randn_like``/``torch.rand_like``). The draws ONNX has no op for
(truncated normal, randint, categorical, shuffle, gamma, binomial, beta, dropout) are left
as they are and recorded (``Draws``), so that the failure names the layer. A draw with an
int seed gives the same numbers at every call (Keras' rule): it is deterministic, left as is.

``random_outputs`` finds the random nodes of the ONNX graph, their Keras layers and the
outputs that depend on them: compare leaves those out of parity, with the reason.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from pipeline.core.errors import PipelineError
from pipeline.core.names import layer_in_scope

# ONNX's random ops: values that no two runs share
RANDOM_OPS = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli")
CONVERTED = ("normal", "uniform")   # keras.random.* made stateful TF ops while tracing for tf2onnx
UNCONVERTED = ("truncated_normal", "randint", "categorical", "shuffle", "gamma", "binomial", "beta", "dropout")
TORCH_OF = {"RandomNormal": "torch.randn", "RandomNormalLike": "torch.randn_like", "RandomUniform": "torch.rand",
            "RandomUniformLike": "torch.rand_like"}


@dataclass
class Draws:
    """The ``keras.random`` calls seen while tracing: (TF name scope, function), converted or not."""

    converted: list = field(default_factory=list)
    unconverted: list = field(default_factory=list)

    def layers(self, names, which: str = "unconverted") -> dict[str, list[str]]:
        """Keras layer -> the ``keras.random`` functions it draws with (``which`` kind)."""
        out: dict[str, list[str]] = {}
        for scope, fn in getattr(self, which):
            layer = layer_in_scope(scope, names) or scope or "(outside any layer)"
            if f"keras.random.{fn}" not in out.setdefault(layer, []):
                out[layer].append(f"keras.random.{fn}")
        return out

    def error(self, model: str, names, cause: BaseException) -> PipelineError | None:
        """Our error for a tf2onnx failure when the model draws random numbers ONNX has no op for."""
        bad = self.layers(names)
        if not bad:
            return None
        layer, fns = next(iter(bad.items()))
        return PipelineError(
            "export", f"layer {layer!r} draws random numbers at inference ({', '.join(fns)}), which has no ONNX "
            f"equivalent the pipeline converts (keras.random.normal and keras.random.uniform do); tf2onnx failed "
            f"on it: {type(cause).__name__}: {str(cause)[:300]}", model=model, layer=layer, kind="random-at-inference",
            hint="draw with keras.random.normal or keras.random.uniform, or draw only when training=True "
                 "(inference then is deterministic)")


def _is_int_seed(seed) -> bool:
    return isinstance(seed, int) and not isinstance(seed, bool)


@contextlib.contextmanager
def stateful_draws():
    """While tracing for tf2onnx: ``keras.random.normal``/``uniform`` with a SeedGenerator or no
    seed become TF's stateful random ops; every ``keras.random`` draw is recorded. Yields ``Draws``."""
    import tensorflow as tf
    from keras.src.backend.config import floatx
    from keras.src.backend.tensorflow import random as tf_random

    draws = Draws()
    originals = {fn: getattr(tf_random, fn) for fn in (*CONVERTED, *UNCONVERTED) if hasattr(tf_random, fn)}

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        if _is_int_seed(seed):
            return originals["normal"](shape, mean=mean, stddev=stddev, dtype=dtype, seed=seed)
        draws.converted.append((tf.get_current_name_scope(), "normal"))
        return tf.random.normal(shape, mean=mean, stddev=stddev, dtype=dtype or floatx())

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        dtype = dtype or floatx()
        if _is_int_seed(seed) or not tf.as_dtype(dtype).is_floating:
            return originals["uniform"](shape, minval=minval, maxval=maxval, dtype=dtype, seed=seed)
        draws.converted.append((tf.get_current_name_scope(), "uniform"))
        return tf.random.uniform(shape, minval=tf.cast(minval, dtype), maxval=tf.cast(maxval, dtype), dtype=dtype)

    def recorded(fn):
        def draw(*args, **kwargs):
            if not _is_int_seed(kwargs.get("seed")):
                draws.unconverted.append((tf.get_current_name_scope(), fn))
            return originals[fn](*args, **kwargs)
        return draw

    patched = {"normal": normal, "uniform": uniform, **{fn: recorded(fn) for fn in UNCONVERTED if fn in originals}}
    for fn, f in patched.items():
        setattr(tf_random, fn, f)
    try:
        yield draws
    finally:
        for fn, f in originals.items():
            setattr(tf_random, fn, f)


def random_outputs(proto, layer_names, draws: Draws | None = None) -> dict:
    """``meta.json`` ``random``: ``nodes`` (random node -> op type and Keras layer), ``layers``
    (layer -> the ``keras.random`` functions seen while tracing, or the ONNX ops), and
    ``outputs`` (graph output -> why it is left out of parity) for every output that depends
    on a random node. Empty dicts when the graph draws nothing."""
    nodes = {n.name: {"op_type": n.op_type, "layer": layer_in_scope(n.name, layer_names),
                      "torch": TORCH_OF.get(n.op_type)}
             for n in proto.graph.node if n.op_type in RANDOM_OPS and n.domain in ("", "ai.onnx")}
    if not nodes:
        return {"nodes": {}, "layers": {}, "outputs": {}}
    tainted = {o for n in proto.graph.node if n.name in nodes for o in n.output}
    source: dict[str, set] = {o: {n.name} for n in proto.graph.node if n.name in nodes for o in n.output}
    for n in proto.graph.node:   # topological order (tf2onnx writes it so)
        hit = set().union(*(source.get(i, set()) for i in n.input if i in tainted)) if n.name not in nodes else set()
        if hit:
            for o in n.output:
                tainted.add(o)
                source[o] = hit
    seen = draws.layers(layer_names, "converted") if draws else {}
    layers = {}
    for info in nodes.values():
        key = info["layer"] or "(outside any layer)"
        layers.setdefault(key, seen.get(key, []) or [])
        if not seen.get(key) and info["op_type"] not in layers[key]:
            layers[key].append(info["op_type"])
    outputs = {}
    for o in proto.graph.output:
        if o.name not in tainted:
            continue
        which = sorted({nodes[s]["layer"] or "(outside any layer)" for s in source[o.name]})
        ops = sorted({f"{nodes[s]['op_type']} -> {nodes[s]['torch'] or 'no torch op'}" for s in source[o.name]})
        outputs[o.name] = (f"output {o.name!r} is drawn from random numbers at inference (layer(s) {which}: "
                           f"{', '.join(f for l in which for f in layers.get(l, []))}; {', '.join(ops)}): "
                           "no two runs share its values, so it is left out of parity; each port's shape and "
                           "finiteness are checked")
    return {"nodes": nodes, "layers": layers, "outputs": outputs}


__all__ = ["CONVERTED", "Draws", "RANDOM_OPS", "UNCONVERTED", "random_outputs", "stateful_draws"]
