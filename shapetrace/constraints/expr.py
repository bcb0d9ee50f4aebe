"""Reading a constraint: the sym_max / sym_min normaliser, a safe evaluator (a walk over a checked syntax tree,
never ``eval`` or ``compile``), and the checks made with it."""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from ..manifest import Dim

_MINMAX = re.compile(r"(?<![\w.])(?:torch\.sym_|torch\.|sym_)?(max|min|Max|Min)(?=\s*\()")
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
          ast.Mod: operator.mod}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
        ast.GtE: operator.ge}
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Name, ast.Constant, ast.Call,
          ast.Load, ast.And, ast.Or, ast.USub, ast.UAdd, ast.Not, ast.Pow, ast.Div, ast.Attribute, *_ARITH, *_CMP)
#: ``math.ceil(a / b)`` / ``math.floor(a / b)``: how torch prints a rounded true division of sizes (a padded chunk
#: count); evaluated exactly (``a / b`` as a fraction), never in floating point
_ROUNDING = {"ceil": math.ceil, "floor": math.floor}


def call_name(func: ast.expr) -> str | None:
    """``max`` / ``min`` / ``ceil`` / ``floor`` for the calls a constraint may make, else None."""
    if isinstance(func, ast.Name) and func.id in ("max", "min"):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math" \
            and func.attr in _ROUNDING:
        return func.attr
    return None


def normalize(text: str) -> str:
    """``torch.sym_max(a, b)``, ``sym_max(a, b)``, ``Max(a, b)`` -> ``max(a, b)`` (same for min)."""
    return _MINMAX.sub(lambda m: m.group(1).lower(), text)


@lru_cache(maxsize=4096)
def parse(text: str) -> tuple[str, ast.expr, frozenset[str]]:
    norm = normalize(text)
    try:
        tree = ast.parse(norm, mode="eval") if len(norm) <= 20_000 else None
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        tree = None
    if tree is None:
        raise ValueError(f"{text!r} is not an expression over dim names")
    funcs, rounded = set(), set()
    for n in ast.walk(tree):
        bad = not isinstance(n, _NODES) or (isinstance(n, ast.Constant) and type(n.value) not in (int, bool))
        if isinstance(n, ast.Call):
            bad = bad or call_name(n.func) is None or not n.args or bool(n.keywords)
            funcs.update({id(n.func), id(getattr(n.func, "value", None))})
            if call_name(n.func) in _ROUNDING:  # the one place a true division may stand
                bad = bad or len(n.args) != 1
                rounded.add(id(n.args[0]))
        elif isinstance(n, ast.Attribute) and id(n) not in funcs:
            bad = True  # only math.ceil / math.floor, called
        elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and id(n) not in rounded:
            bad = True  # a bare true division is not a size
        if bad:
            raise ValueError(f"{text!r}: {type(n).__name__} is not supported in a constraint")
    return norm, tree.body, frozenset(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in funcs)


def names(text: str) -> frozenset[str]:
    """The dim names a constraint reads (empty when it cannot be read)."""
    try:
        return parse(text)[2]
    except ValueError:
        return frozenset()


def _pow(a: int, b: int) -> int:
    if not 0 <= b <= 64 or abs(a).bit_length() * b > 4096:
        raise ValueError(f"{a} ** {b} is outside what a constraint may compute")
    return a ** b


def _eval(node: ast.expr, values: Mapping[str, int]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        v = values[node.id]
        try:
            return operator.index(v)
        except TypeError:
            raise ValueError(f"{node.id} = {v!r} is not an integer") from None
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, values), _eval(node.right, values)
        if isinstance(node.op, ast.Div):
            return Fraction(a) / b
        return _pow(a, b) if isinstance(node.op, ast.Pow) else _ARITH[type(node.op)](a, b)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, values)
        return (not v) if isinstance(node.op, ast.Not) else -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BoolOp):  # short-circuit, as Python: `or` stops at a truthy value, `and` at a falsy one
        stop = isinstance(node.op, ast.Or)
        for sub in node.values:
            v = _eval(sub, values)
            if bool(v) == stop:
                return v
        return v
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, values)
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    args = [_eval(a, values) for a in node.args]  # a validated call: max / min / math.ceil / math.floor
    name = call_name(node.func)
    if name in _ROUNDING:
        return int(_ROUNDING[name](args[0]))
    return max(args) if name == "max" else min(args)


@dataclass(frozen=True)
class Expr:
    """A checked expression over dim names (``text`` normalised); calling it evaluates it on sizes."""

    text: str
    names: frozenset[str]
    node: ast.expr = field(repr=False, compare=False)

    def __call__(self, values: Mapping[str, int]) -> Any:
        return _eval(self.node, values)


def compile_expr(text: str) -> Expr | None:
    """The :class:`Expr` for ``text``; None when it holds anything else (attributes, floats, other calls)."""
    try:
        norm, node, names = parse(text)
    except ValueError:
        return None
    return Expr(norm, names, node)


def evaluate(text: str, values: Mapping[str, int]) -> Any:
    """``text`` over ``values``: KeyError for an unknown name, ValueError for unsupported syntax."""
    return _eval(parse(text)[1], values)


def dim_attr(d: Any, key: str) -> Any:
    """``min`` / ``max`` / ``example`` of a :class:`~shapetrace.manifest.Dim` (or of a manifest's dim mapping)."""
    return d.get(key) if isinstance(d, Mapping) else getattr(d, key)


def check(constraints: Iterable[str], values: Mapping[str, int], dims: Mapping[str, Dim] | None = None) -> list[str]:
    """The ranges (``"name >= min"`` / ``"name <= max"``) and constraints that ``values`` break; empty when valid.

    A constraint that cannot be evaluated (a dim missing from ``values``, a zero divisor) counts as broken."""
    failed = []
    for name, d in (dims or {}).items():
        v, lo, hi = values.get(name), dim_attr(d, "min"), dim_attr(d, "max")
        if v is not None and lo is not None and v < lo:
            failed.append(f"{name} >= {lo}")
        if v is not None and hi is not None and v > hi:
            failed.append(f"{name} <= {hi}")
    for c in constraints:
        try:
            ok = evaluate(c, values)
        except (KeyError, ValueError, ZeroDivisionError):
            ok = False
        if not ok:
            failed.append(c)
    return failed


def checkable(constraints: Iterable[str], dims: Mapping[str, Dim]) -> tuple[list[str], list[str]]:
    """The constraints :func:`check` can evaluate (normalised), and the ones it cannot (as given, set aside)."""
    examples = {n: int(dim_attr(d, "example")) for n, d in dims.items()}
    ok: list[str] = []
    skipped: list[str] = []
    for c in constraints:
        try:
            evaluate(c, examples)
        except (ValueError, TypeError):
            skipped.append(c)
            continue
        except (KeyError, ZeroDivisionError):
            pass
        ok.append(normalize(c))
    return ok, skipped

