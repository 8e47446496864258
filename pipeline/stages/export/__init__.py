"""Stage 1, export: Keras -> ``raw.onnx`` + seeded reference inputs and Keras outputs.

The only module that imports TensorFlow; it always runs in a process of its own.
Writes ``export/raw.onnx``, ``export/reference.npz`` (``input:<name>``, ``output:<name>``)
and ``export/meta.json`` (input/output names, shapes and dtypes in Keras' layout).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import os
import re
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pipeline.stages.export import modelfile
from pipeline.core.artifacts import ModelDir, StageClock, atomic_dir, atomic_file, write_json
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.names import layer_in_scope
from pipeline.core.spec import ModelSpec

# tf2onnx passes we keep. Its transpose optimizer is left out on purpose: the rewrite
# stage does the layout work, and tf2onnx's pass turns transposes into reshapes that hide
# the layout. TF2ONNX_CATCH_ERRORS (compared by name) stops the per-pass deep copies.
TF2ONNX_PASSES = ("fold_constants", "remove_identity", "remove_back_to_back")

_TF_NAME = re.compile(r"[^A-Za-z0-9_.\-/]")


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("TF2ONNX_CATCH_ERRORS", "FALSE")


def _custom_objects(settings: Settings, model: str) -> dict:
    objs = {}
    for entry in settings.custom_objects:
        mod, _, attr = entry.partition(":")
        try:
            objs[attr or mod.rsplit(".", 1)[-1]] = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError, ValueError) as e:
            raise PipelineError("export", f"cannot import custom object {entry!r}: {e}", model=model,
                                hint='custom_objects entries look like "my_pkg.layers:MyLayer" and must be importable') from e
    return objs


def load_model(spec: ModelSpec, settings: Settings):
    """The Keras (or tf.keras) model, or a SavedModel signature, named by ``spec``; with
    ``settings.calibrate_batchnorm``, its batch norms' statistics set from the reference
    inputs (the same every time: seeded)."""
    model = _load_model(spec, settings)
    if settings.calibrate_batchnorm and not isinstance(model, _SavedModelSignature):
        calibrate_batchnorm(model, reference_inputs(_input_specs(model, settings, spec.name), model, settings))
    return model


def calibrate_batchnorm(model, feeds: dict) -> int:
    """Set every BatchNormalization's moving mean and variance to the statistics of its input
    on ``feeds`` (one training-mode call with momentum 0); returns how many were set.

    For models with random weights (``weights=None``): batch norms then normalise as trained
    ones do, where their initial statistics (0, 1) let activations grow layer after layer
    until float32 rounding dominates the outputs (EfficientNetV2L's logits: 2e10, and Keras'
    own float32 result as far from the float64 one as the logits are large)."""
    import keras

    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    if not bns:
        return 0
    momenta = [l.momentum for l in bns]
    for l in bns:
        l.momentum = 0.0
    xs = list(feeds.values())
    try:
        model(xs if len(xs) > 1 else xs[0], training=True)
    finally:
        for l, m in zip(bns, momenta):
            l.momentum = m
    return len(bns)


def _load_model(spec: ModelSpec, settings: Settings):
    import keras

    keras.utils.set_random_seed(settings.seed)
    custom = _custom_objects(settings, spec.name)
    facts = modelfile.check(spec.kind, spec.target, spec.name) if spec.kind in ("keras", "h5") else {}
    try:
        if spec.kind == "zoo":
            app = getattr(keras.applications, spec.target, None)
            if app is None or not callable(app):
                raise PipelineError("export", f"keras.applications has no model {spec.target!r}", model=spec.name)
            kwargs = {"weights": None}
            shape = settings.input_shapes.get("*")
            if shape:
                kwargs["input_shape"] = tuple(shape)
            try:
                return app(classifier_activation=None, **kwargs)
            except TypeError:
                return app(**kwargs)
        if spec.kind == "builder":
            file, _, fn = spec.target.rpartition(":")
            mod_name = f"_pipeline_builder_{Path(file).stem}"
            module_spec = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            module_spec.loader.exec_module(module)
            builder = getattr(module, fn, None)
            if builder is None:
                raise PipelineError("export", f"{file} has no function {fn!r}", model=spec.name)
            model = builder()
            if not isinstance(model, keras.Model):
                raise PipelineError("export", f"builder {spec.target} returned {type(model).__name__}, not a keras.Model",
                                    model=spec.name)
            return model
        if spec.kind == "keras":
            return keras.saving.load_model(spec.target, custom_objects=custom or None,
                                           compile=False, safe_mode=not settings.unsafe)
        if spec.kind == "h5":
            import tf_keras
            from tf_keras.src.saving.serialization_lib import SafeModeScope

            # tf_keras' legacy .h5 loader runs Lambda bytecode unless safe mode is set explicitly
            with SafeModeScope(safe_mode=not settings.unsafe):
                return tf_keras.models.load_model(spec.target, custom_objects=custom or None, compile=False)
        if spec.kind == "savedmodel":
            import tensorflow as tf

            loaded = tf.saved_model.load(spec.target)
            sigs = dict(loaded.signatures)
            if not sigs:
                raise PipelineError("export", "the SavedModel has no signatures to convert", model=spec.name)
            key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
            return _SavedModelSignature(loaded, sigs[key], key)
    except PipelineError:
        raise
    except Exception as e:  # every loader raises its own types; wrap them with where and what
        message, hint = modelfile.explain(e, facts, "tf_keras" if spec.kind == "h5" else "keras")
        raise PipelineError("export", message, model=spec.name, hint=hint or _load_hint(e)) from e
    raise PipelineError("export", f"unknown model kind {spec.kind!r}", model=spec.name)


def _load_hint(e: Exception) -> str | None:
    text = str(e)
    if "Lambda" in text or "safe_mode" in text:
        return "the model holds serialized code (a Lambda layer); convert it only if you trust the file, with --unsafe"
    if "Unknown layer" in text or "Could not locate class" in text or "custom_objects" in text:
        return 'register the class: custom_objects = ["my_pkg.layers:MyLayer"] in the config, or --custom-object my_pkg.layers:MyLayer'
    return None


class _SavedModelSignature:
    """A SavedModel signature with the little interface export needs."""

    def __init__(self, loaded, fn, key):
        self.loaded, self.fn, self.key = loaded, fn, key
        _, kwargs = fn.structured_input_signature
        self.input_specs = OrderedDict(sorted(kwargs.items()))

    def __call__(self, *xs):
        return self.fn(**dict(zip(self.input_specs, xs)))


def _input_specs(model, settings: Settings, name: str):
    """[(name, shape with None batch, np dtype, keras input)] with unknown dims filled in."""
    import tensorflow as tf

    if isinstance(model, _SavedModelSignature):
        raw = [(k, list(s.shape), s.dtype.as_numpy_dtype) for k, s in model.input_specs.items()]
    else:
        raw = []
        for i, t in enumerate(model.inputs):
            tname = getattr(t, "name", None) or f"input_{i}"
            tname = tname.split(":")[0]
            dtype = tf.as_dtype(t.dtype).as_numpy_dtype
            raw.append((tname, list(t.shape), dtype))
    out, seen = [], set()
    for tname, shape, dtype in raw:
        tname = _TF_NAME.sub("_", tname) or "input"
        while tname in seen:
            tname += "_"
        seen.add(tname)
        override = settings.input_shapes.get(tname, settings.input_shapes.get("*"))
        dims = shape[1:]
        if override is not None:
            if len(override) != len(dims) or any(d is not None and d != o for d, o in zip(dims, override)):
                raise PipelineError("export", f"input shape {list(override)} given for input {tname!r} does not fit "
                                    f"the model's shape {['N', *[d if d is not None else '?' for d in dims]]}",
                                    model=name, layer=tname,
                                    hint="give the non-batch dimensions only, one per '?'")
            dims = list(override)
        if any(d is None for d in dims):
            raise PipelineError("export", f"input {tname!r} has unknown non-batch dimensions "
                                f"{['N', *[d if d is not None else '?' for d in dims]]}",
                                model=name, layer=tname,
                                hint=f"give them with --input-shape {tname}=... (or input_shapes in the config)")
        out.append((tname, [None, *dims], np.dtype(dtype)))
    return out


def _vocab_size(model) -> int:
    sizes = [getattr(l, "input_dim", None) for l in getattr(model, "layers", [])
             if type(l).__name__ == "Embedding"]
    sizes = [s for s in sizes if s]
    return min(sizes) if sizes else 10


def reference_inputs(specs, model, settings: Settings) -> dict:
    rng = np.random.default_rng(settings.seed)
    vocab = _vocab_size(model)
    feeds = {}
    for tname, shape, dtype in specs:
        full = (settings.batch, *shape[1:])
        if np.issubdtype(dtype, np.integer):
            feeds[tname] = rng.integers(0, vocab, size=full).astype(dtype)
        elif dtype == np.bool_:
            feeds[tname] = rng.integers(0, 2, size=full).astype(bool)
        else:
            feeds[tname] = rng.standard_normal(full).astype(dtype)
    return feeds


def _output_names(model, n: int) -> list[str]:
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != n:
        names = [f"output_{i}" for i in range(n)]
    out, seen = [], set()
    for nm in names:
        nm = _TF_NAME.sub("_", str(nm)).replace("/", "_") or "output"
        while nm in seen:
            nm += "_"
        seen.add(nm)
        out.append(nm)
    return out


def _flatten_outputs(result) -> list:
    if isinstance(result, dict):
        return [result[k] for k in result]
    if isinstance(result, (list, tuple)):
        return list(result)
    return [result]


def _numpy2_fix() -> None:
    """tf2onnx's large-model path calls ``np.product``, which numpy 2 removed."""
    if not hasattr(np, "product"):
        np.product = np.prod


# Constants at least this big that only feed MatMul's second input (Dense kernels) are held
# out of TF's grappler and tf2onnx as Placeholders and come back as ONNX initializers: both
# tools keep several copies of every constant (VGG16: 9 GB for 553 MB of weights).
HOLD_OUT_BYTES = 4 << 20


def tf2onnx_convert(fn, signature, opset: int, passes=TF2ONNX_PASSES, large_model: bool = True):
    """tf2onnx on a tf.function, running only ``passes`` of its optimizer.

    Returns ``(proto, external)``. With ``large_model`` (the default) tensors over 1 kB
    are left out of ``proto``: their bytes are in ``external`` (name -> bytes), for
    ``save_onnx``; the numbers are those of the plain path (same grappler folding).
    """
    if not large_model:
        return _tf2onnx_plain(fn, signature, opset, passes), {}
    return convert_frozen(freeze(fn, signature), opset, passes)


def _tf2onnx_plain(fn, signature, opset: int, passes):
    import tensorflow as tf
    from tf2onnx import optimizer as tf2onnx_optimizer
    from tf2onnx import tf_loader
    from tf2onnx.convert import _convert_common, tensor_names_from_structed

    with _xla_functions_inlined():
        concrete = fn.get_concrete_function(*signature)
    # the signature's placeholders only: tensors the function captures (Keras'
    # Normalization statistics, constants built with keras.ops) are frozen, not inputs
    inputs = [t.name for t in concrete.inputs[:len(signature)] if t.dtype != tf.dtypes.resource]
    outputs = [t.name for t in concrete.outputs if t.dtype != tf.dtypes.resource]
    renames = tensor_names_from_structed(concrete, inputs, outputs)
    optimizers = OrderedDict((k, v) for k, v in tf2onnx_optimizer._get_optimizers().items() if k in passes)
    with tf.device("/cpu:0"):
        frozen = tf_loader.from_function(concrete, inputs, outputs)
        proto, _ = _convert_common(frozen, name=concrete.name, continue_on_error=False, opset=opset,
                                   input_names=inputs, output_names=outputs, tensors_to_rename=renames,
                                   optimizers=optimizers)
    return proto


@contextlib.contextmanager
def _xla_functions_inlined():
    """While tracing for tf2onnx: ``tf.function(jit_compile=True)`` traces its body inline.

    Keras' TF backend runs grouped convolutions (ConvNeXt's depthwise 7x7) through an
    XLA-compiled inner function, which freezing keeps as an opaque StatefulPartitionedCall
    that tf2onnx cannot convert; inline, it is a plain Conv2D with groups. The trace must be
    a fresh one (a ``tf.function`` already traced keeps its cached graph)."""
    import tensorflow as tf

    original = tf.function

    def function(func=None, **kwargs):
        if kwargs.get("jit_compile"):
            return (lambda f: f) if func is None else func
        return original(func, **kwargs) if func is not None else original(**kwargs)

    tf.function = function
    try:
        yield
    finally:
        tf.function = original


def _erfc_as_erf(graph_def) -> int:
    """Each ``Erfc(x)`` (exact GELU in TF) becomes ``1 - Erf(x)``, which tf2onnx converts."""
    import tensorflow as tf

    found = [n for n in graph_def.node if n.op == "Erfc"]
    for n in found:
        dtype = tf.as_dtype(n.attr["T"].type).as_numpy_dtype
        erf, one = graph_def.node.add(), graph_def.node.add()
        erf.name, erf.op = f"{n.name}/erf", "Erf"
        erf.input.extend(n.input)
        erf.attr["T"].CopyFrom(n.attr["T"])
        one.name, one.op = f"{n.name}/one", "Const"
        one.attr["dtype"].type = n.attr["T"].type
        one.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.array(1, dtype)))
        n.op = "Sub"
        del n.input[:]
        n.input.extend([one.name, erf.name])
    return len(found)


def freeze(fn, signature) -> dict:
    """The function frozen by tf2onnx's large-model path, its big MatMul weights held out.

    After this the caller may drop the Keras model: the frozen graph and the held-out
    bytes are all that ``convert_frozen`` needs.
    """
    import tensorflow as tf
    from tf2onnx import tf_loader
    from tf2onnx.convert import tensor_names_from_structed

    _numpy2_fix()
    with _xla_functions_inlined():
        concrete = fn.get_concrete_function(*signature)
    # the signature's placeholders only: captured tensors are frozen, not inputs
    inputs = [t.name for t in concrete.inputs[:len(signature)] if t.dtype != tf.dtypes.resource]
    outputs = [t.name for t in concrete.outputs if t.dtype != tf.dtypes.resource]
    renames = tensor_names_from_structed(concrete, inputs, outputs)
    with tf.device("/cpu:0"):
        graph_def = tf_loader.from_function(concrete, inputs, outputs, large_model=True)
    _erfc_as_erf(graph_def)
    held = _hold_out(graph_def)
    return {"graph_def": graph_def, "held": held, "inputs": inputs, "outputs": outputs, "renames": renames,
            "name": concrete.name}


def _hold_out(graph_def, min_bytes: int | None = None) -> dict:
    """Turn big Consts read only by MatMul (input 1, maybe through Identity) into Placeholders.

    Returns ``{name: (tf dtype enum, shape, bytes)}``. MatMul is the one consumer where
    grappler folds nothing into the weight, so holding it out leaves every number as it was.
    """
    min_bytes = HOLD_OUT_BYTES if min_bytes is None else min_bytes
    consumers: dict[str, list] = {}
    for node in graph_def.node:
        for i, inp in enumerate(node.input):
            if not inp.startswith("^"):   # control edges carry no data
                consumers.setdefault(inp.split(":")[0], []).append((node, i))

    def matmul_only(name: str) -> bool:
        uses = consumers.get(name, [])
        return bool(uses) and all((n.op == "MatMul" and i == 1 and not n.attr["transpose_b"].b)
                                  or (n.op == "Identity" and matmul_only(n.name)) for n, i in uses)

    held = {}
    for node in graph_def.node:
        if node.op != "Const" or len(node.attr["value"].tensor.tensor_content) < min_bytes:
            continue
        if not matmul_only(node.name):
            continue
        t = node.attr["value"].tensor
        held[node.name] = (node.attr["dtype"].type, [d.size for d in t.tensor_shape.dim], t.tensor_content)
        shape = t.tensor_shape.__deepcopy__()
        dtype = node.attr["dtype"].type
        node.ClearField("attr")
        node.op = "Placeholder"
        node.attr["shape"].shape.CopyFrom(shape)
        node.attr["dtype"].type = dtype
    return held


def convert_frozen(frozen: dict, opset: int, passes=TF2ONNX_PASSES):
    """grappler (as plain tf2onnx runs it) and tf2onnx on ``freeze``'s result; held weights
    come back as initializers. Returns ``(proto, external)`` as ``tf2onnx_convert``."""
    import tensorflow as tf
    from onnx import TensorProto, helper
    from tf2onnx import optimizer as tf2onnx_optimizer
    from tf2onnx.convert import _convert_common

    held = frozen.pop("held")
    held_inputs = [f"{n}:0" for n in held]
    inputs = frozen["inputs"] + held_inputs
    optimizers = OrderedDict((k, v) for k, v in tf2onnx_optimizer._get_optimizers().items() if k in passes)
    with tf.device("/cpu:0"):
        graph_def = _grappler(frozen.pop("graph_def"), inputs, frozen["outputs"])
        proto, storage = _convert_common(graph_def, name=frozen["name"], continue_on_error=False, opset=opset,
                                         input_names=inputs, output_names=frozen["outputs"],
                                         tensors_to_rename=frozen["renames"], optimizers=optimizers,
                                         large_model=True)
    del graph_def
    external = storage.name_to_tensor_data
    graph_inputs = {i.name: i for i in proto.graph.input}
    for name, (dtype, shape, data) in held.items():
        value = graph_inputs.get(f"{name}:0")
        if value is None:
            raise PipelineError("export", f"held-out weight {name!r} is not an input of tf2onnx's graph",
                                layer=name)
        proto.graph.input.remove(value)
        key = f"held:{name}"
        tensor = TensorProto(name=value.name, dims=shape,
                             data_type=helper.np_dtype_to_tensor_dtype(np.dtype(tf.as_dtype(dtype).as_numpy_dtype)),
                             data_location=TensorProto.EXTERNAL)
        e = tensor.external_data.add()
        e.key, e.value = "location", key
        proto.graph.initializer.append(tensor)
        external[key] = data
    return proto, external


def _check_converted(proto, model_name: str, layers: list[dict]) -> None:
    """tf2onnx leaves a TF op it has no converter for in the graph, as is: name the first."""
    import onnx

    def nodes(g):
        for n in g.node:
            yield n
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from nodes(sub)

    bad = [n for n in nodes(proto.graph) if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if bad:
        n = bad[0]
        layer = layer_in_scope(n.name, {l["name"] for l in layers})
        raise PipelineError("export", f"tf2onnx has no converter for TensorFlow op {n.op_type!r} (node {n.name!r}); "
                            f"{len(bad)} such node(s): {sorted({b.op_type for b in bad})}", model=model_name,
                            layer=layer, op_type=n.op_type, kind="unsupported-op",
                            hint="rewrite the layer with supported ops, or report the op")


def _grappler(graph_def, inputs, outputs):
    """TF's grappler, as plain tf2onnx runs it, on a graph frozen by the large-model path.

    The same grappler passes (so the same folded numbers) as ``from_function`` without
    ``large_model``, which skips them and leaves e.g. batch-norm scales unfolded.
    """
    import tensorflow as tf
    from tf2onnx import tf_loader

    with tf.Graph().as_default():
        return tf_loader.tf_optimize(inputs, outputs, graph_def)


def _external_tensors(proto):
    """Every TensorProto of ``proto`` (initializers, Constant values, subgraphs) stored externally."""
    from onnx import TensorProto

    def graph_tensors(g):
        yield from g.initializer
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from graph_tensors(a.g)
                for sub in a.graphs:
                    yield from graph_tensors(sub)

    return [t for t in graph_tensors(proto.graph) if t.data_location == TensorProto.EXTERNAL]


def save_onnx(proto, external: dict, path: Path) -> None:
    """Write ``path`` and, when there are external tensors, ``path`` + ``.data`` beside it.

    The data file holds every external tensor once, 16-byte aligned; each tensor points
    at it by a bare file name (so the pair stays loadable wherever the folder moves).
    """
    import onnx

    tensors = _external_tensors(proto)
    if not tensors:
        onnx.save(proto, path)
        return
    data_name = path.name + ".data"
    with open(path.parent / data_name, "wb") as f:
        for t in tensors:
            entries = {e.key: e.value for e in t.external_data}
            blob = external.pop(entries["location"])
            pad = -f.tell() % 16
            f.write(b"\0" * pad)
            offset = f.tell()
            f.write(blob)
            del t.external_data[:]
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(blob)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            del blob
    onnx.save(proto, path)


def run(spec: ModelSpec, settings: Settings, out: Path, per_layer: bool = False) -> dict:
    """Run the export stage; returns its stage record. ``per_layer`` also writes
    ``layers.npz``/``layers.json`` (each Keras layer's output, for ``debug``)."""
    _quiet_tf()
    clock = StageClock()
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    mdir = ModelDir.of(out, spec.name)
    model = load_model(spec, settings)
    specs = _input_specs(model, settings, spec.name)
    signature = [tf.TensorSpec(shape, tf.as_dtype(dtype), name=n) for n, shape, dtype in specs]

    if isinstance(model, _SavedModelSignature):
        probe = model(*[tf.zeros([1, *s[1:]], d) for _, s, d in specs])
        out_names = [_TF_NAME.sub("_", k) for k in probe]

        def call(*xs):
            res = model(*xs)
            return {n: res[k] for n, k in zip(out_names, res)}
    else:
        n_out = len(model.outputs) if getattr(model, "outputs", None) is not None else 1
        out_names = _output_names(model, n_out)

        def call(*xs):
            res = _flatten_outputs(model(list(xs) if len(xs) > 1 else xs[0], training=False))
            return dict(zip(out_names, res))

    fn = tf.function(call, input_signature=signature, autograph=False)
    feeds = reference_inputs(specs, model, settings)
    try:
        ref = fn(*[tf.constant(feeds[n]) for n, _, _ in specs])
    except Exception as e:
        raise PipelineError("export", f"Keras cannot run the model on reference inputs: {type(e).__name__}: {e}",
                            model=spec.name) from e
    ref = {k: np.asarray(v) for k, v in ref.items()}
    bad = [k for k, v in ref.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]
    if bad:
        raise PipelineError("export", f"Keras' own outputs {bad} contain NaN or inf on the seeded reference inputs; "
                            "this is the model, not the conversion", model=spec.name, kind="keras-nonfinite",
                            hint="check the model's weights, or change seed in the config")
    try:   # a fresh trace for tf2onnx (see _xla_functions_inlined); ``fn`` ran the reference
        frozen = freeze(tf.function(call, input_signature=signature, autograph=False), signature)
        layers = _layers(model)
        params = int(model.count_params()) if hasattr(model, "count_params") else None
        if not per_layer and not _may_unroll(model):
            model = None   # the Keras weights are no longer needed: the frozen graph has them
            gc.collect()
        proto, external = convert_frozen(frozen, settings.opset)
        del frozen
    except Exception as e:
        raise PipelineError("export", f"tf2onnx failed: {type(e).__name__}: {e}", model=spec.name) from e
    _check_converted(proto, spec.name, layers)
    unrolled = _unroll_if_loop(proto, model)
    if unrolled:   # recurrent layers came out as an ONNX Loop: convert them unrolled (see recurrent.py)
        model, rnn_names = unrolled
        fn = tf.function(call, input_signature=signature, autograph=False)   # ``call`` now sees the copy
        try:
            proto, external = tf2onnx_convert(fn, signature, settings.opset)
        except Exception as e:
            raise PipelineError("export", f"tf2onnx failed on the unrolled recurrent layers {rnn_names}: "
                                f"{type(e).__name__}: {e}", model=spec.name) from e

    onnx_outputs = [o.name for o in proto.graph.output]
    if sorted(onnx_outputs) != sorted(ref):
        raise PipelineError("export", f"ONNX outputs {onnx_outputs} do not match Keras outputs {list(ref)}",
                            model=spec.name)
    meta = {
        "model": spec.name,
        "spec": spec.to_json(),
        "settings": settings.to_json(),
        "inputs": [{"name": n, "shape": s, "dtype": str(d)} for n, s, d in specs],
        "outputs": [{"name": k, "shape": [None, *ref[k].shape[1:]], "dtype": str(ref[k].dtype)} for k in onnx_outputs],
        "keras_layers": layers,
        "params": params,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
                     "onnx": onnx.__version__, "numpy": np.__version__},
        "tf2onnx_passes": list(TF2ONNX_PASSES),
        "tf2onnx_large_model": True,
        "unrolled_recurrent": unrolled[1] if unrolled else [],
    }
    with atomic_dir(mdir.stage("export")) as d:
        save_onnx(proto, external, d / "raw.onnx")
        del proto, external
        np.savez(d / "reference.npz", **{f"input:{k}": v for k, v in feeds.items()},
                 **{f"output:{k}": v for k, v in ref.items()})
        record = {"stage": "export", **clock.record()}
        meta["stage"] = record
        write_json(d / "meta.json", meta)
        if per_layer and not isinstance(model, _SavedModelSignature):
            _write_layers(model, d, [feeds[n] for n, _, _ in specs], spec.name, clock)
    return record


def _may_unroll(model) -> bool:
    """Whether the model has recurrent layers (that tf2onnx may write as a Loop)."""
    from pipeline.stages.export import recurrent

    return not isinstance(model, _SavedModelSignature) and bool(recurrent.recurrent_layers(model))


def _unroll_if_loop(proto, model):
    """(an unrolled copy of ``model``, its recurrent layers) when tf2onnx wrote a Loop."""
    from pipeline.stages.export import recurrent

    if model is None or isinstance(model, _SavedModelSignature) or not any(n.op_type == "Loop" for n in proto.graph.node):
        return None
    names = recurrent.recurrent_layers(model)
    return (recurrent.unrolled(model), names) if names else None


def _layers(model) -> list[dict]:
    return [{"name": l.name, "class": type(l).__name__} for l in getattr(model, "layers", [])]


def layer_outputs(model, feeds: list) -> tuple[dict, list[dict]]:
    """Each top-level Keras layer's output on ``feeds`` ({name: array}) and one entry per layer.

    InputLayers are skipped; a layer with several outputs gives its first; a layer used at
    several places in the graph (shared) has no single output and is listed as skipped.
    """
    if isinstance(model, _SavedModelSignature) or not getattr(model, "layers", None):
        return {}, []
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as kmod
    else:
        import keras as kmod
    picked, entries = [], []
    for layer in model.layers:
        entry = {"name": layer.name, "class": type(layer).__name__}
        entries.append(entry)
        if entry["class"] == "InputLayer":
            entry["skipped"] = "input"
            continue
        try:
            out = layer.output
        except (AttributeError, ValueError, RuntimeError) as e:  # shared or never-called layers
            entry["skipped"] = f"no single output: {e}"
            continue
        while isinstance(out, (list, tuple, dict)):
            out = list(out.values())[0] if isinstance(out, dict) else out[0]
        picked.append((entry, out))
    if not picked:
        return {}, entries
    probe = kmod.Model(model.inputs, [o for _, o in picked])
    res = probe(list(feeds), training=False)
    res = res if isinstance(res, (list, tuple)) else [res]
    values = {}
    for (entry, _), v in zip(picked, res):
        v = np.asarray(v)
        values[entry["name"]] = v
        entry["shape"], entry["dtype"] = list(v.shape), str(v.dtype)
    return values, entries


def record_layers(spec: ModelSpec, settings: Settings, out: Path) -> dict:
    """Write ``export/layers.npz`` (``layer:<name>``) and ``export/layers.json`` for the
    reference inputs of a finished export stage; the other export files are left as they are."""
    _quiet_tf()
    clock = StageClock()
    mdir = ModelDir.of(out, spec.name)
    exp = mdir.require("export", "reference.npz", "meta.json")
    from pipeline.core.artifacts import read_json
    from pipeline.core.reference import load_reference

    meta = read_json(exp / "meta.json")
    inputs, _ = load_reference(exp / "reference.npz")
    model = load_model(spec, settings)
    return _write_layers(model, exp, [inputs[i["name"]] for i in meta["inputs"]], spec.name, clock)


def _write_layers(model, exp: Path, feeds: list, name: str, clock: StageClock) -> dict:
    try:
        values, entries = layer_outputs(model, feeds)
    except Exception as e:  # Keras raises many types while rebuilding or running the probe model
        raise PipelineError("export", f"cannot record the Keras layers' outputs: {type(e).__name__}: {e}",
                            model=name) from e
    if not entries:
        raise PipelineError("export", "the model has no Keras layers to record (a SavedModel signature?)",
                            model=name, hint="per-layer debugging needs a .keras/.h5 file, a builder or a zoo model")
    with atomic_file(exp / "layers.npz") as tmp:
        np.savez(tmp, **{f"layer:{k}": v for k, v in values.items()})
    record = {"stage": "export-layers", **clock.record()}
    write_json(exp / "layers.json", {"layers": entries, "stage": record})
    return record
