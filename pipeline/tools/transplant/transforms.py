"""Keras variables in the layout a hand-written PyTorch module holds them.

For each Keras layer kind, the parameters and buffers the PyTorch module of that kind has
(``slots``: torch name -> Keras variable and transform) and the shapes they take, so that a
user's module can be matched by kind and shape alone. A transform is a dict applied in this
order (``apply``): ``row`` (one row of a GRU's (2, 3H) bias), ``row_permutation`` (a Dense
after a Flatten of channels-first data, ``--fold-flatten``), ``transpose`` (axis
permutation), ``reshape`` (a depthwise kernel), ``gate_order``/``gates`` (Keras' gate blocks
in torch's order), ``zero`` (a torch parameter Keras does not have, e.g. ``bias_hh_l0`` of
an LSTM: zeros of ``shape``). The same vocabulary as ``import/weights_map.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.recurrent import TORCH_GATE_ORDER, reorder_gates


@dataclass(frozen=True)
class Slot:
    """One torch parameter or buffer: where its value comes from and the shape it has."""

    keras: str | None          # Keras variable path (None: filled, see ``transform["zero"]``)
    transform: dict = field(default_factory=dict)
    shape: tuple = ()


def shape_after(transform: dict, shape: tuple) -> tuple:
    """The shape ``apply(transform, k)`` has for ``k`` of ``shape``, without the data."""
    if "zero" in transform:
        return tuple(transform["shape"])
    s = tuple(shape)
    if "row" in transform:
        s = s[1:]
    if "transpose" in transform:
        s = tuple(s[i] for i in transform["transpose"])
    if "reshape" in transform:
        s = tuple(transform["reshape"])
    return s


def apply(transform: dict, k: np.ndarray | None) -> np.ndarray:
    """The torch value from the Keras value ``k`` (see the module docstring)."""
    if "zero" in transform:
        return np.zeros(transform["shape"], dtype=np.float32)
    if "row" in transform:
        k = k[transform["row"]]
    if "row_permutation" in transform:
        k = k[np.asarray(transform["row_permutation"])]
    if "transpose" in transform:
        k = k.transpose(transform["transpose"])
    if "reshape" in transform:
        k = k.reshape(transform["reshape"])
    if "gate_order" in transform:
        k = reorder_gates(k, transform["gate_order"], transform["gates"])
    return np.ascontiguousarray(k)


_CONV = {f"Conv{n}D": n for n in (1, 2, 3)} | {f"Conv{n}DTranspose": n for n in (1, 2, 3)}
_DEPTHWISE = {"DepthwiseConv1D": 1, "DepthwiseConv2D": 2}
_NORMS = {"BatchNormalization": {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                                 "moving_variance": "running_var"},
          "LayerNormalization": {"gamma": "weight", "beta": "bias"}}
_RNN = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


def slots(entry: dict) -> dict[str, Slot] | None:
    """{torch name: Slot} for a ``meta.json`` ``keras_layers`` entry, or None for a kind
    without a rule here (it is then listed as unmatched, with its variables' shapes)."""
    cls, out = entry["class"], {}
    for var in entry.get("variables", []):
        path, shape = var["path"], tuple(var["shape"])
        role = path.rsplit("/", 1)[-1]
        if cls in _CONV and role in ("kernel", "bias"):
            nd = _CONV[cls]
            tr = {"transpose": [nd + 1, nd, *range(nd)]} if role == "kernel" else {}
            out["weight" if role == "kernel" else "bias"] = Slot(path, tr, shape_after(tr, shape))
        elif cls in _DEPTHWISE and role in ("kernel", "depthwise_kernel", "bias"):
            nd = _DEPTHWISE[cls]
            if role == "bias":
                out["bias"] = Slot(path, {}, shape)
            else:   # (k..., in, mult) -> (in * mult, 1, k...)
                tr = {"transpose": [nd, nd + 1, *range(nd)], "reshape": [shape[nd] * shape[nd + 1], 1, *shape[:nd]]}
                out["weight"] = Slot(path, tr, shape_after(tr, shape))
        elif cls == "Dense" and role in ("kernel", "bias") and len(shape) <= 2:
            tr = {"transpose": [1, 0]} if role == "kernel" else {}
            out["weight" if role == "kernel" else "bias"] = Slot(path, tr, shape_after(tr, shape))
        elif cls in _NORMS and role in _NORMS[cls]:
            out[_NORMS[cls][role]] = Slot(path, {}, shape)
        elif cls == "Embedding" and role == "embeddings":
            out["weight"] = Slot(path, {}, shape)
        elif cls in _RNN and role in ("kernel", "recurrent_kernel", "bias"):
            gates, order = _RNN[cls], TORCH_GATE_ORDER[cls]
            g = {"gate_order": order, "gates": gates} if gates > 1 else {}
            if role != "bias":
                tr = {"transpose": [1, 0]} | g
                out["weight_ih_l0" if role == "kernel" else "weight_hh_l0"] = Slot(path, tr, shape_after(tr, shape))
            elif len(shape) == 2:   # GRU reset_after=True: input and recurrent bias rows
                out["bias_ih_l0"] = Slot(path, {"row": 0} | g, shape[1:])
                out["bias_hh_l0"] = Slot(path, {"row": 1} | g, shape[1:])
            else:
                out["bias_ih_l0"] = Slot(path, g, shape)
                out["bias_hh_l0"] = Slot(None, {"zero": True, "shape": list(shape)}, shape)
        else:
            return None
    return out or None


def flatten_permutation(keras_shape: tuple) -> list[int] | None:
    """For a Flatten of Keras' ``(N, *S, C)`` (``keras_shape`` without N): ``p`` with
    ``p[c * prod(S) + s] = s * C + c``, so that a Dense kernel ``K[p]`` meets the features of
    a channels-first flatten in Keras' order. None when there is nothing to permute."""
    if len(keras_shape) < 2:
        return None
    c, sp = keras_shape[-1], math.prod(keras_shape[:-1])
    if c == 1 or sp == 1:
        return None
    return np.arange(sp * c).reshape(sp, c).T.reshape(-1).tolist()
