"""``import/weights_map.json``: for every Keras variable, the torch state_dict key of the
port and the transform between them, so that weights (and gradients) move either way.

The generator says where each submodule's weights come from (``Generated.sources``: the
Keras layer; ``added_bias``: the zero biases it added back); within a layer a variable's
role (``kernel``, ``recurrent_kernel``, ``bias``, ``gamma``, ...) names the candidate keys.
A transform is only written when applying it to the Keras value (``export/keras_weights.npz``)
reproduces the torch tensor exactly; tried in order: the identity, an axis permutation
(``{"transpose": perm}``: ``torch = keras.transpose(perm)``), the gate blocks reordered
(``{"transpose": [1, 0], "gate_order": order, "gates": n}``: rows in blocks of
``len / n``), a Dense kernel whose rows the rewrite permuted (the Flatten folded,
``{"transpose": [1, 0], "row_permutation": p}``: ``torch = keras[p].T``). A GRU's bias
(2, 3H) is two rows: ``{"row": 0}`` and ``{"row": 1}``. A zero bias the generator added:
``{"added_zero": true}``. Anything else is listed under ``unmapped`` with the reason,
never guessed.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

from pipeline.core.recurrent import TORCH_GATE_ORDER, reorder_gates

_ROLES = {"kernel": ["weight", "weight_ih_l0", "kernel"], "recurrent_kernel": ["weight_hh_l0", "recurrent_kernel"],
          "bias": ["bias", "bias_ih_l0"], "gamma": ["weight"], "beta": ["bias"], "moving_mean": ["running_mean"],
          "moving_variance": ["running_var"], "embeddings": ["weight"]}
_GATES = {kind: (len(order), order) for kind, order in TORCH_GATE_ORDER.items()}


def _gates(a: np.ndarray, n: int, order: list[int]) -> np.ndarray:
    return reorder_gates(a, order, n)


def _transform(k: np.ndarray, t: np.ndarray, cls: str) -> dict | None:
    """The transform that makes ``k`` (Keras) exactly ``t`` (torch), or None. A recurrent
    layer's gate reorder is tried first (a zero bias matches the identity too)."""
    if cls in _GATES and _GATES[cls][0] > 1:
        n, order = _GATES[cls]
        kt = k.T if k.ndim == 2 else k
        if kt.shape == t.shape and np.array_equal(_gates(kt, n, order), t):
            return ({"transpose": [1, 0]} if k.ndim == 2 else {}) | {"gate_order": order, "gates": n}
    if k.shape == t.shape and np.array_equal(k, t):
        return {}
    if k.size != t.size:
        return None
    if k.ndim > 1:
        for perm in permutations(range(k.ndim)):
            if perm != tuple(range(k.ndim)) and k.transpose(perm).shape == t.shape and np.array_equal(k.transpose(perm), t):
                return {"transpose": list(perm)}
    if k.ndim == 2 and t.shape == k.T.shape:   # rows of a Dense kernel permuted (the Flatten folded)
        rows = {r.tobytes(): i for i, r in enumerate(k)}
        if len(rows) == k.shape[0]:
            p = [rows.get(c.tobytes()) for c in np.ascontiguousarray(t.T)]
            if None not in p and np.array_equal(k[p].T, t):
                return {"transpose": [1, 0], "row_permutation": p}
    return None


def apply(transform: dict, k: np.ndarray) -> np.ndarray:
    """The torch tensor from the Keras value ``k`` by ``transform`` (a row of the map)."""
    if "added_zero" in transform:
        return np.asarray(k)
    if "row" in transform:
        k = k[transform["row"]]
    if "row_permutation" in transform:
        k = k[transform["row_permutation"]]
    if "transpose" in transform:
        k = k.transpose(transform["transpose"])
    if "gate_order" in transform:
        k = _gates(k, transform["gates"], transform["gate_order"])
    return np.ascontiguousarray(k)


def build(keras_layers: list[dict], keras_values: dict | None, state: dict, sources: dict, added_bias: dict) -> dict:
    """``{"map": [...], "unmapped": [...], "modules": {submodule: Keras layer}}`` (see the
    module's docstring; ``modules`` names the layer of every submodule, weights or not)."""
    rows, unmapped, used = [], [], set()
    for entry in keras_layers:
        mods = [m for m, layer in sources.items() if layer == entry["name"]]
        for var in entry.get("variables", []):
            path, role = var["path"], var["path"].rsplit("/", 1)[-1]
            keys = [f"{m}.{r}{sfx}" for m in mods for r in _ROLES.get(role, []) for sfx in ("", "_reverse")]
            keys = [k for k in keys if k in state and k not in used]
            added = added_bias.get(entry["name"])
            if role == "bias" and added in keys:
                rows.append({"keras": path, "torch": added, "transform": {"added_zero": True}})
                used.add(added)
                continue
            if not keys:
                why = "no submodule of the port holds this layer's weights" if not mods else \
                    f"no parameter or buffer of {mods} takes the role {role!r}"
                unmapped.append({"keras": path, "reason": why})
                continue
            if keras_values is None or path not in keras_values:
                unmapped.append({"keras": path, "candidates": keys,
                                 "reason": "the Keras values were not kept (keras_weights.npz), so no transform is verified"})
                continue
            k = np.asarray(keras_values[path])
            found = None
            for key in keys:
                t = np.asarray(state[key])
                if entry["class"] == "GRU" and role == "bias" and k.ndim == 2 and key.startswith(tuple(mods)):
                    hh = key.replace("bias_ih", "bias_hh")
                    tr0, tr1 = _transform(k[0], t, "GRU"), _transform(k[1], np.asarray(state.get(hh, [])), "GRU")
                    if tr0 is not None and tr1 is not None:
                        found = [(key, {"row": 0} | tr0), (hh, {"row": 1} | tr1)]
                        break
                tr = _transform(k, t, entry["class"])
                if tr is not None:
                    found = [(key, tr)]
                    break
            if found is None:
                unmapped.append({"keras": path, "candidates": keys,
                                 "reason": "no transform tried (identity, axis permutation, gate reorder, "
                                           "row permutation) reproduces the torch tensor (folded into another op?)"})
                continue
            for key, tr in found:
                used.add(key)
                rows.append({"keras": path, "torch": key, "transform": tr})
    return {"map": rows, "unmapped": unmapped, "modules": dict(sources)}
