"""Names in ``forward`` reused by liveness, so that each intermediate tensor is freed after
its last use, as in a hand-written module (``x = self.conv1(x)``; ``x = F.relu(x)``).

Converters name every value they write afresh (``x1``, ``x2``, ... ``padded_3``); left so,
``forward`` keeps every intermediate alive until it returns, and eager PyTorch cannot reuse
their memory (MobileNetV2 ran about 1.7x slower than the same module as a ``torch.fx``
``GraphModule``, which drops each value after its last use). ``reuse_names`` renames the
variables the generator made (``Gen.var``) once the whole body is written. It moves and
removes no line, and adds only the ``del`` lines of case 5, each the code of the node of the
line before it, so that ``Generated.line_nodes`` still maps every line of ``forward``.

The cases, for the straight-line body ``forward`` is:

1. a variable lives from the line that first assigns it to the line that last reads it (the
   ``return`` counts as a last line); two variables may share a name when one's life ends
   before the other's begins, or on the line that begins it when that line is a plain
   assignment (``a = f(b)``, ``a, c = f(b)``) that only reads the old one: the right side is
   evaluated before the name is rebound;
2. a variable takes, in order of preference, the name of a variable of its kind that dies on
   the line that assigns it (``x = F.relu(x)``), the first free name of its kind, or a new
   one; a value still needed later (a skip connection) thus keeps its name and the other
   path gets a second one (``x1``), as ``identity``/``out`` in torchvision;
3. names of a kind (the hint the converter gave ``Gen.var``): ``x``, ``x1``, ``x2``, ... for
   the default hint, ``padded``, ``padded_2``, ... for others, skipping every name the body
   uses that is not renamed (arguments, ``self``, ``torch``, helpers, names a converter built
   by suffixing a variable, ``y_h``);
4. not renamed: a variable read before it is assigned, or whose name prefixes another name
   in the body (``lstm_3`` beside ``lstm_3_h``: the pair reads as one); and nothing at all
   when a line does not parse as one Python statement;
5. a generated value whose name is not bound again (the last ``padded``; a variable of case
   4) is deleted after its last use (``del padded``), unless that use is on the last line
   of the body or in the ``return``; the ``del`` line belongs to the line before it.
"""

from __future__ import annotations

import ast


def reuse_names(lines: list[str], outputs: list[str], kinds: dict[str, str]
                ) -> tuple[list[str], list[str], list[int]]:
    """``lines`` (the body of ``forward``) and ``outputs`` (the returned expressions) with the
    variables in ``kinds`` (generated variable -> the hint it was made with) renamed and
    ``del`` lines added as the module docstring says, and for each new line the index of the
    line of ``lines`` it is (a ``del``: the line it follows). The inputs are left as they are."""
    same = (list(lines), list(outputs), list(range(len(lines))))
    try:
        stmts = [ast.parse(line).body for line in lines]
        exprs = [ast.parse(o, mode="eval") for o in outputs]
    except SyntaxError:
        return same
    if any(len(s) != 1 for s in stmts):
        return same
    trees = [s[0] for s in stmts] + exprs
    loads, stores = _uses(trees)
    renamed = _renamable(kinds, loads, stores)
    fixed = ({n for per in loads for n in per} | {n for per in stores for n in per} | {"self", "torch", "nn", "F"}) - renamed
    names, final = _allocate(trees, loads, stores, renamed, kinds, fixed)
    new = [_substitute(text, tree, names) for text, tree in zip([*lines, *outputs], trees)]
    body, index = [], []
    dels = _deletions(len(lines), loads, stores, kinds, renamed, final)
    for i, line in enumerate(new[:len(lines)]):
        body.append(line)
        index.append(i)
        if dels.get(i):
            body.append(f"del {', '.join(dels[i])}")
            index.append(i)
    return body, new[len(lines):], index


def _deletions(n: int, loads, stores, kinds, renamed, final) -> dict[int, list[str]]:
    """{line: the names to ``del`` after it} (case 5): a generated value never bound again
    whose last use is before the last line of the body."""
    last = _last(loads, stores)
    out: dict[int, list[str]] = {}
    kept = [v for v in kinds if v not in renamed and _first_store(v, loads, stores) is not None]
    for name, v in [*final.items(), *((v, v) for v in kept)]:
        if last[v] < n - 1:
            out.setdefault(last[v], []).append(name)
    return {i: sorted(names) for i, names in out.items()}


def _first_store(v: str, loads, stores) -> int | None:
    """The line that first binds ``v`` when no line reads it before (or on) that line."""
    first = next((i for i, st in enumerate(stores) if v in st), None)
    if first is None or any(v in ld for ld in loads[:first + 1]):
        return None
    return first


def _last(loads, stores) -> dict[str, int]:
    last = {}
    for i, (ld, st) in enumerate(zip(loads, stores)):
        for name in ld | st:
            last[name] = i
    return last


def _uses(trees) -> tuple[list[set], list[set]]:
    """Per line: the names it reads, the names it binds."""
    loads, stores = [], []
    for tree in trees:
        ld, st = set(), set()
        for n in ast.walk(tree):
            if isinstance(n, ast.Name):
                (st if isinstance(n.ctx, ast.Store) else ld).add(n.id)
        loads.append(ld)
        stores.append(st)
    return loads, stores


def _renamable(kinds: dict, loads: list[set], stores: list[set]) -> set:
    """The generated variables that may be renamed (case 4 leaves the others)."""
    every = {n for per in [*loads, *stores] for n in per}
    out = set()
    for v in kinds:
        if _first_store(v, loads, stores) is None:
            continue
        if any(o != v and o.startswith(v + "_") for o in every):
            continue
        out.add(v)
    return out


def _plain(tree) -> bool:
    """An assignment whose targets are names only (nothing is read after binding)."""
    def names_only(t):
        return isinstance(t, ast.Name) or (isinstance(t, (ast.Tuple, ast.List)) and all(map(names_only, t.elts)))
    return isinstance(tree, ast.Assign) and all(names_only(t) for t in tree.targets)


def _pool(kind: str, k: int) -> str:
    if kind == "x":
        return "x" if k == 0 else f"x{k}"
    return kind if k == 0 else f"{kind}_{k + 1}"


def _allocate(trees, loads, stores, renamed, kinds, fixed) -> tuple[dict[str, str], dict[str, str]]:
    """{variable: its new name}, and {name: the last variable to hold it}: a linear scan over
    the lines (cases 1-3)."""
    last = _last(loads, stores)
    holder: dict[str, str] = {}        # name -> the variable holding it now
    names: dict[str, str] = {}
    for i, st in enumerate(stores):
        plain = _plain(trees[i])
        born = [v for v in _in_order(trees[i]) if v in st and v in renamed and v not in names]
        for v in born:
            kind = kinds[v]

            def free(name, v=v):
                h = holder.get(name)
                return h is None or last[h] < i or (last[h] == i and plain and h not in st)

            dying = sorted((n for n, h in holder.items() if h in loads[i] and last[h] == i and kinds[h] == kind
                            and free(n)), key=lambda n: _rank(n, kind))
            if dying:
                name = dying[0]
            else:
                k = 0
                while _pool(kind, k) in fixed or not free(_pool(kind, k)):
                    k += 1
                name = _pool(kind, k)
            holder[name] = v
            names[v] = name
    return names, holder


def _rank(name: str, kind: str) -> int:
    k = 0
    while _pool(kind, k) != name:
        k += 1
    return k


def _in_order(tree) -> list[str]:
    """The names bound by ``tree``, left to right."""
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    return [n.id for n in sorted(found, key=lambda n: n.col_offset)]


def _substitute(text: str, tree, names: dict[str, str]) -> str:
    """``text`` with every variable in ``names`` renamed (by the parser's positions: UTF-8 bytes)."""
    spans = sorted(((n.col_offset, n.end_col_offset, names[n.id]) for n in ast.walk(tree)
                    if isinstance(n, ast.Name) and n.id in names and names[n.id] != n.id), reverse=True)
    data = text.encode()
    for a, b, new in spans:
        data = data[:a] + new.encode() + data[b:]
    return data.decode()
