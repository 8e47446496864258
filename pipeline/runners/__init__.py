"""One place that runs a model for comparison: a small runner per backend, one interface
(as Polygraphy's runners). Used by the compare stage (its float64 check of Keras' own
precision included) and the tools (debug, bench).

- ``base.Runner``: ``infer(feeds) -> {output name: np.ndarray}`` checks that ``feeds`` are
  exactly the model's inputs by name (an error names the runner and the input), then runs
  the subclass's ``_infer_impl``; the model loads on first use; ``close()`` frees it;
  ``last_inference_time()``: the seconds of the backend's own call in the last ``infer``.
- ``onnxrt.OnnxRuntimeRunner(path, threads=)``: onnxruntime (CPU) on an ONNX file, checked
  first.
- ``pytorch``: ``TorchRunner(module, inputs, outputs)`` for any torch module, and the
  ports of a model folder: ``GeneratedRunner`` (``import/model.py`` + ``model.safetensors``),
  ``Pt2Runner`` (``import/model.pt2``, refused if it holds pickle), ``OnnxToTorchRunner``
  (onnx2torch's port of ``rewrite/torch.onnx``, converted once per process); the loaders
  ``load(mdir)`` (pt2, else the generated module), ``load_pt2``, ``load_generated``,
  ``convert_onnx``, ``onnx2torch_module``.
- ``keras_tf.KerasRunner(mdir, build, threads=, dtype=)``: the Keras model in a TensorFlow
  process of its own, timed there; ``dtype="float64"``: its float64 twin.

Importing this package imports neither onnxruntime, torch, onnx2torch nor TensorFlow.

    from pipeline.core.artifacts import ModelDir
    from pipeline import runners
    model = runners.load(ModelDir.of("artifacts", "conv1d_flatten_dense"))   # torch.nn.Module
"""

from pipeline.runners.base import Runner
from pipeline.runners.keras_tf import KerasRunner
from pipeline.runners.onnxrt import OnnxRuntimeRunner
from pipeline.runners.pytorch import (GeneratedRunner, OnnxToTorchRunner, Pt2Runner, TorchRunner, convert_onnx, load,
                                      load_generated, load_pt2, onnx2torch_module)

__all__ = ["GeneratedRunner", "KerasRunner", "OnnxRuntimeRunner", "OnnxToTorchRunner", "Pt2Runner", "Runner",
           "TorchRunner", "convert_onnx", "load", "load_generated", "load_pt2", "onnx2torch_module"]
