"""Permutation algebra. ``Transpose(x, p)`` has ``out.shape[i] == x.shape[p[i]]``."""

from __future__ import annotations

Perm = tuple[int, ...]


def to_last(rank: int) -> Perm:
    """Channels-first -> channels-last: (N, C, *S) -> (N, *S, C)."""
    return (0, *range(2, rank), 1)


def to_first(rank: int) -> Perm:
    """Channels-last -> channels-first: (N, *S, C) -> (N, C, *S)."""
    return (0, rank - 1, *range(1, rank - 1))


def compose(p: Perm, q: Perm) -> Perm:
    """Transpose(Transpose(x, p), q) == Transpose(x, compose(p, q))."""
    return tuple(p[i] for i in q)


def inverse(p: Perm) -> Perm:
    inv = [0] * len(p)
    for i, j in enumerate(p):
        inv[j] = i
    return tuple(inv)


def is_identity(p: Perm) -> bool:
    return all(i == j for i, j in enumerate(p))


def after_removing(p: Perm, removed: set[int]) -> Perm:
    """The perm left when the output axes ``removed`` of Transpose(x, p) are dropped.

    With Y = Op(Transpose(x, p)) dropping axes ``removed`` (of the transposed tensor), and
    Y' = Op'(x) dropping the matching axes ``{p[a]}`` of x: Y == Transpose(Y', result).
    """
    kept = [i for i in range(len(p)) if i not in removed]
    kept_x = sorted(p[i] for i in kept)
    return tuple(kept_x.index(p[i]) for i in kept)


def after_inserting(p: Perm, axes: list[int]) -> Perm:
    """For Unsqueeze(Transpose(x, p), axes) == Transpose(Unsqueeze(x, axes), result)."""
    n = len(p) + len(axes)
    nz = [i for i in range(n) if i not in axes]
    q = list(range(n))
    for i, src in enumerate(p):
        q[nz[i]] = nz[src]
    return tuple(q)
