"""The model to export: Keras 3, tf.keras ``.h5``, a SavedModel signature, a builder or a
``keras.applications`` model, with its custom objects; batch norm calibration.
File checks before a loader sees a file are in ``modelfile.py``, SavedModel signatures in
``savedmodel.py``. TensorFlow process only.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.spec import ModelSpec
from pipeline.stages.export import modelfile, tfenv
from pipeline.stages.export.savedmodel import SavedModelSignature, load_signature


def custom_objects(settings: Settings, model: str) -> dict:
    """{class name: class} of ``settings.custom_objects`` ("pkg.module:Name"), imported."""
    objs = {}
    for entry in settings.custom_objects:
        mod, _, attr = entry.partition(":")
        try:
            objs[attr or mod.rsplit(".", 1)[-1]] = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError, ValueError) as e:
            raise PipelineError("export", f"cannot import custom object {entry!r}: {e}", model=model,
                                hint='custom_objects entries look like "my_pkg.layers:MyLayer" and must be importable') from e
    return objs


def load_model(spec: ModelSpec, settings: Settings):
    """The Keras (or tf.keras) model, or a SavedModel signature, named by ``spec``; with
    ``settings.calibrate_batchnorm``, its batch norms' statistics set from the reference
    inputs (the same every time: seeded)."""
    from pipeline.stages.export.reference import check_no_string_inputs, input_specs, reference_inputs

    tfenv.import_tf()
    model = _load_model(spec, settings)
    if settings.calibrate_batchnorm and not isinstance(model, SavedModelSignature):
        specs = input_specs(model, settings, spec.name)
        check_no_string_inputs(specs, model, spec.name)
        calibrate_batchnorm(model, reference_inputs(specs, model, settings))
    return model


def calibrate_batchnorm(model, feeds: dict) -> int:
    """Set every BatchNormalization's moving mean and variance to the statistics of its input
    on ``feeds`` (one training-mode call with momentum 0); returns how many were set.

    For models with random weights (``weights=None``): batch norms then normalise as trained
    ones do, where their initial statistics (0, 1) let activations grow layer after layer
    until float32 rounding dominates the outputs (EfficientNetV2L's logits: 2e10, and Keras'
    own float32 result as far from the float64 one as the logits are large)."""
    import keras

    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    if not bns:
        return 0
    momenta = [l.momentum for l in bns]
    for l in bns:
        l.momentum = 0.0
    xs = list(feeds.values())
    try:
        model(xs if len(xs) > 1 else xs[0], training=True)
    finally:
        for l, m in zip(bns, momenta):
            l.momentum = m
    return len(bns)


def _load_model(spec: ModelSpec, settings: Settings):
    import keras

    keras.utils.set_random_seed(settings.seed)
    custom = custom_objects(settings, spec.name)
    facts = modelfile.check(spec.kind, spec.target, spec.name) if spec.kind in ("keras", "h5") else {}
    try:
        if spec.kind == "zoo":
            app = getattr(keras.applications, spec.target, None)
            if app is None or not callable(app):
                raise PipelineError("export", f"keras.applications has no model {spec.target!r}", model=spec.name)
            kwargs = {"weights": None}
            shape = settings.input_shapes.get("*")
            if shape:
                kwargs["input_shape"] = tuple(shape)
            try:
                return app(classifier_activation=None, **kwargs)
            except TypeError:
                return app(**kwargs)
        if spec.kind == "builder":
            file, _, fn = spec.target.rpartition(":")
            mod_name = f"_pipeline_builder_{Path(file).stem}"
            module_spec = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            module_spec.loader.exec_module(module)
            builder = getattr(module, fn, None)
            if builder is None:
                raise PipelineError("export", f"{file} has no function {fn!r}", model=spec.name)
            model = builder()
            if not isinstance(model, keras.Model):
                raise PipelineError("export", f"builder {spec.target} returned {type(model).__name__}, not a keras.Model",
                                    model=spec.name)
            return model
        if spec.kind == "keras":
            return keras.saving.load_model(spec.target, custom_objects=custom or None,
                                           compile=False, safe_mode=not settings.unsafe)
        if spec.kind == "h5":
            import tf_keras
            from tf_keras.src.saving.serialization_lib import SafeModeScope

            # tf_keras' legacy .h5 loader runs Lambda bytecode unless safe mode is set explicitly
            with SafeModeScope(safe_mode=not settings.unsafe):
                return tf_keras.models.load_model(spec.target, custom_objects=custom or None, compile=False)
        if spec.kind == "savedmodel":
            return load_signature(spec)
    except PipelineError:
        raise
    except Exception as e:  # every loader raises its own types; wrap them with where and what
        message, hint = modelfile.explain(e, facts, "tf_keras" if spec.kind == "h5" else "keras")
        raise PipelineError("export", message, model=spec.name, hint=hint or _load_hint(e)) from e
    raise PipelineError("export", f"unknown model kind {spec.kind!r}", model=spec.name)


def _load_hint(e: Exception) -> str | None:
    text = str(e)
    if "Lambda" in text or "safe_mode" in text:
        return "the model holds serialized code (a Lambda layer); convert it only if you trust the file, with --unsafe"
    if "Unknown layer" in text or "Could not locate class" in text or "custom_objects" in text:
        return 'register the class: custom_objects = ["my_pkg.layers:MyLayer"] in the config, or --custom-object my_pkg.layers:MyLayer'
    return None


def layer_list(model) -> list[dict]:
    """Name and class of each top-level layer (``meta.json`` ``keras_layers``)."""
    return [{"name": l.name, "class": type(l).__name__} for l in getattr(model, "layers", [])]
