"""Keras -> ONNX -> channels-first ONNX -> PyTorch conversion pipeline.

Stages (one module each): ``export`` (TensorFlow only), ``rewrite`` (ONNX only),
``importer`` (torch), ``compare`` (onnxruntime + torch). ``runner`` chains them, each in a
process of its own; ``cli`` is the thin command line on top.
"""

__version__ = "0.1.0"

STAGES = ("export", "rewrite", "import", "compare")
