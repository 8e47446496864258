"""Check 5 of the training check: each dropout-family module of the port, in ``train()`` at
its own rate, drops or perturbs as Keras does, measured on a positive input of the shape
the module sees in the model, repeated until there are at least ``MIN_UNITS`` units:

- ``nn.Dropout``: the fraction of zeros is the rate, the kept units are scaled by
  ``1 / (1 - rate)`` (Keras' inverted dropout);
- ``nn.Dropout1d/2d/3d``, ``KerasSpatialDropout``: whole channels (every element of a
  (sample, channel) map) are zero or kept; the fraction of dropped channels is the rate;
- ``nn.AlphaDropout``: dropped units take Keras' value ``a * alpha_p + b`` and kept ones
  ``a * x + b`` (``alpha_p = -1.6733 * 1.0507``, ``a = ((1 - rate) * (1 + rate * alpha_p**2))**-0.5``,
  ``b = -a * alpha_p * rate``); the fraction dropped is the rate;
- ``KerasGaussianNoise``: ``y - x`` has mean 0 and std ``stddev``;
- ``KerasGaussianDropout``: ``y / x`` has mean 1 and std ``sqrt(rate / (1 - rate))``.

- ``KerasLSTM``/``KerasGRU``/``KerasSimpleRNN`` (Keras' ``dropout``/``recurrent_dropout``): the
  masks the module drew in one train-mode call (``masks``: input, recurrent) are one
  (batch, features) tensor per gate (LSTM 4, GRU 3 with ``per_gate``, else 1), used at every
  step (the module multiplies every step by the same tensors; the check asserts their shape);
  each rate's fraction of zeros is the rate, the kept entries are ``1 / (1 - rate)``.

A fraction passes within ``Z`` standard errors (``sqrt(p (1 - p) / n)``) of the rate; a
standard deviation within ``Z`` standard errors (``sigma / sqrt(2 n)``) of its value, a mean
within ``Z * sigma / sqrt(n)``.
"""

from __future__ import annotations

import math

import numpy as np

Z = 3.0
MIN_UNITS = 20000      # elements (channels, for the spatial kinds) drawn per module
SCALE_RTOL = 1e-5      # kept units: y = x / (1 - rate) (alpha: a * x + b) to this relative error
ALPHA_P = -1.6732632423543772 * 1.0507009873554805


def _fraction(name, kind, rate, dropped: np.ndarray, n: int, **extra) -> dict:
    f = float(dropped.mean())
    se = math.sqrt(rate * (1 - rate) / n)
    return {"module": name, "kind": kind, "rate": rate, "measured": f, "units": n, "standard_error": se,
            "ok": abs(f - rate) <= Z * se and all(extra.get(k, True) for k in ("scaled", "whole_channels")),
            **extra}


def check_module(name: str, m, shape: tuple, seed: int) -> dict | None:
    """The figures of check 5 for one module (None: not a dropout-family module)."""
    import torch

    kind = type(m).__name__
    spatial = kind in ("Dropout1d", "Dropout2d", "Dropout3d", "KerasSpatialDropout")
    if kind not in ("Dropout", "AlphaDropout", "KerasGaussianNoise", "KerasGaussianDropout") and not spatial:
        return None
    axis = getattr(m, "axis", 1) if spatial else None
    per_sample = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    units_per_sample = shape[axis] if spatial else per_sample
    reps = max(1, math.ceil(MIN_UNITS / max(units_per_sample, 1)))
    gen = torch.Generator().manual_seed(seed)
    x = 0.5 + torch.rand((reps, *shape[1:]), generator=gen)
    torch.manual_seed(seed)
    m.train()
    with torch.no_grad():
        y = m(x)
    if kind in ("Dropout", "AlphaDropout") or spatial:
        rate = float(m.p)
        if kind == "AlphaDropout":
            a = ((1 - rate) * (1 + rate * ALPHA_P ** 2)) ** -0.5
            b = -a * ALPHA_P * rate
            dropped = torch.isclose(y, torch.full_like(y, a * ALPHA_P + b), rtol=SCALE_RTOL, atol=1e-7)
            kept = torch.isclose(y, a * x + b, rtol=SCALE_RTOL, atol=1e-7)
            return _fraction(name, kind, rate, dropped.numpy(), y.numel(), scaled=bool((dropped | kept).all()))
        dropped = y == 0
        scaled = bool(torch.allclose(y[~dropped], (x / (1 - rate))[~dropped], rtol=SCALE_RTOL, atol=0))
        if not spatial:
            return _fraction(name, kind, rate, dropped.numpy(), y.numel(), scaled=scaled)
        maps = dropped.movedim(axis, 1).reshape(reps, shape[axis], -1)
        whole = bool((maps.all(-1) | (~maps).all(-1)).all())
        return _fraction(name, kind, rate, maps.all(-1).numpy(), reps * shape[axis], scaled=scaled,
                         whole_channels=whole)
    if kind == "KerasGaussianNoise":
        rate, target, noise = float(m.stddev), float(m.stddev), (y - x).double()
        mean_ref = 0.0
    else:
        rate = float(m.p)
        target, noise, mean_ref = math.sqrt(rate / (1 - rate)), (y / x).double(), 1.0
    n = noise.numel()
    std, mean = float(noise.std()), float(noise.mean())
    se = target / math.sqrt(2 * n)
    ok = abs(std - target) <= Z * se and abs(mean - mean_ref) <= Z * target / math.sqrt(n)
    return {"module": name, "kind": kind, "rate": rate, "expected_std": target, "measured_std": std,
            "measured_mean": mean, "expected_mean": mean_ref, "units": n, "standard_error": se, "ok": ok}


RECURRENT = ("KerasLSTM", "KerasGRU", "KerasSimpleRNN")


def check_recurrent(name: str, m, shape: tuple, keras_rates: dict, seed: int) -> list[dict]:
    """Check 5 for a recurrent cell module: one entry per dropout argument Keras has."""
    import torch

    features = {"dropout": shape[-1], "recurrent_dropout": m.units}
    reps = max(1, math.ceil(MIN_UNITS / max(1, min(features.values()))))
    gen = torch.Generator().manual_seed(seed)
    x = 0.5 + torch.rand((reps, *shape[1:]), generator=gen)
    torch.manual_seed(seed)
    m.train()
    with torch.no_grad():
        m(x)
    masks = dict(zip(("dropout", "recurrent_dropout"), m.masks or (None, None)))
    out = []
    for attr, keras_rate in sorted(keras_rates.items()):
        rate = float(getattr(m, attr))
        got = masks.get(attr)
        entry = {"module": name, "kind": f"recurrent {attr}", "rate": rate}
        if got is None:
            out.append({**entry, "ok": False, "error": f"the module drew no {attr} mask in train()"})
            continue
        mk = torch.stack(got)   # (gates, batch, features): one mask per call, the same at every step
        dropped = mk == 0
        scaled = bool(torch.allclose(mk[~dropped], torch.full_like(mk[~dropped], 1 / (1 - rate)),
                                     rtol=SCALE_RTOL, atol=0))
        shape_ok = tuple(mk.shape) == (m.gates, reps, features[attr])
        r = _fraction(name, entry["kind"], rate, dropped.numpy(), mk.numel(), scaled=scaled, gates=m.gates,
                      per_call_mask=shape_ok)
        r["ok"] = r["ok"] and shape_ok
        if not math.isclose(rate, keras_rate, rel_tol=1e-9):
            r.update(ok=False, keras_rate=keras_rate, error=f"the module's rate {rate:g} is not Keras' {keras_rate:g}")
        out.append(r)
    return out


def check(model, shapes: dict[str, tuple], rates: dict[str, dict], own: dict[str, dict], seed: int) -> list[dict]:
    """Check 5 for every module of ``rates`` ({module: {attr: rate}}: Keras' rates of the
    layers the modules come from), at the input shape it saw (``shapes``). The module runs
    at the rate it was generated with (``own``: the rates ``torch_side.zero_rates`` set to 0,
    put back here); the figures are compared with Keras' rate, so a port generated with
    another rate fails."""
    out = []
    for k, (name, attrs) in enumerate(sorted(rates.items())):
        try:
            m = model.get_submodule(name)
        except AttributeError:
            out.append({"module": name, "ok": False, "error": "the Keras layer has no module in the port"})
            continue
        for attr, rate in own.get(name, {}).items():
            setattr(m, attr, rate)
        if name not in shapes:
            out.append({"module": name, "ok": False, "error": "the module did not run in the forward pass"})
            continue
        if type(m).__name__ in RECURRENT:
            out += check_recurrent(name, m, shapes[name], attrs, seed + k)
            continue
        r = check_module(name, m, shapes[name], seed + k)
        if r is None and set(attrs) <= {"dropout", "recurrent_dropout"}:
            out.append({"module": name, "kind": "recurrent dropout", "rate": attrs, "ok": False,
                        "error": f"the port's {type(m).__name__} does not drop in train() (Keras' dropout/"
                                 "recurrent_dropout need the Keras<kind> cell module)"})
            continue
        if r is None:
            continue
        keras_rate = next(iter(attrs.values()))
        if not math.isclose(r["rate"], keras_rate, rel_tol=1e-9):   # the port's own rate differs from Keras'
            r.update(ok=False, keras_rate=keras_rate,
                     error=f"the module's rate {r['rate']:g} is not Keras' {keras_rate:g}")
        out.append(r)
    return out
