"""Layout rules, one module per op family, keyed by ONNX op type and opset range.

A rule moves a ``Transpose`` that feeds a node to the node's outputs, remapping the
node's axes, so that the node runs on the un-transposed (channels-first) data:

    Op(Transpose(x, P), ...)  ==>  Transpose(Op'(x, ...), Q)

A rule gets ``(ctx, node)``, finds the transposed inputs with ``ctx.perm``, and either
rewrites the graph and returns ``True``, or returns a ``Fail`` saying why it cannot
(without touching the graph). An op with no rule is a barrier: the Transpose stays in
front of it, which keeps the result correct. Nodes of a custom domain (the export stage's
``ai.keras2torch`` layers) are keyed ``"<domain>::<op type>"``.
"""

from pipeline.core.registry import Registry
from pipeline.stages.rewrite.rules import axis, elementwise, keras_nodes, linear, reduce, shape, spatial

RULES = Registry.collect("layout rule", [axis, elementwise, keras_nodes, linear, reduce, shape, spatial])
