"""A TensorFlow SavedModel, exported through one of its signatures. TensorFlow process only."""

from __future__ import annotations

from collections import OrderedDict

from pipeline.core.errors import PipelineError
from pipeline.core.spec import ModelSpec


class SavedModelSignature:
    """A SavedModel signature with the little interface export needs: ``input_specs`` (by
    name, sorted) and a call on positional inputs that returns the signature's dict."""

    def __init__(self, loaded, fn, key):
        self.loaded, self.fn, self.key = loaded, fn, key
        _, kwargs = fn.structured_input_signature
        self.input_specs = OrderedDict(sorted(kwargs.items()))

    def __call__(self, *xs):
        return self.fn(**dict(zip(self.input_specs, xs)))


def load_signature(spec: ModelSpec) -> SavedModelSignature:
    """``serving_default``, else the first signature by name."""
    import tensorflow as tf

    loaded = tf.saved_model.load(spec.target)
    sigs = dict(loaded.signatures)
    if not sigs:
        raise PipelineError("export", "the SavedModel has no signatures to convert", model=spec.name)
    key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
    return SavedModelSignature(loaded, sigs[key], key)
