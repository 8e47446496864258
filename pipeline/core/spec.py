"""What a ``MODEL=`` spec names, resolved without importing TensorFlow."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError

KINDS = ("keras", "h5", "savedmodel", "builder", "zoo")
_ZOO = re.compile(r"^keras\.applications\.([A-Za-z0-9_]+)$")


@dataclass(frozen=True)
class ModelSpec:
    kind: str     # one of KINDS
    target: str   # path, "path.py:function" or application name
    name: str     # folder name under OUT

    def to_json(self) -> dict:
        return {"kind": self.kind, "target": self.target, "name": self.name}


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name).strip("._") or "model"


def resolve(spec: str, name: str | None = None) -> ModelSpec:
    """Classify ``spec``; errors say what is wrong with it and what is accepted."""
    accepted = ("a .keras file, a tf.keras .h5 file, a SavedModel folder, "
                "'path/to/file.py:function' or 'keras.applications.NAME'")
    m = _ZOO.match(spec)
    if m:
        return ModelSpec("zoo", m.group(1), name or m.group(1))
    if re.match(r"^.+\.py:[A-Za-z_][A-Za-z0-9_]*$", spec):
        file, _, fn = spec.rpartition(":")
        if not Path(file).is_file():
            raise PipelineError("export", f"builder file {file!r} does not exist", model=spec)
        return ModelSpec("builder", spec, name or _clean(fn))
    p = Path(spec)
    if not p.exists():
        raise PipelineError("export", f"{spec!r} does not exist", model=spec, hint=f"MODEL= takes {accepted}")
    if p.is_dir():
        if (p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file():
            return ModelSpec("savedmodel", str(p), name or _clean(p.name))
        raise PipelineError("export", f"folder {spec!r} is not a TensorFlow SavedModel (no saved_model.pb in it)",
                            model=spec, hint=f"MODEL= takes {accepted}")
    suffix = p.suffix.lower()
    if suffix == ".keras":
        return ModelSpec("keras", str(p), name or _clean(p.stem))
    if suffix in (".h5", ".hdf5"):
        return ModelSpec("h5", str(p), name or _clean(p.stem))
    raise PipelineError("export", f"unknown model file type {suffix or '(no extension)'!r} for {spec!r}",
                        model=spec, hint=f"MODEL= takes {accepted}")
