"""The zoo's record of a model (``OUT/<model>/zoo.json``) and when it is still up to date.

The fingerprint covers the model's source files (model file or folder, builder file), its
settings, flags and limits, the package versions and the conversion code, the last two as
``pipeline.core.runstate`` defines them for the stage fingerprints.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.core import runstate
from pipeline.core.artifacts import ModelDir, read_json
from pipeline.core.errors import PipelineError
from pipeline.core.spec import resolve
from pipeline.tools.zoo.config import ZooModel


def fingerprint(m: ZooModel, vers: dict, code: str) -> str:
    """Changes when the model file/builder, its settings, limits or the software change;
    ``vers``: ``runstate.versions()``, ``code``: ``runstate.code_hash()``."""
    try:
        sources = runstate.sources_hash(resolve(m.model, m.name))
    except PipelineError:   # a spec that does not resolve (its failure is recorded): no files yet
        sources = None
    return hashlib.sha256(json.dumps(
        {"model": m.model, "settings": m.settings, "flags": list(m.flags), "limits": [m.time_limit_s, m.memory_limit_mb],
         "versions": vers, "pipeline": code, "sources": sources}, sort_keys=True).encode()).hexdigest()[:24]


def up_to_date(out: Path, name: str, fp: str) -> dict | None:
    """The model's zoo record when its report is complete and its fingerprint matches."""
    mdir = ModelDir.of(out, name)
    try:
        rec = read_json(mdir.root / "zoo.json")
        rep = read_json(mdir.report)
    except (OSError, ValueError):
        return None
    if rec.get("fingerprint") != fp or rep.get("status") not in ("ok", "mismatch", "failed"):
        return None
    return rec
