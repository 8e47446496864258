"""Write the bad and borderline model files of tests/test_errors.py, in a process of its own
(TensorFlow stays out of pytest).

    python tests/bad_inputs.py OUT_DIR

Valid files: ``valid.keras``, ``valid.h5`` (tf.keras), ``lambda.keras`` (a Lambda layer),
``lambda.h5`` (the same, tf.keras), ``custom.keras`` (the unregistered ``tests.custom_layers.ScaleShift``). Bad ones:
``empty.*``, ``truncated.*`` (the first half of a valid file), ``weights_only.h5``,
``future.keras`` (claims Keras 9.0 and a layer class Keras does not have),
``not_a_model.onnx``, ``no_savedmodel/`` (a folder without ``saved_model.pb``).
"""

import json
import os
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import keras  # noqa: E402

import models  # noqa: E402
from tests.custom_layers import ScaleShift  # noqa: E402

L = keras.layers


# The Lambdas touch $LAMBDA_MARKER when their code runs, so tests see whether a refused
# file's code was executed. A lambda is saved as bytecode: it must not use this module's names.
MARKING = (lambda t: (__import__("os").environ.get("LAMBDA_MARKER")
                      and __import__("pathlib").Path(__import__("os").environ["LAMBDA_MARKER"]).touch())
           or t * 2.0 + 1.0)


def _small(extra=None):
    keras.utils.set_random_seed(1)
    x = keras.Input((16, 3), name="x")
    y = L.Conv1D(4, 3, name="conv")(x)
    if extra is not None:
        y = extra(y)
    y = L.Flatten(name="flatten")(y)
    return models.perturb(keras.Model(x, L.Dense(2, name="dense")(y)))


def _future(valid: Path, path: Path) -> None:
    """``valid`` rewritten to claim a future Keras and a layer class from a module it lacks."""
    with zipfile.ZipFile(valid) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "metadata.json":
                meta = json.loads(data)
                meta["keras_version"] = "9.0.0"
                data = json.dumps(meta).encode()
            elif item.filename == "config.json":
                cfg = json.loads(data)
                conv = next(layer for layer in cfg["config"]["layers"] if layer["class_name"] == "Conv1D")
                conv["class_name"] = "HyperConv1D"
                conv["module"] = "keras.layers.future"
                conv["registered_name"] = None
                data = json.dumps(cfg).encode()
            dst.writestr(item, data)


def _tf_keras_files(out: Path) -> None:
    import tf_keras

    tf_keras.utils.set_random_seed(1)
    m = tf_keras.Sequential([tf_keras.Input((16, 3)), tf_keras.layers.Conv1D(4, 3), tf_keras.layers.Flatten(),
                             tf_keras.layers.Dense(2)])
    models.perturb(m)
    m.save(str(out / "valid.h5"), save_format="h5")
    m.save_weights(str(out / "weights_only.h5"))
    lam = tf_keras.Sequential([tf_keras.Input((16, 3)), tf_keras.layers.Lambda(MARKING, name="times_two"),
                               tf_keras.layers.Flatten(), tf_keras.layers.Dense(2)])
    models.perturb(lam)
    lam.save(str(out / "lambda.h5"), save_format="h5")


def main(out: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _small().save(out / "valid.keras")
    _small(L.Lambda(MARKING, name="times_two")).save(out / "lambda.keras")
    _small(ScaleShift(name="scale_shift")).save(out / "custom.keras")
    _future(out / "valid.keras", out / "future.keras")
    _tf_keras_files(out)
    for ext in ("keras", "h5"):
        (out / f"empty.{ext}").write_bytes(b"")
        data = (out / f"valid.{ext}").read_bytes()
        (out / f"truncated.{ext}").write_bytes(data[: len(data) // 2])
    (out / "not_a_model.onnx").write_bytes(b"\x08\x07")
    (out / "no_savedmodel").mkdir(exist_ok=True)
    (out / "no_savedmodel" / "variables.txt").write_text("not a SavedModel\n")


if __name__ == "__main__":
    main(sys.argv[1])
