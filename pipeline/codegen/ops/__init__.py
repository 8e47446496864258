"""The converters, one module per op family, keyed by ONNX op type and opset range.

A converter is a function ``(gen, node) -> None`` marked ``@handles("Op", opsets=(lo, hi))``
(``pipeline.core.registry``). It reads its one node (inputs from ``gen.values``: constants,
shape values or tensors) and writes code for it with ``gen.emit``/``gen.submodule``, or
stores a constant/shape value; it never looks at other nodes' code or marks them done
(fusions are graph rules in the rewrite). Behaviour that changed between opsets is a
second registration with its own range, not a branch on the opset. It raises
``Unsupported`` (the message says why) for a form torch cannot express.

``CONVERTERS`` is built from ``FAMILIES`` explicitly; an overlapping registration fails at
import.
"""

from pipeline.codegen.ops import (conv, elementwise, indexing, keras_conv_lstm, keras_recurrent, keras_trainable, linear,
                                  norm, pool, randomness, recurrent, reduce, resize, shape)
from pipeline.core.registry import Registry

FAMILIES = [elementwise, shape, indexing, reduce, conv, linear, pool, resize, recurrent, keras_recurrent, keras_conv_lstm,
            keras_trainable, norm, randomness]
CONVERTERS = Registry.collect("converter", FAMILIES)
