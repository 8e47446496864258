"""Naming the first module of the user's that diverges, and explaining it by measurement.

Round by round: the first paired module out of tolerance is handed to each trap that can
apply (``traps.candidates``); a trap explains it when, with its patch on, that module
reproduces its Keras layer. The patch then stays on (for the rest of the diagnosis only:
every patch is undone at the end) and the next divergence, if any, is diagnosed, so that a
model with several traps (MobileNetV2: asymmetric padding at each strided conv, and
torch's batch-norm epsilon) gets each of them named. A divergence no trap explains ends
the diagnosis: it is reported as unexplained, with its errors.
"""

from __future__ import annotations

from contextlib import ExitStack

from pipeline.tools.transplant.tracing import first_failing
from pipeline.tools.transplant.traps import Context, candidates

MAX_ROUNDS = 100


def _row(rows: list[dict], module: str) -> dict | None:
    return next((r for r in rows if r["module"] == module), None)


def diagnose(rerun, context_for, rows: list[dict], max_rounds: int = MAX_ROUNDS) -> tuple[list[dict], list[dict]]:
    """(findings, the per-layer rows with every explaining patch on).

    ``rerun()`` runs the per-layer comparison with the model as it is now; ``context_for(row)``
    gives the trap ``Context`` of a failing row."""
    findings: list[dict] = []
    with ExitStack() as kept:
        for _ in range(max_rounds):
            bad = first_failing(rows)
            if bad is None:
                break
            c: Context = context_for(bad)
            hit, tried = None, []
            for name, patch, message in candidates(c):
                cm = patch(c)
                cm.__enter__()
                after = _row(rows2 := rerun(), bad["module"])
                tried.append(name)
                if after is not None and after["ok"]:
                    kept.push(cm)
                    hit = {"trap": name, "module": bad["module"], "layer": bad["layer"], "explained": True,
                           "max_rel_err_before": bad.get("max_rel_err"), "max_rel_err_after": after.get("max_rel_err"),
                           "message": message(c)}
                    rows = rows2
                    break
                cm.__exit__(None, None, None)
            if hit is None:
                findings.append({"trap": None, "module": bad["module"], "layer": bad["layer"], "explained": False,
                                 "max_abs_err": bad.get("max_abs_err"), "max_rel_err": bad.get("max_rel_err"),
                                 "tried": tried,
                                 "message": f"{bad['module']!r} (Keras layer {bad['layer']!r}) differs from Keras "
                                            f"(max rel err {bad.get('max_rel_err', float('nan')):.3g}) and no known "
                                            f"trap explains it (tried: {', '.join(tried) or 'none applies'}); its "
                                            f"inputs matched Keras up to the previous layer"})
                break
            findings.append(hit)
    return findings, rows


def grouped(findings: list[dict]) -> list[dict]:
    """Findings by trap: {trap, count, modules: [(module, layer)], message of the first}."""
    out: dict = {}
    for f in findings:
        g = out.setdefault(f["trap"] or "unexplained", {"trap": f["trap"] or "unexplained", "count": 0,
                                                        "modules": [], "message": f["message"]})
        g["count"] += 1
        g["modules"].append({"module": f["module"], "layer": f["layer"]})
    return list(out.values())
