"""Export one builder of tests/models.py twice, for test_bench_export.py (TensorFlow runs here,
never in pytest): plain tf2onnx (``OUT/plain.onnx``) and the large-model path with Dense
kernels held out of grappler/tf2onnx (``OUT/large/raw.onnx`` + ``raw.onnx.data``), plus
the reference inputs (``OUT/inputs.npz``).

usage: python tests/export_paths.py BUILDER OUT HOLD_OUT_BYTES
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline.stages import export  # noqa: E402
from pipeline.stages.export import tf2onnx_path  # noqa: E402

tf = export.import_tf()
import onnx  # noqa: E402

import models  # noqa: E402

builder, out, hold = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
model = getattr(models, builder)()
sig = [tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=f"in{i}") for i, t in enumerate(model.inputs)]


def call(*xs):
    res = model(list(xs) if len(xs) > 1 else xs[0], training=False)
    return {f"out{i}": r for i, r in enumerate(res if isinstance(res, (list, tuple)) else [res])}


fn = tf.function(call, input_signature=sig, autograph=False)
rng = np.random.default_rng(0)
np.savez(out / "inputs.npz", **{s.name: rng.standard_normal([3, *s.shape[1:]]).astype(np.float32) for s in sig})

proto, ext = export.tf2onnx_convert(fn, sig, 17, large_model=False)
assert ext == {}
onnx.save(proto, out / "plain.onnx")

tf2onnx_path.HOLD_OUT_BYTES = hold   # read by its hold-out when freezing
frozen = export.freeze(fn, sig)
print("held", sorted(frozen["held"]))
proto, ext = export.convert_frozen(frozen, 17)
(out / "large").mkdir()
export.save_onnx(proto, ext, out / "large" / "raw.onnx")
