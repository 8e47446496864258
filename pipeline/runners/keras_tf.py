"""Keras on TensorFlow, in a process of its own (TensorFlow and torch never share one).

``KerasRunner(mdir, build="pkg.module:function")`` starts ``python -m
pipeline.runners.keras_tf`` on first use and drives it over a pipe: one JSON line per
request and per reply, arrays through ``.npz`` files in a temporary folder of the runner
(read with ``allow_pickle=False``). The worker builds the model once, as
``function(mdir)`` (imported by name in the worker, so the caller decides what is run:
``pipeline.stages.compare:keras_model`` is the model the export stage exported), and
keeps it. ``recorded(mdir)`` gives a builder the spec and settings the export stage
recorded.

``dtype="float64"``: the worker runs a float64 twin of the built model instead (the same
functional or sequential Keras 3 model rebuilt from its config with every float32 dtype
made float64, the weights cast; for a SavedModel signature, its frozen graph with every
float32 type and constant made float64, ``float64_graph.py``), after checking that the
float32 model it was built from (for a SavedModel, the rewritten graph still in float32)
reproduces Keras' outputs in ``export/reference.npz`` (``REBUILD_RTOL``; else the twin
proves nothing). Compare's float64 check of Keras' own precision runs it. A model that
has no twin (a subclassed model, an op without float64) is a PipelineError that says why.

Each call runs the model as export does: one ``tf.function`` (graph-mode kernels), inputs
in ``export/meta.json``'s order (floating inputs cast to the dtype of the model's inputs,
so a float64 twin gets float64), outputs named as in ``meta.json``. The worker times the
call itself (``last_inference_time()``: seconds inside TensorFlow, without the transfer),
with ``threads`` intra- and inter-op threads (0: TensorFlow's default), so a benchmark
can use it as it is. A failure in the worker (building the model, a call) is a
PipelineError with the worker's message; the worker's stderr goes to the runner's
temporary folder, and its last lines come with the error when the worker dies.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import ModelDir, read_json
from pipeline.core.config import Settings
from pipeline.core.errors import PipelineError
from pipeline.core.reference import flatten_outputs, output_names
from pipeline.core.spec import ModelSpec
from pipeline.runners.base import Runner
from pipeline.runners.float64_graph import Unavailable

TIMEOUT_S = 1800   # one request (building the model included)
# a float64 twin is made only from a model that gives back Keras' recorded output this closely
REBUILD_RTOL = 1e-6


class KerasRunner(Runner):
    """The Keras model ``build(mdir)`` (``build``: "pkg.module:function") in a TensorFlow
    worker process; with ``dtype="float64"``, its float64 twin. ``cwd``: the worker's
    working folder (where the recorded model spec's relative paths start; default: this
    process's)."""

    def __init__(self, mdir: ModelDir, build: str, *, dtype: str = "float32", threads: int = 0,
                 name: str = "keras", stage: str = "compare", timeout_s: float = TIMEOUT_S,
                 cwd: str | Path | None = None):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' (the model as built) or 'float64' (its twin), not {dtype!r}")
        super().__init__(name, model=mdir.root.name, stage=stage)
        self.mdir, self.build, self.dtype, self.threads = mdir, build, dtype, threads
        self.timeout_s, self.cwd = timeout_s, cwd
        self._proc = self._tmp = None
        self._calls = 0

    def _meta(self) -> dict:
        return read_json(self.mdir.require("export", "meta.json") / "meta.json")

    def _input_names(self) -> list[str]:
        return [i["name"] for i in self._meta()["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self._meta()["outputs"]]

    def start(self) -> None:
        """Start the worker and build the model (``infer`` does it on first use)."""
        if self._proc is not None:
            return
        self._tmp = Path(tempfile.mkdtemp(prefix="keras-runner-"))
        log = open(self._tmp / "worker.log", "wb")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
        self._proc = subprocess.Popen([sys.executable, "-m", "pipeline.runners.keras_tf"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=log, env=env, cwd=self.cwd)
        log.close()
        try:
            self._ask({"cmd": "build", "mdir": str(self.mdir.root.resolve()), "build": self.build,
                       "dtype": self.dtype, "threads": self.threads})
        except PipelineError:
            self.close()   # no model to serve: the next call starts a worker again
            raise

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.start()
        self._calls += 1
        src, dest = self._tmp / f"in-{self._calls}.npz", self._tmp / f"out-{self._calls}.npz"
        np.savez(src, **feeds)
        try:
            reply = self._ask({"cmd": "infer", "feeds": str(src), "dest": str(dest)})
            with np.load(dest, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
        finally:
            src.unlink(missing_ok=True)
            dest.unlink(missing_ok=True)
        self._inference_time = reply["seconds"]   # measured in the worker
        return out

    def _ask(self, msg: dict) -> dict:
        proc = self._proc
        try:
            proc.stdin.write((json.dumps(msg) + "\n").encode())
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout_s)
        except BrokenPipeError:   # the worker is gone: say how, below
            ready = [proc.stdout]
        line = proc.stdout.readline() if ready else b""
        if not line:
            if not ready:
                proc.kill()
            why = "did not answer in time" if not ready else f"died (exit status {proc.wait()})"
            tail = self._log_tail()
            self.close()
            raise PipelineError(self.stage, f"runner {self.name!r}: the Keras worker process {why}"
                                + (f": {tail}" if tail else ""), model=self.model)
        reply = json.loads(line)
        if "error" in reply:
            raise PipelineError(self.stage, f"runner {self.name!r}: {reply['error']}", model=self.model)
        return reply

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = (self._tmp / "worker.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def close(self) -> None:
        """End the worker and remove the temporary folder."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    proc.stdin.write(b'{"cmd": "quit"}\n')
                    proc.stdin.flush()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            for f in (proc.stdin, proc.stdout):
                f.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __del__(self):
        if getattr(self, "_proc", None) is not None:
            self.close()


# ---------------------------------------------------------------- the worker process


def recorded(mdir: ModelDir) -> tuple[ModelSpec, Settings]:
    """The model spec and settings the export stage recorded in ``export/meta.json``."""
    meta = read_json(mdir.require("export", "meta.json") / "meta.json")
    raw = dict(meta["settings"])
    raw["custom_objects"] = tuple(raw.get("custom_objects", ()))
    return ModelSpec(**meta["spec"]), Settings(**raw)


def _builder(spec: str):
    import importlib

    module, _, function = spec.partition(":")
    if not module or not function:
        raise ValueError(f"build must name a function as 'pkg.module:function', not {spec!r}")
    return getattr(importlib.import_module(module), function)


def _as_float64(config):
    """A Keras config with every float32 dtype (policies, input dtypes) made float64."""
    if isinstance(config, dict):
        return {k: ("float64" if v == "float32" and k in ("dtype", "name") else _as_float64(v))
                for k, v in config.items()}
    if isinstance(config, list):
        return [_as_float64(v) for v in config]
    return config


def float64_twin(model):
    """A copy of the functional/sequential Keras 3 ``model`` computing in float64."""
    import keras

    if not isinstance(model, keras.Model) or type(model).__name__ not in ("Functional", "Sequential"):
        raise Unavailable(f"{type(model).__module__}.{type(model).__name__} is not a Keras 3 functional or "
                          "sequential model: no config to rebuild it in float64 from")
    twin = type(model).from_config(_as_float64(model.get_config()))
    twin.set_weights([w.astype(np.float64) if np.issubdtype(w.dtype, np.floating) else w
                      for w in model.get_weights()])
    return twin


class _Model:
    """The worker's model and the ``tf.function`` that calls it as export does."""

    def __init__(self, mdir: ModelDir, build: str, threads: int, dtype: str = "float32"):
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.tf = tf
        meta = read_json(mdir.stage("export") / "meta.json")
        self.inputs = [i["name"] for i in meta["inputs"]]
        self.outputs = [o["name"] for o in meta["outputs"]]
        self._use(_builder(build)(mdir))
        if dtype == "float64" and meta["spec"]["kind"] == "savedmodel":   # a signature: its frozen graph
            from pipeline.runners.float64_graph import GraphSignature

            signature = self.model
            self._use(GraphSignature(signature, "float32"))   # the rewrite alone, checked below
            self._check_rebuild(mdir, meta["spec"]["target"])
            self._use(GraphSignature(signature, "float64"))
        elif dtype == "float64":
            self._check_rebuild(mdir, meta["spec"]["target"])
            self._use(float64_twin(self.model))

    def _use(self, model) -> None:
        """Run ``model`` from now on (its input dtypes, one ``tf.function``)."""
        self.model = model
        keras_inputs = getattr(model, "inputs", None) if hasattr(model, "layers") else None
        self.dtypes = [np.dtype(getattr(t.dtype, "as_numpy_dtype", t.dtype)) for t in keras_inputs] \
            if keras_inputs and len(keras_inputs) == len(self.inputs) else [None] * len(self.inputs)
        if getattr(model, "input_dtypes", None) is not None:   # a rewritten SavedModel graph
            self.dtypes = list(model.input_dtypes)
        if hasattr(model, "layers"):   # a Keras (or tf.keras) model: its outputs in Keras' order,
            # named as the export stage names them; meta.json lists them in raw.onnx's order
            keras_order = output_names(model, len(model.outputs)) if getattr(model, "outputs", None) else None
            if keras_order is None or sorted(keras_order) != sorted(self.outputs):
                keras_order = self.outputs

            def call(*xs):
                res = flatten_outputs(model(list(xs) if len(xs) > 1 else xs[0], training=False))
                named = dict(zip(keras_order, res))
                return [named[n] for n in self.outputs]
        else:                          # a SavedModel signature: a dict by output name
            import re

            def call(*xs):
                res = model(*xs)
                named = {re.sub(r"[^A-Za-z0-9_.\-/]", "_", k): v for k, v in res.items()}
                return [named[n] for n in self.outputs]
        self.fn = self.tf.function(call, autograph=False)

    def _check_rebuild(self, mdir: ModelDir, target: str) -> None:
        """The model gives back Keras' recorded outputs (``REBUILD_RTOL`` of their scale)."""
        from pipeline.core.reference import load_reference

        inputs, ref = load_reference(mdir.stage("export") / "reference.npz")
        again, _ = self(inputs)
        for k, v in ref.items():
            scale = float(np.max(np.abs(v))) or 1.0
            diff = float(np.max(np.abs(again[k] - v))) if again[k].shape == v.shape else float("inf")
            if diff > REBUILD_RTOL * scale:
                raise Unavailable(f"the model rebuilt from {target} does not reproduce Keras' recorded output {k!r} "
                                  f"(max |diff| {diff:.3g}, scale {scale:.3g})")

    def __call__(self, feeds: dict) -> tuple[dict, float]:
        xs = []
        for n, d in zip(self.inputs, self.dtypes):
            v = feeds[n]
            if d is not None and np.issubdtype(v.dtype, np.floating) and np.issubdtype(d, np.floating):
                v = v.astype(d)
            xs.append(self.tf.constant(v))
        t0 = time.perf_counter()
        res = [np.asarray(r) for r in self.fn(*xs)]   # the copy out included, as torch returns tensors
        return dict(zip(self.outputs, res)), time.perf_counter() - t0


def _message(e: Exception) -> str:
    if isinstance(e, (PipelineError, Unavailable)):
        return str(e)
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Exception encountered when calling"):   # Keras: the cause is further on
        lines = [" ".join(lines[:3])]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _serve(requests, reply_to) -> None:
    model = None
    for line in requests:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "build":
                model = _Model(ModelDir(Path(msg["mdir"])), msg["build"], int(msg.get("threads") or 0),
                               msg.get("dtype", "float32"))
                reply = {"inputs": model.inputs, "outputs": model.outputs}
            elif msg["cmd"] == "infer":
                with np.load(msg["feeds"], allow_pickle=False) as z:
                    feeds = {k: z[k] for k in z.files}
                out, seconds = model(feeds)
                np.savez(msg["dest"], **out)
                reply = {"seconds": seconds}
            else:
                reply = {"ok": True}
        except Exception as e:   # the runner raises it as a PipelineError; the worker keeps serving
            reply = {"error": _message(e)}
        reply_to.write(json.dumps(reply) + "\n")
        reply_to.flush()
        if msg["cmd"] == "quit":
            return


def main() -> int:
    # replies go to the pipe; anything the model code prints goes to stderr (the log)
    reply_to = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    _serve(sys.stdin, reply_to)
    return 0


if __name__ == "__main__":
    sys.exit(main())
