"""The interface every runner has (as Polygraphy's ``BaseRunner``): the public ``infer``
validates, the subclass implements ``_infer_impl``.

A runner is cheap to make: it loads its model (an onnxruntime session, a torch module, a
TensorFlow process) on first use, so that a list of runners can be built before any of
them runs, and importing a runner module imports no framework.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.core.errors import PipelineError


class Runner:
    """Runs one model on named numpy inputs: ``infer(feeds) -> {output name: array}``.

    ``name`` says which runner it is in messages and results (compare uses its result keys,
    ``onnx_raw``, ``torch_pt2``, ...); ``model`` and ``stage`` go into its errors.
    Subclasses implement ``_input_names()`` and ``_infer_impl(feeds)``, and set
    ``_inference_time`` to the seconds of the backend's own call; ``close()`` frees what
    the runner holds (a runner is also a context manager)."""

    def __init__(self, name: str, *, model: str | None = None, stage: str = "compare"):
        self.name, self.model, self.stage = name, model, stage
        self._inference_time: float | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def input_names(self) -> list[str]:
        """The names ``infer`` expects, in the model's order."""
        return list(self._input_names())

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``feeds`` (exactly its inputs, by name); its outputs by name.

        A missing or unknown input name is a PipelineError naming the runner and the input;
        so is any failure of the backend (with its cause chained)."""
        try:
            names = self.input_names   # loads the model on first use
        except PipelineError:
            raise
        except Exception as e:
            raise self._failure("could not load the model", e) from e
        missing = [n for n in names if n not in feeds]
        extra = [n for n in feeds if n not in names]
        if missing or extra:
            what = "; ".join(part for part in (
                f"input {', '.join(map(repr, missing))} missing" if missing else "",
                f"{', '.join(map(repr, extra))} not an input of the model" if extra else "") if part)
            raise PipelineError(self.stage, f"runner {self.name!r}: {what} (its inputs: {names})", model=self.model,
                                hint="feed every input of the model by name, and nothing else")
        try:
            return self._infer_impl({n: feeds[n] for n in names})
        except PipelineError:
            raise
        except Exception as e:   # onnxruntime, torch and TensorFlow raise many types
            raise self._failure("failed", e) from e

    def last_inference_time(self) -> float | None:
        """Seconds the last ``infer`` spent in the backend's call alone (the session run, the
        module call, the TensorFlow function), without checking feeds or converting arrays;
        None before the first."""
        return self._inference_time

    def _failure(self, what: str, e: Exception) -> PipelineError:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return PipelineError(self.stage, f"runner {self.name!r} {what}: {type(e).__name__}: {first}", model=self.model)

    def close(self) -> None:
        """Free what the runner holds; it loads again if used after."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- for subclasses

    def _input_names(self) -> list[str]:
        raise NotImplementedError

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError
