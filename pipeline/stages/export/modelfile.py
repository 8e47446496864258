"""Checks of a model file before a loader sees it, and short messages for loader failures.

Nothing here imports TensorFlow or runs code from the file: a ``.keras`` archive is read as
a zip and JSON, an ``.h5`` file through h5py's attributes. Each failure is a
``PipelineError`` that says what is wrong with the file and what to do.
"""

from __future__ import annotations

import json
import re
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pipeline.core.errors import PipelineError

_RESAVE = "re-save the model with model.save('model.keras') (or .h5 from tf.keras) and convert that file"


def installed_keras(package: str = "keras") -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _newer(file_version: str | None, installed: str) -> bool:
    def key(v):
        return tuple(int(x) for x in re.findall(r"\d+", v)[:2])

    try:
        return bool(file_version) and key(file_version) > key(installed)
    except ValueError:
        return False


def check(kind: str, path: str, model: str) -> dict:
    """Facts about ``path`` (``keras_version``); a PipelineError if it cannot be a model file."""
    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        raise PipelineError("export", f"{path} is empty (0 bytes)", model=model,
                            hint="the download or copy did not finish; copy the file again")
    if kind == "keras":
        return _check_keras(p, model)
    if kind == "h5":
        return _check_h5(p, model)
    return {}


def _check_keras(p: Path, model: str) -> dict:
    bad = PipelineError("export", f"{p} is not a complete .keras archive (not a readable zip file)", model=model,
                        hint="the file is truncated or damaged: copy it again, or " + _RESAVE)
    if not zipfile.is_zipfile(p):
        raise bad
    try:
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
            broken = z.testzip()
            if broken is not None:
                raise PipelineError("export", f"{p} is damaged: member {broken!r} fails its checksum", model=model,
                                    hint="copy the file again, or " + _RESAVE)
            if "config.json" not in names:
                raise PipelineError("export", f"{p} has no config.json: it is a zip file but not a Keras 3 model",
                                    model=model, hint=_RESAVE)
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
            json.loads(z.read("config.json"))
    except PipelineError:
        raise
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError,
            NotImplementedError, ValueError, RuntimeError) as e:   # zipfile raises all of these on bad data
        raise PipelineError("export", f"{p} is not a readable .keras archive: {type(e).__name__}: {e}", model=model,
                            hint="the file is truncated or damaged: copy it again, or " + _RESAVE) from e
    return {"keras_version": meta.get("keras_version") if isinstance(meta, dict) else None}


def _check_h5(p: Path, model: str) -> dict:
    import h5py

    try:
        with h5py.File(p, "r") as f:
            attrs = {k: f.attrs[k] for k in ("model_config", "keras_version", "layer_names") if k in f.attrs}
    except (OSError, ValueError, KeyError, RuntimeError) as e:   # h5py's errors for bad files
        raise PipelineError("export", f"{p} is not a complete HDF5 file: {e}", model=model,
                            hint="the file is truncated or damaged: copy it again, or " + _RESAVE) from e
    kv = attrs.get("keras_version")
    kv = kv.decode() if isinstance(kv, bytes) else (str(kv) if kv is not None else None)
    if "model_config" not in attrs:
        what = "weights only (saved with save_weights)" if "layer_names" in attrs else "no model config"
        raise PipelineError("export", f"{p} holds {what}, not a model: there is no architecture to convert",
                            model=model, hint="save the whole model with model.save('model.h5') (or .keras), "
                            "or build the model in a file.py:function and load the weights there")
    return {"keras_version": kv}


_UNKNOWN = [
    re.compile(r"Could not locate class '(?P<cls>[\w.]+)'"),
    re.compile(r"Could not deserialize class '(?P<cls>[\w.]+)' because its parent module (?P<mod>[\w.]+)"),
    re.compile(r"Unknown (?:layer|object|activation|initializer|regularizer|constraint|loss|metric)"
               r"(?: type)?:? '?(?P<cls>[\w.]+)'?"),
]


def explain(e: Exception, facts: dict, package: str = "keras") -> tuple[str, str | None]:
    """A one-line message and a hint for an exception raised by a Keras loader."""
    text = str(e)
    installed = installed_keras(package)
    written = facts.get("keras_version")
    newer = _newer(written, installed)
    by = f" (the file was written by Keras {written}, this is {package} {installed})" if newer else ""
    if "Lambda" in text or "safe_mode" in text:
        return ("the model holds serialized Python code (a Lambda layer or a Python function), which is not "
                "loaded by default because loading it runs that code",
                "convert it only if you trust the file, with --unsafe (unsafe = true in the config)")
    for pat in _UNKNOWN:
        m = pat.search(text)
        if m:
            cls = m.group("cls")
            mod = m.groupdict().get("mod") or _module_of(text, cls)
            entry = f"{mod}:{cls}" if mod else f"my_pkg.layers:{cls}"
            where = f" from module {mod}" if mod else ""
            hint = (f'register it: custom_objects = ["{entry}"] in the config, or --custom-object {entry} '
                    "(the module must be importable)")
            if newer or (mod or "").startswith("keras"):
                hint = f"re-save the model with Keras {installed}, or install the Keras that wrote it; or {hint}"
            return f"the model uses class {cls!r}{where}, which {package} {installed} does not know{by}", hint
    first = text.strip().splitlines()[0] if text.strip() else ""
    if "must be fully-defined (no `None` dimensions)" in text:   # e.g. Flatten -> Dense after a free dim
        return (f"cannot build the model: a layer's weights depend on an input dimension left None "
                f"(free): {type(e).__name__}: {first[:300]}",
                "a Flatten -> Dense (or another layer whose weights depend on that size) cannot follow a free "
                "dimension: give that input a fixed size in the model, e.g. keras.Input((128, 3))")
    return (f"cannot load the model{by}: {type(e).__name__}: {first[:400]}",
            f"install the Keras that wrote the file, or {_RESAVE}" if newer else None)


def _module_of(text: str, cls: str) -> str | None:
    m = re.search(r"'module': '([\w.]+)', 'class_name': '" + re.escape(cls) + "'", text)
    return m.group(1) if m else None
