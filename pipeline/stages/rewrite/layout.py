"""The channels-first layout pass: push Transposes down the graph until they cancel.

1. Each chosen rank-3/4/5 model input becomes channels-first, followed by a Transpose
   back to channels-last, so the rest of the graph computes what it did before.
2. Every Transpose is moved downstream through the ops that have a layout rule
   (registry), merged with the next Transpose (tf2onnx's own NHWC->NCHW pairs around
   each Conv cancel), folded into constants and Unsqueezes, removed when it is the
   identity, folded into a stack (``Concat`` of ``Unsqueeze``s: the Transpose only moves
   the stacked axis). An op without a rule is a barrier and the Transpose stays, so the result is
   still correct.
3. A model output produced by a Transpose to channels-last becomes channels-first.
The pass repeats to a fixpoint: running it on its own result changes nothing.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from pipeline.core.errors import PipelineError
from pipeline.core.recurrent import DOMAIN as RECURRENT_DOMAIN
from pipeline.stages.rewrite.rules import RULES
from pipeline.stages.rewrite.context import Ctx, dims, rank
from pipeline.core.perm import compose, inverse, is_identity, to_first, to_last
from pipeline.stages.rewrite.rules.shape import moves_only_unit_dims

MAX_ROUNDS = 10_000


def rule_key(node: ir.Node) -> str:
    """The key of ``node``'s layout rule: its op type, ``"<domain>::<op type>"`` outside ONNX's."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def channel_candidates(graph: ir.Graph) -> list[str]:
    """Float inputs of rank 3, 4 or 5: the ones that may carry channels."""
    out = []
    for v in graph.inputs:
        if rank(v) in (3, 4, 5) and v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE):
            out.append(v.name)
    return out


def inputs_to_channels_first(ctx: Ctx, names: list[str]) -> list[str]:
    g = ctx.graph
    first = next(iter(g), None)
    done = []
    for i, v in enumerate(list(g.inputs)):
        if v.name not in names:
            continue
        r = rank(v)
        name = v.name
        v.name = ctx.name(f"{name}_channels_last")
        new = ir.Value(name=name, type=v.type, shape=ir.Shape([v.shape[j] for j in to_first(r)]))
        g.inputs[i] = new
        t = ir.node("Transpose", [new], {"perm": list(to_last(r))}, name=ctx.name(f"{name}/to_channels_last"))
        if first is not None:
            g.insert_before(first, t)
        else:
            g.append(t)
        t.outputs[0].type, t.outputs[0].shape = v.type, v.shape
        ctx.redirect(v, t.outputs[0])
        done.append(name)
    return done


def _unsqueeze_fold(ctx: Ctx, v: ir.Value, p) -> list[int] | None:
    """For Transpose(v, p), v = Unsqueeze(x, axes) that only moves inserted unit axes:
    the axes of the equivalent Unsqueeze(x, axes'); None otherwise."""
    u = v.producer()
    if u is None or u.op_type != "Unsqueeze" or len(v.uses()) != 1 or v.is_graph_output():
        return None
    axes = ctx.const(u.inputs[1]) if len(u.inputs) > 1 else None
    if axes is None:
        return None
    n = len(p)
    axes = {int(a) % n for a in axes.reshape(-1)}
    others = [p[j] for j in range(n) if p[j] not in axes]
    if others != sorted(others):
        return None
    return [j for j in range(n) if p[j] in axes]


def _fold_into_unsqueeze(ctx: Ctx, t: ir.Node, p) -> bool:
    """Transpose(Unsqueeze(x, axes), p) that only moves inserted unit axes -> Unsqueeze(x, axes')."""
    inserted = _unsqueeze_fold(ctx, t.inputs[0], p)
    if inserted is None:
        return False
    u = t.inputs[0].producer()
    u.replace_input_with(1, ctx.new_const(np.array(inserted, dtype=np.int64), "unsqueeze_axes"))
    y = t.outputs[0]
    u.outputs[0].shape = y.shape
    ctx.redirect(y, u.outputs[0])
    ctx.remove(t)
    return True


def _stack_fold(ctx: Ctx, v: ir.Value, p) -> list[list[int]] | None:
    """For Transpose(v, p), v = Concat(Unsqueeze(x_1), ..., Unsqueeze(x_k)) (a stack, as
    Keras' ``ops.stack`` and TimeDistributed's unrolled time steps arrive) where p moves
    only inserted unit axes of each input: the axes of each equivalent Unsqueeze, so that
    Transpose(v, p) == Concat(Unsqueeze(x_i, axes_i), axis=p.index(axis)); None otherwise."""
    c = v.producer()
    if c is None or c.op_type != "Concat" or c.domain != "" or len(v.uses()) != 1 or v.is_graph_output():
        return None
    if len(c.outputs) != 1 or len({id(u) for u in c.inputs}) != len(c.inputs):
        return None
    folded = [_unsqueeze_fold(ctx, u, p) for u in c.inputs]
    return None if any(f is None for f in folded) else folded


def _fold_into_stack(ctx: Ctx, t: ir.Node, p) -> bool:
    """Transpose(Concat(Unsqueeze(x_i), axis), p) that only moves the inserted axes ->
    Concat(Unsqueeze(x_i, axes_i'), axis'): the stack is built in the transposed order."""
    folded = _stack_fold(ctx, t.inputs[0], p)
    if folded is None:
        return False
    c = t.inputs[0].producer()
    axis = int(ctx.attr(c, "axis")) % len(p)
    for u, inserted in zip(c.inputs, folded):
        un = u.producer()
        un.replace_input_with(1, ctx.new_const(np.array(inserted, dtype=np.int64), "unsqueeze_axes"))
        d = dims(u)
        if d is not None:
            u.shape = ir.Shape([u.shape[j] for j in p])
    ctx.set_attr(c, "axis", p.index(axis))
    y = t.outputs[0]
    c.outputs[0].shape = y.shape
    ctx.redirect(y, c.outputs[0])
    ctx.remove(t)
    return True


def _step(ctx: Ctx, t: ir.Node) -> bool:
    """One move of Transpose ``t``; True when the graph changed."""
    p = tuple(t.attributes["perm"].as_ints())
    x, y = t.inputs[0], t.outputs[0]
    src = x.producer()
    if src is not None and src.op_type == "Transpose" and src.domain == "":
        t.replace_input_with(0, src.inputs[0])
        ctx.set_attr(t, "perm", list(compose(tuple(src.attributes["perm"].as_ints()), p)))
        if not src.outputs[0].uses() and not src.outputs[0].is_graph_output():
            ctx.remove(src)
        return True
    c = ctx.const(x)
    if c is not None and not y.is_graph_output():
        ctx.redirect(y, ctx.new_const(np.transpose(c, p), f"{x.name}_t"))
        ctx.remove(t)
        return True
    if _fold_into_unsqueeze(ctx, t, p) or _fold_into_stack(ctx, t, p):
        return True
    if is_identity(p) and not (y.is_graph_output() and (x.is_graph_input() or x.is_graph_output())):
        ctx.redirect(y, x)
        ctx.remove(t)
        return True
    changed = False
    for use in list(y.uses()):
        node = use.node
        if node.op_type == "Transpose" and node.domain == "":
            continue  # merged when that Transpose is visited
        rule = RULES.lookup(rule_key(node), ctx.opset)
        if rule is None:
            ctx.fail(node, f"no layout rule for {node.op_type} (opset {ctx.opset})")
            continue
        try:
            result = rule.fn(ctx, node)
        except Exception as e:
            raise PipelineError("rewrite", f"layout rule {rule.family}.{rule.fn.__name__} failed: {e}",
                                node=node.name, op_type=node.op_type) from e
        if result is True:
            ctx.barriers.pop(node.name, None)
            changed = True
    if not y.uses() and not y.is_graph_output():
        ctx.remove(t)
        changed = True
    return changed


def _merge_duplicates(ctx: Ctx) -> bool:
    """Transposes of the same value with the same perm (tf2onnx writes one per Conv) become one."""
    seen, changed = {}, False
    for t in transposes(ctx.graph):
        key = (id(t.inputs[0]), tuple(t.attributes["perm"].as_ints()))
        first = seen.setdefault(key, t)
        if first is t or t.outputs[0].is_graph_output():
            continue
        ctx.redirect(t.outputs[0], first.outputs[0])
        ctx.remove(t)
        changed = True
    return changed


def push_transposes(ctx: Ctx) -> int:
    """Apply the rules to a fixpoint; returns the number of changing sweeps."""
    sweeps = 0
    while True:
        changed = _merge_duplicates(ctx)
        for node in list(ctx.graph):
            if node.graph is not ctx.graph or node.op_type != "Transpose" or node.domain != "":
                continue
            changed |= _step(ctx, node)
        if not changed:
            return sweeps
        sweeps += 1
        if sweeps > MAX_ROUNDS:
            raise PipelineError("rewrite", f"the layout pass did not reach a fixpoint in {MAX_ROUNDS} sweeps")


_PULL_SAME = ("Relu", "Sigmoid", "Tanh", "Identity", "Cast", "Neg", "Abs", "Exp", "Tile")


def _reshape_pull(ud, vd, p):
    """For T(Reshape(u), p): the perm p_u with T(Reshape(u), p) == Reshape'(T(u, p_u)), or None."""
    from pipeline.stages.rewrite.rules.shape import reshape_blocks

    blocks = reshape_blocks(ud, vd)
    if blocks is None:
        return None
    inv = inverse(p)
    placed = []
    for a, b in blocks:
        pos = [inv[j] for j in b]
        if pos != list(range(pos[0], pos[0] + len(pos))):
            return None
        placed.append((pos[0], a))
    return tuple(k for _, a in sorted(placed) for k in a)


def _pull_plan(ctx: Ctx, t: ir.Node):
    """The ops Transpose ``t`` can move up through, [(node, p_out, p_in)], when it then
    cancels (a Transpose to the identity, a constant, an Unsqueeze, unit axes only);
    else None."""
    p = tuple(t.attributes["perm"].as_ints())
    v, plan = t.inputs[0], []
    while True:
        src = v.producer()
        if plan and ctx.const(v) is not None:
            return plan
        if src is None:
            return None
        if plan and src.op_type == "Transpose" and src.domain == "":
            return plan if is_identity(compose(tuple(src.attributes["perm"].as_ints()), p)) else None
        if plan and (_unsqueeze_fold(ctx, v, p) is not None or moves_only_unit_dims(dims(v), p)):
            return plan   # folds into the Unsqueeze, or becomes a Reshape (unit axes only)
        if len(v.uses()) != 1 or v.is_graph_output() or len(src.outputs) != 1:
            return None
        if src.op_type in _PULL_SAME and (src.op_type != "Tile" or ctx.const(src.inputs[1]) is not None):
            p_in = p
        elif src.op_type == "Reshape" and ctx.const(src.inputs[1]) is not None:
            p_in = _reshape_pull(dims(src.inputs[0]), dims(v), p)
            if p_in is None or dims(v) is None or sum(d is None for d in dims(v)) > 1:
                return None
        else:
            return None
        plan.append((src, p, p_in))
        p, v = p_in, src.inputs[0]


def pull_up(ctx: Ctx) -> list[str]:
    """Move a Transpose the push left (channels-last data made from a channel-free tensor,
    RepeatVector's ``Unsqueeze -> Tile -> Reshape``) up through the ops before it, when it
    cancels there; the graph is not touched otherwise."""
    done = []
    for t in transposes(ctx.graph):
        if t.graph is not ctx.graph:
            continue
        plan = _pull_plan(ctx, t)
        if not plan:
            continue
        cur = t
        for src, p_out, p_in in plan:
            v = src.outputs[0]
            vd = dims(v)
            new_t = ctx.transposed(src.inputs[0], p_in, src)
            src.replace_input_with(0, new_t)
            if src.op_type == "Tile":
                reps = ctx.const(src.inputs[1]).reshape(-1)
                src.replace_input_with(1, ctx.new_const(reps[list(p_in)], "repeats"))
            elif src.op_type == "Reshape":
                shape = [-1 if vd[j] is None else vd[j] for j in p_out]
                src.replace_input_with(1, ctx.new_const(np.array(shape, dtype=np.int64), "reshape_shape"))
            if v.shape is not None:
                v.shape = ir.Shape([v.shape[j] for j in p_out])
            ctx.redirect(cur.outputs[0], v)
            ctx.remove(cur)
            cur = new_t.producer()
        done.append(t.name)
    return done


def outputs_to_channels_first(ctx: Ctx) -> list[str]:
    """Make each model output produced by ``Transpose(x, p)`` channels-first.

    The output becomes ``Transpose(x, q)``, ``q = compose(p, to_first)``: nothing when q is
    the identity (the usual Transpose back to channels-last), else one Transpose that
    stays where p puts x's channel axis last in Keras (a Permute before the output) or
    q only moves unit axes (folded into an Unsqueeze by the next push) or the stacked axis
    of a stack (TimeDistributed's time steps, folded into the stack by the next push). Other outputs
    (channels split or merged with other axes) keep Keras' layout."""
    done = []
    g = ctx.graph
    for i, y in enumerate(list(g.outputs)):
        t = y.producer()
        if t is None or t.op_type != "Transpose" or t.domain != "":
            continue
        p = tuple(t.attributes["perm"].as_ints())
        x = t.inputs[0]
        r = len(p)
        if r < 3 or r > 5 or x.is_graph_input() or x.is_graph_output():
            continue
        q = compose(p, to_first(r))
        stack = _stack_fold(ctx, x, q) is not None   # TimeDistributed's stacked time steps
        if p[0] != 0 and not stack:
            continue
        name = y.name
        if is_identity(q):
            y.name = ctx.name(name)
            x.name = name
            g.outputs[i] = x
            if not y.uses():
                ctx.remove(t)
        elif p[-1] == 1 or stack or moves_only_unit_dims(dims(x), q):
            if y.uses():
                continue
            ctx.set_attr(t, "perm", list(q))
            if y.shape is not None and len(y.shape) == r:
                y.shape = ir.Shape([y.shape[j] for j in to_first(r)])
        else:
            continue
        done.append(name)
    return done


def transposes(graph: ir.Graph) -> list[ir.Node]:
    return [n for n in graph if n.op_type == "Transpose" and n.domain == ""]


# ops that need channels-first data and have no rule because they never move a layout
CHANNELS_FIRST_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
                      "GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization",
                      "Resize", "DepthToSpace", "SpaceToDepth", "MaxUnpool", "RoiAlign")
SEQUENCE_OPS = ("LSTM", "GRU", "RNN", "SimpleRNN")


def _producer_text(v: ir.Value) -> str:
    p = v.producer()
    if p is None:
        return f"model input {v.name!r}" if v.is_graph_input() else f"constant {v.name!r}"
    return f"{p.op_type} {p.name!r}"


def _reason(ctx: Ctx, t: ir.Node, n: ir.Node) -> str:
    """Why ``t`` cannot move past its user ``n``."""
    p = tuple(t.attributes["perm"].as_ints())
    r = len(p)
    src = _producer_text(t.inputs[0])
    op, why = ctx.barriers.get(n.name, (n.op_type, None))
    head = f"before {n.op_type} {n.name!r}"
    if n.op_type in CHANNELS_FIRST_OPS and r >= 3 and p == to_first(r):
        return (f"{head}: {n.op_type} needs channels-first data but {src} produces channels-last "
                "(no rule moves the Transpose up through it)")
    if n.op_type in SEQUENCE_OPS and n.domain == RECURRENT_DOMAIN:
        return f"{head}: the recurrent layer reads (batch, steps, features), as nn.{n.op_type}(batch_first=True) does"
    if n.op_type in SEQUENCE_OPS:
        return f"{head}: {n.op_type} reads (sequence, batch, features), the layout of ONNX recurrent ops"
    if n.op_type in CHANNELS_FIRST_OPS:
        return f"{head}: a transpose of the model's own (Keras Permute or a transpose op) before {n.op_type}"
    if why is None:
        if n.op_type in ("Flatten", "Reshape"):
            why = f"{n.op_type} mixes channel and spatial axes"
        else:
            why = f"no layout rule for {n.op_type} (opset {ctx.opset}): a barrier, kept correct by this Transpose"
    return f"{head}: {why}"


def explain(ctx: Ctx, cf_outputs=(), keep_in: bool = False, keep_out: bool = False) -> list[dict]:
    """Each Transpose left in the graph, with the reasons it stays (one per user).

    ``cf_outputs``: the outputs made channels-first; ``keep_in``/``keep_out``: the user
    asked for channels-last inputs/outputs."""
    out = []
    for t in transposes(ctx.graph):
        x, y = t.inputs[0], t.outputs[0]
        p = tuple(t.attributes["perm"].as_ints())
        reasons = []
        if x.is_graph_input():
            reasons.append(f"model input {x.name!r} kept channels-last"
                           + (" (asked for)" if keep_in else ": channels-first inputs left more Transposes"))
        if y.is_graph_output():
            if keep_out:
                reasons.append(f"model output {y.name!r} kept channels-last (asked for)")
            elif y.name in cf_outputs:
                reasons.append(f"model output {y.name!r}: a transpose of the model's own (Keras Permute or "
                               "a transpose op), in channels-first terms")
            else:
                reasons.append(f"model output {y.name!r} kept in Keras' layout: its channels are split or "
                               f"merged with other axes (perm {list(p)})")
        for use in y.uses():
            reasons.append(_reason(ctx, t, use.node))
        out.append({"node": t.name, "perm": list(p), "shape": dims(x), "reasons": reasons})
    return out
