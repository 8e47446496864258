"""The model's interface at export: input specs (unknown dimensions filled in from the
settings), the seeded reference inputs, and the output names of ``raw.onnx``. Not to be
confused with ``pipeline.core.reference``, which reads ``reference.npz`` back.
"""

from __future__ import annotations

import re

import numpy as np

from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.reference import TF_NAME, draw_inputs, output_names  # noqa: F401  (output_names: export's, shared with the Keras runner)
from pipeline.stages.export.savedmodel import SavedModelSignature



# reference sizes of free dimensions (None in Keras, not fixed by --input-shape): a sequence
# axis (rank <= 3 inputs) gets SEQ_REF, a spatial axis of an image/volume SPATIAL_REF (a
# multiple of 32: five stride-2 steps and back through UpSampling meet again)
SEQ_REF = 16
SPATIAL_REF = 32


def input_specs(model, settings: Settings, name: str):
    """[(name, shape, np dtype)]: the batch dim None, dims ``--input-shape`` fixes filled in,
    the other dims Keras leaves None stay None (free: the signature keeps them symbolic)."""
    import tensorflow as tf

    if isinstance(model, SavedModelSignature):
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
        tname = TF_NAME.sub("_", tname) or "input"
        while tname in seen:
            tname += "_"
        seen.add(tname)
        dims = shape[1:]
        override = settings.input_shapes.get(tname, settings.input_shapes.get("*"))
        if override is not None:
            dims = fitted(override, dims, tname, name, "input shape", "--input-shape")
        out.append((tname, [None, *dims], np.dtype(dtype)))
    return out


def fitted(given, dims: list, tname: str, model: str, what: str, flag: str) -> list:
    """``given`` (non-batch dims) checked against the model's ``dims`` (None: unknown)."""
    if len(given) != len(dims) or any(d is not None and d != o for d, o in zip(dims, given)) \
            or any(int(o) < 1 for o in given):
        raise PipelineError("export", f"{what} {list(given)} given for input {tname!r} does not fit "
                            f"the model's shape {['N', *[d if d is not None else '?' for d in dims]]}",
                            model=model, layer=tname,
                            hint=f"give the non-batch dimensions only, one per '?' ({flag})")
    return [int(o) for o in given]


def default_size(rank: int) -> int:
    """The reference size of a free dimension of a rank-``rank`` input (batch included)."""
    return SPATIAL_REF if rank >= 4 else SEQ_REF


def free_dims(shape: list) -> list[int]:
    """The free (None) non-batch axes of a signature shape."""
    return [i for i, d in enumerate(shape) if i > 0 and d is None]


def reference_shapes(specs, settings: Settings, name: str) -> dict:
    """{input name: full shape with None batch} at which the reference inputs are drawn: the
    signature's static dims, free dims at ``reference_shapes`` (``--reference-shape``) or the
    default size (``default_size``)."""
    out = {}
    for tname, shape, _ in specs:
        given = settings.reference_shapes.get(tname, settings.reference_shapes.get("*"))
        if given is not None:
            dims = fitted(given, shape[1:], tname, name, "reference shape", "--reference-shape")
        else:
            dims = [default_size(len(shape)) if d is None else d for d in shape[1:]]
        out[tname] = [None, *dims]
    return out


def _is_embedding(layer) -> bool:
    """An Embedding or a subclass of one (keras_hub's ``ReversibleEmbedding``)."""
    return any(c.__name__ == "Embedding" for c in type(layer).__mro__)


def vocab_size(model) -> int:
    sizes = [getattr(l, "input_dim", None) for l in getattr(model, "layers", []) if _is_embedding(l)]
    sizes = [s for s in sizes if s]
    return min(sizes) if sizes else 10


def layer_range(layer) -> tuple[int, int] | None:
    """``[lo, hi)``: the integers ``layer`` can take as input (an Embedding's or a subclass'
    ``input_dim``, a CategoryEncoding's ``num_tokens``, the span of an IntegerLookup's
    vocabulary), else None."""
    kind = type(layer).__name__
    if _is_embedding(layer) and getattr(layer, "input_dim", None):
        return 0, int(layer.input_dim)
    if kind == "CategoryEncoding" and getattr(layer, "num_tokens", None):
        return 0, int(layer.num_tokens)
    if kind == "IntegerLookup" and not getattr(layer, "invert", False):
        try:
            vocab = [int(v) for v in np.asarray(layer.get_vocabulary(include_special_tokens=False)).reshape(-1)]
        except Exception:   # noqa: BLE001  (a lookup without a vocabulary yet)
            vocab = []
        return (min(vocab), max(vocab) + 1) if vocab else None
    return None


def _fed_by(model, k: int) -> list:
    """The layers that read model input ``k`` directly."""
    inputs = list(getattr(model, "inputs", None) or []) if not isinstance(model, SavedModelSignature) else []
    out = []
    for layer in getattr(model, "layers", []) if k < len(inputs) else []:
        for node in getattr(layer, "_inbound_nodes", []):
            if any(t is inputs[k] for t in getattr(node, "input_tensors", [])) and layer not in out:
                out.append(layer)
    return out


def check_no_string_inputs(specs, model, name: str) -> None:
    """A string input has no torch tensor (and tf2onnx cannot export the lookup tables that read
    strings): stop naming the input and the layer that reads it (a StringLookup, a
    TextVectorization), with what to do instead."""
    for k, (tname, _, dtype) in enumerate(specs):
        if np.dtype(dtype).kind not in "OSU":
            continue
        readers = [l for l in _fed_by(model, k) if type(l).__name__ != "InputLayer"]
        said = ", ".join(f"{l.name!r} ({type(l).__name__})" for l in readers) or "no layer found"
        raise PipelineError("export", f"input {tname!r} takes strings, which have no torch tensor (read by {said}); "
                            "a port can only take numbers", model=name,
                            layer=readers[0].name if readers else tname, kind="string-input",
                            hint="keep the lookup outside the model: map the strings to integers before it "
                                 "(e.g. the StringLookup in a tf.data pipeline or a Python dict) and convert the "
                                 "model from the lookup's integer output on")


def input_ranges(specs, model, settings: Settings) -> dict:
    """{integer input: [lo, hi)}: ``--input-range``/``input_ranges`` where given, else the
    range of the layers the input feeds directly (the narrowest), else ``[0, 2)`` for a mask
    (an input named ``*mask*``: keras_hub's ``padding_mask``), else ``[0, vocab_size)``."""
    given = {k: [int(v) for v in r] for k, r in settings.input_ranges.items()}
    default = given.get("*", [0, vocab_size(model)])
    feeds: dict[int, list] = {}
    inputs = list(getattr(model, "inputs", None) or []) if not isinstance(model, SavedModelSignature) else []
    for layer in getattr(model, "layers", []) if inputs else []:
        r = layer_range(layer)
        for node in getattr(layer, "_inbound_nodes", []) if r else []:
            for t in getattr(node, "input_tensors", []):
                k = next((k for k, i in enumerate(inputs) if i is t), None)
                if k is not None:
                    feeds.setdefault(k, []).append(r)
    out = {}
    for k, (tname, _, dtype) in enumerate(specs):
        if not np.issubdtype(dtype, np.integer):
            continue
        if tname in given:
            out[tname] = given[tname]
        elif k in feeds:
            out[tname] = [max(r[0] for r in feeds[k]), min(r[1] for r in feeds[k])]
        elif "*" not in given and "mask" in tname.lower():
            out[tname] = [0, 2]
        else:
            out[tname] = default
        if out[tname][1] <= out[tname][0]:
            raise PipelineError("export", f"integer input {tname!r}: empty range {out[tname]} to draw from",
                                hint="give one with --input-range name=lo:hi (hi exclusive)")
    return out


def reference_inputs(specs, model, settings: Settings, shapes: dict | None = None) -> dict:
    """{input name: seeded batch}: integers in the range the model can index (``input_ranges``),
    booleans, else standard normal floats; at ``shapes`` ({name: shape}, default: ``reference_shapes``)."""
    ranges = input_ranges(specs, model, settings)
    shapes = shapes or reference_shapes(specs, settings, "")
    return draw_inputs([(n, shapes[n], d) for n, _, d in specs], ranges, settings.seed, settings.batch)


def fixed_dims(specs, shapes: dict, by: str, exc: BaseException, layers: list[dict]) -> dict:
    """{input name: [{dim, size, by, reason, layer}]}: the free dims of ``specs`` fixed at their
    reference size (``shapes``) because ``by`` (Keras, tf2onnx) failed with ``exc`` on the
    symbolic signature; ``layer``: the Keras layer the message names, where it names one."""
    text = f"{type(exc).__name__}: {exc}"
    reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    named = [l["name"] for l in layers if re.search(rf"(?<![\w]){re.escape(l['name'])}(?![\w])", text)]
    layer = max(named, key=len) if named else None
    return {n: [{"dim": i, "size": shapes[n][i], "by": by, "reason": f"{type(exc).__name__}: {reason}"[:500],
                 "layer": layer} for i in free_dims(s)] for n, s, _ in specs if free_dims(s)}
