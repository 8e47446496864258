"""Pairing the user's modules with the Keras layers, by kind and shape, in execution order.

A *unit* is a module of the user's that holds parameters or buffers itself (``nn.Conv2d``,
``nn.Linear``, ``nn.BatchNorm2d``, ``nn.LSTM``, ...). Its signature is {name: shape} of
those (``num_batches_tracked`` aside); a Keras layer's is the one ``transforms.slots`` gives
(the torch names and shapes its variables take in PyTorch's layout). A unit is paired with
the first unpaired Keras layer, in Keras' order, whose signature is the same; units are
taken in the order the user's ``forward`` first calls them (a traced run). Where several
Keras layers fit, the pair is still made by order, and ``ambiguous`` lists the others: the
per-layer comparison then checks the choice by measurement. Whatever fits nothing is
listed with its shapes (``unmatched_user``, ``unmatched_keras``), never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.tools.transplant.transforms import Slot, slots

SKIP_BUFFERS = ("num_batches_tracked",)


@dataclass
class Pair:
    unit: str            # the user's module name
    layer: str           # the Keras layer
    keras_class: str
    slots: dict[str, Slot]
    ambiguous: list[str] = field(default_factory=list)


def unit_signature(module) -> dict[str, tuple]:
    sig = {n: tuple(p.shape) for n, p in module.named_parameters(recurse=False)}
    sig |= {n: tuple(b.shape) for n, b in module.named_buffers(recurse=False)
            if b is not None and n not in SKIP_BUFFERS}
    return sig


def units(model, order: list[str]) -> list[str]:
    """Module names holding parameters/buffers themselves, in call order (never-called last)."""
    have = [n for n, m in model.named_modules() if unit_signature(m)]
    rank = {n: i for i, n in enumerate(order)}
    return sorted(have, key=lambda n: (rank.get(n, len(rank)), have.index(n)))


def match(model, order: list[str], keras_layers: list[dict]) -> dict:
    """``{"pairs": [Pair], "unmatched_user": [...], "unmatched_keras": [...]}``."""
    keras = []
    unmatched_keras = []
    for e in keras_layers:
        if not e.get("variables"):
            continue
        s = slots(e)
        if s is None:
            unmatched_keras.append({"layer": e["name"], "class": e["class"],
                                    "variables": {v["path"]: v["shape"] for v in e["variables"]},
                                    "reason": f"no rule for Keras {e['class']} (see transplant/transforms.py)"})
        else:
            keras.append((e, s, {n: tuple(sl.shape) for n, sl in s.items()}))
    used, pairs, unmatched_user = set(), [], []
    mods = dict(model.named_modules())
    for name in units(model, order):
        sig = unit_signature(mods[name])
        fits = [(e, s) for e, s, ks in keras if e["name"] not in used and ks == sig]
        if not fits:
            unmatched_user.append({"module": name, "type": type(mods[name]).__name__,
                                   "tensors": {k: list(v) for k, v in sig.items()},
                                   "called": name in order,
                                   "reason": "no unpaired Keras layer has these names and shapes in PyTorch's layout"})
            continue
        e, s = fits[0]
        used.add(e["name"])
        pairs.append(Pair(name, e["name"], e["class"], s, [f[0]["name"] for f in fits[1:]]))
    for e, _, ks in keras:
        if e["name"] not in used:
            unmatched_keras.append({"layer": e["name"], "class": e["class"],
                                    "torch_layout": {k: list(v) for k, v in ks.items()},
                                    "reason": "no module of the user's has these tensors"})
    return {"pairs": pairs, "unmatched_user": unmatched_user, "unmatched_keras": unmatched_keras}
