"""Keras builders for the per-layer debugging tests (``MODEL=tests/debug_models.py:NAME``)."""

import sys
from pathlib import Path

import keras

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import L, _seed, perturb  # noqa: E402


def concat_channels():
    """Two convolutions concatenated on the channel axis; square maps (H == W == C of each
    branch) so that a Concat on the wrong axis still runs to the end of the graph."""
    _seed()
    x = keras.Input((4, 4, 3), name="image")
    a = L.Conv2D(4, 3, padding="same", name="conv_a")(x)
    b = L.Conv2D(4, 1, name="conv_b")(x)
    y = L.Concatenate(name="concat")([a, b])
    y = L.ReLU(name="relu")(y)
    y = L.Flatten(name="flatten")(y)
    return perturb(keras.Model(x, L.Dense(3, name="dense")(y)))
