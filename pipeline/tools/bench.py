"""``make bench``: converted models against what a user would run instead.

Per model of ``configs/bench.toml``: conversion cost (seconds and peak RSS per stage) of
this pipeline against plain tf2onnx + onnx2torch as a user chains them, then float32
inference latency at each batch size, with every candidate run once per round in a
rotating order (so load on the machine hits them alike): the converted torch model eager
and under ``torch.compile``, onnxruntime on ``nchw.onnx``, Keras on TensorFlow (a worker
process of its own, driven in step over a pipe) and, where torchvision has the same
architecture, the torchvision model. Prints medians and ratios; writes ``bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, read_json, write_json
from pipeline.core.config import read_toml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BENCH = REPO / "configs" / "bench.toml"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}


@dataclass(frozen=True)
class BenchModel:
    model: str                      # a model spec, or "default" for the config's model
    name: str                       # folder name under OUT (the pipeline's model name)
    torchvision: str | None = None  # torchvision.models builder with the same architecture
    plain: bool = True              # also convert with plain tf2onnx + onnx2torch
    plain_skip_reason: str = ""


@dataclass(frozen=True)
class BenchConfig:
    models: list = field(default_factory=list)
    batches: tuple = (1, 32)
    rounds: dict = field(default_factory=lambda: {1: 9, 32: 3})
    warmup: int = 1
    compile: bool = True
    plain_rss_cap_mb: int = 8000    # plain tf2onnx is killed above this (it grows past 24 GB on VGG16)
    threads: int = 1                # intra-op threads of every candidate; 0: each framework's default


def load_config(path: Path) -> BenchConfig:
    raw = read_toml(Path(path), "bench config")
    b = raw.get("bench", {})
    models = [BenchModel(**m) for m in raw.get("models", [])]
    rounds = {int(k): int(v) for k, v in b.get("rounds", {"1": 9, "32": 3}).items()}
    return BenchConfig(models=models, batches=tuple(b.get("batches", (1, 32))), rounds=rounds,
                       warmup=int(b.get("warmup", 1)), compile=bool(b.get("compile", True)),
                       plain_rss_cap_mb=int(b.get("plain_rss_cap_mb", 8000)), threads=int(b.get("threads", 1)))


# ---------------------------------------------------------------- conversion cost

def _run_capped(cmd: list[str], cap_mb: int, timeout: float = 3600) -> dict:
    """Run ``cmd``; kill it when its RSS passes ``cap_mb``. Its own JSON line, or why it died."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak, killed = psutil.Process(proc.pid), 0, None
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss / 2**20
        except psutil.Error:
            break
        peak = max(peak, rss)
        if rss > cap_mb:
            proc.kill()
            killed = f"killed at {rss:.0f} MB RSS (cap {cap_mb} MB)"
        elif time.perf_counter() - t0 > timeout:
            proc.kill()
            killed = f"killed after {timeout:.0f} s"
        time.sleep(0.2)
    out, err = proc.communicate()
    seconds = round(time.perf_counter() - t0, 1)
    if killed or proc.returncode != 0:
        return {"ok": False, "seconds": seconds, "peak_rss_mb": round(peak),
                "error": killed or (err.strip().splitlines() or ["?"])[-1][:300]}
    res = json.loads(out.strip().splitlines()[-1])
    return {"ok": True, "wall_seconds": seconds, **res}


def convert_pipeline(bm: BenchModel, out: Path, fresh: bool = False) -> dict:
    """``python -m pipeline convert`` (one process per stage); its report's stage costs.

    Stages whose results under ``out`` are up to date are not redone (unless ``fresh``):
    then ``reused`` is True and the costs are those of the run that made them."""
    args = [] if bm.model == "default" else ["--model", bm.model]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "convert", *args, "--out", str(out),
                           *(["--force"] if fresh else [])], cwd=REPO, env=ENV, capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 1)
    rep = read_json(ModelDir.of(out, bm.name).report)
    if proc.returncode != 0:
        raise SystemExit(f"bench: converting {bm.model} failed ({rep.get('status')}):\n{proc.stderr[-2000:]}")
    reused = proc.stdout.count("(up to date, skipped)") == len(rep["stages"])
    return {"wall_seconds": seconds, "reused": reused, "stages": rep["stages"], "status": rep["status"],
            "max_abs_err": rep.get("max_abs_err")}


def _plain_key(bm: BenchModel, cap_mb: int) -> dict:
    from importlib.metadata import version

    return {"model": bm.model, "cap_mb": cap_mb,
            **{p: version(p) for p in ("tensorflow", "keras", "tf2onnx", "onnx", "onnx2torch", "torch", "numpy")}}


def convert_plain(bm: BenchModel, out: Path, cap_mb: int, fresh: bool = False) -> dict:
    """Plain ``tf2onnx.convert.from_function`` (default optimizers), then ``onnx2torch.convert``,
    each in its own process, as a user would chain them. A result measured before with the
    same model, cap and package versions is reused (``reused``: True) unless ``fresh``."""
    if not bm.plain:
        return {"skipped": bm.plain_skip_reason or "disabled in the bench config"}
    path = out / bm.name / "plain.onnx"
    record, key = out / bm.name / "plain.json", _plain_key(bm, cap_mb)
    if not fresh and record.exists() and (old := read_json(record)).get("key") == key:
        return {**old["result"], "reused": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    exp = _run_capped([sys.executable, "-m", "pipeline.tools.bench", "_plain_export", bm.model, str(path)], cap_mb)
    res = {"export": exp}
    if exp["ok"]:
        res["import"] = _run_capped([sys.executable, "-m", "pipeline.tools.bench", "_plain_import", str(path)], cap_mb)
    path.unlink(missing_ok=True)   # only its cost is wanted; VGG-sized files are not kept
    write_json(record, {"key": key, "result": res})
    return {**res, "reused": False}


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _plain_export(model: str, path: str) -> None:
    from pipeline.stages import export
    from pipeline.core.config import load_settings
    from pipeline.core.spec import resolve

    export._quiet_tf()
    os.environ.pop("TF2ONNX_CATCH_ERRORS", None)   # plain tf2onnx: its own defaults
    t0 = time.perf_counter()
    import tensorflow as tf
    import tf2onnx

    settings = load_settings(None, model=None if model == "default" else model)
    spec = resolve(settings.model, None)
    keras_model = export.load_model(spec, settings)
    specs = export._input_specs(keras_model, settings, spec.name)
    sig = [tf.TensorSpec(s, tf.as_dtype(d), name=n) for n, s, d in specs]
    fn = tf.function(lambda *xs: keras_model(list(xs) if len(xs) > 1 else xs[0], training=False),
                     input_signature=sig, autograph=False)
    tf2onnx.convert.from_function(fn, input_signature=sig, opset=settings.opset, output_path=path)
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": _peak_rss_mb()}))


def _plain_import(path: str) -> None:
    t0 = time.perf_counter()
    import onnx
    from onnx2torch import convert

    convert(onnx.load(path))
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": _peak_rss_mb()}))


# ---------------------------------------------------------------- latency

class KerasWorker:
    """Keras on TensorFlow in a process of its own; ``run()`` times one call there."""

    def __init__(self, model: str, threads: int):
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.tools.bench", "_keras_worker", model, str(threads)],
                                     cwd=REPO,
                                     env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._ask({"cmd": "hello"})

    def _ask(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench: the Keras worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def prepare(self, batch: int, warmup: int) -> None:
        self._ask({"cmd": "prepare", "batch": batch, "warmup": warmup})

    def run(self) -> float:
        return self._ask({"cmd": "run"})["seconds"]

    def close(self) -> None:
        self._ask({"cmd": "quit"})
        self.proc.wait()


def _keras_worker(model: str, threads: str = "0") -> None:
    from pipeline.stages import export
    from pipeline.core.config import load_settings
    from pipeline.core.spec import resolve

    export._quiet_tf()
    import tensorflow as tf

    if int(threads):
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))

    settings = load_settings(None, model=None if model == "default" else model)
    spec = resolve(settings.model, None)
    keras_model = export.load_model(spec, settings)
    specs = export._input_specs(keras_model, settings, spec.name)
    fn = tf.function(lambda *xs: keras_model(list(xs) if len(xs) > 1 else xs[0], training=False), autograph=False)
    xs = None
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "prepare":
            rng = np.random.default_rng(0)
            xs = [tf.constant(rng.standard_normal((msg["batch"], *s[1:])).astype(d)) for _, s, d in specs]
            for _ in range(msg["warmup"]):
                np.asarray(fn(*xs))
            reply = {"ok": True}
        elif msg["cmd"] == "run":
            t0 = time.perf_counter()
            np.asarray(fn(*xs))   # includes the copy out, as the torch candidates return tensors
            reply = {"seconds": time.perf_counter() - t0}
        else:
            reply = {"ok": True}
        print(json.dumps(reply), flush=True)
        if msg["cmd"] == "quit":
            return


def _torch_inputs(mdir: ModelDir, batch: int) -> list:
    import torch

    meta = read_json(mdir.stage("export") / "meta.json")
    facts = read_json(mdir.stage("rewrite") / "rewrite.json")
    from pipeline.core.reference import inputs_for

    rng = np.random.default_rng(0)
    ins = {i["name"]: rng.standard_normal((batch, *i["shape"][1:])).astype(i["dtype"]) for i in meta["inputs"]}
    feeds = inputs_for(facts, ins)
    return [torch.from_numpy(np.ascontiguousarray(feeds[i["name"]])) for i in meta["inputs"]]


def torchvision_twin(mdir: ModelDir, arch: str, converted) -> tuple:
    """torchvision's ``arch``; with the converted weights loaded where the layers correspond
    one to one (VGG: Conv and MatMul in graph order). Returns (module, agreement or reason)."""
    import torch
    import torchvision

    tv = getattr(torchvision.models, arch)(weights=None).eval()
    if not arch.startswith("vgg"):
        return tv, {"checked": False, "reason": f"Keras' {arch} pads stride-2 convs asymmetrically (ZeroPadding2D), "
                                             "torchvision symmetrically: the layers do not correspond one to one; "
                                             "timed with torchvision's own initial weights"}
    import onnx_ir as ir

    g = ir.load(mdir.stage("rewrite") / "torch.onnx").graph
    consts = {v.name: v.const_value for v in g.initializers.values()}

    def value(v):
        return torch.from_numpy(np.array(consts[v.name].numpy()))

    convs = [n for n in g if n.op_type == "Conv"]
    mms = [n for n in g if n.op_type in ("MatMul", "Gemm")]
    adds = {n.inputs[0].name: n for n in g if n.op_type == "Add" and n.inputs[1].name in consts}
    tv_convs = [m for m in tv.features if isinstance(m, torch.nn.Conv2d)]
    tv_lins = [m for m in tv.classifier if isinstance(m, torch.nn.Linear)]
    if len(convs) != len(tv_convs) or len(mms) != len(tv_lins):
        return tv, {"checked": False, "reason": f"{len(convs)} Conv / {len(mms)} MatMul in the graph, torchvision has "
                                                f"{len(tv_convs)} / {len(tv_lins)}"}
    with torch.no_grad():
        for n, m in zip(convs, tv_convs):
            # grappler drops a bias add of zeros (Keras initialises biases to zero)
            m.weight.copy_(value(n.inputs[1]))
            m.bias.copy_(value(n.inputs[2]) if len(n.inputs) > 2 else torch.zeros_like(m.bias))
        for n, m in zip(mms, tv_lins):
            add = adds.get(n.outputs[0].name)
            m.weight.copy_(value(n.inputs[1]).T)
            m.bias.copy_(value(add.inputs[1]) if add is not None else torch.zeros_like(m.bias))
    x = _torch_inputs(mdir, 2)
    with torch.inference_mode():
        a, b = tv(*x).numpy(), converted(*x).numpy()
    atol, rtol = 1e-7, 1e-5
    err = float(np.max(np.abs(a.astype(np.float64) - b)))
    tol = atol + rtol * float(np.max(np.abs(b)))
    return tv, {"checked": True, "max_abs_err": err, "tolerance": tol, "atol": atol, "rtol": rtol, "ok": err <= tol}


def latency(bm: BenchModel, mdir: ModelDir, cfg: BenchConfig) -> dict:
    """Median seconds per candidate and batch size, candidates interleaved round by round."""
    import onnxruntime as ort
    import torch

    from pipeline.stages import importer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    module = importer.load(mdir)
    cands = {"torch": module}
    if cfg.compile:
        cands["torch.compile"] = torch.compile(module)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if cfg.threads:
        opts.intra_op_num_threads = opts.inter_op_num_threads = cfg.threads
    sess = ort.InferenceSession(str(mdir.stage("rewrite") / "nchw.onnx"), opts, providers=["CPUExecutionProvider"])
    extra = {}
    if bm.torchvision:
        cands["torchvision"], extra["torchvision_agreement"] = torchvision_twin(mdir, bm.torchvision, module)
    keras = KerasWorker(bm.model, cfg.threads)
    names = [*cands, "onnxruntime", "keras"]
    result, warm, t_start = {}, {}, time.perf_counter()
    try:
        for batch in cfg.batches:
            xs = _torch_inputs(mdir, batch)
            feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs)}
            runs = {n: (lambda m=m: m(*xs)) for n, m in cands.items()}
            runs["onnxruntime"] = lambda: sess.run(None, feeds)
            keras.prepare(batch, cfg.warmup)
            times = {n: [] for n in names}
            with torch.inference_mode():
                for n, fn in runs.items():
                    t0 = time.perf_counter()
                    for _ in range(cfg.warmup):
                        fn()
                    warm[f"{n}@{batch}"] = round(time.perf_counter() - t0, 2)   # compiles happen here
                rounds = cfg.rounds.get(batch, 3)
                for r in range(rounds):
                    for k in range(len(names)):
                        n = names[(r + k) % len(names)]
                        if n == "keras":
                            times[n].append(keras.run())
                        else:
                            t0 = time.perf_counter()
                            runs[n]()
                            times[n].append(time.perf_counter() - t0)
            result[batch] = {n: {"median_s": statistics.median(t), "runs": len(t)} for n, t in times.items()}
    finally:
        keras.close()
    return {"latency": {str(b): v for b, v in result.items()}, "warmup_seconds": warm,
            "timing_wall_seconds": round(time.perf_counter() - t_start, 1), **extra}


# ---------------------------------------------------------------- tables

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
    lines += ["", "benchmark wall time, seconds: converting (pipeline + plain) / timing (of which warm-up, "
              "torch.compile included)"]
    for name, r in results.items():
        w = r["wall"]
        lines.append(f"{name:<24}{w['convert_s']:>8.0f} /{w['timing_s']:>6.0f} ({sum(r['warmup_seconds'].values()):.0f})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.tools.bench", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_BENCH))
    p.add_argument("--out", default="artifacts/bench")
    p.add_argument("--models", help="comma-separated names from the config (default: all)")
    p.add_argument("--rounds", help='override rounds per batch size, e.g. "1=20,32=5"')
    p.add_argument("--no-plain", action="store_true", help="skip the plain tf2onnx + onnx2torch conversion")
    p.add_argument("--fresh", action="store_true",
                   help="convert again even where --out holds up-to-date conversions (default: reuse them, "
                        "with the costs measured when they were made)")
    p.add_argument("--threads", type=int, help="intra-op threads of every candidate (0: framework defaults)")
    args = p.parse_args(argv)
    cfg = load_config(Path(args.config))
    if args.rounds:
        cfg = BenchConfig(**{**cfg.__dict__, "rounds": {int(k): int(v) for k, v in
                                                         (x.split("=") for x in args.rounds.split(","))}})
    if args.threads is not None:
        cfg = BenchConfig(**{**cfg.__dict__, "threads": args.threads})
    models = [m for m in cfg.models if not args.models or m.name in args.models.split(",")]
    out = Path(args.out)
    results, t_all = {}, time.perf_counter()
    for bm in models:
        print(f"== {bm.name}: converting", flush=True)
        t0 = time.perf_counter()
        conv = convert_pipeline(bm, out, args.fresh)
        plain = ({"skipped": "--no-plain"} if args.no_plain
                 else convert_plain(bm, out / "plain", cfg.plain_rss_cap_mb, args.fresh))
        convert_s = time.perf_counter() - t0
        print(f"== {bm.name}: timing", flush=True)
        lat = latency(bm, ModelDir.of(out, bm.name), cfg)
        results[bm.name] = {"model": bm.model, "convert": conv, "plain": plain, **lat,
                            "ratios": ratios(lat["latency"]),
                            "wall": {"convert_s": round(convert_s, 1), "timing_s": lat["timing_wall_seconds"]}}
        write_json(out / "bench.json", {"results": results, "wall_seconds": round(time.perf_counter() - t_all, 1),
                                        "config": {"batches": cfg.batches, "rounds": cfg.rounds,
                                                   "warmup": cfg.warmup, "threads": cfg.threads}})
    print(tables(results))
    for name, r in results.items():
        agr = r.get("torchvision_agreement")
        if agr:
            print(f"{name}: torchvision with the converted weights: " + (
                f"max |diff| {agr['max_abs_err']:.3g} <= {agr['tolerance']:.3g}: {'yes' if agr['ok'] else 'NO'}"
                if agr["checked"] else f"not checked ({agr['reason']})"))
    print(f"whole benchmark: {time.perf_counter() - t_all:.0f} s; bench.json: {out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        {"_plain_export": _plain_export, "_plain_import": _plain_import,
         "_keras_worker": _keras_worker}[sys.argv[1]](*sys.argv[2:])
    else:
        sys.exit(main())
