"""The one error type a user sees: it names the model, stage and layer or node."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ErrorInfo:
    stage: str
    message: str
    model: str | None = None
    node: str | None = None
    op_type: str | None = None
    layer: str | None = None
    hint: str | None = None
    kind: str = "error"

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class PipelineError(Exception):
    """A failure the user can act on; ``str()`` is the full, one-paragraph message."""

    def __init__(self, stage: str, message: str, *, model: str | None = None,
                 node: str | None = None, op_type: str | None = None,
                 layer: str | None = None, hint: str | None = None, kind: str = "error"):
        self.info = ErrorInfo(stage=stage, message=message, model=model, node=node,
                              op_type=op_type, layer=layer, hint=hint, kind=kind)
        super().__init__(message)

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        """The message as printed, from the current ``info`` (a caller may set the model later)."""
        i = self.info
        where = [f"stage {i.stage}"]
        if i.model:
            where.insert(0, f"model {i.model!r}")
        if i.layer:
            where.append(f"layer {i.layer!r}")
        if i.node:
            where.append(f"node {i.node!r}" + (f" ({i.op_type})" if i.op_type else ""))
        elif i.op_type:
            where.append(f"op {i.op_type}")
        text = f"[{', '.join(where)}] {i.message}"
        if i.hint:
            text += f"\n  hint: {i.hint}"
        return text

