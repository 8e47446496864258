"""Element-wise ops: the layout passes straight through; constants are permuted once."""

from __future__ import annotations

from pipeline.core.registry import handles
from pipeline.stages.rewrite.rules.common import data_perm, push_same_layout

UNARY = (
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "CastLike", "Ceil", "Celu", "Cos",
    "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf",
    "IsNaN", "LeakyRelu", "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Shrink",
    "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
)
BINARY = (
    "Add", "And", "BitShift", "Div", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Max",
    "Mean", "Min", "Mod", "Mul", "Or", "Pow", "PRelu", "Sub", "Sum", "Where", "Xor",
)


@handles(*UNARY)
def unary(ctx, node):
    """Op(T(x)) == T(Op(x)) for any op applied per element."""
    p = data_perm(ctx, node, [0])
    return push_same_layout(ctx, node, [0], p)


@handles(*BINARY)
def broadcast(ctx, node):
    """Every input is T(x, p) with the same p, a constant (permuted here) or a scalar."""
    p = data_perm(ctx, node)
    return push_same_layout(ctx, node, range(len(node.inputs)), p)


@handles("Clip")
def clip(ctx, node):
    """min and max are scalars: only the data input moves."""
    return push_same_layout(ctx, node, [0], data_perm(ctx, node, [0]))


@handles("Dropout")
def dropout(ctx, node):
    """Inference Dropout: data and mask keep the data's layout; ratio/training are scalars."""
    return push_same_layout(ctx, node, [0], data_perm(ctx, node, [0]))
