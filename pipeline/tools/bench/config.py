"""What ``make bench`` measures: the models and repetitions of ``configs/bench.toml``, and
the environment of its plain-conversion worker processes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import read_toml

REPO = Path(__file__).resolve().parents[3]
DEFAULT_BENCH = REPO / "configs" / "bench.toml"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}


@dataclass(frozen=True)
class BenchModel:
    model: str                      # a model spec, or "default" for the config's model
    name: str                       # folder name under OUT (the pipeline's model name)
    torchvision: str | None = None  # torchvision.models builder with the same architecture
    plain: bool = True              # also convert with plain tf2onnx + onnx2torch
    plain_skip_reason: str = ""


@dataclass(frozen=True)
class BenchConfig:
    models: list = field(default_factory=list)
    batches: tuple = (1, 32)
    rounds: dict = field(default_factory=lambda: {1: 9, 32: 3})
    warmup: int = 1
    compile: bool = True
    plain_rss_cap_mb: int = 8000    # plain tf2onnx is killed above this (it grows past 24 GB on VGG16)
    threads: int = 1                # intra-op threads of every candidate; 0: each framework's default
    train: bool = True              # the training row (train.py): one optimizer step per framework
    train_batch: int = 32
    train_warmup: int = 1
    train_rounds: int = 3           # timed steps per framework (median)


def load_config(path: Path) -> BenchConfig:
    raw = read_toml(Path(path), "bench config")
    b = raw.get("bench", {})
    models = [BenchModel(**m) for m in raw.get("models", [])]
    rounds = {int(k): int(v) for k, v in b.get("rounds", {"1": 9, "32": 3}).items()}
    return BenchConfig(models=models, batches=tuple(b.get("batches", (1, 32))), rounds=rounds,
                       warmup=int(b.get("warmup", 1)), compile=bool(b.get("compile", True)),
                       plain_rss_cap_mb=int(b.get("plain_rss_cap_mb", 8000)), threads=int(b.get("threads", 1)),
                       train=bool(b.get("train", True)), train_batch=int(b.get("train_batch", 32)),
                       train_warmup=int(b.get("train_warmup", 1)), train_rounds=int(b.get("train_rounds", 3)))


def load_keras(model: str):
    """In a TensorFlow process: (Keras model, settings, input specs [(name, shape, dtype)]) of
    a bench entry's ``model`` ("default": the default config's model), for the plain
    tf2onnx export (the timed Keras model is the one the pipeline exported: ``latency``)."""
    from pipeline.core.config import load_settings
    from pipeline.core.spec import resolve
    from pipeline.stages import export

    settings = load_settings(None, model=None if model == "default" else model)
    spec = resolve(settings.model, None)
    keras_model = export.load_model(spec, settings)
    return keras_model, settings, export.input_specs(keras_model, settings, spec.name)


def quiet_tf() -> None:
    """Before TensorFlow is imported: its environment as in the export stage (CPU, no C++ log)."""
    from pipeline.stages import export

    export.prepare()
