"""``make bench``: converted models against what a user would run instead.

Per model of ``configs/bench.toml``: conversion cost (seconds and peak RSS per stage) of
this pipeline against plain tf2onnx + onnx2torch as a user chains them, then float32
inference latency at each batch size, with every candidate run once per round in a
rotating order (so load on the machine hits them alike): the converted torch model eager
(``model.py``, the trainable module in eval; ``fused``, its batch norms folded; ``model.pt2``,
the folded program) and under ``torch.compile``, onnxruntime on ``nchw.onnx``, Keras on TensorFlow (the
runners' ``KerasRunner``: a worker process of its own, driven in step over a pipe, timing
each call itself) and, where torchvision has the same architecture, the torchvision model.
Models run through ``pipeline.runners`` (their loaders, ``OnnxRuntimeRunner``,
``KerasRunner``), all on the CPU with ``threads`` intra-op threads. Then the training row (``train``): one optimizer step at
batch 32 of ``model.py`` in train(), of Keras on TensorFlow and of Keras 3 on its torch
backend. Prints medians and ratios; writes ``bench.json``.

- ``config``    the bench config, the workers' environment, the Keras model of an entry
- ``cost``      conversion cost: the pipeline against plain tf2onnx + onnx2torch
- ``latency``   the interleaved timing rounds (``inputs``: what they run on)
- ``twin``      torchvision's model with the converted weights
- ``train``     the training row: one SGD step per framework (Keras' in worker processes)
- ``port``      what the user keeps: model.py lines, weight bytes against Keras'
- ``tables``    the printed tables
- ``__main__``  ``python -m pipeline.tools.bench``, and the plain-conversion subcommands
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from pipeline.core.artifacts import ModelDir, write_json
from pipeline.tools.bench.config import DEFAULT_BENCH, BenchConfig, BenchModel, load_config
from pipeline.tools.bench.cost import convert_pipeline, convert_plain
from pipeline.tools.bench.latency import latency
from pipeline.tools.bench.port import port_facts
from pipeline.tools.bench.tables import ratios, tables
from pipeline.tools.bench.train import train_row

__all__ = ["BenchConfig", "BenchModel", "load_config", "main"]


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
    p.add_argument("--no-train", action="store_true", help="skip the training row (one optimizer step per framework)")
    args = p.parse_args(argv)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""   # every candidate on the CPU: the Keras worker inherits it
    cfg = load_config(Path(args.config))
    if args.rounds:
        cfg = BenchConfig(**{**cfg.__dict__, "rounds": {int(k): int(v) for k, v in
                                                         (x.split("=") for x in args.rounds.split(","))}})
    if args.threads is not None:
        cfg = BenchConfig(**{**cfg.__dict__, "threads": args.threads})
    if args.no_train:
        cfg = BenchConfig(**{**cfg.__dict__, "train": False})
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
        mdir = ModelDir.of(out, bm.name)
        lat = latency(bm, mdir, cfg)
        t0 = time.perf_counter()
        train = train_row(mdir, cfg) if cfg.train else None
        results[bm.name] = {"model": bm.model, "convert": conv, "plain": plain, "port": port_facts(mdir), **lat,
                            "ratios": ratios(lat["latency"]), "train": train,
                            "wall": {"convert_s": round(convert_s, 1), "timing_s": lat["timing_wall_seconds"],
                                     "train_s": round(time.perf_counter() - t0, 1)}}
        write_json(out / "bench.json", {"results": results, "wall_seconds": round(time.perf_counter() - t_all, 1),
                                        "config": {"batches": cfg.batches, "rounds": cfg.rounds,
                                                   "warmup": cfg.warmup, "threads": cfg.threads,
                                                   "train": cfg.train and {"batch": cfg.train_batch,
                                                                           "warmup": cfg.train_warmup,
                                                                           "rounds": cfg.train_rounds}}})
    print(tables(results))
    for name, r in results.items():
        agr = r.get("torchvision_agreement")
        if agr:
            print(f"{name}: torchvision with the converted weights: " + (
                f"max |diff| {agr['max_abs_err']:.3g} <= {agr['tolerance']:.3g}: {'yes' if agr['ok'] else 'NO'}"
                if agr["checked"] else f"not checked ({agr['reason']})"))
    print(f"whole benchmark: {time.perf_counter() - t_all:.0f} s; bench.json: {out / 'bench.json'}")
    return 0
