"""Resampling: Resize / Upsample (``F.interpolate``) and DepthToSpace / SpaceToDepth.

Resize takes ``(X, roi, scales, sizes)`` since opset 11; Resize-10 and Upsample-9 take
``(X, scales)``. The modes torch has: nearest (asymmetric + floor; half-pixel + round where it rounds as
torch's nearest-exact does, or tf_half_pixel_for_nn + floor),
(bi/tri)linear and bicubic (a = -0.75) with half-pixel or align-corners coordinates.
"""

from __future__ import annotations

from fractions import Fraction

from pipeline.codegen.gen import Gen, Unsupported, attrs
from pipeline.codegen.values import shape_list
from pipeline.core.registry import handles


def _no_ties(in_dims: list, scales, sizes) -> bool:
    """Half-pixel nearest with ``round_prefer_floor`` takes the lower pixel where the source
    coordinate ``(x_out + 0.5) / scale - 0.5`` is halfway between two, torch's nearest-exact
    the upper: True if that never happens (an integer scale, or checked for static dims)."""
    for i in range(2, len(in_dims)):
        n_in = in_dims[i]
        if sizes is not None:
            n_out = sizes[i]
            if not (isinstance(n_in, int) and isinstance(n_out, int)):
                return False
            if any((2 * k + 1) * n_in % (2 * n_out) == 0 for k in range(n_out)):
                return False
            continue
        s = Fraction(float(scales[i]))
        if s.denominator == 1:
            continue                 # (2k + 1) / 2s is never an integer
        if not isinstance(n_in, int) or any((Fraction(2 * k + 1, 2) / s).denominator == 1
                                            for k in range(int(n_in * float(scales[i])))):
            return False
    return True


def _interpolate(gen: Gen, node, scales, sizes, a: dict) -> None:
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    r = gen.rank(node.input[0])
    x = gen.t(node.input[0])
    if scales is not None and scales.size and list(scales[:2]) != [1.0, 1.0]:
        raise Unsupported("Resize that scales batch or channels")
    size_arg = (f"size={shape_list(sizes[2:])}" if sizes is not None
                else f"scale_factor={tuple(float(s) for s in scales[2:])}")
    if mode == "nearest":
        nm = a.get("nearest_mode", "round_prefer_floor")
        if ctm == "asymmetric" and nm == "floor":          # floor(x_out / scale)
            gen.emit(node, f"F.interpolate({x}, {size_arg}, mode='nearest')")
        elif (ctm, nm) in (("half_pixel", "round_prefer_ceil"), ("tf_half_pixel_for_nn", "floor")) or (
                (ctm, nm) == ("half_pixel", "round_prefer_floor") and _no_ties(gen.dims(node.input[0]), scales, sizes)):
            gen.emit(node, f"F.interpolate({x}, {size_arg}, mode='nearest-exact')")   # floor((x_out + 0.5) / scale)
        else:
            raise Unsupported(f"nearest Resize with coordinate_transformation_mode={ctm}, nearest_mode={nm}"
                              + (" where a source coordinate falls halfway between two pixels"
                                 if nm == "round_prefer_floor" else ""))
        return
    kind = {3: "linear", 4: "bilinear", 5: "trilinear"}[r] if mode == "linear" else ("bicubic" if mode == "cubic" else None)
    if kind is None or (mode == "cubic" and abs(a.get("cubic_coeff_a", -0.75) + 0.75) > 1e-6):
        raise Unsupported(f"Resize mode {mode}")
    if ctm in ("half_pixel", "pytorch_half_pixel"):
        gen.emit(node, f"F.interpolate({x}, {size_arg}, mode={kind!r}, align_corners=False)")
    elif ctm == "align_corners":
        gen.emit(node, f"F.interpolate({x}, {size_arg}, mode={kind!r}, align_corners=True)")
    else:
        raise Unsupported(f"{mode} Resize with coordinate_transformation_mode={ctm}")


@handles("Resize", opsets=(11, None))
def resize(gen: Gen, node):
    """Constant scales (input 2) or sizes (input 3, may be a shape value)."""
    a = attrs(node)
    if a.get("antialias", 0) or a.get("axes") is not None:
        raise Unsupported("Resize with antialias or axes (opset 18)")
    scales = gen.opt_const(node, 2)
    sizes = gen.shape_items(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if (scales is None or scales.size == 0) and sizes is None:
        raise Unsupported("Resize with computed scales")
    _interpolate(gen, node, scales, sizes, a)


@handles("Upsample", opsets=(9, 9))
@handles("Resize", opsets=(10, 10))
def resize_v10(gen: Gen, node):
    """Constant scales as input 1; coordinates are asymmetric (``x_out / scale``), nearest
    rounds down: torch's ``nearest``. Linear has no torch equivalent."""
    scales = gen.const(node.input[1])
    if scales is None:
        raise Unsupported(f"{node.op_type} with computed scales")
    a = attrs(node)
    if a.get("mode", "nearest") != "nearest":
        raise Unsupported(f"{a['mode']} {node.op_type} before opset 11 (asymmetric coordinates)")
    _interpolate(gen, node, scales, None, {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"})


@handles("DepthToSpace", "SpaceToDepth")
def depth_space(gen: Gen, node):
    a = attrs(node)
    b = a["blocksize"]
    x = gen.t(node.input[0])
    if node.op_type == "SpaceToDepth":
        # ONNX orders the new channels (i, j, c); F.pixel_unshuffle orders them (c, i, j)
        gen.emit(node, f"{x}.reshape({x}.shape[0], {x}.shape[1], {x}.shape[2] // {b}, {b}, {x}.shape[3] // {b}, {b})"
                 f".permute(0, 3, 5, 1, 2, 4).reshape({x}.shape[0], -1, {x}.shape[2] // {b}, {x}.shape[3] // {b})")
    elif a.get("mode", "DCR") == "CRD":
        gen.emit(node, f"F.pixel_shuffle({x}, {b})")
    else:
        gen.emit(node, f"{x}.reshape({x}.shape[0], {b}, {b}, -1, {x}.shape[2], {x}.shape[3])"
                       f".permute(0, 3, 4, 1, 5, 2).reshape({x}.shape[0], -1, {x}.shape[2] * {b}, {x}.shape[3] * {b})")
