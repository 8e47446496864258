"""The model's interface at export: input specs (unknown dimensions filled in from the
settings), the seeded reference inputs, and the output names of ``raw.onnx``. Not to be
confused with ``pipeline.core.reference``, which reads ``reference.npz`` back.
"""

from __future__ import annotations


import numpy as np

from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.reference import TF_NAME, output_names  # noqa: F401  (export's names, shared with the Keras runner)
from pipeline.stages.export.savedmodel import SavedModelSignature



def input_specs(model, settings: Settings, name: str):
    """[(name, shape with None batch, np dtype, keras input)] with unknown dims filled in."""
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
    """{input name: seeded batch}: integers below the smallest Embedding's vocabulary, booleans,
    else standard normal floats."""
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
