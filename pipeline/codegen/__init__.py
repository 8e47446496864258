"""ONNX (``rewrite/torch.onnx``) -> readable PyTorch source + weights a user can keep.

``generate`` walks the graph in topological order and writes one ``nn.Module``: weighted
ops become submodules named after the Keras layer they came from (``self.conv1d =
nn.Conv1d(1, 2, 2)``), constants become buffers, everything else is a plain torch call in
``forward``. The result imports with torch and safetensors alone and traces with
``torch.compile`` / ``torch.export`` with a dynamic batch dimension.

Values are tracked in three kinds (``values``): constants, *shape* values (small int
vectors computed from tensor shapes, kept as Python int expressions so the batch dimension
stays symbolic) and tensors (a variable in ``forward``).

For each node, the walk (``walk``) does two things, in order:

1. constant folding (``fold``): a node whose inputs are all constants is evaluated with
   ``onnx.reference`` and its outputs become constants (one step for all ops, so that no
   converter has to handle all-constant inputs);
2. conversion: the converter registered for (op type, the model's opset) in
   ``ops.CONVERTERS`` (one module per op family, ``ops/*.py``) emits code for that node,
   or, for an op on shape values, stores a shape value. A missing converter stops with a
   ``PipelineError`` naming the node, op type, opset and Keras layer.

Once every node is converted, ``liveness`` renames the variables of ``forward`` so that a
name is reused once its value is dead (``x = F.relu(x)``; a skip connection keeps a second
name) and deletes a value whose name is not bound again: eager PyTorch then frees each
intermediate after its last use, as a hand-written module does.

``Generated.line_nodes`` maps each line of ``forward`` in ``model.py`` to the node whose
converter wrote it (``LineOrigin``: node, op type, Keras layer, converter; a ``del`` line
added by ``liveness``: the node of the line before it).

Converters read only their own node; fusions across nodes (a bias ``Add`` into the conv or
Dense before it) are graph rules of the rewrite (``fold_for_torch``). Add a converter with
``@handles("OpType", opsets=(lo, None))`` (``pipeline.core.registry``) on a function
``(gen, node) -> None`` in the family's module; ``generate(..., converters=registry)``
takes another registry.

For the port that trains, the export's facts per Keras layer (``meta.json`` ``keras_layers``)
give: a zero bias tf2onnx dropped back as a parameter (``Gen.missing_bias``), a frozen
layer's ``requires_grad_(False)``, and the terms of ``regularization_loss()`` (``render``);
``Generated.sources``/``added_bias`` say which layer each submodule's weights come from
(``stages/importer/weights_map.py``).

Modules: ``values`` (the value kinds), ``gen`` (the generation state and its helpers),
``fold``, ``walk``, ``liveness`` (names reused), ``render`` (the ``model.py`` template), ``ops`` (the converters).
"""

from pipeline.codegen.gen import Gen, Unsupported
from pipeline.codegen.ops import CONVERTERS, FAMILIES
from pipeline.codegen.render import load_generated
from pipeline.codegen.walk import Generated, LineOrigin, generate

__all__ = ["CONVERTERS", "FAMILIES", "Gen", "Generated", "LineOrigin", "Unsupported", "generate", "load_generated"]
