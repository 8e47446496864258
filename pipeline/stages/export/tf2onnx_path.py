"""tf2onnx, the large-model way: the traced function frozen with big Dense kernels held out
of grappler and tf2onnx (both keep several copies of every constant), converted with only
the optimizer passes we want, checked for TF ops left unconverted, and saved with its
tensors in one ``.data`` file beside the model. TensorFlow process only.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.names import layer_in_scope

# tf2onnx passes we keep. Its transpose optimizer is left out on purpose: the rewrite
# stage does the layout work, and tf2onnx's pass turns transposes into reshapes that hide
# the layout. TF2ONNX_CATCH_ERRORS (compared by name) stops the per-pass deep copies.
TF2ONNX_PASSES = ("fold_constants", "remove_identity", "remove_back_to_back")

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


def check_converted(proto, model_name: str, layers: list[dict]) -> None:
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



_TABLE_OPS = ("LookupTableFind", "HashTable", "LookupTableImport", "StringToHashBucket", "MutableHashTable")


def failure_layer(exc: BaseException, layers: list[dict]) -> dict:
    """``layer``/``op_type`` (and a hint) for a tf2onnx failure whose message names a TF node
    (``model_1/lookup_1/None_Lookup/LookupTableFindV2``): the Keras layer of that node; a
    lookup or hash table op (StringLookup, IntegerLookup, Hashing) gets a hint of its own."""
    import re

    names = {l["name"] for l in layers}
    for token in re.findall(r"[\w.\-]+(?:/[\w.\-]+)+", str(exc)):
        layer = layer_in_scope(token, names)
        if layer:
            op = token.rsplit("/", 1)[-1]
            out = {"layer": layer, "op_type": op}
            if any(t in token for t in _TABLE_OPS):
                out["hint"] = ("tf2onnx cannot export TensorFlow's lookup tables: apply the lookup to the data "
                               "before the model (e.g. in a tf.data pipeline) and feed its integer output")
            return out
    return {}
