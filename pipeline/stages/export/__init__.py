"""Stage 1, export: Keras -> ``raw.onnx`` + seeded reference inputs and Keras outputs.

The only stage that imports TensorFlow; it always runs in a process of its own.
Writes ``export/raw.onnx``, ``export/reference.npz`` (``input:<name>``, ``output:<name>``)
and ``export/meta.json`` (input/output names, shapes and dtypes in Keras' layout).

- ``tfenv.py``         the TensorFlow process's environment (quiet unless ``--verbose``)
- ``modelfile.py``     checks of a model file before a loader sees it
- ``keras_model.py``   loading the model and its custom objects, batch norm calibration
- ``savedmodel.py``    a SavedModel, exported through one of its signatures
- ``stubs.py``         Keras layers as single ``ai.keras2torch`` nodes (recurrent, batch norm, dropout)
- ``recurrent.py``     recurrent layers that tf2onnx writes as a Loop: stubs, else unrolled
- ``randomness.py``    random draws at inference: stateful TF ops for tf2onnx, the outputs they reach
- ``trainable.py``     batch norms and the dropout family as stubs (grappler would fold or drop them)
- ``reference.py``     input specs, seeded reference inputs, output names
- ``tf2onnx_path.py``  freeze, hold-out of big Dense kernels, tf2onnx, checks, save
- ``layers.py``        Keras' per-layer activations for ``debug``: ``<model>/layers/``,
                       not part of this stage's folder
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, StageClock, atomic_dir, write_json
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.spec import ModelSpec
from pipeline.stages.export import layers as keras_layers
from pipeline.stages.export.keras_model import calibrate_batchnorm, layer_list, load_model
from pipeline.stages.export.nested import inline_nested
from pipeline.stages.export.randomness import random_outputs, stateful_draws
from pipeline.stages.export.recurrent import may_unroll, unroll_if_loop
from pipeline.stages.export.stubs import STUB_OP, replace_stubs, stubbed
from pipeline.core.reference import flatten_outputs
from pipeline.stages.export.reference import (TF_NAME, check_no_string_inputs, vocab_size, fixed_dims, free_dims, input_ranges, input_specs,
                                              output_names, reference_inputs, reference_shapes)
from pipeline.stages.export.savedmodel import SavedModelSignature
from pipeline.stages.export.tf2onnx_path import (HOLD_OUT_BYTES, TF2ONNX_PASSES, check_converted, convert_frozen,
                                                 failure_layer, freeze, save_onnx, tf2onnx_convert)
from pipeline.stages.export.tfenv import import_tf, prepare
from pipeline.stages.export.variables import WEIGHTS_NPZ, layer_facts, losses_reference, weights_npz

record_layers = keras_layers.record

__all__ = ["HOLD_OUT_BYTES", "TF2ONNX_PASSES", "calibrate_batchnorm", "convert_frozen", "flatten_outputs", "freeze",
           "import_tf", "input_specs", "load_model", "prepare", "record_layers", "reference_inputs", "run",
           "save_onnx", "tf2onnx_convert"]


def run(spec: ModelSpec, settings: Settings, out: Path, per_layer: bool = False) -> dict:
    """Run the export stage; returns its stage record. ``per_layer`` also records each Keras
    layer's output in ``<model>/layers/`` (for ``debug``; see ``layers.py``), once the
    stage's own folder is written."""
    clock = StageClock()
    tf = import_tf()
    import keras
    import onnx
    import tf2onnx

    mdir = ModelDir.of(out, spec.name)
    model = load_model(spec, settings)
    nested: dict = {}
    if not isinstance(model, SavedModelSignature):
        model, nested = inline_nested(model)   # a nested base's layers become the model's own
    specs = input_specs(model, settings, spec.name)   # free dims (None) stay symbolic in the signature
    check_no_string_inputs(specs, model, spec.name)
    shapes = reference_shapes(specs, settings, spec.name)
    signature = [tf.TensorSpec(shape, tf.as_dtype(dtype), name=n) for n, shape, dtype in specs]
    fixed_signature = [tf.TensorSpec(shapes[n], tf.as_dtype(dtype), name=n) for n, _, dtype in specs]
    free = any(free_dims(s) for _, s, _ in specs)
    fixed: dict = {}   # input -> dims fixed at the reference size because the symbolic signature failed
    vocab = vocab_size(model)

    if isinstance(model, SavedModelSignature):
        probe = model(*[tf.zeros([1, *shapes[n][1:]], d) for n, _, d in specs])
        out_names = [TF_NAME.sub("_", k) for k in probe]

        def call(*xs):
            res = model(*xs)
            return {n: res[k] for n, k in zip(out_names, res)}
    else:
        n_out = len(model.outputs) if getattr(model, "outputs", None) is not None else 1
        out_names = output_names(model, n_out)

        def call(*xs, keras_model=None):
            m = keras_model or model
            res = flatten_outputs(m(list(xs) if len(xs) > 1 else xs[0], training=False))
            return dict(zip(out_names, res))

    feeds = reference_inputs(specs, model, settings, shapes)
    ranges = input_ranges(specs, model, settings)   # before tracing (which adds nodes to the layers)
    try:
        try:
            ref = tf.function(call, input_signature=signature, autograph=False)(*[tf.constant(feeds[n]) for n, _, _ in specs])
        except Exception as e:   # Keras cannot trace the model with free dims: fix them at the reference size
            if not free:
                raise
            fixed, signature = fixed_dims(specs, shapes, "keras", e, layer_list(model)), fixed_signature
            ref = tf.function(call, input_signature=signature, autograph=False)(*[tf.constant(feeds[n]) for n, _, _ in specs])
    except Exception as e:
        hint = (f"its free dims were drawn at {[shapes[n] for n, s, _ in specs if free_dims(s)]}: give sizes it "
                "takes with --reference-shape (they stay free), or fix them with --input-shape") if free else None
        raise PipelineError("export", f"Keras cannot run the model on reference inputs: {type(e).__name__}: {e}",
                            model=spec.name, hint=hint) from e
    ref = {k: np.asarray(v) for k, v in ref.items()}
    bad = [k for k, v in ref.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]
    if bad:
        raise PipelineError("export", f"Keras' own outputs {bad} contain NaN or inf on the seeded reference inputs; "
                            "this is the model, not the conversion", model=spec.name, kind="keras-nonfinite",
                            hint="check the model's weights, or change seed in the config")
    layers = layer_facts(model)
    losses, kweights = losses_reference(model, lambda: call(*[tf.constant(feeds[n]) for n, _, _ in specs])), \
        weights_npz(model)
    params = int(model.count_params()) if hasattr(model, "count_params") else None
    keep_model = per_layer or may_unroll(model) or (free and not fixed)   # a fixed retry traces it again
    names = {l["name"] for l in layers}
    # keras.random draws at inference: stateful TF ops while tracing for tf2onnx (randomness.py)
    with stateful_draws() as draws:
        recurrent, fallback = _recurrent_stubbed(call, signature, model, settings, spec.name)
        if recurrent is not None:
            proto, external, stubs = recurrent
        else:
            stubs = None
            try:   # a fresh trace for tf2onnx (see tf2onnx_path._xla_functions_inlined); ``fn`` ran the reference
                try:
                    frozen = freeze(tf.function(call, input_signature=signature, autograph=False), signature)
                    if not keep_model:
                        model = None   # the Keras weights are no longer needed: the frozen graph has them
                        gc.collect()
                    proto, external = convert_frozen(frozen, settings.opset)
                except Exception as e:   # tf2onnx fails on the symbolic signature: fix the free dims at the reference size
                    if not free or fixed:
                        raise
                    frozen = None
                    fixed, signature = fixed_dims(specs, shapes, "tf2onnx", e, layers), fixed_signature
                    frozen = freeze(tf.function(call, input_signature=signature, autograph=False), signature)
                    proto, external = convert_frozen(frozen, settings.opset)
                del frozen
            except Exception as e:
                raise (draws.error(spec.name, names, e) or PipelineError(
                    "export", f"tf2onnx failed: {type(e).__name__}: {e}", model=spec.name,
                    **failure_layer(e, layers))) from e
        try:
            check_converted(proto, spec.name, layers)
        except PipelineError as e:
            raise (draws.error(spec.name, names, e) or e) from e
        if model is not None and not per_layer and not may_unroll(model):
            model = None   # kept for a fixed retry only
        unrolled = unroll_if_loop(proto, model)
        if unrolled:   # recurrent layers came out as an ONNX Loop: convert them unrolled (see recurrent.py)
            model, rnn_names = unrolled
            if free and not fixed:   # one step per time step needs a static length
                fixed = fixed_dims(specs, shapes, "unroll", RuntimeError(
                    f"the recurrent layers {rnn_names} are converted unrolled, one copy per time step"), layers)
                signature = fixed_signature
            fn = tf.function(call, input_signature=signature, autograph=False)   # ``call`` now sees the copy
            try:
                proto, external = tf2onnx_convert(fn, signature, settings.opset)
            except Exception as e:
                raise PipelineError("export", f"tf2onnx failed on the unrolled recurrent layers {rnn_names}: "
                                    f"{type(e).__name__}: {e}", model=spec.name) from e

    onnx_outputs = [o.name for o in proto.graph.output]
    random = random_outputs(proto, names, draws)   # outputs drawn at inference: left out of parity
    if sorted(onnx_outputs) != sorted(ref):
        raise PipelineError("export", f"ONNX outputs {onnx_outputs} do not match Keras outputs {list(ref)}",
                            model=spec.name)
    meta = {
        "model": spec.name,
        "spec": spec.to_json(),
        "settings": settings.to_json(),
        "inputs": [{"name": n, "shape": [None, *[shapes[n][i] if i in {f["dim"] for f in fixed.get(n, [])} else d
                                                 for i, d in enumerate(s) if i]],
                    "dtype": str(d), "reference_shape": shapes[n],
                    "free_dims": [i for i in free_dims(s) if n not in fixed], "fixed_dims": fixed.get(n, [])}
                   for n, s, d in specs],
        "input_vocab": vocab,
        "input_ranges": ranges,
        "outputs": [{"name": k, "shape": [None, *ref[k].shape[1:]], "dtype": str(ref[k].dtype)} for k in onnx_outputs],
        "keras_layers": layers,
        "nested_models": nested,
        "params": params,
        "losses_reference": losses,
        "keras_weights": WEIGHTS_NPZ if kweights is not None else None,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
                     "onnx": onnx.__version__, "numpy": np.__version__},
        "random": random,
        "tf2onnx_passes": list(TF2ONNX_PASSES),
        "tf2onnx_large_model": True,
        "unrolled_recurrent": unrolled[1] if unrolled else sorted(stubs.unrolled) if stubs else [],
        "recurrent": {"modules": list(stubs.layers(True)) if stubs else [],
                      "unrolled": ({n: "tf2onnx wrote a Loop" for n in unrolled[1]} if unrolled else
                                   dict(stubs.unrolled) if stubs else {}),
                      **({"fallback": fallback} if fallback else {})},
        "trainable": {"nodes": stubs.layers(False) if stubs else {}, "plain": dict(stubs.plain) if stubs else {},
                      "activity_regularizers": {"nodes": stubs.activity_layers() if stubs else [],
                                                "plain": dict(stubs.activity_plain) if stubs else {}},
                      **({"fallback": fallback} if fallback else {})},
    }
    with atomic_dir(mdir.stage("export")) as d:
        save_onnx(proto, external, d / "raw.onnx")
        del proto, external
        np.savez(d / "reference.npz", **{f"input:{k}": v for k, v in feeds.items()},
                 **{f"output:{k}": v for k, v in ref.items()})
        if kweights is not None:
            np.savez(d / WEIGHTS_NPZ, **kweights)
        record = {"stage": "export", **clock.record()}
        meta["stage"] = record
        write_json(d / "meta.json", meta)
    if per_layer and not isinstance(model, SavedModelSignature):
        keras_layers.write(model, mdir, [feeds[n] for n, _, _ in specs], spec.name, StageClock())
    return record


def _recurrent_stubbed(call, signature, model, settings: Settings, name: str):
    """``((proto, external, stubs), None)`` for the model with its recurrent layers, batch
    norms and dropout layers as single nodes (``stubs.py``); ``(None, None)`` when it has
    none; ``(None, why)`` when the stubbed copy fails to build or convert (the plain path
    runs then, and meta.json says why under ``recurrent.fallback`` and ``trainable.fallback``)."""
    import tensorflow as tf

    if settings.opset < 13:   # the nodes' bodies use opset-13 Split/Unsqueeze
        return None, None
    tf2onnx_log = logging.getLogger("tf2onnx")
    level = tf2onnx_log.level
    try:
        stubs = stubbed(model)
        if stubs is None:
            return None, None
        fn = tf.function(lambda *xs: call(*xs, keras_model=stubs.model), input_signature=signature, autograph=False)
        tf2onnx_log.setLevel(logging.CRITICAL)   # it logs each stub as an op it does not support
        proto, external = convert_frozen(freeze(fn, signature), settings.opset)
        tf2onnx_log.setLevel(level)
        stubs.done = replace_stubs(proto, stubs.specs, STUB_OP, name)
    except Exception as e:   # the plain path (unrolled where tf2onnx writes a Loop) still converts these
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        tf2onnx_log.setLevel(level)
    return (proto, external, stubs), None
