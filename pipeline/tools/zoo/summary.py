"""The zoo's summary: one row per model (``summary.json``), as Markdown and HTML tables."""

from __future__ import annotations

import html
import time
from pathlib import Path

from pipeline.core import runstate
from pipeline.core.artifacts import ModelDir, read_json, write_json, write_text
from pipeline.stages import STAGES
from pipeline.stages.compare import RUNNERS
from pipeline.tools.zoo.config import Zoo, ZooModel
from pipeline.tools.zoo.fingerprint import up_to_date


def _row(m: ZooModel, out: Path, fp: str) -> dict:
    mdir = ModelDir.of(out, m.name)
    rec = up_to_date(out, m.name, fp)
    if rec is None:
        return {"name": m.name, "model": m.model, "status": "pending"}
    rep = read_json(mdir.report)
    status = rep["status"]
    per_layer = rec.get("per_layer") or None
    if status == "ok" and per_layer and per_layer["status"] in ("mismatch", "failed"):
        status = "mismatch"
    err = rep.get("error") or {}
    precision = rep.get("float32_precision") or {}
    relaxed = sorted({s for o in (rep.get("outputs") or {}).values() for s, r in o.items()
                      if r.get("float32_precision") is not None})
    if relaxed:
        parity = ("outputs, as accurate as Keras (float64 check: Keras "
                  f"{_fmt(max(precision['keras_vs_float64'].values()))} from exact, ports "
                  f"<= {_fmt(max(e for st in relaxed for e in precision['stage_vs_float64'][st].values()))})")
    elif not rep.get("degenerate"):
        parity = "outputs"
    elif per_layer and per_layer["status"] != "unavailable":
        parity = "outputs (degenerate) + per-layer"
    else:
        parity = "outputs (degenerate; per-layer comparison unavailable)"
    off = [s for s, ok in (rep.get("passed") or {}).items() if not ok]
    if rep["status"] == "ok" and off:   # the torch ports passed; a cross-check did not (a warning)
        parity += f"; cross-check {', '.join(off)} out of tolerance"
    return {
        "name": m.name, "model": m.model, "status": status, "parity": parity if rep.get("max_abs_err") else None,
        "max_abs_err": rep.get("max_abs_err", {}), "max_rel_err": rep.get("max_rel_err", {}),
        "transposes": rep.get("transposes"), "transposes_torch": rep.get("transposes_torch"),
        "params": rec.get("params"), "stages": rep.get("stages", {}),
        "seconds": rec.get("seconds"), "peak_rss_mb": rec.get("peak_rss_mb"),
        "warnings": rep.get("warnings", []), "per_layer": per_layer, "float32_precision": precision or None,
        "error": ({"stage": err.get("stage"), "kind": err.get("kind"), "signal": err.get("signal"),
                   "limit": err.get("limit"), "node": err.get("node"), "op_type": err.get("op_type"),
                   "layer": err.get("layer"),
                   "first_line": (err.get("message") or "").strip().splitlines()[0] if err.get("message") else ""}
                  if err else None),
        "report": str(mdir.report),
    }


def summarize(zoo: Zoo, out: Path, fps: dict) -> dict:
    rows = [_row(m, out, fps[m.name]) for m in zoo.models]
    counts: dict = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"config": str(zoo.config), "out": str(out), "counts": counts, "total": len(rows),
            "versions": runstate.versions(), "models": rows,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _fmt(v, spec=".2g") -> str:
    if v is None:
        return ""
    return format(v, spec) if isinstance(v, float) else str(v)


def _cells(r: dict) -> list[str]:
    e = r.get("max_abs_err") or {}
    stages = r.get("stages") or {}
    st = [f"{stages[s]['seconds']:.1f} s / {stages[s]['peak_rss_mb']:.0f} MB" if s in stages else ""
          for s in STAGES]
    note = ""
    if r.get("error"):
        x = r["error"]
        where = ", ".join(f"{k} {x[k]}" for k in ("stage", "layer", "node", "op_type", "signal", "limit") if x.get(k))
        note = f"{where}: {x['first_line']}"
    elif (r.get("parity") or "").startswith("outputs, as accurate as Keras"):
        note = r["parity"]
    elif r.get("per_layer"):
        note = f"per-layer: {r['per_layer']['status']}"
    elif r.get("warnings"):
        note = r["warnings"][0]
    return [r["name"], r["status"], *[_fmt(e.get(s)) for s in RUNNERS], _fmt(r.get("transposes")),
            _fmt(r.get("params")), *st, _fmt(r.get("seconds"), ".0f"), _fmt(r.get("peak_rss_mb"), ".0f"), note]


HEADER = ["model", "status", "err onnx_raw", "err onnx_nchw", "err onnx2torch", "err model.py", "err model.pt2",
          "transposes", "params",
          *[f"{s} (s / peak MB)" for s in STAGES], "total s", "peak MB (tree)", "note"]


def to_markdown(summary: dict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items()))
    lines = [f"# Zoo summary ({summary['total']} models: {counts})", "",
             "Max abs error per stage against Keras' outputs (logits); parity is judged per output "
             "against rtol·max|Keras| + atol (see each report).", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in summary["models"]:
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in _cells(r)) + " |")
    return "\n".join(lines) + "\n"


def to_html(summary: dict) -> str:
    colour = {"ok": "#d4f4d4", "mismatch": "#fde2b8", "failed": "#f8c8c8", "pending": "#eeeeee"}
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items()))
    rows = []
    for r in summary["models"]:
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r))
        rows.append(f'<tr style="background:{colour.get(r["status"], "#fff")}">{cells}</tr>')
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    return ("<!doctype html><meta charset=utf-8><title>Zoo summary</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #999;padding:3px 6px;text-align:left}</style>"
            f"<h1>Zoo summary</h1><p>{summary['total']} models: {html.escape(counts)}; updated {summary['updated']}</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>\n")


def write_summary(summary: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    for name, text in (("summary.md", to_markdown(summary)), ("summary.html", to_html(summary))):
        write_text(out / name, text)

