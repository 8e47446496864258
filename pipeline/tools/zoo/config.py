"""The zoo's config: which models, with which settings and limits (``load_zoo``).

Config (TOML): top-level keys are conversion settings for every model (as in
``default.toml``); ``[zoo]`` holds batch defaults (``time_limit_s``, ``memory_limit_mb``,
``jobs``, ``memory_budget_mb``); each ``[[models]]`` entry has ``model`` (a spec; builder
paths are relative to the config file) and optionally ``name``, ``input_shape``,
``time_limit_s``, ``memory_limit_mb`` and the per-model settings in ``MODEL_FLAGS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.artifacts import check_model_name
from pipeline.core.config import load_settings, parse_shape, read_toml
from pipeline.core.errors import PipelineError
from pipeline.core.spec import resolve

ZOO_DEFAULTS = {"time_limit_s": 1800.0, "memory_limit_mb": 12000, "jobs": 0, "memory_budget_mb": 0}
# per-model settings -> convert flags; value None: a boolean switch
MODEL_FLAGS = {"rtol": "--rtol", "atol": "--atol", "seed": "--seed", "batch": "--batch",
               "channels_last_inputs": "--channels-last-inputs", "channels_last_outputs": "--channels-last-outputs",
               "unsafe": "--unsafe"}
_MODEL_KEYS = {"model", "name", "input_shape", "time_limit_s", "memory_limit_mb", "fold_flatten_transpose",
               "custom_objects", *MODEL_FLAGS}


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo, with everything its conversion and its limits depend on."""

    model: str                  # the spec given to ``convert --model``
    name: str                   # folder under OUT
    flags: tuple = ()           # extra ``convert`` flags (per-model settings)
    settings: dict = field(default_factory=dict)   # the effective Settings, as JSON
    time_limit_s: float = ZOO_DEFAULTS["time_limit_s"]
    memory_limit_mb: int = ZOO_DEFAULTS["memory_limit_mb"]
    problem: str | None = None  # why the spec cannot be resolved (recorded as its failure)


@dataclass(frozen=True)
class Zoo:
    config: Path
    models: tuple
    jobs: int = 0               # 0: number of cores, bounded by memory
    memory_budget_mb: int = 0   # 0: total memory of the machine


def _flags(entry: dict) -> tuple:
    out: list[str] = []
    if "input_shape" in entry:
        shape = entry["input_shape"]
        out += ["--input-shape", ",".join(map(str, shape)) if isinstance(shape, list) else str(shape)]
    for key, flag in MODEL_FLAGS.items():
        if key not in entry:
            continue
        if isinstance(entry[key], bool):
            out += [flag] if entry[key] else []
        else:
            out += [flag, str(entry[key])]
    if entry.get("fold_flatten_transpose") is False:
        out.append("--no-fold")
    for obj in entry.get("custom_objects", ()):
        out += ["--custom-object", obj]
    return tuple(out)


def _fallback_name(spec: str) -> str:
    base = spec.rpartition(":")[2] if ".py:" in spec else Path(spec).stem or spec
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", base).strip("._") or "model"


def load_zoo(path: str | Path) -> Zoo:
    """Parse a zoo config; a config error is fatal, a model that cannot be resolved is not."""
    path = Path(path)
    raw = read_toml(path, "zoo config")
    load_settings(path)   # validates the top-level settings keys
    zoo = {**ZOO_DEFAULTS, **raw.get("zoo", {})}
    unknown = set(zoo) - set(ZOO_DEFAULTS)
    if unknown:
        raise PipelineError("config", f"unknown keys {sorted(unknown)} in [zoo] of {str(path)!r}",
                            hint=f"known keys: {sorted(ZOO_DEFAULTS)}")
    entries = raw.get("models", [])
    if not entries:
        raise PipelineError("config", f"zoo config {str(path)!r} lists no [[models]]")
    models, names = [], set()
    for i, entry in enumerate(entries):
        where = f"[[models]] entry {i + 1} of {str(path)!r}"
        if not isinstance(entry.get("model"), str):
            raise PipelineError("config", f"{where} has no model = \"...\"")
        unknown = set(entry) - _MODEL_KEYS
        if unknown:
            raise PipelineError("config", f"unknown keys {sorted(unknown)} in {where}", hint=f"known: {sorted(_MODEL_KEYS)}")
        spec = entry["model"]
        if ".py:" in spec and not spec.startswith("keras.") and not Path(spec.rpartition(":")[0]).is_absolute():
            spec = f"{(path.parent / spec.rpartition(':')[0]).resolve()}:{spec.rpartition(':')[2]}"
        elif not spec.startswith("keras.") and not Path(spec).is_absolute():
            spec = str((path.parent / spec).resolve())
        problem = None
        try:
            name = resolve(spec, entry.get("name")).name
        except PipelineError as e:
            name, problem = entry.get("name") or _fallback_name(spec), str(e)
        check_model_name(name)
        if name in names:
            raise PipelineError("config", f"{where}: model name {name!r} is used twice", hint="give one a name = \"...\"")
        names.add(name)
        shapes = entry.get("input_shape")
        settings = load_settings(path, model=spec, name=name,
                                 input_shapes=parse_shape(",".join(map(str, shapes)) if isinstance(shapes, list)
                                                          else shapes) if shapes else None,
                                 **{k: entry[k] for k in (*MODEL_FLAGS, "fold_flatten_transpose", "custom_objects")
                                    if k in entry})
        models.append(ZooModel(model=spec, name=name, flags=_flags(entry), settings=settings.to_json(),
                               time_limit_s=float(entry.get("time_limit_s", zoo["time_limit_s"])),
                               memory_limit_mb=int(entry.get("memory_limit_mb", zoo["memory_limit_mb"])),
                               problem=problem))
    return Zoo(config=path.resolve(), models=tuple(models), jobs=int(zoo["jobs"]),
               memory_budget_mb=int(zoo["memory_budget_mb"]))
