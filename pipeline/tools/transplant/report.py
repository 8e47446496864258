"""The transplant's results for people: the text it prints and ``report.html`` (no scripts,
no network), laid out as ``debug``'s report is."""

from __future__ import annotations

import html


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2e}"


def table(s: dict) -> str:
    """Per paired module: the Keras layer, its errors and where it matched; then outputs,
    the unmatched, the first divergence, the warnings and the traps that explain it."""
    lines = [f"{'module':<28} {'keras layer':<22} {'abs err':>9} {'rel err':>9}  compared at"]
    first = (s.get("first_diverging") or {}).get("module")
    for r in s["layers"]:
        mark = " <<" if r["module"] == first else (" !" if r["ok"] is False else "")
        where = r.get("where") or r.get("note", "")
        lines.append(f"{r['module'][:28]:<28} {r['layer'][:22]:<22} {_fmt(r.get('max_abs_err')):>9} "
                     f"{_fmt(r.get('max_rel_err')):>9}  {where}{mark}")
    for n, r in s["outputs"].items():
        lines.append(f"output {n}: max abs err {_fmt(r.get('max_abs_err'))}, max rel err {_fmt(r.get('max_rel_err'))}, "
                     f"tolerance {_fmt(r.get('tolerance'))}: {'ok' if r['ok'] else 'MISMATCH'}"
                     + (f" ({r['error']})" if r.get("error") else ""))
    for u in s["unmatched_user"]:
        lines.append(f"unmatched module {u['module']!r} ({u['type']}) {u['tensors']}: {u['reason']}")
    for k in s["unmatched_keras"]:
        shapes = k.get("torch_layout") or k.get("variables")
        lines.append(f"unmatched Keras layer {k['layer']!r} ({k['class']}) {shapes}: {k['reason']}")
    for a in s["ambiguous"]:
        lines.append(f"note: {a['module']!r} paired with {a['layer']!r} by order; {a['also_fits']} fit too "
                     f"(checked per layer above)")
    if s["first_diverging"]:
        f = s["first_diverging"]
        lines.append(f"first diverging module: {f['module']!r} (Keras layer {f['layer']!r}), "
                     f"max rel err {_fmt(f['max_rel_err'])}")
    shown: dict = {}
    for w in s.get("warnings", []):   # six per kind (MobileNetV2: a momentum warning per batch norm)
        shown[w["kind"]] = shown.get(w["kind"], 0) + 1
        if shown[w["kind"]] <= 6:
            lines.append(f"warning [{w['kind']}]: {w['message']}")
    lines += [f"warning [{k}]: and {n - 6} more (report.json)" for k, n in shown.items() if n > 6]
    for g in s["traps"]:
        mods = ", ".join(f"{m['module']} ({m['layer']})" for m in g["modules"][:6])
        more = f" and {g['count'] - 6} more" if g["count"] > 6 else ""
        lines.append(f"{'diagnosis' if g['trap'] != 'unexplained' else 'unexplained'} [{g['trap']}] "
                     f"x{g['count']}: {mods}{more}\n  {g['message']}")
    return "\n".join(lines)


def render_html(s: dict) -> str:
    e = html.escape
    first = (s.get("first_diverging") or {}).get("module")
    rows = []
    for r in s["layers"]:
        style = ' style="background:#fdd"' if r["module"] == first else ""
        ok = {True: "yes", False: "no", None: "-"}[r["ok"]]
        rows.append(f"<tr{style}><td>{e(r['module'])}</td><td>{e(r['layer'])}</td><td>{_fmt(r.get('max_abs_err'))}</td>"
                    f"<td>{_fmt(r.get('max_rel_err'))}</td><td>{ok}</td><td>{e(str(r.get('where') or r.get('note', '')))}"
                    f"</td></tr>")
    outs = "".join(f"<li>{e(n)}: max abs err {_fmt(r.get('max_abs_err'))}, max rel err {_fmt(r.get('max_rel_err'))}"
                   f" ({'ok' if r['ok'] else 'mismatch'})</li>" for n, r in s["outputs"].items())
    traps = "".join(f"<li><b>{e(g['trap'])}</b> x{g['count']}: "
                    f"{e(', '.join(m['module'] + ' (' + m['layer'] + ')' for m in g['modules']))}"
                    f"<br>{e(g['message'])}</li>" for g in s["traps"])
    warnings = "".join(f"<li><b>{e(w['kind'])}</b>: {e(w['message'])}</li>" for w in s.get("warnings", []))
    unmatched = "".join(f"<li>module {e(u['module'])} ({e(u['type'])}) {e(str(u['tensors']))}</li>"
                        for u in s["unmatched_user"]) + \
        "".join(f"<li>Keras layer {e(k['layer'])} ({e(k['class'])}) {e(str(k.get('torch_layout') or k.get('variables')))}"
                f"</li>" for k in s["unmatched_keras"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>transplant: {e(s['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>{e(s['model'])} into {e(s['into'])}: {e(s['status'])}</h1>
<p>input layout {e(s['input_layout'])}; fold flatten {s['fold_flatten']}; tolerance rtol {s['tolerance']['rtol']},
atol {s['tolerance']['atol']}</p>
<h2>Outputs</h2><ul>{outs}</ul>
<h2>Diagnosis</h2><ul>{traps or '<li>none needed</li>'}</ul>
<h2>Warnings</h2><ul>{warnings or '<li>none</li>'}</ul>
<h2>Unmatched</h2><ul>{unmatched or '<li>none</li>'}</ul>
<h2>Per layer</h2>
<table><tr><th>module</th><th>Keras layer</th><th>max abs err</th><th>max rel err</th><th>ok</th><th>compared at</th></tr>
{''.join(rows)}</table></body></html>
"""
