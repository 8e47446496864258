"""Float32 inference latency: every candidate run once per round, in a rotating order (so
load on the machine hits them alike); medians per candidate and batch size.

The torch candidates, each called here under ``torch.inference_mode``: ``model.py`` (the
generated, trainable module in ``eval()``: batch norms as ``KerasBatchNorm*d`` modules),
``fused`` (the same module with its batch norms folded into the conv/Dense before them,
``importer.fuse``, eager; only where something folds), ``model.pt2`` (the import stage's
program of that folded form, ``runners.load``), ``torch.compile`` of ``model.pt2``, and
torchvision's twin. onnxruntime (``OnnxRuntimeRunner`` on ``nchw.onnx``)
and Keras (``KerasRunner``: a TensorFlow process of its own, driven in step over a pipe)
are timed by their runners: ``last_inference_time()``, the backend's call alone (for
Keras, measured in its process). Every framework gets ``threads`` intra-op threads."""

from __future__ import annotations

import statistics
import time

import numpy as np

from pipeline.core.artifacts import ModelDir
from pipeline.core.errors import PipelineError
from pipeline.tools.bench.config import REPO, BenchConfig, BenchModel
from pipeline.tools.bench.inputs import converted_inputs, keras_inputs, torch_inputs
from pipeline.tools.bench.twin import torchvision_twin

# the Keras model the export stage exported (its recorded spec and settings)
KERAS_BUILD = "pipeline.stages.compare:keras_model"


def latency(bm: BenchModel, mdir: ModelDir, cfg: BenchConfig) -> dict:
    """Median seconds per candidate and batch size, candidates interleaved round by round."""
    try:
        return _latency(bm, mdir, cfg)
    except PipelineError as e:   # a runner that cannot load or run its model
        raise SystemExit(f"bench: timing {bm.name} failed: {e}") from e


def _latency(bm: BenchModel, mdir: ModelDir, cfg: BenchConfig) -> dict:
    import torch

    from pipeline import runners

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from pipeline.stages.importer.fuse import fuse

    trainable = runners.load_generated(mdir)
    folded = fuse(trainable, tuple(torch_inputs(mdir, 1)))
    module = runners.load(mdir)
    cands = {"model.py": trainable, **({"fused": folded.module} if folded.pairs else {}), "model.pt2": module}
    if cfg.compile:
        cands["torch.compile"] = torch.compile(module)
    extra = {"fused": folded.to_json()}
    if bm.torchvision:
        cands["torchvision"], extra["torchvision_agreement"] = torchvision_twin(mdir, bm.torchvision, module)
    # timed by their runners; the same thread count (0: onnxruntime's and TensorFlow's defaults)
    ort = runners.OnnxRuntimeRunner(mdir.stage("rewrite") / "nchw.onnx", name="onnxruntime", model=bm.name,
                                    stage="bench", threads=cfg.threads)
    keras = runners.KerasRunner(mdir, KERAS_BUILD, threads=cfg.threads, name="keras", stage="bench", cwd=REPO)
    result, warm, failed = {}, {}, {}
    try:
        keras.start()           # TensorFlow and the model load before the clock starts,
        _ = ort.input_names     # and so does the onnxruntime session (not in its warm-up time)
        t_start = time.perf_counter()
        for batch in cfg.batches:
            feeds, keras_feeds = converted_inputs(mdir, batch), keras_inputs(mdir, batch)
            xs = [torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()]
            for _ in range(cfg.warmup):   # Keras first, in its process (not in warmup_seconds)
                keras.infer(keras_feeds)
            runs = {n: (lambda m=m, xs=xs: m(*xs)) for n, m in cands.items()}
            runs["onnxruntime"] = lambda feeds=feeds: ort.infer(feeds)
            names = [*runs, "keras"]
            times = {n: [] for n in names}
            with torch.inference_mode():
                for n, fn in list(runs.items()):
                    t0 = time.perf_counter()
                    try:
                        for _ in range(cfg.warmup):
                            fn()
                    except Exception as e:   # a candidate that cannot run (torch.compile on a long GRU)
                        failed[f"{n}@{batch}"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                        print(f"bench: {bm.name} {n} at batch {batch} failed: {failed[f'{n}@{batch}']}", flush=True)
                        del runs[n]
                        names.remove(n)
                        continue
                    warm[f"{n}@{batch}"] = round(time.perf_counter() - t0, 2)   # compiles happen here
                rounds = cfg.rounds.get(batch, 3)
                for r in range(rounds):
                    for k in range(len(names)):
                        n = names[(r + k) % len(names)]
                        if n == "keras":
                            keras.infer(keras_feeds)
                            times[n].append(keras.last_inference_time())
                        elif n == "onnxruntime":
                            ort.infer(feeds)
                            times[n].append(ort.last_inference_time())
                        else:
                            t0 = time.perf_counter()
                            runs[n]()
                            times[n].append(time.perf_counter() - t0)
            result[batch] = {n: {"median_s": statistics.median(t), "runs": len(t)} for n, t in times.items() if t}
    finally:
        keras.close()
        ort.close()
    return {"latency": {str(b): v for b, v in result.items()}, "warmup_seconds": warm, "failed": failed,
            "timing_wall_seconds": round(time.perf_counter() - t_start, 1), **extra}
