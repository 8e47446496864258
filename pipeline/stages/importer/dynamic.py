"""``model.pt2``'s dynamic dimensions: the batch, and one ``torch.export.Dim`` per dim the
export stage left free (``meta.json`` ``free_dims``, Keras axes), moved to the axis the
torch model takes it on (channels-first inputs, ``rewrite.json``).

torch.export checks the graph's guards against that spec. Sizes are size-oblivious
(``backed_size_oblivious``: a free size is not assumed to be 1, so ops do not guard on it;
compare checks length 1 where Keras takes it). Where the guards narrow the spec, torch's
suggested fixes (``refine_dynamic_shapes_from_suggested_fixes``) are applied and recorded: a
range or a relation (``8*_x_len``) keeps the dim dynamic, a dim specialized to a value makes
it static. A guard no range expresses (``ceil(L / 4) != 1``, from a permute's strides) is left
to torch as a runtime check (``Dim.AUTO``; ``pt2_guards``: model.pt2 refuses those sizes with
"Guard failed", and compare records them as skipped for model.pt2); a failure beyond that
makes the free dims static. ``import.json`` records each (``dynamic_dims``, ``fixed_dims``
with torch's reason, ``dim_constraints``, ``pt2_guards``).
"""

from __future__ import annotations

import re

from pipeline.core.perm import to_first

AXIS_NAMES = {3: {1: "len"}, 4: {1: "height", 2: "width"}, 5: {1: "depth", 2: "height", 3: "width"}}
MAX_TRIES = 4


def dim_name(inp: str, axis: int, rank: int) -> str:
    """``x_len``, ``img_height``: a free Keras ``axis`` of input ``inp`` as an identifier."""
    base = re.sub(r"\W", "_", inp).strip("_") or "input"
    base = base if not base[0].isdigit() else f"i_{base}"
    return f"{base}_{AXIS_NAMES.get(rank, {}).get(axis, f'd{axis}')}"


def free_axes(meta: dict, facts: dict) -> list[dict]:
    """Per input (meta.json order): {torch axis: (dim name, Keras axis)} of its free dims."""
    cf = set(facts.get("inputs_channels_first", []))
    out = []
    for i in meta["inputs"]:
        rank = len(i["shape"])
        perm = to_first(rank) if i["name"] in cf else tuple(range(rank))
        out.append({perm.index(k): (dim_name(i["name"], k, rank), k) for k in i.get("free_dims", [])})
    return out


def _reason(msg: str) -> str:
    """torch's first line, with the line that says which value or guard it needs."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    why = next((ln for ln in lines[1:] if re.search(r"Not all values|specialized|must be|guard", ln)), None)
    return (lines[0] if lines else "") + (f" ({why})" if why else "")


def _suggestions(msg: str) -> list[str]:
    lines = msg.splitlines()
    at = next((k for k, ln in enumerate(lines) if "Suggested fixes" in ln), None)
    if at is None:
        return []
    return [ln.strip() for ln in lines[at + 1:] if re.match(r"\s*\w+ = \S", ln)]   # ``x_len = Dim(...)``


def export_dynamic(module, args, meta: dict, facts: dict) -> tuple:
    """(the ``torch.export`` program, its facts for import.json). Raises torch's error when
    even the batch-only export fails."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    axes = free_axes(meta, facts)
    names = [i["name"] for i in meta["inputs"]]
    spec = tuple({0: batch, **{ax: torch.export.Dim(nm, min=1) for ax, (nm, _) in per.items()}} for per in axes)
    fixed, constraints, guards, auto = [], [], [], False

    def fix(i: int, ax: int, reason: str):
        nm, k = axes[i][ax]
        fixed.append({"input": names[i], "dim": k, "torch_axis": ax, "name": nm, "size": int(args[i].shape[ax]),
                      "by": "torch.export", "reason": reason[:500]})

    # size-oblivious only where there are free dims: with the batch alone it changes nothing but can
    # pin the batch (nn.GRU's decomposition, measured), which costs a second export of the whole model
    attempt, oblivious = 0, any(ax != 0 for per in spec for ax in per)
    while True:
        attempt += 1
        try:   # size-oblivious: a free size is not assumed to be 1 (no guard "L - 2 != 1" per op)
            with torch.fx.experimental._config.patch(backed_size_oblivious=oblivious):
                program = torch.export.export(module, args, dynamic_shapes=spec, strict=False)
            break
        except Exception as e:  # torch.export raises several types (UserError, ConstraintViolation, ...)
            msg = f"{type(e).__name__}: {e}"
            left = [(i, ax) for i, per in enumerate(spec) for ax in per if ax != 0]
            if not left and oblivious:   # measured: nn.GRU's decomposition pins the batch when size-oblivious
                oblivious = False
                continue
            if not left:
                raise
            new = None
            if attempt <= MAX_TRIES and _suggestions(msg):
                try:
                    fixes = "Suggested fixes:\n" + "\n".join(f"  {ln}" for ln in _suggestions(msg))
                    new = torch.export.dynamic_shapes.refine_dynamic_shapes_from_suggested_fixes(fixes, spec)
                except Exception:  # an unparsable suggestion: fall back to static dims below
                    new = None
            same = new is not None and [sorted(map(repr, d.items())) for d in new] == \
                [sorted(map(repr, d.items())) for d in spec]
            if (new is None or same) and not auto:   # a guard no Dim range expresses: torch keeps it as a check
                auto = True
                guards.append(_reason(msg))
                spec = tuple({ax: (d if ax == 0 else torch.export.Dim.AUTO) for ax, d in per.items()} for per in spec)
                continue
            if new is None or same:
                for i, ax in left:   # no usable suggestion: every free dim static
                    fix(i, ax, _reason(msg))
                spec = tuple({0: batch} for _ in spec)
                continue
            new = tuple(dict(d) for d in new)
            for i, ax in left:
                v = new[i].get(ax)
                if v is None or isinstance(v, int):
                    fix(i, ax, _reason(msg))
                    new[i].pop(ax, None)
            constraints += [s for s in _suggestions(msg) if not re.match(r"\w+ = \d+$", s)]
            spec = new
    if auto:   # Dim.AUTO: torch may still have specialized a dim; the program's inputs say
        vals = [n.meta["val"] for n in program.graph.find_nodes(op="placeholder")
                if n.name in program.graph_signature.user_inputs]
        for i, per in enumerate(spec):
            for ax in [ax for ax in per if ax != 0]:
                if isinstance(vals[i].shape[ax], int):
                    fix(i, ax, "torch.export specialized it (Dim.AUTO after: " + guards[-1] + ")")
                    per.pop(ax)
    dynamic = {names[i]: {str(k): nm for ax, (nm, k) in axes[i].items() if ax in spec[i]} for i in range(len(names))}
    return program, {"dynamic_dims": {k: v for k, v in dynamic.items() if v}, "fixed_dims": fixed,
                     "dim_constraints": constraints, "pt2_guards": guards if auto else []}
