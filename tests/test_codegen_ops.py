"""Each converter of the code generator against onnxruntime, on a one-op ONNX graph (a few
nodes ahead of it where the op reads shape values): one case per op type, per opset range
where the converter differs, and per branch a converter takes (shape values, an
Embedding, a padded conv, ...). Inputs and weights are random (not zeros or identities),
so that a wrong gate order, axis or branch fails. No TensorFlow needed.

``test_every_converter_has_a_case`` keeps the list complete: an op type registered in
``codegen.CONVERTERS`` with no case here fails it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

from pipeline import codegen
from pipeline.core.registry import MAX_OPSET

RTOL, ATOL = 1e-5, 1e-6   # |torch - onnxruntime| <= ATOL + RTOL * |onnxruntime|, per element
F32, I64, BOOL = "float32", "int64", "bool"


@dataclass(frozen=True)
class X:
    """A runtime input: random values of ``shape`` (dim 0 dynamic unless ``static``)."""
    shape: tuple
    dtype: str = F32
    static: bool = False
    low: float = -3.0
    high: float = 3.0

    def sample(self, rng) -> np.ndarray:
        if self.dtype == BOOL:
            return rng.random(self.shape) < 0.5
        if self.dtype.startswith("int"):
            return rng.integers(int(self.low), int(self.high) + 1, self.shape).astype(self.dtype)
        if self.low >= 0:
            return rng.uniform(self.low, self.high, self.shape).astype(self.dtype)
        return (rng.standard_normal(self.shape) * (self.high - self.low) / 4).astype(self.dtype)


@dataclass(frozen=True)
class Case:
    op: str
    inputs: tuple                  # X (runtime input), ndarray (initializer), None (absent), "pK" (a `before` output)
    attrs: dict = field(default_factory=dict)
    opset: int = 17
    outputs: int = 1
    before: tuple = ()             # (op, inputs, attrs): nodes ahead of the op, outputs p0, p1, ...
    rtol: float = RTOL
    atol: float = ATOL
    covers: str | None = None      # the registry's op type it exercises, when not ``op`` (a fused pair)


def w(*shape, seed=0, scale=1.0, offset=0.0):
    """Random float32 weights (standard normal, scaled and shifted)."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale + offset).astype(np.float32)


def i64(*v):
    return np.array(v, dtype=np.int64)


def f32(*v):
    return np.array(v, dtype=np.float32)


def positive(*shape, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape).astype(np.float32)


S = X((2, 3, 4))            # the usual data input
S4 = X((2, 3, 5, 6))        # NCHW
SHAPE_OF_S4 = (("Shape", [S4], {}),)   # p0 = shape of x0

CASES: dict[str, Case] = {}


def add(case_id: str, case: Case) -> None:
    assert case_id not in CASES, case_id
    CASES[case_id] = case


# ---- elementwise ------------------------------------------------------------------------------
for op in ("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
    rhs = positive(3, 1, seed=1) if op in ("Div", "Pow") else w(3, 1, seed=1)
    lhs = X((2, 3, 4), low=0.5, high=2.0) if op == "Pow" else S
    add(op.lower(), Case(op, (lhs, rhs)))
add("add-two-runtime", Case("Add", (S, X((2, 3, 4)))))
add("mul-scalar-const", Case("Mul", (S, f32(1.7).reshape(()))))
add("div-int-truncates", Case("Div", (X((2, 5), I64, low=-20, high=20), i64(3, -4, 5, 7, -6))))
for op, fmod, x, y in (("Mod", 1, X((2, 5), low=-9, high=9), positive(5, seed=2) * 2),
                       ("Mod", 0, X((2, 5), I64, low=-20, high=20), i64(3, -4, 5, 7, -6))):
    add(f"mod-fmod{fmod}", Case(op, (x, y), {"fmod": fmod}))
for op in ("And", "Or", "Xor"):
    add(op.lower(), Case(op, (X((2, 3), BOOL), X((2, 3), BOOL))))
add("not", Case("Not", (X((2, 3), BOOL),)))
for op in ("Relu", "Sigmoid", "Tanh", "Exp", "Abs", "Neg", "Erf", "Floor", "Ceil", "Round", "Sign", "Softplus",
           "Softsign", "HardSwish", "Sin", "Cos"):
    add(op.lower(), Case(op, (S,)))
for op in ("Log", "Sqrt", "Reciprocal"):
    add(op.lower(), Case(op, (X((2, 3, 4), low=0.2, high=3.0),)))
add("isnan", Case("IsNaN", ("p0",), before=(("Log", [S], {}),)))   # NaN where x < 0
add("mish", Case("Mish", (S,), opset=18))
add("gelu", Case("Gelu", (S,), opset=20))
add("gelu-tanh", Case("Gelu", (S,), {"approximate": "tanh"}, opset=20))
add("identity", Case("Identity", (S,)))
for op in ("Min", "Max", "Sum", "Mean"):
    add(op.lower(), Case(op, (S, X((2, 3, 4)), w(4, seed=3))))
add("cast-to-int", Case("Cast", (X((2, 6), low=-5, high=5),), {"to": TensorProto.INT64}))
add("cast-to-float", Case("Cast", (X((2, 6), I64, low=-5, high=5),), {"to": TensorProto.FLOAT}))
add("leakyrelu", Case("LeakyRelu", (S,), {"alpha": 0.3}))
add("elu", Case("Elu", (S,), {"alpha": 0.7}))
add("selu", Case("Selu", (S,)))
add("hardsigmoid", Case("HardSigmoid", (S,), {"alpha": 0.3, "beta": 0.4}))
add("clip-inputs", Case("Clip", (S, f32(-0.5).reshape(()), f32(0.7).reshape(()))))
add("clip-max-only", Case("Clip", (S, None, f32(0.2).reshape(()))))
add("clip-attributes-opset10", Case("Clip", (S,), {"min": -0.4, "max": 0.9}, opset=10))
add("prelu", Case("PRelu", (S4, positive(3, 1, 1, seed=4) * 0.3)))
add("where", Case("Where", (X((2, 3, 4), BOOL), S, w(3, 4, seed=5))))
for op in ("Softmax", "LogSoftmax"):
    add(f"{op.lower()}-axis1", Case(op, (S,), {"axis": 1}))
    add(f"{op.lower()}-opset11-coerced-2d", Case(op, (S,), {"axis": 1}, opset=11))
    add(f"{op.lower()}-opset11-last-axis", Case(op, (S,), {"axis": 2}, opset=11))

# ---- shape values: ops on shapes stay Python ints; ConstantOfShape, Reshape and Range need them
def of_shape(*chain, op="ConstantOfShape", inputs=None, attrs=None) -> Case:
    """``op`` on the last of ``chain`` (nodes after p0 = Shape(x), x of shape (N, 3, 5, 6))."""
    last = f"p{len(chain)}"
    return Case(op, inputs or (last,), attrs or {}, before=(*SHAPE_OF_S4, *chain))


for op, k in (("Add", i64(1, -1, 2, 3)), ("Sub", i64(1, 1, -2, 3)), ("Mul", i64(2, 1, 3, 1)), ("Div", i64(1, 3, 2, 4))):
    add(f"{op.lower()}-shape-value", of_shape((op, ["p0", k], {})))
add("neg-abs-shape-value", of_shape(("Neg", ["p0"], {}), ("Abs", ["p1"], {})))
for op in ("Max", "Min"):
    add(f"{op.lower()}-shape-value", of_shape((op, ["p0", i64(1, 4, 5, 7)], {})))
add("cast-shape-value", of_shape(("Cast", ["p0"], {"to": TensorProto.INT64})))
add("identity-shape-value", of_shape(("Identity", ["p0"], {})))
add("gather-shape-value", of_shape(("Gather", ["p0", i64(0, 2)], {})))
add("slice-shape-value", of_shape(("Slice", ["p0", i64(0), i64(2)], {})))
# (N, 3*5*6) by a computed shape: Unsqueeze(Gather(Shape, 0)) joined with [-1]
add("concat-shape-value-reshape", of_shape(("Gather", ["p0", np.array(0, np.int64)], {}), ("Unsqueeze", ["p1", i64(0)], {}),
                                           ("Concat", ["p2", i64(-1)], {"axis": 0}), op="Reshape", inputs=(S4, "p3")))
add("squeeze-shape-value-range", of_shape(("Slice", ["p0", i64(0), i64(1)], {}), ("Squeeze", ["p1", i64(0)], {}),
                                          op="Range", inputs=(np.array(0, np.int64), "p2", np.array(1, np.int64))))
add("unsqueeze-shape-value", of_shape(("Gather", ["p0", np.array(0, np.int64)], {}), ("Unsqueeze", ["p1", i64(0)], {})))
add("expand-to-shape-value", Case("Expand", (w(3, 1, 6, seed=6), "p0"), before=SHAPE_OF_S4))
add("shape", Case("Shape", (S4,)))
add("shape-start-end", Case("Shape", (S4,), {"start": 1, "end": -1}))
add("size", Case("Size", (S4,)))
add("constantofshape", Case("ConstantOfShape", ("p0",), {"value": numpy_helper.from_array(f32(2.5))},
                            before=SHAPE_OF_S4))
add("range", Case("Range", (np.array(1, np.int64), "p1", np.array(2, np.int64)), before=(
    *SHAPE_OF_S4, ("Gather", ["p0", np.array(3, np.int64)], {}))))


# ---- shape and indexing -------------------------------------------------------------------
add("transpose", Case("Transpose", (S4,), {"perm": [0, 2, 3, 1]}))
add("transpose-default-perm", Case("Transpose", (X((2, 3, 4), static=True),)))
for axis in (0, 1, 2):
    add(f"flatten-axis{axis}", Case("Flatten", (S4,), {"axis": axis}))
add("reshape-copy-and-infer", Case("Reshape", (S4, i64(0, -1, 6))))
add("expand", Case("Expand", (X((2, 3, 1)), i64(2, 3, 5))))
add("tile", Case("Tile", (S, i64(1, 2, 3))))
add("squeeze", Case("Squeeze", (X((2, 1, 4, 1)), i64(1, -1))))
add("squeeze-opset11-attribute", Case("Squeeze", (X((2, 1, 4, 1)),), {"axes": [1, -1]}, opset=11))
add("unsqueeze", Case("Unsqueeze", (S, i64(1, -1))))
add("unsqueeze-opset11-attribute", Case("Unsqueeze", (S,), {"axes": [1, -1]}, opset=11))
add("concat", Case("Concat", (S, w(2, 3, 2, seed=7)), {"axis": -1}))
add("split-sizes", Case("Split", (S, i64(1, 3)), {"axis": 2}, outputs=2))
add("split-even", Case("Split", (X((2, 6, 4)),), {"axis": 1}, outputs=3))
add("split-opset11-attribute", Case("Split", (S,), {"axis": 2, "split": [3, 1]}, opset=11, outputs=2))
add("slice", Case("Slice", (S4, i64(1, -4), i64(3, 100), i64(1, 3), i64(1, 2))))
add("slice-reverse", Case("Slice", (S4, i64(-1), i64(-(2**63)), i64(2), i64(-1))))
add("gather-axis1", Case("Gather", (S, i64(2, 0, 1)), {"axis": 1}))
add("gather-scalar-index", Case("Gather", (S, np.array(-1, np.int64)), {"axis": 2}))
add("gather-embedding", Case("Gather", (w(10, 4, seed=8), X((2, 5), I64, low=0, high=9))))
add("pad-constant", Case("Pad", (S4, i64(0, 0, 1, 2, 0, 0, 2, 1), f32(1.5).reshape(()))))
add("pad-reflect", Case("Pad", (S4, i64(0, 0, 1, 2, 0, 0, 2, 1)), {"mode": "reflect"}))
add("pad-edge-axes", Case("Pad", (S4, i64(1, 2, 2, 0), None, i64(2, 3)), {"mode": "edge"}, opset=18))
for r, pads in ((3, (0, 2, 0, 0, 3, 0)), (4, (0, 1, 2, 0, 0, 3, 1, 0)), (5, (0, 2, 0, 3, 0, 0, 1, 0, 3, 0)),
                (5, (0, 1, 2, 1, 0, 0, 1, 1, 2, 0)), (4, (1, 1, 2, 3, 0, 0, 1, 0))):
    for mode in ("reflect", "edge"):
        add(f"pad-{mode}-rank{r}-{''.join(map(str, pads))}",
            Case("Pad", (X((4, 5, 6, 7, 4)[:r]), i64(*pads)), {"mode": mode}))
add("pad-wrap-rank5", Case("Pad", (X((2, 3, 4, 5, 3)), i64(0, 1, 0, 2, 0, 0, 2, 0, 1, 0)), {"mode": "wrap"}, opset=19))
add("pad-nothing", Case("Pad", (S4, i64(0, 0, 0, 0, 0, 0, 0, 0))))
add("pad-opset10-attribute", Case("Pad", (S4,), {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "value": -0.5}, opset=10))

# ---- indexing by tensor values (CategoryEncoding, symmetric padding's mask) ----------------
add("onehot-last-axis", Case("OneHot", (X((2, 5), I64, low=-7, high=8), i64(6), f32(0, 1)), {"axis": -1}))
add("onehot-axis1-values", Case("OneHot", (X((2, 5), I64, low=-2, high=5), i64(4), f32(-0.5, 2.0)), {"axis": 1}))
add("unique-rows-counts", Case("Unique", (X((7, 2), I64, low=0, high=2),), {"axis": 0, "sorted": 1}, outputs=4,
                               covers="Unique"))
add("compress-constant-slice", Case("Compress", (S4, np.array([False, True, True, False, False])), {"axis": 2}))
add("compress-constant-gather", Case("Compress", (S4, np.array([True, False, True])), {"axis": 1}))
add("compress-runtime", Case("Compress", (S, X((3,), BOOL)), {"axis": 1}))
add("scatternd-rows", Case("ScatterND", (X((4, 5)), i64(3, 1, 0, 2, 1, 4).reshape(3, 2), X((3,), static=True))))
add("scatterelements-axis1", Case("ScatterElements", (X((3, 5)), i64(1, -1, 0, 4, 2, 3).reshape(3, 2),
                                                      X((3, 2))), {"axis": 1}))

# ---- reductions ---------------------------------------------------------------------------
REDUCE_OTHERS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare",
                 "ReduceLogSumExp")
for op in REDUCE_OTHERS:
    add(f"{op.lower()}-opset17-attribute", Case(op, (S4,), {"axes": [1, -1], "keepdims": 0}))
    add(f"{op.lower()}-opset18-input", Case(op, (S4, i64(1, -1)), {"keepdims": 1}, opset=18))
add("reducesum-opset17-input", Case("ReduceSum", (S4, i64(1, -1)), {"keepdims": 0}))
add("reducesum-opset12-attribute", Case("ReduceSum", (S4,), {"axes": [2], "keepdims": 1}, opset=12))
add("reducesum-all-axes", Case("ReduceSum", (S4,), {"keepdims": 0}))
add("reducemean-noop-empty-axes", Case("ReduceMean", (S4,), {"noop_with_empty_axes": 1}, opset=18))
add("argmax", Case("ArgMax", (S4,), {"axis": 1, "keepdims": 1}))
add("argmin", Case("ArgMin", (S4,), {"axis": -1, "keepdims": 0}))

# ---- conv ---------------------------------------------------------------------------------
add("conv2d-bias-groups-dilation", Case("Conv", (X((2, 4, 9, 8)), w(6, 2, 3, 3, seed=9), w(6, seed=10)),
                                        {"group": 2, "dilations": [2, 1], "pads": [1, 1, 1, 1], "strides": [1, 2]}))
add("conv1d-asymmetric-pads", Case("Conv", (X((2, 3, 9)), w(4, 3, 3, seed=11)), {"pads": [0, 2], "strides": [2]}))
add("conv3d-same-upper", Case("Conv", (X((2, 2, 5, 6, 7)), w(3, 2, 3, 3, 3, seed=12), w(3, seed=13)),
                              {"auto_pad": "SAME_UPPER", "strides": [2, 2, 2]}))
add("convtranspose2d-output-padding", Case("ConvTranspose", (X((2, 4, 5, 6)), w(4, 3, 3, 3, seed=14), w(3, seed=15)),
                                           {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 0]}))
add("convtranspose1d-asymmetric-crop", Case("ConvTranspose", (X((2, 3, 7)), w(3, 2, 4, seed=16)),
                                            {"strides": [2], "pads": [0, 1]}))
add("convtranspose2d-groups-output-shape", Case("ConvTranspose", (X((2, 4, 5, 5)), w(4, 1, 3, 3, seed=17)),
                                                {"group": 2, "strides": [2, 2], "output_shape": [10, 9]}))

# ---- linear -------------------------------------------------------------------------------
add("matmul-linear-rank3", Case("MatMul", (S, w(4, 5, seed=18))))
add("matmul-runtime", Case("MatMul", (S, X((2, 4, 3)))))
# a Dense on rank 3+: MatMul -> Add(bias) is fused by the generator into one nn.Linear with bias
add("dense-bias-rank3", Case("Add", ("p0", w(5, seed=19)), before=(("MatMul", [S, w(4, 5, seed=20)], {}),),
                             covers="ai.keras2torch::Linear"))
add("dense-bias-rank4-1-1-c", Case("Add", (w(1, 1, 5, seed=21), "p0"),
                                   before=(("MatMul", [X((2, 3, 2, 4)), w(4, 5, seed=22)], {}),),
                                   covers="ai.keras2torch::Linear"))
add("gemm-transb-alpha-beta", Case("Gemm", (X((3, 6)), w(4, 6, seed=19), w(4, seed=20)),
                                   {"transB": 1, "alpha": 0.5, "beta": 2.0}))
add("gemm-bias-row", Case("Gemm", (X((3, 6)), w(6, 4, seed=21), w(1, 4, seed=22))))
add("gemm-transa", Case("Gemm", (X((6, 3), static=True), w(6, 4, seed=23), w(4, seed=24)), {"transA": 1, "alpha": 1.5}))
add("gemm-computed-c", Case("Gemm", (X((3, 6)), w(6, 4, seed=25), "p0"), before=(("Relu", [X((3, 4))], {}),)))
add("einsum", Case("Einsum", (S, w(4, 3, seed=26)), {"equation": "bij,jk->bik"}))

# ---- pooling ------------------------------------------------------------------------------
add("maxpool2d-pads-dilation-ceil", Case("MaxPool", (X((2, 3, 9, 8)),), {"kernel_shape": [3, 2], "strides": [2, 2],
                                                                          "pads": [1, 1, 1, 1], "dilations": [1, 2],
                                                                          "ceil_mode": 1}))
add("maxpool1d-asymmetric", Case("MaxPool", (X((2, 3, 9)),), {"kernel_shape": [3], "strides": [2], "pads": [0, 1]}))
add("averagepool2d-count-include-pad", Case("AveragePool", (X((2, 3, 7, 8)),),
                                            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                             "count_include_pad": 1}))
add("averagepool3d-asymmetric-exclude-pad", Case("AveragePool", (X((2, 2, 5, 6, 7)),),
                                                 {"kernel_shape": [3, 3, 3], "strides": [2, 2, 2],
                                                  "pads": [0, 0, 0, 1, 1, 1]}))
add("globalaveragepool", Case("GlobalAveragePool", (S4,)))
add("globalmaxpool", Case("GlobalMaxPool", (X((2, 3, 5, 6, 4)),)))

# ---- resize -------------------------------------------------------------------------------
add("resize-nearest-asymmetric", Case("Resize", (S4, None, f32(1, 1, 2, 3)), {
    "mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}))
add("resize-nearest-half-pixel-sizes", Case("Resize", (S4, None, None, i64(2, 3, 7, 8)), {"mode": "nearest"}))
add("resize-nearest-prefer-ceil-ties", Case("Resize", (S4, None, None, i64(2, 3, 7, 9)), {
    "mode": "nearest", "nearest_mode": "round_prefer_ceil"}))
add("resize-nearest-tf-half-pixel", Case("Resize", (S4, f32(), f32(), i64(2, 3, 7, 9)), {
    "mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn", "nearest_mode": "floor"}, opset=12))
add("resize-linear-half-pixel", Case("Resize", (S4, None, f32(1, 1, 2, 1.5)), {"mode": "linear"}))
add("resize-linear-align-corners", Case("Resize", (S4, None, f32(1, 1, 2, 2)), {
    "mode": "linear", "coordinate_transformation_mode": "align_corners"}))
add("resize-cubic", Case("Resize", (S4, None, f32(1, 1, 2, 2)), {"mode": "cubic"}, atol=1e-5))
add("resize-opset10", Case("Resize", (S4, f32(1, 1, 2, 3)), {"mode": "nearest"}, opset=10))
add("upsample-opset9", Case("Upsample", (S4, f32(1, 1, 2, 2)), {"mode": "nearest"}, opset=9))
add("depthtospace-dcr", Case("DepthToSpace", (X((2, 8, 3, 4)),), {"blocksize": 2, "mode": "DCR"}))
add("depthtospace-crd", Case("DepthToSpace", (X((2, 8, 3, 4)),), {"blocksize": 2, "mode": "CRD"}))
add("spacetodepth", Case("SpaceToDepth", (X((2, 3, 4, 6)),), {"blocksize": 2}))

# ---- recurrent: input (seq, batch, features); gate orders and bias layouts differ from torch's ---
SEQ = X((5, 2, 3))
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
for op, extra in (("LSTM", {}), ("GRU", {"linear_before_reset": 1}), ("RNN", {})):
    g = GATES[op]
    for direction in ("forward", "reverse", "bidirectional"):
        d = 2 if direction == "bidirectional" else 1
        add(f"{op.lower()}-{direction}", Case(op, (SEQ, w(d, g * 4, 3, seed=27), w(d, g * 4, 4, seed=28),
                                                   w(d, 2 * g * 4, seed=29)),
                                              {"hidden_size": 4, "direction": direction, **extra},
                                              outputs=3 if op == "LSTM" else 2))
add("lstm-initial-state", Case("LSTM", (SEQ, w(1, 16, 3, seed=30), w(1, 16, 4, seed=31), w(1, 32, seed=32), None,
                                        X((1, 2, 4), static=True), X((1, 2, 4), static=True)),
                               {"hidden_size": 4}, outputs=3))
add("reversesequence-full-length", Case("ReverseSequence", (X((5, 2, 3), static=True), i64(5, 5)),
                                        {"time_axis": 0, "batch_axis": 1}))

# ---- norm ---------------------------------------------------------------------------------
add("batchnormalization", Case("BatchNormalization", (S4, w(3, seed=33), w(3, seed=34), w(3, seed=35),
                                                      positive(3, seed=36)), {"epsilon": 1e-3}))
add("batchnormalization-rank3", Case("BatchNormalization", (S, w(3, seed=37), w(3, seed=38), w(3, seed=39),
                                                            positive(3, seed=40))))
add("layernormalization", Case("LayerNormalization", (S, w(4, seed=41), w(4, seed=42)), {"axis": -1, "epsilon": 1e-3}))
add("layernormalization-two-axes", Case("LayerNormalization", (S4, w(5, 6, seed=43)), {"axis": 2}))

# random draws: (op, attrs, data input shape or None), what ``export/randomness.py`` produces
RANDOM = {"RandomNormalLike": ({"mean": 0.5, "scale": 2.0}, (400, 50)),
          "RandomUniformLike": ({"low": -1.0, "high": 3.0}, (400, 50)),
          "RandomNormal": ({"shape": [400, 50], "mean": -1.0, "scale": 0.5}, None),
          "RandomUniform": ({"shape": [400, 50], "low": 2.0, "high": 2.5}, None)}


# op types registered without a case of their own here, and why
NO_CASE: dict[str, str] = {
    f"ai.keras2torch::{op}": "one-node cases in test_keras_recurrent_ops.py: the node's body is a model-local "
                             "function, which this harness's plain graphs have no place for"
    for op in ("GRU", "LSTM", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")}
NO_CASE.update({op: "one-node cases in test_trainable_layers.py (the node's body is a model-local function)"
                for op, entries in codegen.CONVERTERS.entries().items()
                if any(e.family == "keras_trainable" for e in entries)})
NO_CASE.update({op: "random: no two runs share values; test_random_draws_have_the_distribution checks "
                    "shape, dtype and moments instead" for op in RANDOM})
NO_CASE["ai.keras2torch::Bincount"] = ("fused from tf2onnx's whole DenseBincount subgraph (Unique, Compress, "
                                       "ScatterND): category_encoding in test_beyond.py against Keras")


# ---- the harness ----------------------------------------------------------------------------
def _model(case: Case):
    """The ONNX model of ``case``, and its runtime inputs (name -> X)."""
    runtime, inits, nodes, seen = {}, [], [], {}

    def name_of(spec, owner: str, k: int) -> str:
        if spec is None:
            return ""
        if isinstance(spec, str):
            return spec
        if isinstance(spec, X) and id(spec) in seen:    # the same X object: the same input
            return seen[id(spec)]
        name = f"{owner}_in{k}"
        if isinstance(spec, X):
            runtime[name] = spec
            seen[id(spec)] = name
        else:
            inits.append(numpy_helper.from_array(np.asarray(spec), name))
        return name

    for j, (op, ins, attrs) in enumerate(case.before):
        nodes.append(helper.make_node(op, [name_of(s, f"b{j}", k) for k, s in enumerate(ins)], [f"p{j}"],
                                      name=f"functional_1/before_{j}/{op}", **attrs))
    outs = [f"y{k}" for k in range(case.outputs)]
    nodes.append(helper.make_node(case.op, [name_of(s, "op", k) for k, s in enumerate(case.inputs)], outs,
                                  name=f"functional_1/layer_1/{case.op}", **case.attrs))
    graph_inputs = [helper.make_tensor_value_info(
        n, helper.np_dtype_to_tensor_dtype(np.dtype(x.dtype)),
        list(x.shape) if x.static or not x.shape else ["N", *x.shape[1:]]) for n, x in runtime.items()]
    graph = helper.make_graph(nodes, "g", graph_inputs, [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)],
                              ir_version=8 if case.opset <= 17 else 9)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for out, typed in zip(model.graph.output, inferred.graph.output):
        out.type.CopyFrom(typed.type)   # the output types ONNX infers (onnxruntime needs them)
    onnx.checker.check_model(model, full_check=True)
    return model, runtime


def _generated_module(model, tmp_path, name: str):
    gen = codegen.generate(model, name, [{"name": "layer", "class": "Layer"}])
    (tmp_path / "model.py").write_text(gen.source)
    save_file({k: np.ascontiguousarray(v).reshape(v.shape) for k, v in gen.state.items()}, str(tmp_path / "model.safetensors"))
    return gen, codegen.load_generated(tmp_path / "model.py")


@pytest.mark.parametrize("case_id", list(CASES))
def test_op_matches_onnxruntime(tmp_path, case_id):
    case = CASES[case_id]
    model, runtime = _model(case)
    gen, module = _generated_module(model, tmp_path, case_id.replace("-", "_"))
    rng = np.random.default_rng(7)
    feeds = {n: x.sample(rng) for n, x in runtime.items()}
    refs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        got = module(*[torch.from_numpy(feeds[n]) for n in gen.input_names])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(refs)
    for g, r in zip(got, refs):
        g = g.numpy()
        assert g.shape == r.shape, (g.shape, r.shape)
        if r.dtype.kind in "biu":
            assert g.dtype.kind == r.dtype.kind, (g.dtype, r.dtype)
            np.testing.assert_array_equal(g, r)
        else:
            np.testing.assert_allclose(g, r, rtol=case.rtol, atol=case.atol, equal_nan=True)


def test_cases_are_not_constant_folded():
    """Every case reaches its converter: its op has a runtime input, so ``fold`` leaves it."""
    for case_id, case in CASES.items():
        assert any(isinstance(s, (X, str)) for s in case.inputs), case_id


def test_every_converter_has_a_case():
    """Each op type and opset range registered in CONVERTERS is exercised by some case."""
    missing = []
    for op, entries in codegen.CONVERTERS.entries().items():
        if op in NO_CASE:
            continue
        for e in entries:
            if not any((c.covers or c.op) == op and e.applies(c.opset) for c in CASES.values()):
                hi = "" if e.opsets[1] >= MAX_OPSET else e.opsets[1]
                missing.append(f"{op} opsets {e.opsets[0]}-{hi} ({e.family})")
    assert not missing, missing


@pytest.mark.parametrize("op", list(RANDOM))
def test_random_draws_have_the_distribution(tmp_path, op):
    """A random node's torch code draws the node's distribution: the shape and dtype of
    onnxruntime's draw, and over 20,000 samples the mean within 5 standard errors and the
    std within 3% of the node's (uniform: inside [low, high)); two calls differ."""
    a, shape = RANDOM[op]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", shape[1]])] if shape else []
    node = helper.make_node(op, ["x"] if shape else [], ["y"], name=f"functional_1/sampling_1/{op}", **a)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = {"x": np.zeros(shape, np.float32)} if shape else {}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    gen, module = _generated_module(model, tmp_path, op.lower())
    torch.manual_seed(0)
    with torch.no_grad():
        got = module(*[torch.from_numpy(feeds[n]) for n in gen.input_names]).numpy()
        again = module(*[torch.from_numpy(feeds[n]) for n in gen.input_names]).numpy()
    assert got.shape == ref.shape and got.dtype == ref.dtype, (got.shape, got.dtype, ref.shape, ref.dtype)
    assert not np.array_equal(got, again)
    if "Normal" in op:
        mean, std = a["mean"], a["scale"]
    else:
        mean, std = (a["low"] + a["high"]) / 2, (a["high"] - a["low"]) / np.sqrt(12)
        assert got.min() >= a["low"] and got.max() < a["high"], (got.min(), got.max())
    for sample in (got, ref):   # onnxruntime's draw has the same moments: the attributes were read alike
        assert abs(sample.mean() - mean) <= 5 * std / np.sqrt(sample.size), (op, sample.mean(), mean)
        assert abs(sample.std() - std) <= 0.03 * std, (op, sample.std(), std)


@pytest.mark.parametrize("case_id", ["dense-bias-rank3", "dense-bias-rank4-1-1-c"])
def test_dense_bias_on_rank3_is_the_linear_bias(tmp_path, case_id):
    """ONNX's Gemm is rank 2 only; a Dense on a sequence still becomes one nn.Linear whose
    bias is a parameter (not a buffer added after a bias-free Linear)."""
    model, _ = _model(CASES[case_id])
    gen, module = _generated_module(model, tmp_path, case_id.replace("-", "_"))
    assert [type(m).__name__ for m in module.children()] == ["Linear"]
    assert sorted(k.split(".")[-1] for k, _ in module.named_parameters()) == ["bias", "weight"]
    assert not list(module.buffers())
    assert "+" not in gen.source.split("def forward")[1].split("\n    def ")[0]   # forward alone
