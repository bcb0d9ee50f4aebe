"""The one solver: another valid size for every dynamic dim of a graph (verify's resized input set)."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .expr import Expr, check, compile_expr, dim_attr

if TYPE_CHECKING:
    from ..manifest import Dim


def _holds(e: Expr, values: Mapping[str, int]) -> bool:
    try:
        return bool(e(values))
    except (ArithmeticError, KeyError, ValueError, TypeError):
        return False


def _candidates(d: Any, smaller_first: bool = False) -> list[int]:
    ex, lo, hi = int(dim_attr(d, "example")), max(1, int(dim_attr(d, "min") or 1)), dim_attr(d, "max")
    near = [ex + 1, ex - 1, ex + 2, ex - 2, ex + 3, ex - 3, ex + 4, ex - 4, ex + 8, ex - 8, ex * 2, ex // 2,
            ex + 16, ex * 3 // 2, ex * 4, ex // 4, ex * 8, ex // 8]
    out = list(dict.fromkeys(v for v in near if v != ex and v >= lo and (hi is None or v <= int(hi))))
    return sorted(out, key=lambda v: v > ex) if smaller_first else out  # stable: nearest first on each side


def alternative_sizes(dims: Mapping[str, Dim], constraints: Iterable[str],
                      budget: int = 200_000, smaller_first: bool = False) -> dict[str, int] | None:
    """Another valid size for every dim (ranges and constraints respected), changing every dim the constraints allow.
    ``smaller_first`` tries sizes below the examples first (for models with a maximum no guard states, such as a
    fixed position table).

    Dims tied by an equality (``height == 1 + (-1 + cond_height) // 8``) are derived from the others; the free dims
    are searched depth first, nearest candidates first, each constraint checked once its dims are known; if no
    assignment changes every dim, the first that the search finds with examples allowed wins. None when there is no
    dim or none can change. Long by design: the search's closures share its state (assignment, budget, order).
    """
    dims = dict(dims)
    if not dims:
        return None
    exprs = [e for e in map(compile_expr, constraints or ()) if e is not None and e.names <= dims.keys()]
    derived: dict[str, Expr] = {}
    for e in exprs:  # "name == expr": name is a function of other dims
        node = e.node
        if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
            continue
        for lhs, rhs in ((node.left, node.comparators[0]), (node.comparators[0], node.left)):
            if isinstance(lhs, ast.Name) and lhs.id not in derived:
                f = compile_expr(ast.unparse(rhs))
                if f is not None and lhs.id not in f.names and f.names and not (f.names & derived.keys()) \
                        and not any(lhs.id in g.names for g in derived.values()):
                    derived[lhs.id] = f
                    break
    free = [n for n in dims if n not in derived]
    cands = {n: _candidates(dims[n], smaller_first) for n in free}
    examples = {n: int(dim_attr(d, "example")) for n, d in dims.items()}
    steps = [0]

    def complete(values: dict[str, int], allow_same: bool) -> dict[str, int] | None:
        for name, f in derived.items():
            if name not in values and f.names <= values.keys():
                try:
                    values[name] = int(f(values))
                except (ArithmeticError, ValueError):
                    return None
                lo, hi = max(1, int(dim_attr(dims[name], "min") or 1)), dim_attr(dims[name], "max")
                if values[name] < lo or (hi is not None and values[name] > int(hi)):
                    return None
                if not allow_same and values[name] == examples[name]:
                    return None
        return values

    def search(i: int, values: dict[str, int], allow_same: bool) -> dict[str, int] | None:
        steps[0] += 1
        if steps[0] > budget:
            return None
        if i == len(free):
            return dict(values)
        name = free[i]
        for v in cands[name] + ([examples[name]] if allow_same else []) or [examples[name]]:
            trial = complete({**values, name: v}, allow_same)
            if trial is None:
                continue
            new = trial.keys() - values.keys()
            if any(e.names & new and e.names <= trial.keys() and not _holds(e, trial) for e in exprs):
                continue
            found = search(i + 1, trial, allow_same)
            if found is not None:
                return found
        return None

    result = search(0, {}, allow_same=False)
    if result is None:
        steps[0] = 0
        result = search(0, {}, allow_same=True)
    if result is None or all(result[n] == examples[n] for n in dims):
        return None
    return {n: result[n] for n in dims}


def shifted_sizes(dims: Mapping[str, Dim], constraints: Iterable[str], step: int = 1,
                  only: Iterable[str] | None = None) -> dict[str, int] | None:
    """Every dim above 1 moved by the same amount from its example (``+step``, else ``-step``; a dim at 1 -- one
    new token, a broadcast -- stays), or None when neither keeps every range and constraint. Dims that differ by a
    constant in the recorded call still do: a decoder step's attention mask stays one longer than every layer's
    cache, a relation the model holds in Python that the graph need not state (and :func:`alternative_sizes`'
    independent choices then break). ``only``: move just these dims (the others keep their example)."""
    examples = {n: int(dim_attr(d, "example")) for n, d in dims.items()}
    moving = {n for n, v in examples.items() if v > 1 and (only is None or n in set(only))}
    if not moving:
        return None
    for delta in (step, -step):
        sizes = {n: v + delta if n in moving else v for n, v in examples.items()}
        if not check(constraints, sizes, dims):
            return sizes
    return None
