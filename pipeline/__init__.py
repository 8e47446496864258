"""Keras -> ONNX -> channels-first ONNX -> PyTorch, with proof at every stage.

The folders show the flow:

- ``stages/``   export (TensorFlow only) -> rewrite (ONNX only) -> importer (torch) -> compare;
  each reads the folder of the stage before it and writes only its own.
- ``runners/``  one runner per backend (onnxruntime, the generated module, model.pt2,
  onnx2torch, Keras in a TensorFlow process of its own, also as a float64 twin): what
  compare, debug and bench run models with.
- ``codegen/``  the PyTorch code generator the import stage runs: a registry of small
  converters keyed by op type and opset, one module per op family.
- ``tools/``    what is built on the stages: debug (per-layer comparison), zoo (batches),
  bench (speed and cost).
- ``core/``     the small shared core: artifacts, run state, config, spec, errors, names.
- ``cli.py``    the thin command line on top.
"""

__version__ = "0.1.0"
