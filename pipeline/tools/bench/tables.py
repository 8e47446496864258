"""The benchmark's tables: latency medians and ratios, conversion cost, wall time."""

from __future__ import annotations


TORCH = ("model.py", "fused", "model.pt2", "torch.compile")


def ratios(lat: dict) -> dict:
    """Per batch size (lower is better): model.py, fused (the eager folded module, else model.pt2)
    and the best torch candidate against Keras; model.py against fused; against torchvision."""
    out = {}
    for b, per in lat.items():
        med = {n: v["median_s"] for n, v in per.items()}
        t, keras = med["model.py"], med["keras"]
        fused = med.get("fused", med.get("model.pt2"))
        out[b] = {"model.py/keras": t / keras, "best_torch/keras": min(med[n] for n in TORCH if n in med) / keras}
        if fused is not None:
            out[b]["fused/keras"] = fused / keras
        if "fused" in med:
            out[b]["model.py/fused"] = t / med["fused"]
        if "torchvision" in med:
            out[b]["model.py/torchvision"] = t / med["torchvision"]
            if "torch.compile" in med:
                out[b]["torch.compile/torchvision"] = med["torch.compile"] / med["torchvision"]
    return out


def _ms(v) -> str:
    return "-" if v is None else f"{v * 1e3:9.2f}"


def tables(results: dict) -> str:
    cols = [*TORCH, "onnxruntime", "keras", "torchvision"]
    rcols = [("model.py/keras", "py/keras"), ("fused/keras", "fused/keras"), ("model.py/fused", "py/fused"),
             ("model.py/torchvision", "py/tv"), ("torch.compile/torchvision", "compile/tv")]
    lines = ["latency, median ms per call (float32, CPU); model.py: the trainable module in eval(), fused: its batch "
             "norms folded (eager), model.pt2: the folded program",
             f"{'model':<24}{'batch':>6}" + "".join(f"{c:>14}" for c in cols) + "".join(f"{h:>12}" for _, h in rcols)]
    for name, r in results.items():
        for b, per in r["latency"].items():
            rt = r["ratios"][b]
            lines.append(f"{name:<24}{b:>6}" + "".join(f"{_ms(per.get(c, {}).get('median_s')):>14}" for c in cols)
                         + "".join(f"{rt[k]:>12.2f}" if k in rt else f"{'-':>12}" for k, _ in rcols))
    for name, r in results.items():
        for cand, why in (r.get("failed") or {}).items():
            lines.append(f"{name:<24}{cand} could not run: {why}")
        f = r.get("fused") or {}
        lines.append(f"{name:<24}batch norms folded: {f.get('fused', 0)}, left: {len(f.get('left', {}))}"
                     + (f" (not traced: {f['error']})" if f.get("error") else ""))
    train = {n: r["train"] for n, r in results.items() if r.get("train")}
    if train:
        tcols = ["model.py", "keras", "keras[torch]"]
        lines += ["", "training: one optimizer step (SGD, MSE loss: forward, backward, update), median ms; model.py in "
                  "train(), keras on TensorFlow, keras[torch]: the same .keras file with KERAS_BACKEND=torch",
                  f"{'model':<24}{'batch':>6}" + "".join(f"{c:>14}" for c in tcols)
                  + f"{'py/keras':>12}{'py/k[torch]':>12}"]
        for name, t in train.items():
            st = {k: v.get("median_s") for k, v in t["steps"].items()}
            rk = [st["model.py"] / st[k] if st.get("model.py") and st.get(k) else None for k in tcols[1:]]
            lines.append(f"{name:<24}{t['batch']:>6}" + "".join(f"{_ms(st.get(c)):>14}" for c in tcols)
                         + "".join(f"{v:>12.2f}" if v else f"{'-':>12}" for v in rk))
        for name, t in train.items():
            for k, v in t["steps"].items():
                if "error" in v:
                    lines.append(f"{name:<24}{k} could not run: {v['error']}")
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
              "torch.compile included) / training row"]
    for name, r in results.items():
        w = r["wall"]
        lines.append(f"{name:<24}{w['convert_s']:>8.0f} /{w['timing_s']:>6.0f} ({sum(r['warmup_seconds'].values()):.0f})"
                     + f" /{w.get('train_s', 0):>6.0f}")
    return "\n".join(lines)
