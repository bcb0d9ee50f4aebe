"""The prover's records: integer polynomials over atoms, and formulas over them.

A polynomial is ``{monomial: int}``; a monomial a sorted tuple of ``(atom, exponent)``; an atom ``("v", dim)``,
``("fd", P, Q)`` for ``P // Q``, ``("md", P, Q)`` for ``P % Q``, or ``("mx" | "mn", (P, ...))`` for max / min, with
P, Q frozen (:func:`freeze`: sorted item tuples). A formula is ``("const", bool)``, ``("cmp", D, op)`` meaning
``D op 0`` with op ``"=="``, ``"!="`` or ``">="``, or ``("and" | "or", parts)``. Atoms are integers, so every
polynomial with integer coefficients is too.
"""

from __future__ import annotations

import ast
import itertools
from typing import Iterable


class Unprovable(Exception):
    """Something the prover does not model (the guard at hand is kept)."""


class Empty(Exception):
    """The facts of a case contradict each other: no assignment in it."""


def num(k: int) -> dict:
    return {(): k} if k else {}


def freeze(p: dict) -> tuple:
    return tuple(sorted(p.items()))


def add(p: dict, q: dict, k: int = 1) -> dict:
    r = dict(p)
    for m, c in q.items():
        v = r.pop(m, 0) + k * c
        if v:
            r[m] = v
    return r


def mul(p: dict, q: dict) -> dict:
    r: dict = {}
    for (m1, c1), (m2, c2) in itertools.product(p.items(), q.items()):
        e = dict(m1)
        for a, k in m2:
            e[a] = e.get(a, 0) + k
        r = add(r, {tuple(sorted(e.items())): c1 * c2})
    if len(r) > 2000:
        raise Unprovable
    return r


def power(p: dict, e: int) -> dict:
    out = num(1)
    for _ in range(e):
        out = mul(out, p)
    return out


def value(p: dict) -> int | None:
    return p.get((), 0) if all(not m for m in p) else None


def at_least(x: int | None, k: int) -> bool:
    return x is not None and x >= k


def atoms(p: dict) -> Iterable[tuple]:
    """Every atom of ``p``, those inside ``//``, ``%``, ``max`` and ``min`` included."""
    for m in p:
        for a, _ in m:
            yield a
            for inner in (a[1:] if a[0] in ("fd", "md") else a[1] if a[0] != "v" else ()):
                yield from atoms(dict(inner))


def divexact(p: dict, q: dict) -> dict | None:
    """P / Q when Q divides P as polynomials with an integer quotient (graded-lex long division), else None."""
    order = sorted({a for m in itertools.chain(p, q) for a, _ in m})
    key = lambda m: (sum(k for _, k in m), tuple(dict(m).get(a, 0) for a in order))  # noqa: E731
    lead = max(q, key=key)
    out, rest = {}, dict(p)
    for _ in range(500):
        if not rest:
            return out
        top = max(rest, key=key)
        e = dict(top)
        for a, k in lead:
            if e.get(a, 0) < k:
                return None
            e[a] -= k
        if rest[top] % q[lead]:
            return None
        m = {tuple(sorted((a, k) for a, k in e.items() if k)): rest[top] // q[lead]}
        out, rest = add(out, m), add(rest, mul(m, q), -1)
    return None


def negate(f: tuple) -> tuple:
    if f[0] == "const":
        return ("const", not f[1])
    if f[0] == "cmp":
        d, op = f[1], f[2]
        return ("cmp", freeze(add({m: -c for m, c in d}, num(-1))), ">=") if op == ">=" else \
            ("cmp", d, "!=" if op == "==" else "==")
    return ("or" if f[0] == "and" else "and", tuple(map(negate, f[1])))


def junction(kind: str, parts: Iterable[tuple]) -> tuple:
    out = []
    for f in parts:
        for g in (f[1] if f[0] == kind else (f,)):
            if g[0] == "const":
                if g[1] == (kind == "or"):
                    return g
            elif g not in out:
                out.append(g)
    return out[0] if len(out) == 1 else ("const", kind == "and") if not out else (kind, tuple(out))


REL = {ast.Eq: ("==", 1, 0), ast.NotEq: ("!=", 1, 0), ast.GtE: (">=", 1, 0), ast.Gt: (">=", 1, -1),
        ast.LtE: (">=", -1, 0), ast.Lt: (">=", -1, -1)}

