"""What the user keeps, measured: the lines of ``import/model.py`` and the bytes of its
weights (``model.safetensors``' tensors) against the Keras model's weights (its parameter
count in float32): a port that unrolls or copies weights shows here as a ratio above 1."""

from __future__ import annotations

from pipeline.core.artifacts import ModelDir, read_json


def port_facts(mdir: ModelDir) -> dict:
    from safetensors import safe_open

    d = mdir.stage("import")
    lines = len((d / "model.py").read_text().splitlines())
    with safe_open(str(d / "model.safetensors"), "np") as f:
        stored = sum(f.get_tensor(k).nbytes for k in f.keys())
    params = read_json(mdir.stage("export") / "meta.json").get("params")
    keras = params * 4 if params else None
    return {"model_py_lines": lines, "weights_bytes": stored, "keras_weights_bytes": keras,
            "weights_ratio": round(stored / keras, 4) if keras else None}

