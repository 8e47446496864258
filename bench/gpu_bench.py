"""GPU latency of the generated PyTorch models against torchvision (run on a CUDA machine).

    python bench/gpu_bench.py DIR [--reps N]

DIR holds ``<model>/model.py`` (+ ``model.safetensors`` when it travelled) as written by
the import stage, and ``models.json``: {model: {"input": [C, H, W], "torchvision": name|null}}.
Needs torch (and torchvision for the references) only. Candidates are interleaved: each
round times every candidate once, in a rotating order; medians are reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import torch


def load_generated(folder: Path):
    spec = importlib.util.spec_from_file_location(f"gen_{folder.name}", folder / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    weights = folder / "model.safetensors"
    if weights.exists():
        return mod.load(weights), True
    classes = [v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
               and v.__module__ == mod.__name__]
    model = classes[0]()
    with torch.no_grad():  # weights did not travel: seeded values of a sane scale, same timing
        g = torch.Generator().manual_seed(0)
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    return model.eval(), False


def time_once(fn, x) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(x)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    root = Path(args.dir)
    cfg = json.loads((root / "models.json").read_text())
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, float32 (TF32 off)")
    results = {}
    for name, info in cfg.items():
        model, with_weights = load_generated(root / name)
        cands = {"converted": model.to(dev)}
        if info.get("torchvision"):
            import torchvision

            cands["torchvision"] = getattr(torchvision.models, info["torchvision"])(weights=None).eval().to(dev)
        for k in list(cands):
            try:
                cands[f"{k}+compile"] = torch.compile(cands[k])
            except Exception as e:  # report, keep going
                print(f"{name}: torch.compile({k}) failed: {e}")
        for batch in (1, 32):
            x = torch.randn(batch, *info["input"], device=dev)
            times = {k: [] for k in cands}
            with torch.no_grad():
                for k, f in list(cands.items()):
                    try:
                        for _ in range(3):
                            f(x)
                        torch.cuda.synchronize()
                    except Exception as e:
                        print(f"{name}: {k} failed at batch {batch}: {type(e).__name__}: {str(e)[:200]}")
                        times.pop(k)
                keys = list(times)
                for r in range(args.reps):
                    for i in range(len(keys)):
                        k = keys[(i + r) % len(keys)]
                        times[k].append(time_once(cands[k], x))
            med = {k: statistics.median(v) for k, v in times.items()}
            results[f"{name}@{batch}"] = med
            line = "  ".join(f"{k} {v:.3f} ms" for k, v in med.items())
            ratios = ""
            if "torchvision" in med and "converted" in med:
                ratios = f"  eager ratio {med['converted'] / med['torchvision']:.3f}"
            if "torchvision+compile" in med and "converted+compile" in med:
                ratios += f"  compiled ratio {med['converted+compile'] / med['torchvision+compile']:.3f}"
            print(f"{name:<14} batch {batch:<3} {line}{ratios}  (weights {'loaded' if with_weights else 'random'})")
            sys.stdout.flush()
    out = Path(sys.argv[0]).parent
    import os

    dest = Path(os.environ.get("OUT", out))
    (dest / "gpu_bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
