"""Random draws: RandomNormal(Like) and RandomUniform(Like) as ``torch.randn``/``torch.rand``
(``_like``), scaled and shifted as the node says: the same distribution, torch's generator.

tf2onnx writes them for the draws a Keras layer makes at inference (a VAE's sampling,
``export/randomness.py``); the ``seed`` attribute has no per-op torch equivalent and is
not kept (``torch.manual_seed`` seeds every draw). The constant folder never folds these.
"""

from __future__ import annotations

from pipeline.codegen.gen import TORCH_DTYPE, Gen, attrs, tuple_
from pipeline.core.registry import handles


def _dtype(a: dict) -> str:
    """``, dtype=...`` for the node's ``dtype`` attribute (none: the input's, or float32)."""
    if "dtype" not in a:
        return ""
    import onnx

    return f", dtype={TORCH_DTYPE[onnx.helper.tensor_dtype_to_np_dtype(a['dtype']).name]}"


def _affine(expr: str, scale: float, shift: float) -> str:
    """``expr * scale + shift`` without the identity parts."""
    if scale != 1.0:
        expr = f"{expr} * {scale!r}"
    return f"{expr} + {shift!r}" if shift != 0.0 else expr


def _scale_shift(node, a: dict) -> tuple[float, float]:
    if node.op_type.startswith("RandomNormal"):
        return float(a.get("scale", 1.0)), float(a.get("mean", 0.0))
    low, high = float(a.get("low", 0.0)), float(a.get("high", 1.0))
    return high - low, low


@handles("RandomNormalLike", "RandomUniformLike")
def random_like(gen: Gen, node):
    a = attrs(node)
    draw = "torch.randn_like" if node.op_type == "RandomNormalLike" else "torch.rand_like"
    gen.emit(node, _affine(f"{draw}({gen.t(node.input[0])}{_dtype(a)})", *_scale_shift(node, a)), hint="noise")


@handles("RandomNormal", "RandomUniform")
def random_(gen: Gen, node):
    a = attrs(node)
    draw = "torch.randn" if node.op_type == "RandomNormal" else "torch.rand"
    gen.emit(node, _affine(f"{draw}({tuple_(a['shape']) if a['shape'] else '()'}{_dtype(a) or ', dtype=torch.float32'})",
                           *_scale_shift(node, a)), hint="noise")
