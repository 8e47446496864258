"""``debug``'s results for people: the text table it prints and ``report.html`` (no scripts,
no network: the summary, a log-scale plot of relative error per layer, the table)."""

from __future__ import annotations

import html
import math

from pipeline.tools.debug.running import LAYER_RUNS


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2e}"


def table(summary: dict) -> str:
    """The per-layer table printed by ``debug``; ``<<`` marks each stage's first failing layer."""
    head = f"{'layer':<22} {'kind':<20} {'shape':<18}" + "".join(f" {s + ' abs/rel':>24}" for s in LAYER_RUNS)
    lines = [head]
    for r in summary["layers"]:
        cells = []
        for s in LAYER_RUNS:
            c = r["stages"][s]
            if c is None:
                cells.append(f" {'-':>24}")
                continue
            mark = "<<" if summary["first_failing"][s] == r["layer"] else ("!" if not c["ok"] else " ")
            txt = "shape!" if c.get("error") and c["max_abs_err"] is None else f"{_fmt(c['max_abs_err'])}/{_fmt(c['max_rel_err'])}"
            cells.append(f" {txt + mark:>24}")
        lines.append(f"{r['layer'][:22]:<22} {r['class'][:20]:<20} {str(r['shape'][1:])[:18]:<18}" + "".join(cells))
    v = summary["verdict"]
    if v is None:
        lines.append(f"every layer within tolerance at every stage (rtol {summary['tolerance']['rtol']}, "
                     f"atol {summary['tolerance']['atol']})")
    else:
        where = f"layer {v['layer']!r}" if v["layer"] else "the graph"
        lines.append(f"first wrong: {where} at stage {v['stage']} -> step '{v['step']}' broke it: {v['why']}"
                     + (f" ({v['error']})" if v.get("error") else ""))
    for s, e in summary["stage_errors"].items():
        lines.append(f"stage {s}: {e}")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    lines.append("(-: the graph has no tensor for that layer, e.g. a Conv2D that tf2onnx fused with the next "
                 "BatchNormalization; << first layer out of tolerance in that stage; ! out of tolerance)")
    return "\n".join(lines)


COLOURS = {"onnx_raw": "#1f77b4", "onnx_nchw": "#d62728", "onnx_torch": "#ff7f0e", "torch": "#2ca02c"}


def _plot(summary: dict) -> str:
    """An inline SVG: log10 relative error per layer, one line per stage, rtol dashed."""
    rows = summary["layers"]
    n = max(len(rows), 2)
    w, h, left, top, bottom = max(900, 80 + 11 * n), 320, 60, 20, 90   # 11 px per layer label
    lo, hi = -12, 2

    def x(i):
        return left + i * (w - left - 20) / (n - 1)

    def y(rel):
        v = hi if rel is None or not math.isfinite(rel) else min(max(math.log10(max(rel, 1e-300)), lo), hi)
        return top + (hi - v) * (h - top - bottom) / (hi - lo)

    parts = [f'<svg id="error-plot" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'viewBox="0 0 {w} {h}" role="img" aria-label="relative error per layer, log scale">',
             f'<rect x="{left}" y="{top}" width="{w - left - 20}" height="{h - top - bottom}" fill="#fafafa" stroke="#ccc"/>']
    for e in range(lo, hi + 1, 2):
        parts.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(10.0 ** e):.1f}" y2="{y(10.0 ** e):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 5}" y="{y(10.0 ** e) + 4:.1f}" font-size="10" text-anchor="end">1e{e}</text>')
    rtol = summary["tolerance"]["rtol"]
    parts.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(rtol):.1f}" y2="{y(rtol):.1f}" stroke="#888" '
                 f'stroke-dasharray="5,4"/><text x="{w - 22}" y="{y(rtol) - 4:.1f}" font-size="10" '
                 f'text-anchor="end">rtol {rtol:g}</text>')
    for i, r in enumerate(rows):
        parts.append(f'<text x="{x(i):.1f}" y="{h - bottom + 12}" font-size="9" text-anchor="end" '
                     f'transform="rotate(-45 {x(i):.1f} {h - bottom + 12})">{html.escape(r["layer"][:18])}</text>')
    for k, s in enumerate(LAYER_RUNS):
        pts = [(x(i), y(r["stages"][s].get("max_rel_err"))) for i, r in enumerate(rows) if r["stages"][s]]
        if not pts:
            continue
        parts.append(f'<polyline class="stage-line" data-stage="{s}" fill="none" stroke="{COLOURS[s]}" stroke-width="1.5" '
                     f'points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}"/>')
        for i, r in enumerate(rows):
            c = r["stages"][s]
            if not c:
                continue
            first = summary["first_failing"][s] == r["layer"]
            mark = ' class="first-fail-point"' if first else ""
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(c.get("max_rel_err")):.1f}" r="{6 if first else 2.5}" '
                         f'fill="{COLOURS[s] if c["ok"] or first else "#fff"}" stroke="{COLOURS[s]}"'
                         f'{mark}><title>{s} {html.escape(r["layer"])}: '
                         f'{_fmt(c.get("max_rel_err"))}</title></circle>')
        parts.append(f'<rect x="{left + 10 + k * 150}" y="{h - 18}" width="12" height="12" fill="{COLOURS[s]}"/>'
                     f'<text x="{left + 26 + k * 150}" y="{h - 8}" font-size="12">{s}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(summary: dict) -> str:
    """A self-contained page (no scripts, no network): summary, error plot, per-layer table."""
    esc = html.escape
    v = summary["verdict"]
    if v is None:
        verdict = '<p class="verdict ok">Every layer is within tolerance at every stage.</p>'
    else:
        verdict = (f'<p class="verdict bad">First wrong: <b>{esc(str(v["layer"]))}</b> at stage <b>{esc(v["stage"])}</b>'
                   f' &rarr; the <b>{esc(v["step"])}</b> step broke it: {esc(v["why"])}.'
                   + (f' {esc(v["error"])}' if v.get("error") else "") + "</p>")
    firsts = "".join(f"<li>{esc(s)}: {esc(str(summary['first_failing'][s] or 'none'))}"
                     + (f" &mdash; {esc(summary['stage_errors'][s])}" if s in summary["stage_errors"] else "") + "</li>"
                     for s in LAYER_RUNS)
    head = "".join(f"<th>{s}<br>max abs</th><th>{s}<br>max rel</th>" for s in LAYER_RUNS)
    body = []
    vlayer = v["layer"] if v else None
    for r in summary["layers"]:
        cls = []
        if r["layer"] == vlayer:
            cls.append("first-fail")
        if any(c and not c["ok"] for c in r["stages"].values()):
            cls.append("fail")
        cells = []
        for s in LAYER_RUNS:
            c = r["stages"][s]
            if c is None:
                cells.append('<td class="na">&ndash;</td><td class="na">&ndash;</td>')
                continue
            k = "bad" if not c["ok"] else "good"
            if summary["first_failing"][s] == r["layer"]:
                k += " first"
            title = esc(f"tensor {c['tensor']} ({c['layout']}); tolerance {c['tolerance']:.3g}" + (f"; {c['error']}" if c.get("error") else ""))
            cells.append(f'<td class="{k}" title="{title}">{_fmt(c["max_abs_err"])}</td>'
                         f'<td class="{k}" title="{title}">{_fmt(c["max_rel_err"])}</td>')
        rid = ' id="first-fail"' if r["layer"] == vlayer else ""
        body.append(f'<tr{rid} class="{" ".join(cls)}" data-layer="{esc(r["layer"])}"><td>{esc(r["layer"])}</td>'
                    f'<td>{esc(r["class"])}</td><td>{esc(str(r["shape"][1:]))}</td>{"".join(cells)}</tr>')
    tol = summary["tolerance"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>keras2torch debug: {esc(summary['model'])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
td:nth-child(-n+3) {{ text-align: left; }}
td.bad {{ color: #b00; }} td.na {{ color: #aaa; text-align: center; }}
td.first {{ font-weight: bold; background: #fdd; }}
tr.fail {{ background: #fff4f4; }}
tr.first-fail {{ background: #ffb3b3; outline: 3px solid #d00; }}
.verdict.ok {{ color: #070; font-weight: bold; }} .verdict.bad {{ color: #b00; font-size: 1.1em; }}
</style></head><body>
<h1>Per-layer comparison: {esc(summary['model'])}</h1>
{verdict}
<p>Tolerance per layer: max |converted &minus; Keras| &le; {tol['rtol']:g} &middot; max|Keras activation| + {tol['atol']:g}.
Relative error = max abs error / max|Keras activation|.</p>
<ul>First layer out of tolerance per stage: {firsts}</ul>
{"".join(f'<p class="warning">warning: {esc(w)}</p>' for w in summary.get("warnings", []))}
<h2>Relative error per layer (log scale)</h2>
<div style="overflow-x: auto">{_plot(summary)}</div>
<h2>Layers</h2>
<p>&ndash;: the graph has no tensor for that layer (e.g. a Conv2D that tf2onnx fused with the next
BatchNormalization). Hover a cell for the tensor compared, its layout and the tolerance.</p>
<table id="layers"><thead><tr><th>layer</th><th>kind</th><th>shape</th>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
</body></html>
"""
