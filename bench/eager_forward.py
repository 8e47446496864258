"""Eager ``model.py`` with and without name reuse (``codegen.liveness``), side by side in one process.

    python bench/eager_forward.py MODEL_DIR... [--batches 1,32] [--rounds 1=7,32=5] [--out FILE]

Each MODEL_DIR is a converted model folder (``rewrite/torch.onnx``, ``export/meta.json``,
``import/model.safetensors``). From the same graph and weights it generates two modules:
``fresh`` (every value under its own name, alive until ``forward`` returns: the generated
form before names were reused) and ``reused`` (what the import stage writes now); and, as a
reference, ``fx``: ``fresh`` as a ``torch.fx`` ``GraphModule`` (every submodule a leaf), whose
code drops each value after its last use. All in ``eval()`` with batch norms as modules, one
intra-op thread, under ``torch.inference_mode``; every round runs each candidate once in a
rotating order; medians in ms. Peak memory: the growth of peak RSS over one forward at the
largest batch, each candidate in a process of its own (Linux ``/proc``; torch's CPU allocator
returns freed tensors to malloc, so RSS is what a user sees).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORMS = ("fresh", "reused", "fx")


def build(mdir: Path, form: str, folder: Path) -> Path:
    """Write the source of ``form`` for the model in ``mdir`` under ``folder``; its path."""
    import onnx

    from pipeline import codegen

    meta = json.loads((mdir / "export" / "meta.json").read_text())
    proto = onnx.load(str(mdir / "rewrite" / "torch.onnx"))
    gen = codegen.generate(proto, meta["model"], meta.get("keras_layers"), reuse_names=form == "reused")
    path = folder / f"{mdir.name}_{form}.py"
    path.write_text(gen.source)
    return path


def load(mdir: Path, form: str, path: Path):
    """The module of ``form`` from its source ``path``, with the weights of ``mdir``, in ``eval()``."""
    import torch.fx

    from pipeline import codegen

    module = codegen.load_generated(path, mdir / "import" / "model.safetensors").eval()
    if form != "fx":
        return module

    class Leaves(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return True

    return torch.fx.GraphModule(module, Leaves().trace(module)).eval()


def example(mdir: Path, batch: int):
    """A random input of ``batch`` in the port's layout (the input of ``rewrite/torch.onnx``)."""
    import onnx
    import torch

    proto = onnx.load(str(mdir / "rewrite" / "torch.onnx"), load_external_data=False)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    return torch.randn(batch, *dims, generator=torch.Generator().manual_seed(0))


def peak(mdir: Path, form: str, batch: int, path: Path) -> None:
    """(child process) Print the growth of peak RSS in MB over one forward of ``form``: the
    peak (``VmHWM``, reset first through ``/proc/self/clear_refs``: ``ru_maxrss`` carries the
    parent's peak over ``fork``/``exec``) less the RSS before it."""
    import torch

    def status(key: str) -> float:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key + ":"))
        return int(line.split()[1]) / 1024

    torch.set_num_threads(1)
    with torch.inference_mode():
        m = load(mdir, form, path)
        x = example(mdir, batch)
        Path("/proc/self/clear_refs").write_text("5")
        before = status("VmRSS")
        m(x)
        print(status("VmHWM") - before)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", type=Path)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--rounds", default="1=7,32=5")
    p.add_argument("--out", type=Path)
    p.add_argument("--peak", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.peak:
        peak(Path(a.peak[0]), a.peak[1], int(a.peak[2]), Path(a.peak[3]))
        return 0
    import torch

    torch.set_num_threads(1)
    batches = [int(b) for b in a.batches.split(",")]
    rounds = {int(k): int(v) for k, v in (kv.split("=") for kv in a.rounds.split(","))}
    results, paths = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        with torch.inference_mode():
            timings(a.models, batches, rounds, results, paths, tmp)
        big = max(batches)
        for mdir in a.models:
            for f in FORMS:
                out = subprocess.run([sys.executable, __file__, "--peak", str(mdir.resolve()), f, str(big),
                                      str(paths[mdir][f])], capture_output=True, text=True, check=True, cwd=REPO)
                results[f"{mdir.name}/{big}"][f"peak_mb_{f}"] = float(out.stdout.split()[-1])
            print(mdir.name, big, {k: v for k, v in results[f"{mdir.name}/{big}"].items() if k.startswith("peak")},
                  flush=True)
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))
    return 0


def timings(models, batches, rounds, results, paths, tmp) -> None:
    """Time every form of every model at every batch, interleaved (``results``: medians in ms)."""
    import torch

    for mdir in models:
        paths[mdir] = {f: build(mdir, f, Path(tmp)) for f in ("fresh", "reused")}
        paths[mdir]["fx"] = paths[mdir]["fresh"]
        mods = {f: load(mdir, f, paths[mdir][f]) for f in FORMS}
        for b in batches:
            x = example(mdir, b)
            ref = mods["fresh"](x)
            for f in FORMS[1:]:
                torch.testing.assert_close(mods[f](x), ref, atol=0.0, rtol=0.0)   # the same ops, in the same order
            times = {f: [] for f in FORMS}
            for r in range(rounds.get(b, 3)):
                for f in FORMS[r % 3:] + FORMS[:r % 3]:
                    t0 = time.perf_counter()
                    mods[f](x)
                    times[f].append(time.perf_counter() - t0)
            results[f"{mdir.name}/{b}"] = {f: 1e3 * statistics.median(t) for f, t in times.items()}
            print(mdir.name, b, {f: round(v, 1) for f, v in results[f"{mdir.name}/{b}"].items()}, flush=True)
        del mods


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
