"""Keras' own activations, layer by layer, for ``debug``: the folder ``<model>/layers/``.

Not part of ``export/``: a folder of its own, so that recording them leaves the export
stage's files (and its fingerprint) as they were. Written atomically by a TensorFlow
process: ``python -m pipeline export --layers-only`` on a finished export (``debug`` runs
it when the folder is missing or stale), or ``export --per-layer``, which records them
with the model still in memory.

- ``layers.npz``: ``layer:<name>`` -> the layer's output on ``export/reference.npz``'s inputs
- ``layers.json``: ``layers`` (per top-level layer: name, class, and shape and dtype, or why
  it was skipped), ``export`` (the export they were recorded for: the hash of its
  ``meta.json`` and ``reference.npz``; a newer export makes them stale, see ``is_current``)
  and ``stage`` (seconds, peak RSS)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, StageClock, atomic_dir, read_json, write_json
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.reference import load_reference
from pipeline.core.spec import ModelSpec
from pipeline.stages.export.keras_model import load_model
from pipeline.stages.export.savedmodel import SavedModelSignature

FOLDER = "layers"


def folder(mdir: ModelDir) -> Path:
    return mdir.root / FOLDER


def export_id(mdir: ModelDir) -> str | None:
    """The export that activations belong to: its reference inputs and its ``meta.json``
    (which holds the model, settings and versions, and the export's own run time: every
    export differs). Hand edits of ``raw.onnx`` (the faults ``debug``'s tests inject) keep it."""
    h = hashlib.sha256()
    for name in ("meta.json", "reference.npz"):
        try:
            h.update(name.encode() + b"\0" + (mdir.stage("export") / name).read_bytes() + b"\0")
        except FileNotFoundError:
            return None
    return h.hexdigest()


def is_current(mdir: ModelDir) -> bool:
    """Whether ``layers/`` is complete and was recorded for the ``export/`` there is now."""
    d = folder(mdir)
    try:
        info = read_json(d / "layers.json")
    except (OSError, ValueError):
        return False
    return (d / "layers.npz").is_file() and isinstance(info, dict) and \
        info.get("export") == export_id(mdir)


def layer_outputs(model, feeds: list) -> tuple[dict, list[dict]]:
    """Each top-level Keras layer's output on ``feeds`` ({name: array}) and one entry per layer.

    InputLayers are skipped; a layer with several outputs gives its first; a layer used at
    several places in the graph (shared) has no single output and is listed as skipped.
    """
    if isinstance(model, SavedModelSignature) or not getattr(model, "layers", None):
        return {}, []
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as kmod
    else:
        import keras as kmod
    picked, entries = [], []
    for layer in model.layers:
        entry = {"name": layer.name, "class": type(layer).__name__}
        entries.append(entry)
        if entry["class"] == "InputLayer":
            entry["skipped"] = "input"
            continue
        try:
            out = layer.output
        except (AttributeError, ValueError, RuntimeError) as e:  # shared or never-called layers
            entry["skipped"] = f"no single output: {e}"
            continue
        while isinstance(out, (list, tuple, dict)):
            out = list(out.values())[0] if isinstance(out, dict) else out[0]
        picked.append((entry, out))
    if not picked:
        return {}, entries
    probe = kmod.Model(model.inputs, [o for _, o in picked])
    res = probe(list(feeds), training=False)
    res = res if isinstance(res, (list, tuple)) else [res]
    values = {}
    for (entry, _), v in zip(picked, res):
        v = np.asarray(v)
        values[entry["name"]] = v
        entry["shape"], entry["dtype"] = list(v.shape), str(v.dtype)
    return values, entries


def record(spec: ModelSpec, settings: Settings, out: Path) -> dict:
    """Record ``layers/`` for the reference inputs of a finished export; returns its record."""
    clock = StageClock()
    mdir = ModelDir.of(out, spec.name)
    exp = mdir.require("export", "reference.npz", "meta.json")
    meta = read_json(exp / "meta.json")
    inputs, _ = load_reference(exp / "reference.npz")
    model = load_model(spec, settings)
    return write(model, mdir, [inputs[i["name"]] for i in meta["inputs"]], spec.name, clock)


def write(model, mdir: ModelDir, feeds: list, name: str, clock: StageClock) -> dict:
    """``layers/`` from ``model`` (loaded as the export loaded it) on ``feeds``, the export's
    reference inputs in order; ``export/`` must be written already."""
    try:
        values, entries = layer_outputs(model, feeds)
    except Exception as e:  # Keras raises many types while rebuilding or running the probe model
        raise PipelineError("export", f"cannot record the Keras layers' outputs: {type(e).__name__}: {e}",
                            model=name) from e
    if not entries:
        raise PipelineError("export", "the model has no Keras layers to record (a SavedModel signature?)",
                            model=name, hint="per-layer debugging needs a .keras/.h5 file, a builder or a zoo model")
    export = export_id(mdir)
    with atomic_dir(folder(mdir)) as d:
        np.savez(d / "layers.npz", **{f"layer:{k}": v for k, v in values.items()})
        rec = {"stage": "layers", **clock.record()}
        write_json(d / "layers.json", {"export": export, "layers": entries, "stage": rec})
    return rec
