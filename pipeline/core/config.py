"""Conversion settings: defaults, overridden by a TOML config, overridden by flags."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import PipelineError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.toml"


@dataclass(frozen=True)
class Settings:
    """Everything that changes a conversion's result; recorded in each report."""

    model: str | None = None          # model spec (file, SavedModel dir, builder, zoo name)
    name: str | None = None           # folder name under OUT; derived from the spec if unset
    seed: int = 0
    batch: int = 2                    # reference batch size
    opset: int = 17                   # onnx2torch lacks some opset-18 converters
    rtol: float = 1e-5
    atol: float = 1e-7
    # non-batch input shapes for inputs with unknown dimensions: {input name: [dims]},
    # or {"*": [dims]} for every input
    input_shapes: dict = field(default_factory=dict)
    # sizes at which free (None) dims are checked first (reference inputs), same form as
    # input_shapes; unset dims get a default (export.reference.default_size); they stay free
    reference_shapes: dict = field(default_factory=dict)
    # integer inputs drawn in [lo, hi): {input name: [lo, hi]} ("*": every integer input);
    # unset: the range of the Embedding/CategoryEncoding/IntegerLookup the input feeds
    input_ranges: dict = field(default_factory=dict)
    channels_last_inputs: bool = False   # keep Keras' NHWC layout at the model inputs
    channels_last_outputs: bool = False  # ... and at its outputs
    fold_flatten_transpose: bool = True  # permute Dense rows instead of a runtime Transpose (torch)
    custom_objects: tuple = ()           # "pkg.module:Name" entries registered when loading
    unsafe: bool = False                 # allow Lambda layers / serialized code (Keras safe_mode off)
    # after a strict mismatch, judge at Keras' own float32 precision (measured in float64)
    float64_check: bool = True
    # batch norm statistics from the reference inputs (random-weight models: see export.calibrate_batchnorm)
    calibrate_batchnorm: bool = False

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["custom_objects"] = list(self.custom_objects)
        return d


_FIELDS = {f.name for f in dataclasses.fields(Settings)}


def parse_shape(text: str) -> dict:
    """``"128,1"`` -> {"*": [128, 1]}; ``"a=128,1;b=3"`` -> {"a": [128, 1], "b": [3]}."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, dims = part.rpartition("=")
        try:
            out[name.strip() or "*"] = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError as e:
            raise PipelineError("config", f"cannot parse input shape {text!r}: {e}",
                                hint='use e.g. --input-shape 128,1 or --input-shape "a=128,1;b=10"') from e
    return out


def parse_ranges(text: str) -> dict:
    """``"ids=0:100;seg=0:2"`` -> {"ids": [0, 100], "seg": [0, 2]} (hi exclusive; no name: every input)."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, rng = part.rpartition("=")
        try:
            lo, hi = (int(v) for v in rng.split(":"))
        except ValueError as e:
            raise PipelineError("config", f"cannot parse input range {part!r}: {e}",
                                hint='use e.g. --input-range ids=0:100 or --input-range "ids=0:100;seg=0:2"') from e
        if hi <= lo:
            raise PipelineError("config", f"input range {part!r} is empty (hi is exclusive)")
        out[name.strip() or "*"] = [lo, hi]
    return out


def read_toml(path: Path, what: str = "config file") -> dict:
    """The TOML file ``path``; a missing or malformed one is a config error naming it."""
    if not path.is_file():
        raise PipelineError("config", f"{what} {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PipelineError("config", f"{what} {str(path)!r} is not valid TOML: {e}") from e


def load_settings(config: str | Path | None = None, **overrides) -> Settings:
    """Defaults <- config file (default: configs/default.toml) <- non-None overrides."""
    path = Path(config) if config else DEFAULT_CONFIG
    values: dict = {}
    if config or path.exists():
        raw = read_toml(path)
        unknown = set(raw) - _FIELDS - {"zoo", "models"}
        if unknown:
            raise PipelineError("config", f"unknown keys {sorted(unknown)} in {str(path)!r}",
                                hint=f"known keys: {sorted(_FIELDS)}")
        values = {k: v for k, v in raw.items() if k in _FIELDS}
        if isinstance(values.get("model"), str) and ":" in values["model"] and not values["model"].startswith("keras."):
            # builder paths in a config are relative to the config file
            file, _, fn = values["model"].rpartition(":")
            if not Path(file).is_absolute() and not Path(file).exists():
                values["model"] = f"{path.parent / file}:{fn}"
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("input_shapes", "reference_shapes"):
        if isinstance(values.get(key), str):
            values[key] = parse_shape(values[key])
        if isinstance(values.get(key), list):
            values[key] = {"*": values[key]}
    if isinstance(values.get("input_ranges"), str):
        values["input_ranges"] = parse_ranges(values["input_ranges"])
    if "custom_objects" in values:
        values["custom_objects"] = tuple(values["custom_objects"])
    return Settings(**values)
