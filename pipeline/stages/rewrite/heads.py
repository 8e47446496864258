"""Which Transposes left after the rewrite belong to attention's heads, and which are layout
left-overs (``rewrite.json`` ``remaining[].kind``, ``transposes_by_kind``).

Hand-written attention (and tf2onnx's form of ``tf.transpose``-based transformers) splits
the heads with ``Reshape -> Transpose -> MatMul`` and merges them with ``MatMul -> Transpose
-> Reshape``; the ``MatMul`` multiplies two activations (queries by keys, scores by values),
not a weight. Those Transposes are the model's own arithmetic, as in a PyTorch attention: no
layout choice removes them. Keras' ``MultiHeadAttention`` uses ``Einsum`` and leaves none.

- ``split``: ``Reshape -> [per-element ops] -> Transpose -> [per-element ops] -> MatMul`` of
  two activations;
- ``merge``: ``MatMul`` of two activations ``-> [per-element ops] -> Transpose -> [...] -> Reshape``.

Every other Transpose is ``layout`` (before a Flatten, a barrier, a boundary, a Permute...).
"""

from __future__ import annotations

import onnx_ir as ir

HEADS, LAYOUT = "attention_heads", "layout"
# ops that keep every element where it is, on one activation (scaling q by 1/sqrt(d), a cast)
_PER_ELEMENT = {"Mul", "Div", "Add", "Sub", "Cast", "Identity"}
_HOPS = 3


def _const(v: ir.Value | None) -> bool:
    if v is None:
        return True
    p = v.producer()
    return v.const_value is not None or (p is not None and p.op_type == "Constant")


def _activation_matmul(n: ir.Node) -> bool:
    """A MatMul of two computed tensors of rank >= 3 (heads), not a Dense."""
    if n.op_type != "MatMul" or n.domain != "" or any(_const(v) for v in n.inputs):
        return False
    return all(v.shape is None or len(v.shape) >= 3 for v in n.inputs)


def _passes(n: ir.Node) -> bool:
    """Per-element, with one computed input (the others constants): the walk goes through it."""
    return n.op_type in _PER_ELEMENT and n.domain == "" and sum(not _const(v) for v in n.inputs) == 1


def _up(v: ir.Value, want) -> bool:
    for _ in range(_HOPS + 1):
        p = v.producer()
        if p is None:
            return False
        if want(p):
            return True
        if not _passes(p):
            return False
        v = next(i for i in p.inputs if not _const(i))
    return False


def _down(v: ir.Value, want, hops: int = _HOPS) -> bool:
    for use in v.uses():
        n = use.node
        if want(n) or (hops and _passes(n) and _down(n.outputs[0], want, hops - 1)):
            return True
    return False


def _reshape(n: ir.Node) -> bool:
    return n.op_type == "Reshape" and n.domain == ""


def role(t: ir.Node) -> str | None:
    """``"split"``, ``"merge"`` or None (see the module docstring) for the Transpose ``t``."""
    x, y = t.inputs[0], t.outputs[0]
    if len(t.attributes["perm"].as_ints()) < 4:
        return None
    if _up(x, _reshape) and _down(y, _activation_matmul):
        return "split"
    if _up(x, _activation_matmul) and _down(y, _reshape):
        return "merge"
    return None


def classify(graph: ir.Graph) -> dict[str, dict]:
    """Transpose name -> {"kind": HEADS or LAYOUT, "role": split/merge (heads only)}."""
    out = {}
    for t in graph:
        if t.op_type == "Transpose" and t.domain == "":
            r = role(t)
            out[t.name] = {"kind": HEADS, "role": r} if r else {"kind": LAYOUT}
    return out


def counts(graph: ir.Graph) -> dict[str, int]:
    """{HEADS: n, LAYOUT: m}: the Transposes of ``graph`` by kind."""
    kinds = [c["kind"] for c in classify(graph).values()]
    return {HEADS: kinds.count(HEADS), LAYOUT: kinds.count(LAYOUT)}


def annotate(graph: ir.Graph, remaining: list[dict]) -> dict[str, int]:
    """Each entry of ``layout.explain``'s list gets ``kind`` (and ``role``); a head Transpose's
    reasons start with what it is. Returns ``counts``."""
    kinds = classify(graph)
    for entry in remaining:
        entry.update(kinds.get(entry["node"], {"kind": LAYOUT}))
        if entry.get("role"):
            entry["reasons"].insert(0, REASON[entry["role"]])
    return counts(graph)


REASON = {"split": "attention head split (Reshape -> Transpose -> MatMul of two activations): the model's own "
                   "arithmetic, as in a PyTorch attention, not a layout left-over",
          "merge": "attention head merge (MatMul of two activations -> Transpose -> Reshape): the model's own "
                   "arithmetic, as in a PyTorch attention, not a layout left-over"}
