"""Keras' model evaluated in float64: how far float32 itself is from exact math.

A deep network with random weights can amplify float32 rounding until two correct float32
implementations (TensorFlow's, and onnxruntime's or torch's of the converted graph) differ
by more than ``rtol`` of the output. Then the question is not "equal to Keras' float32
output" but "as close to the exact result as Keras itself is". ``compare`` asks it only
after a strict mismatch, through ``python -m pipeline.tools.float64 MODEL_DIR DEST.npz`` (a
TensorFlow process of its own, as every TF step): the same model rebuilt with float64
weights and float64 computation, run on the reference inputs.

Exit status 0 with DEST written (``output:<name>`` float64 arrays), or 2 with one JSON line
``{"unavailable": reason}`` (a SavedModel, a subclassed model, an op without float64).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, read_json
from pipeline.core.config import Settings
from pipeline.core.reference import load_reference
from pipeline.core.spec import ModelSpec

# the float32 rebuild must give back Keras' recorded output; else the float64 twin proves nothing
REBUILD_RTOL = 1e-6


class Unavailable(Exception):
    pass


def _as_float64(config):
    """The Keras config with every float32 dtype (policies, input dtypes) made float64."""
    if isinstance(config, dict):
        return {k: ("float64" if v == "float32" and k in ("dtype", "name") else _as_float64(v))
                for k, v in config.items()}
    if isinstance(config, list):
        return [_as_float64(v) for v in config]
    return config


def float64_twin(model):
    """A copy of the functional/sequential Keras 3 ``model`` computing in float64."""
    import keras

    if not isinstance(model, keras.Model) or type(model).__name__ not in ("Functional", "Sequential"):
        raise Unavailable(f"{type(model).__module__}.{type(model).__name__} is not a Keras 3 functional or "
                          "sequential model: no config to rebuild it in float64 from")
    twin = type(model).from_config(_as_float64(model.get_config()))
    weights = model.get_weights()
    twin.set_weights([w.astype(np.float64) if np.issubdtype(w.dtype, np.floating) else w for w in weights])
    return twin


def _run(model, feeds: dict, names: list[str], dtype=None) -> dict:
    import tensorflow as tf

    from pipeline.stages.export import _flatten_outputs

    xs = [tf.constant(v.astype(dtype) if dtype and np.issubdtype(v.dtype, np.floating) else v)
          for v in feeds.values()]
    # as export runs it: one tf.function (graph-mode kernels and fusions, not eager ones)
    fn = tf.function(lambda *xs: _flatten_outputs(model(list(xs) if len(xs) > 1 else xs[0], training=False)),
                     autograph=False)
    return {n: np.asarray(r) for n, r in zip(names, fn(*xs))}


def reference64(mdir: ModelDir) -> dict:
    """{output name: float64 array} on the export's reference inputs."""
    from pipeline.stages import export

    meta = read_json(mdir.stage("export") / "meta.json")
    spec = ModelSpec(**meta["spec"])
    if spec.kind == "savedmodel":
        raise Unavailable("a SavedModel signature has no Keras config to rebuild in float64")
    raw = dict(meta["settings"])
    raw["custom_objects"] = tuple(raw.get("custom_objects", ()))
    settings = Settings(**raw)
    inputs, ref = load_reference(mdir.stage("export") / "reference.npz")
    model = export.load_model(spec, settings)
    names = [o["name"] for o in meta["outputs"]]
    again = _run(model, inputs, names)
    for k, v in ref.items():
        scale = float(np.max(np.abs(v))) or 1.0
        if again[k].shape != v.shape or float(np.max(np.abs(again[k] - v))) > REBUILD_RTOL * scale:
            raise Unavailable(f"the model rebuilt from {spec.target} does not reproduce Keras' recorded output {k!r} "
                              f"(max |diff| {float(np.max(np.abs(again[k] - v))):.3g}, scale {scale:.3g})")
    twin = float64_twin(model)
    del model
    return _run(twin, inputs, names, np.float64)


def main(argv: list[str]) -> int:
    root, dest = Path(argv[0]), Path(argv[1])
    from pipeline.stages.export import _quiet_tf

    _quiet_tf()
    try:
        out = reference64(ModelDir.of(root.parent, root.name))
    except Exception as e:   # any reason the float64 twin cannot be made is an answer, not a crash
        print(json.dumps({"unavailable": f"{type(e).__name__}: {e}" if not isinstance(e, Unavailable) else str(e)}))
        return 2
    tmp = dest.with_suffix(".part.npz")
    np.savez(tmp, **{f"output:{k}": v for k, v in out.items()})
    tmp.replace(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
