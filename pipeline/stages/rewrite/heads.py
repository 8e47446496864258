"""Which Transposes left after the rewrite belong to attention's heads, and which are layout
left-overs (``rewrite.json`` ``remaining[].kind``, ``transposes_by_kind``).

Hand-written attention (and tf2onnx's form of ``tf.transpose``-based transformers) splits
the heads with ``Reshape -> Transpose -> MatMul`` and merges them with ``MatMul -> Transpose
-> Reshape``; the ``MatMul`` multiplies two activations (queries by keys, scores by values),
not a weight. Those Transposes are the model's own arithmetic, as in a PyTorch attention: no
layout choice removes them. Keras' ``MultiHeadAttention`` uses ``Einsum`` and leaves none.

- ``split``: ``Reshape -> [per-element ops] -> Transpose -> [per-element ops] -> MatMul`` of
  two activations, or the same from a head-making ``Einsum`` (Keras' ``EinsumDense``
  ``abc,cde->abde``: the projection writes ``(N, L, heads, d)`` itself, as Llama's queries,
  whose rotary embedding, ``x * cos + rotate_half(x) * sin``, is applied on that layout);
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


def _full_shape(v: ir.Value, out: ir.Value) -> bool:
    """``v`` has ``out``'s shape as far as known: same rank, no broadcast (unit) axis."""
    if v.shape is None or out.shape is None or len(v.shape) != len(out.shape):
        return False
    for a, b in zip(v.shape.dims, out.shape.dims):
        ints = isinstance(a, int), isinstance(b, int)
        if (all(ints) and a != b) or (ints[0] and a == 1) != (ints[1] and b == 1):
            return False
    return True


def _full_inputs(n: ir.Node) -> list[ir.Value]:
    """The computed inputs of per-element ``n`` with its output's shape (a rotary embedding's
    ``x * cos + rotate_half(x) * sin``: both terms; not the broadcast ``cos``, ``sin``)."""
    if n.op_type not in _PER_ELEMENT or n.domain != "":
        return []
    computed = [v for v in n.inputs if not _const(v)]
    if len(computed) == 1:
        return computed
    return [v for v in computed if _full_shape(v, n.outputs[0])]


def _up(v: ir.Value, want, hops: int = _HOPS) -> ir.Node | None:
    """The first producer ``want`` accepts, walking up through per-element ops; else None."""
    p = v.producer()
    if p is None:
        return None
    if want(p):
        return p
    if not hops:
        return None
    for i in _full_inputs(p):
        if (found := _up(i, want, hops - 1)) is not None:
            return found
    return None


def _down(v: ir.Value, want, hops: int = _HOPS) -> bool:
    for use in v.uses():
        n = use.node
        if want(n) or (hops and _passes(n) and _down(n.outputs[0], want, hops - 1)):
            return True
    return False


def _reshape(n: ir.Node) -> bool:
    return n.op_type == "Reshape" and n.domain == ""


def _head_einsum(n: ir.Node) -> bool:
    """An Einsum of one activation by a constant weight whose output has one axis more than
    the activation: a projection that splits the features into (heads, d)."""
    if n.op_type != "Einsum" or n.domain != "" or len(n.inputs) != 2:
        return False
    acts = [v for v in n.inputs if not _const(v)]
    if len(acts) != 1 or acts[0].shape is None or n.outputs[0].shape is None:
        return False
    return len(n.outputs[0].shape) == len(acts[0].shape) + 1


def _splitter(n: ir.Node) -> bool:
    return _reshape(n) or _head_einsum(n)


def role(t: ir.Node) -> str | None:
    """``"split"``, ``"merge"`` or None (see the module docstring) for the Transpose ``t``."""
    x, y = t.inputs[0], t.outputs[0]
    if len(t.attributes["perm"].as_ints()) < 4:
        return None
    if _up(x, _splitter) and _down(y, _activation_matmul):
        return "split"
    if _up(x, _activation_matmul) and _down(y, _reshape):
        return "merge"
    return None


def reason(t: ir.Node, kind: str) -> str:
    """Why the head Transpose ``t`` stays: REASON, naming the op that made the heads axis."""
    src = _up(t.inputs[0], _splitter) if kind == "split" else None
    if src is None or src.op_type != "Einsum":
        return REASON[kind]
    eq = src.attributes["equation"].value
    eq = eq.decode() if isinstance(eq, bytes) else eq
    between = "" if t.inputs[0].producer() is src else \
        " and the per-element ops after it (Llama's rotary embedding) work on that layout"
    return (f"attention head split: Einsum {src.name!r} ({eq}) projects straight to (N, L, heads, d){between}; "
            "the MatMul of two activations (queries by keys) needs (N, heads, L, d): the model's own arithmetic, "
            "the transpose(1, 2) a PyTorch attention has too, not a layout left-over")


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
    by_name = {n.name: n for n in graph if n.op_type == "Transpose" and n.domain == ""}
    for entry in remaining:
        entry.update(kinds.get(entry["node"], {"kind": LAYOUT}))
        if entry.get("role"):
            entry["reasons"].insert(0, reason(by_name[entry["node"]], entry["role"]))
    return counts(graph)


REASON = {"split": "attention head split (Reshape -> Transpose -> MatMul of two activations): the model's own "
                   "arithmetic, as in a PyTorch attention, not a layout left-over",
          "merge": "attention head merge (MatMul of two activations -> Transpose -> Reshape): the model's own "
                   "arithmetic, as in a PyTorch attention, not a layout left-over"}
