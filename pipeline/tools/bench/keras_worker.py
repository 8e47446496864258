"""Keras on TensorFlow, timed in a process of its own (TensorFlow and torch never share
one), driven in step with the torch candidates over a pipe: one JSON line per command."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from pipeline.tools.bench.config import ENV, REPO, load_keras, quiet_tf


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


def keras_worker(model: str, threads: str = "0") -> None:
    """``python -m pipeline.tools.bench _keras_worker MODEL THREADS``: answers ``prepare``,
    ``run`` (the seconds of one call) and ``quit`` on stdin/stdout."""
    quiet_tf()
    import tensorflow as tf

    if int(threads):
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))

    keras_model, _, specs = load_keras(model)
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
