"""Checks on files that may come from elsewhere, run before a library parses them.

- ``check_onnx``: the file parses as ONNX, and every external-data reference stays inside
  the file's folder (a crafted ``location`` could otherwise read any file).
- ``check_pt2``: a ``torch.export`` archive holds no pickled payload. ``torch.export.load``
  (torch 2.14) unpickles payloads that the archive's configs mark ``use_pickle``, custom
  and opaque objects and legacy ``.pt`` weights (``torch.load(weights_only=False)``,
  ``pickle.loads``), and the sample inputs (``weights_only=True``, falling back to
  ``weights_only=False`` when that fails). The import stage saves no sample inputs and
  no such payloads, so any of them is refused.
- ``pickle_members``: every pickle a stored artifact holds, for the tests' scan.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

from pipeline.core.errors import PipelineError


def check_onnx(path: Path, stage: str, model: str | None):
    """The ``ModelProto`` of ``path`` without external data; a PipelineError if it is not
    a valid ONNX file or references data outside its folder."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as e:   # protobuf/onnx parse errors
        raise PipelineError(stage, f"{path} is not a valid ONNX model: {type(e).__name__}: {e}", model=model,
                            hint="the file is damaged: re-run the stage that wrote it") from e
    if not proto.graph.node and not proto.graph.output:
        raise PipelineError(stage, f"{path} is not a valid ONNX model: it has no graph", model=model,
                            hint="the file is damaged: re-run the stage that wrote it")
    root = path.resolve().parent
    tensors = list(proto.graph.initializer) + [
        a.t for n in proto.graph.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (root / loc).resolve()
        if not loc or os.path.isabs(loc) or ".." in Path(loc).parts or not target.is_relative_to(root):
            raise PipelineError(stage, f"{path}: tensor {t.name!r} references external data {loc!r} "
                                f"outside the model's folder", model=model,
                                hint="external data must be a relative path inside the folder of the .onnx file")
    try:
        onnx.checker.check_model(str(path))   # by path: external data resolves from its folder, no 2 GB limit
    except (onnx.checker.ValidationError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PipelineError(stage, f"{path} is not a valid ONNX model: {type(e).__name__}: {first[:300]}",
                            model=model, hint="the file is damaged: re-run the stage that wrote it") from e
    return proto


def load_onnx(path: Path, stage: str, model: str | None):
    """``check_onnx``, then the external data (if any) from inside the file's folder."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    proto = check_onnx(path, stage, model)
    if any(uses_external_data(t) for t in proto.graph.initializer):
        load_external_data_for_model(proto, str(Path(path).resolve().parent))
    return proto


_PT2_PICKLE_PREFIXES = ("custom_obj", "opaque_obj")


def pt2_pickles(path: Path) -> list[str]:
    """The members of a ``torch.export`` archive that ``torch.export.load`` would unpickle."""
    found = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            base = name.rsplit("/", 1)[-1]
            if name.endswith(".pkl") or "/data/weights/" in f"/{name}" and base.endswith(".pt"):
                found.append(name)
            elif "/data/constants/" in f"/{name}" and base.startswith(_PT2_PICKLE_PREFIXES):
                found.append(name)
            elif "/data/sample_inputs/" in f"/{name}" and z.getinfo(name).file_size > 0:
                found.append(name)
            elif base.endswith("_config.json") and "/data/" in f"/{name}":
                cfg = json.loads(z.read(name))
                entries = cfg.get("config", {}) if isinstance(cfg, dict) else {}
                found += [f"{name}:{k}" for k, v in entries.items() if isinstance(v, dict) and v.get("use_pickle")]
    return found


def check_pt2(path: Path, model: str | None) -> None:
    """Refuse a ``.pt2`` archive that is not a zip or would unpickle anything on load."""
    try:
        bad = pt2_pickles(path)
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as e:
        raise PipelineError("import", f"{path} is not a readable torch.export archive: {type(e).__name__}: {e}",
                            model=model, hint="re-run the import stage") from e
    if bad:
        raise PipelineError("import", f"{path} holds pickled payloads {bad[:5]}, which loading would execute; "
                            "the pipeline never writes them", model=model,
                            hint="re-run the import stage to write the model again from torch.onnx")


def pickle_members(path: Path) -> list[str]:
    """Pickles in an artifact: ``.npz`` members of object dtype, ``.pt2``/``.keras`` zip members
    that are pickles or ``torch.save`` archives, a file that is itself a pickle."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".npz":
        import numpy as np

        found = []
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                with z.open(name) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    _, _, dtype = read(f)
                if dtype.hasobject:
                    found.append(name)
        return found
    if zipfile.is_zipfile(io.BytesIO(data)):
        found = []
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for name in z.namelist():
                member = z.read(name)
                if name.endswith((".pkl", ".pickle")) or _is_pickle(member) or (
                        zipfile.is_zipfile(io.BytesIO(member)) and pickle_members_bytes(member)):
                    found.append(name)
        if path.suffix == ".pt2":
            found += pt2_pickles(path)
        return found
    return [path.name] if _is_pickle(data) else []


def pickle_members_bytes(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [n for n in z.namelist() if n.endswith((".pkl", ".pickle"))]


def _is_pickle(data: bytes) -> bool:
    """A pickle of protocol 2+ starts with PROTO and ends with STOP; check it parses."""
    if len(data) < 3 or data[0] != 0x80 or data[1] not in (2, 3, 4, 5) or data[-1:] != b".":
        return False
    import pickletools

    try:
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
    except (ValueError, KeyError, IndexError, EOFError, UnicodeDecodeError):   # not a pickle after all
        return False
    return True
