"""Pruning: drop the guards that the dim ranges and the other kept constraints imply.

A guard G is dropped only when it is proved to hold for every assignment within the dim ranges that satisfies the
constraints kept; anything not proved stays, so the pass is sound. Guards are taken from the last to the first, each
against the ranges plus the constraints still kept that share dims with it (directly or through others): the ones
that survive imply every dropped one, and the order of first appearance is kept.

How implication is proved (:class:`~.case.Case`). Terms become integer polynomials over atoms: dims, ``P // Q``,
``P % Q``, ``max`` / ``min``. Exact rewrites: ``(c*P + R) // c == P + R // c`` and ``(c*P + R) % c == R % c``,
content pulled out of ``// c`` and ``% c``; ``P // Q == P / Q`` and ``P % Q == 0`` when Q divides P as polynomials;
``P // Q == 0`` and ``P % Q == P`` when ``0 <= P < Q``; a ``max`` / ``min`` argument that dominates the others. The
kept constraints are facts: ``x == E`` substitutes E for x (x's range becomes a fact about E); linear facts tighten
the bounds of their atoms (interval propagation; ``a != lo`` raises lo; bounds on ``P // c`` bound P); when both
``P // Q`` and ``P % Q`` can occur, ``P == Q * (P // Q) + P % Q`` and ``P % Q < Q`` are added. A polynomial's lower
bound comes from writing each atom as its bound plus a non-negative part: the negative coefficients, times the parts'
widths, give it. A goal holds when its simplified form is decided by these bounds, matches a fact, or exceeds a fact
``H >= 0`` by a non-negative amount. If that fails, the dims under a ``// c`` or ``% c`` of the goal are split into
residues (``x = L*q + r``, at most 256 cases), which turns those atoms into polynomials in q, and the goal must hold
in every case whose facts do not contradict each other.

What it cannot prove: inequalities between unbounded non-linear terms beyond these bounds, facts that need induction
or a case split on a hypothesis's divisor, anything with a divisor not shown non-zero (the guard could raise). Those
guards stay. ``x <= 2147483648`` goes only where x's range already says so; a product bound such as ``128*batch*h*w
<= 2147483648`` stays when the dims are unbounded.

Guards from torch's tracing at size >= 2: torch.export reports a range [2, ...] for every dynamic dim and emits guards
such as ``(1 + (-1 + width) // 2) != 1``; the manifest reports min 1 for those dims (1 is allowed, the graph does not
branch on it). Such a guard is not implied by min 1, so it stays: prune is sound for the ranges it is given. They do
occur in real exports (the UNet's down-sampled sizes); where one only restates that an input dim tied to the
expression is >= 2 (the ControlNet UNet's residuals), calling prune with that dim's min at 2 drops it, and the
choice of range is the caller's.
"""

from __future__ import annotations

import ast
import itertools
import math
import time
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from .case import Case
from .expr import dim_attr, parse
from .poly import Empty, Unprovable, add, num

if TYPE_CHECKING:
    from ..manifest import Dim


def implied(goal: ast.expr, hyps: Sequence[ast.expr], ranges: Mapping[tuple, tuple],
            deadline: float | None = None) -> bool:
    """Whether ``goal`` holds wherever ``hyps`` do within ``ranges`` (False when not proved by ``deadline``)."""
    try:
        base = Case(ranges)
        facts = base.settle(hyps)
        if facts is None or base.holds(goal, facts):
            return True
        split = base.residues(goal)
        if not split or math.prod(split.values()) > 256:
            return False
        for rs in itertools.product(*(range(n) for n in split.values())):
            if deadline is not None and time.monotonic() > deadline:
                return False
            case = Case(ranges)
            for (x, n), r in zip(split.items(), rs):  # x = n*q + r
                lo, hi = ranges.get(("v", x), (None, None))
                q = ("v", f"{x}%{n}")
                case.b[q] = (None if lo is None else -((r - lo) // n), None if hi is None else (hi - r) // n)
                case.sub[x] = add({((q, 1),): n}, num(r))
                if None not in case.b[q] and case.b[q][0] > case.b[q][1]:
                    break
            else:
                facts = case.settle(hyps)
                if facts is not None and not case.holds(goal, facts):
                    return False
        return True
    except (Unprovable, Empty, RecursionError):
        return False


def prune(constraints: Iterable[str], dims: Mapping[str, Dim], budget_s: float | None = None) -> tuple[str, ...]:
    """The constraints left once those the dim ranges and the other kept constraints imply are dropped.

    Duplicates and tautologies go; a constraint this module cannot read, or that names a dim not in ``dims``, stays.
    Sound: a dropped constraint holds for every assignment within the ranges that satisfies the kept ones (see the
    module docstring for how that is proved). The kept ones are returned as given, in their order.

    ``budget_s``: seconds for the proofs (hundreds of guards on windowed attention's padding arithmetic took the
    prover minutes). Past it, the guards not yet examined stay, as any guard it cannot prove does: still sound.
    """
    return prune_within(constraints, dims, budget_s)[0]


def prune_within(constraints: Iterable[str], dims: Mapping[str, Dim],
                 budget_s: float | None) -> tuple[tuple[str, ...], int]:
    """:func:`prune` and the number of guards left unexamined when ``budget_s`` ran out (0 when it did not)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    texts = list(constraints)
    ranges = {("v", n): (dim_attr(d, "min"), dim_attr(d, "max")) for n, d in dims.items()}
    parsed: list = []
    for t in texts:
        try:
            parsed.append(parse(t))
        except ValueError:
            parsed.append(None)
    keys = [ast.dump(p[1]) if p else t for p, t in zip(parsed, texts)]
    keep = [keys.index(k) == i for i, k in enumerate(keys)]
    usable = [p is not None and p[2] <= dims.keys() for p in parsed]
    unexamined = 0
    for i in reversed(range(len(texts))):
        if not (keep[i] and usable[i]):
            continue
        if deadline is not None and time.monotonic() > deadline:
            unexamined += 1
            continue
        names, chosen, pool = set(parsed[i][2]), set(), [j for j in range(len(texts)) if keep[j] and usable[j]]
        grew = True
        while grew:  # only the constraints that share dims with this one, directly or through others
            grew = False
            for j in pool:
                if j != i and j not in chosen and parsed[j][2] & names:
                    chosen.add(j)
                    names |= parsed[j][2]
                    grew = True
        if implied(parsed[i][1], [parsed[j][1] for j in sorted(chosen)], ranges, deadline):
            keep[i] = False
    return tuple(t for t, k in zip(texts, keep) if k), unexamined
