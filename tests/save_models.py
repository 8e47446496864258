"""Write model files for the tests, in a process of its own (TensorFlow stays out of pytest).

    python tests/save_models.py OUT_DIR

writes OUT_DIR/<builder>.keras (Keras 3), OUT_DIR/<builder>.h5 (tf.keras 2 through the
tf-keras package, the format Keras 2 users have), OUT_DIR/<builder>_savedmodel/ and
OUT_DIR/tf_keras_conv2d_savedmodel/ (tf.keras 2's SavedModel: a fused batch norm).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402


def tf_keras_conv2d(path: Path) -> None:
    """The same architecture as models.conv2d_flatten_dense, built and saved by tf.keras 2."""
    import numpy as np
    import tf_keras

    tf_keras.utils.set_random_seed(1)
    L = tf_keras.layers
    x = tf_keras.Input((12, 10, 3), name="image")
    y = L.Conv2D(6, 3, padding="same", name="conv")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.ReLU(name="relu")(y)
    y = L.MaxPooling2D(name="pool")(y)
    y = L.Conv2D(4, 3, name="conv2")(y)
    y = L.Flatten(name="flatten")(y)
    m = tf_keras.Model(x, L.Dense(7, name="dense")(y))
    models.perturb(m)
    m.save(str(path), save_format="h5")
    m.save(str(path.with_name("tf_keras_conv2d_savedmodel")), save_format="tf")   # as older TF wrote them
    seq = tf_keras.Sequential([tf_keras.Input((32, 2)), L.Conv1D(3, 5, activation="relu"),
                               L.Flatten(), L.Dense(2)])
    models.perturb(seq)
    seq.save(str(path.with_name("tf_keras_sequential_conv1d.h5")), save_format="h5")
    np.save(path.with_suffix(".npy"), np.zeros(1))  # marker that the h5 files are complete


def main(out: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("conv1d_flatten_dense", "sequential_conv2d", "multi_io"):
        getattr(models, name)().save(out / f"{name}.keras")
    models.conv3d_flatten_dense().export(str(out / "conv3d_savedmodel"), verbose=False)
    tf_keras_conv2d(out / "tf_keras_conv2d.h5")


if __name__ == "__main__":
    main(sys.argv[1])
