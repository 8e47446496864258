"""The benchmark's tables: latency medians and ratios, conversion cost, wall time."""

from __future__ import annotations


def ratios(lat: dict) -> dict:
    """converted / torchvision and converted / keras per batch size (lower is better)."""
    out = {}
    for b, per in lat.items():
        t = per["torch"]["median_s"]
        best = min(t, per.get("torch.compile", {}).get("median_s", t))
        out[b] = {"torch/keras": t / per["keras"]["median_s"], "best_torch/keras": best / per["keras"]["median_s"]}
        if "torchvision" in per:
            out[b]["torch/torchvision"] = t / per["torchvision"]["median_s"]
            if "torch.compile" in per:
                out[b]["torch.compile/torchvision"] = per["torch.compile"]["median_s"] / per["torchvision"]["median_s"]
    return out


def _ms(v) -> str:
    return "-" if v is None else f"{v * 1e3:9.2f}"


def tables(results: dict) -> str:
    cols = ["torch", "torch.compile", "onnxruntime", "keras", "torchvision"]
    lines = ["latency, median ms per call (float32, CPU)",
             f"{'model':<24}{'batch':>6}" + "".join(f"{c:>15}" for c in cols)
             + f"{'torch/keras':>13}{'torch/tv':>10}{'compile/tv':>11}"]
    for name, r in results.items():
        for b, per in r["latency"].items():
            rt = r["ratios"][b]
            lines.append(f"{name:<24}{b:>6}" + "".join(f"{_ms(per.get(c, {}).get('median_s')):>15}" for c in cols)
                         + f"{rt['torch/keras']:>13.2f}"
                         + f"{rt.get('torch/torchvision', float('nan')):>10.2f}"
                         + f"{rt.get('torch.compile/torchvision', float('nan')):>11.2f}")
    for name, r in results.items():
        for cand, why in (r.get("failed") or {}).items():
            lines.append(f"{name:<24}{cand} could not run: {why}")
    lines += ["", "conversion cost: seconds / peak RSS MB per stage",
              f"{'model':<24}{'pipeline':<72}plain tf2onnx + onnx2torch"]
    for name, r in results.items():
        st = r["convert"]["stages"]
        mine = "  ".join(f"{k} {v['seconds']:.0f}s/{v['peak_rss_mb']:.0f}" for k, v in st.items())
        mine += " (earlier run)" if r["convert"].get("reused") else ""
        p = r["plain"]
        if "skipped" in p:
            plain = f"skipped: {p['skipped']}"
        else:
            plain = "  ".join(f"{k} " + (f"{v['seconds']:.0f}s/{v['peak_rss_mb']:.0f}" if v["ok"]
                                        else f"FAILED ({v['error']})") for k, v in p.items() if k in ("export", "import"))
            plain += " (earlier run)" if p.get("reused") else ""
        lines.append(f"{name:<24}{mine:<72}{plain}")
    lines += ["", "the port: model.py lines, weights stored (MB) against Keras' weights (MB)",
              f"{'model':<24}{'lines':>7}{'stored':>10}{'keras':>10}{'ratio':>8}"]
    for name, r in results.items():
        p = r.get("port") or {}
        if p:
            keras = p["keras_weights_bytes"]
            lines.append(f"{name:<24}{p['model_py_lines']:>7}{p['weights_bytes'] / 1e6:>10.3f}"
                         + (f"{keras / 1e6:>10.3f}{p['weights_ratio']:>8.3f}" if keras else f"{'-':>10}{'-':>8}"))
    lines += ["", "benchmark wall time, seconds: converting (pipeline + plain) / timing (of which warm-up, "
              "torch.compile included)"]
    for name, r in results.items():
        w = r["wall"]
        lines.append(f"{name:<24}{w['convert_s']:>8.0f} /{w['timing_s']:>6.0f} ({sum(r['warmup_seconds'].values()):.0f})")
    return "\n".join(lines)
