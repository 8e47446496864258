"""onnxruntime on an ONNX file, on the CPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.core.untrusted import check_onnx
from pipeline.runners.base import Runner


class OnnxRuntimeRunner(Runner):
    """onnxruntime's CPU session of ``path``, made on first use after ``check_onnx`` (the
    file parses, its external data stays in its folder). ``threads``: intra- and inter-op
    threads (None: onnxruntime's default)."""

    def __init__(self, path: str | Path, *, name: str = "onnxruntime", model: str | None = None,
                 stage: str = "compare", threads: int | None = None):
        super().__init__(name, model=model, stage=stage)
        self.path, self.threads = Path(path), threads
        self._session = None

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            check_onnx(self.path, self.stage, self.model)
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if self.threads:
                opts.intra_op_num_threads = opts.inter_op_num_threads = self.threads
            self._session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        return self._session

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def _input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names, session = self.output_names, self.session
        t0 = time.perf_counter()
        out = session.run(names, feeds)
        self._inference_time = time.perf_counter() - t0
        return dict(zip(names, out))

    def close(self) -> None:
        self._session = None
