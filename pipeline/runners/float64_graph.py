"""A SavedModel signature recomputed in float64: the float64 twin of ``keras_tf`` for
models that have no Keras config (TensorFlow worker process only).

``float64_signature(fn)`` freezes the signature's concrete function (its variables become
constants, ``convert_variables_to_constants_v2``, as tf2onnx does) and rewrites the
GraphDef: every float32 type attribute (``T``, ``dtype``, ``Tout``, placeholders, function
signatures) becomes float64 and every float32 constant is cast, so the graph computes in
float64 with the SavedModel's own weights. Inference-mode ``FusedBatchNorm*``, which has
no float64 kernel, is first written out as ``x * a + b`` (``a = scale / sqrt(var + eps)``,
``b = offset - mean * a``). The same rewrite with ``dtype="float32"`` keeps the types, so
the worker can check that the rewritten graph still gives Keras' recorded outputs before
it trusts the float64 one. An op without a float64 kernel or signature (``ResizeBilinear``
always returns float32, a training-mode batch norm) is ``Unavailable``, naming the op.
"""

from __future__ import annotations

import numpy as np

FUSED_BN = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")


class Unavailable(ValueError):
    """The graph cannot be recomputed in float64; the message says why."""


def _retype(node, float_, double) -> None:
    """Every float32 type attribute and constant of ``node`` made float64, in place."""
    import tensorflow as tf

    for a in node.attr.values():
        if a.type == float_:
            a.type = double
        if a.list.type:
            a.list.type[:] = [double if t == float_ else t for t in a.list.type]
        if a.HasField("tensor") and a.tensor.dtype == float_:
            a.tensor.CopyFrom(tf.make_tensor_proto(tf.make_ndarray(a.tensor).astype(np.float64)))


def _unfuse_batch_norm(node) -> list:
    """``node`` (an inference-mode FusedBatchNorm*) as elementwise ops: the last one takes
    its name, so its consumers (``name`` / ``name:0``) read ``x * a + b``."""
    import tensorflow as tf
    from tensorflow.core.framework import attr_value_pb2, node_def_pb2

    if node.attr["is_training"].b:
        raise Unavailable(f"node {node.name!r} ({node.op}) is a training-mode batch norm")
    x, scale, offset, mean, var = node.input[:5]
    n, fmt = node.name, node.attr["data_format"].s.decode() or "NHWC"
    t = node.attr["T"]                                   # x and y
    u = node.attr["U"] if "U" in node.attr else t        # scale, offset, mean, variance

    def op(name, kind, inputs, **attrs):
        d = node_def_pb2.NodeDef(name=name, op=kind, input=inputs, device=node.device)
        for k, v in attrs.items():
            d.attr[k].CopyFrom(v)
        return d

    def const(name, arr):
        return op(name, "Const", [], dtype=attr_value_pb2.AttrValue(type=tf.as_dtype(arr.dtype).as_datatype_enum),
                  value=attr_value_pb2.AttrValue(tensor=tf.make_tensor_proto(arr)))

    eps = np.asarray(node.attr["epsilon"].f, dtype=tf.as_dtype(u.type).as_numpy_dtype)
    out = [const(f"{n}/unfused/eps", eps),
           op(f"{n}/unfused/var_eps", "AddV2", [var, f"{n}/unfused/eps"], T=u),
           op(f"{n}/unfused/rsqrt", "Rsqrt", [f"{n}/unfused/var_eps"], T=u),
           op(f"{n}/unfused/a", "Mul", [scale, f"{n}/unfused/rsqrt"], T=u),
           op(f"{n}/unfused/mean_a", "Mul", [mean, f"{n}/unfused/a"], T=u),
           op(f"{n}/unfused/b", "Sub", [offset, f"{n}/unfused/mean_a"], T=u)]
    a, b = f"{n}/unfused/a", f"{n}/unfused/b"
    if fmt.startswith("NC"):   # channels first: a and b broadcast over the spatial axes
        out.append(const(f"{n}/unfused/shape", np.array([-1] + [1] * (len(fmt) - 2), np.int32)))
        i32 = attr_value_pb2.AttrValue(type=tf.int32.as_datatype_enum)
        out += [op(f"{a}_c", "Reshape", [a, f"{n}/unfused/shape"], T=u, Tshape=i32),
                op(f"{b}_c", "Reshape", [b, f"{n}/unfused/shape"], T=u, Tshape=i32)]
        a, b = f"{a}_c", f"{b}_c"
    # T != U (a float16 batch norm) leaves a type mismatch that the import reports: Unavailable
    out += [op(f"{n}/unfused/xa", "Mul", [x, a], T=t), op(n, "AddV2", [f"{n}/unfused/xa", b], T=t)]
    out[-1].input.extend(i for i in node.input[5:] if i.startswith("^"))   # control inputs stay with the name
    return out


def rewrite(graph_def, dtype: str = "float64"):
    """A copy of the frozen ``graph_def`` with batch norms unfused and, for "float64", every
    float32 type and constant made float64."""
    from tensorflow.core.framework import graph_pb2, types_pb2

    float_, double = types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(graph_def)
    for fn in gd.library.function:
        if any(n.op in FUSED_BN for n in fn.node_def):
            raise Unavailable(f"function {fn.signature.name!r} holds a fused batch norm (not rewritten inside functions)")
    fused = {n.name for n in gd.node if n.op in FUSED_BN}
    for consumer in gd.node:
        for i in consumer.input:
            src, _, port = i.partition(":")
            if src in fused and port not in ("", "0"):
                raise Unavailable(f"node {consumer.name!r} reads a batch norm's statistics output {i!r}")
    nodes = []
    for n in gd.node:
        nodes += _unfuse_batch_norm(n) if n.op in FUSED_BN else [n]
    del gd.node[:]
    gd.node.extend(nodes)
    if dtype == "float64":
        for n in gd.node:
            _retype(n, float_, double)
        for fn in gd.library.function:
            for n in fn.node_def:
                _retype(n, float_, double)
            for arg in [*fn.signature.input_arg, *fn.signature.output_arg]:
                if arg.type == float_:
                    arg.type = double
    return gd


class GraphSignature:
    """A frozen, rewritten signature: called like ``SavedModelSignature`` (positional inputs
    in ``input_specs`` order), it returns a dict by the signature's output names;
    ``input_dtypes``: what its inputs take (float64 for the twin)."""

    def __init__(self, signature, dtype: str = "float64"):
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        fn = signature.fn
        frozen = convert_variables_to_constants_v2(fn)
        gd = rewrite(frozen.graph.as_graph_def(), dtype)
        # the flat inputs are the signature's keyword arguments in sorted order, as input_specs
        ins = [t.name for t in frozen.inputs[:len(signature.input_specs)]]
        self._keys = sorted(fn.structured_outputs)   # a dict, flattened in sorted key order
        outs = [t.name for t in frozen.outputs]

        def imported():
            tf.graph_util.import_graph_def(gd, name="")

        try:
            wrapped = tf.compat.v1.wrap_function(imported, [])
            self.fn = wrapped.prune([wrapped.graph.get_tensor_by_name(n) for n in ins],
                                    [wrapped.graph.get_tensor_by_name(n) for n in outs])
        except (ValueError, TypeError, tf.errors.OpError) as e:   # an op without a float64 kernel or signature
            raise Unavailable(f"the SavedModel's graph cannot be rebuilt in {dtype}: "
                              f"{str(e).strip().splitlines()[0]}") from e
        self.input_specs = signature.input_specs
        self.input_dtypes = [np.dtype(dtype) if s.dtype.is_floating else None for s in self.input_specs.values()]

    def __call__(self, *xs):
        res = self.fn(*xs)
        return dict(zip(self._keys, res))
