"""Float32 inference latency: every candidate run once per round, in a rotating order (so
load on the machine hits them alike); medians per candidate and batch size."""

from __future__ import annotations

import statistics
import time

from pipeline.core.artifacts import ModelDir
from pipeline.tools.bench.config import BenchConfig, BenchModel
from pipeline.tools.bench.inputs import torch_inputs
from pipeline.tools.bench.keras_worker import KerasWorker
from pipeline.tools.bench.twin import torchvision_twin


def latency(bm: BenchModel, mdir: ModelDir, cfg: BenchConfig) -> dict:
    """Median seconds per candidate and batch size, candidates interleaved round by round."""
    import onnxruntime as ort
    import torch

    from pipeline import runners

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    module = runners.load(mdir)
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
            xs = torch_inputs(mdir, batch)
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
