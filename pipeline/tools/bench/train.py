"""The training row: seconds of one optimizer step (SGD, learning rate ``LR``: forward, MSE loss
against fixed random targets, backward, update) at batch ``train_batch`` for

- ``model.py``: the generated module in ``train()`` (batch norms on batch statistics, dropout
  active; ``regularization_loss()`` added, as Keras adds its layers' losses), in this process;
- ``keras``: the exported Keras model on TensorFlow, ``compile(SGD, "mse")`` + ``train_on_batch``
  (Keras' defaults: a ``tf.function`` step, no XLA on a CPU), in a worker process that also saves
  the model to ``OUT/<model>/bench_train/model.keras``;
- ``keras[torch]``: that ``.keras`` file loaded by Keras 3 with ``KERAS_BACKEND=torch`` in a
  worker process of its own, the same ``compile`` + ``train_on_batch`` (eager torch: what a
  Keras 3 user would try first).

Each runs ``train_warmup`` steps, then ``train_rounds`` timed steps in a row (one framework at a
time, so only one copy of the activations is alive), with ``threads`` intra-op threads; the
median is reported. A candidate that cannot run is recorded with the reason, not raised.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir
from pipeline.tools.bench.config import ENV, REPO, BenchConfig
from pipeline.tools.bench.inputs import keras_inputs, torch_inputs

LR = 0.01
TIMEOUT_S = 1800


def _median(times: list) -> dict:
    return {"median_s": statistics.median(times), "runs": len(times), "times_s": [round(t, 5) for t in times]}


def torch_step(mdir: ModelDir, cfg: BenchConfig) -> dict:
    """One SGD step of the generated module in train(), timed in this process."""
    import torch

    from pipeline import runners

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    module = runners.load_generated(mdir).train()
    xs = torch_inputs(mdir, cfg.train_batch)
    with torch.no_grad():
        outs = module(*xs)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    g = torch.Generator().manual_seed(1)
    targets = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR)
    reg = getattr(module, "regularization_loss", None)

    def step():
        opt.zero_grad(set_to_none=True)
        y = module(*xs)
        y = y if isinstance(y, (tuple, list)) else (y,)
        loss = sum(torch.nn.functional.mse_loss(a, t) for a, t in zip(y, targets))
        if reg is not None:
            loss = loss + reg()
        loss.backward()
        opt.step()
        return float(loss.detach())

    for _ in range(cfg.train_warmup):
        step()
    times = []
    for _ in range(cfg.train_rounds):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {**_median(times), "trainable_params": sum(p.numel() for p in params)}


def _worker(backend: str, mdir: ModelDir, keras_file: Path, cfg: BenchConfig) -> dict:
    env = {**ENV, "KERAS_BACKEND": backend}
    cmd = [sys.executable, "-m", "pipeline.tools.bench", "_train_keras", backend, str(mdir.root.resolve()),
           str(keras_file.resolve()), str(cfg.train_batch), str(cfg.train_warmup), str(cfg.train_rounds),
           str(cfg.threads)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {TIMEOUT_S} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"error": f"worker exit status {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def train_row(mdir: ModelDir, cfg: BenchConfig) -> dict:
    """{candidate: median seconds per step, or error}, and the settings they ran with."""
    keras_file = mdir.root / "bench_train" / "model.keras"
    keras_file.parent.mkdir(parents=True, exist_ok=True)
    keras_file.unlink(missing_ok=True)
    rows = {}
    print(f"== {mdir.root.name}: one training step at batch {cfg.train_batch}", flush=True)
    try:
        rows["model.py"] = torch_step(mdir, cfg)
    except Exception as e:   # a module that does not train (an op without a backward): say so
        rows["model.py"] = {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
    rows["keras"] = _worker("tensorflow", mdir, keras_file, cfg)
    rows["keras[torch]"] = (_worker("torch", mdir, keras_file, cfg) if keras_file.is_file() else
                            {"error": "no .keras file: " + rows["keras"].get("save_error", rows["keras"].get("error", "?"))})
    return {"batch": cfg.train_batch, "optimizer": f"SGD(lr={LR})", "loss": "mse", "steps": rows}


# ---------------------------------------------------------------- the worker processes


def keras_worker(backend: str, mdir: str, keras_file: str, batch: str, warmup: str, rounds: str, threads: str) -> None:
    """``KERAS_BACKEND=backend``: tensorflow builds the exported model (and saves ``keras_file``),
    torch loads ``keras_file``; then ``warmup`` + ``rounds`` ``train_on_batch`` steps; one JSON line."""
    mdir_, threads_ = ModelDir(Path(mdir)), int(threads)
    if backend == "tensorflow":
        from pipeline.tools.bench.config import quiet_tf

        quiet_tf()
        import tensorflow as tf

        if threads_:
            tf.config.threading.set_intra_op_parallelism_threads(threads_)
            tf.config.threading.set_inter_op_parallelism_threads(threads_)
        from pipeline.stages.compare import keras_model

        model = keras_model(mdir_)
    else:
        import torch

        if threads_:
            torch.set_num_threads(threads_)
        import keras

        model = keras.saving.load_model(keras_file, compile=False)
    import keras

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
    res = {"backend": backend, "keras": keras.__version__,
           "tensorflow_imported": "tensorflow" in sys.modules, "torch_imported": "torch" in sys.modules}
    if backend == "tensorflow":
        try:
            model.save(keras_file)
        except Exception as e:   # a model Keras cannot serialise: the torch backend cannot load it
            res["save_error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
    x = keras_inputs(mdir_, int(batch))
    xs = x[next(iter(x))] if len(x) == 1 else x
    outs = model.predict(xs, batch_size=int(batch), verbose=0)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    rng = np.random.default_rng(1)
    ys = [rng.standard_normal(np.shape(o)).astype(np.float32) for o in outs]
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LR), loss="mse")
    res["jit_compile"] = bool(model.jit_compile)
    y = ys[0] if len(ys) == 1 else ys
    for _ in range(int(warmup)):
        model.train_on_batch(xs, y)
    times = []
    for _ in range(int(rounds)):
        t0 = time.perf_counter()
        model.train_on_batch(xs, y)
        times.append(time.perf_counter() - t0)
    res.update(_median(times), trainable_params=int(sum(np.prod(w.shape) for w in model.trainable_weights)))
    print(json.dumps(res), flush=True)
