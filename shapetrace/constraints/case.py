"""One case of a proof: what holds there (ranges, substitutions, bounds learnt from the hypotheses), the exact
rewrites that use it, and the check that a goal follows. See :mod:`.prune` for the method."""

from __future__ import annotations

import ast
import math
from typing import Mapping, Sequence

from .poly import (REL, Empty, Unprovable, add, at_least, atoms, divexact, freeze, junction, mul, negate, num, power,
                   value)
from .expr import call_name


class Case:
    """What holds in one case: ranges, substitutions, bounds learnt from the facts. Every rewrite is exact there."""

    def __init__(self, ranges: Mapping[tuple, tuple]) -> None:
        self.b: dict[tuple, tuple] = dict(ranges)  # atom -> (lo | None, hi | None)
        self.sub: dict[str, dict] = {}  # dim -> polynomial it equals
        self.memo: dict = {}
        self.divisors: list | None = None  # recorded while building the goal: each must be shown non-zero

    # ------------------------------------------------------------------------------------------------ bounds
    def lb(self, p: dict) -> int | None:
        k = value(p)
        if k is not None:
            return k
        key = ("lb", freeze(p))
        if key not in self.memo:
            self.memo[key] = None
            self.memo[key] = max((x for x in (self._lb(p, False), self._lb(p, True)) if x is not None), default=None)
        return self.memo[key]

    def ub(self, p: dict) -> int | None:
        v = self.lb({m: -c for m, c in p.items()})
        return None if v is None else -v

    def _lb(self, p: dict, high: bool) -> int | None:
        """Each atom = its low (or high) bound + (or -) a part in [0, width]: negative coefficients give the bound."""
        shift = {}
        for a in {a for m in p for a, _ in m}:
            lo, hi = self.bounds(a)
            if lo is None and hi is None:
                return None
            base, sign = (lo, 1) if lo is not None and (not high or hi is None) else (hi, -1)
            shift[a] = (add(num(base), {((a, 1),): sign}), None if lo is None or hi is None else hi - lo)
        total: dict = {}
        for m, c in p.items():
            t = num(c)
            for a, e in m:
                t = mul(t, power(shift[a][0], e))
            total = add(total, t)
        low = total.get((), 0)
        for m, c in total.items():
            if m and c < 0:
                if any(shift[a][1] is None for a, _ in m):
                    return None
                low += c * math.prod(shift[a][1] ** e for a, e in m)
        return low

    def bounds(self, a: tuple) -> tuple:
        key = ("b", a)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = (None, None)
        lo = hi = None
        if a[0] in ("fd", "md"):
            p, q = dict(a[1]), dict(a[2])
            plo, phi, k = self.lb(p), self.ub(p), value(q)
            if k is not None:  # k > 0 by construction
                lo, hi = (None if plo is None else plo // k, None if phi is None else phi // k) if a[0] == "fd" \
                    else (0, min(k - 1, phi) if at_least(plo, 0) and phi is not None else k - 1)
            elif at_least(self.lb(q), 1) and at_least(plo, 0):
                qhi = self.ub(q)
                lo = 0
                hi = (None if phi is None else phi // self.lb(q)) if a[0] == "fd" else \
                    min((x for x in (phi, None if qhi is None else qhi - 1) if x is not None), default=None)
        elif a[0] in ("mx", "mn"):
            los, his = [self.lb(dict(x)) for x in a[1]], [self.ub(dict(x)) for x in a[1]]
            pick, strict, loose = (max, los, his) if a[0] == "mx" else (min, his, los)
            tight = pick((x for x in strict if x is not None), default=None)
            wide = None if None in loose else pick(loose)
            lo, hi = (tight, wide) if a[0] == "mx" else (wide, tight)
        flo, fhi = self.b.get(a, (None, None))
        lo = flo if lo is None else lo if flo is None else max(lo, flo)
        hi = fhi if hi is None else hi if fhi is None else min(hi, fhi)
        self.memo[key] = (lo, hi)
        return lo, hi

    # ------------------------------------------------------------------------------------------ construction
    def atom(self, a: tuple) -> dict:
        lo, hi = self.bounds(a)
        return num(lo) if lo is not None and lo == hi else {((a, 1),): 1}

    def simp(self, p: dict) -> dict:
        key = ("s", freeze(p))
        if key not in self.memo:
            out: dict = {}
            for m, c in p.items():
                t = num(c)
                for a, e in m:
                    t = mul(t, power(self.simp_atom(a), e))
                out = add(out, t)
            self.memo[key] = out
        return dict(self.memo[key])

    def simp_atom(self, a: tuple) -> dict:
        if a[0] == "v":
            return self.simp(self.sub[a[1]]) if a[1] in self.sub else self.atom(a)
        if a[0] in ("fd", "md"):
            return self.div(a[0], self.simp(dict(a[1])), self.simp(dict(a[2])))
        return self.maxmin(a[0], [self.simp(dict(x)) for x in a[1]])

    def div(self, kind: str, p: dict, q: dict) -> dict:
        k = value(q)
        if k == 0:
            raise Unprovable  # always raises ZeroDivisionError
        if k is not None:
            sign = -1 if k < 0 else 1  # P // -k == -P // k, P % -k == -(-P % k)
            p, k = ({m: -c for m, c in p.items()}, -k) if k < 0 else (p, k)
            quot, rem = {}, {}
            for m, c in p.items():
                quot, rem = add(quot, {m: c // k}), add(rem, {m: c % k})
            r = value(rem)
            if r is not None:
                return add(quot, num(r // k)) if kind == "fd" else num(sign * (r % k))
            g = math.gcd(k, *rem.values())  # (g*R) // (g*k) == R // k, (g*R) % (g*k) == g * (R % k)
            rem, k = {m: c // g for m, c in rem.items()}, k // g
            if kind == "fd":
                return add(quot, rem if k == 1 else self.atom(("fd", freeze(rem), freeze(num(k)))))
            md = self.atom(("md", freeze(rem), freeze(num(k))))
            return {} if k == 1 else {m: c * sign * g for m, c in md.items()}
        if self.divisors is not None:
            self.divisors.append(q)
        exact = divexact(p, q)
        if exact is not None:
            return exact if kind == "fd" else {}
        if at_least(self.lb(p), 0) and at_least(self.lb(add(q, p, -1)), 1):
            return {} if kind == "fd" else p
        return self.atom((kind, freeze(p), freeze(q)))

    def maxmin(self, kind: str, args: list) -> dict:
        uniq = {freeze(a): a for a in args}
        sign = 1 if kind == "mx" else -1
        for a in uniq.values():
            if all(at_least(self.lb({m: sign * c for m, c in add(a, b, -1).items()}), 0) for b in uniq.values()):
                return a
        return self.atom((kind, tuple(sorted(uniq))))

    def term(self, node: ast.expr) -> dict:
        if isinstance(node, ast.Constant):
            return num(int(node.value))
        if isinstance(node, ast.Name):
            return self.simp_atom(("v", node.id))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return {m: -c if isinstance(node.op, ast.USub) else c for m, c in self.term(node.operand).items()}
        if isinstance(node, ast.BinOp):
            a, b, op = self.term(node.left), self.term(node.right), type(node.op)
            if op in (ast.Add, ast.Sub):
                return add(a, b, 1 if op is ast.Add else -1)
            if op in (ast.FloorDiv, ast.Mod):
                return self.div("fd" if op is ast.FloorDiv else "md", a, b)
            if op is ast.Mult or (op is ast.Pow and value(b) is not None and 0 <= value(b) <= 16):
                return mul(a, b) if op is ast.Mult else power(a, value(b))
        if isinstance(node, ast.Call):  # validated: max / min, or math.ceil / math.floor of one true division
            name = call_name(node.func)
            if name in ("ceil", "floor"):
                arg = node.args[0]
                a, b = self.term(arg.left), self.term(arg.right)
                if name == "floor":
                    return self.div("fd", a, b)
                return {m: -c for m, c in self.div("fd", {m: -c for m, c in a.items()}, b).items()}  # -(-a // b)
            return self.maxmin("mx" if name == "max" else "mn", [self.term(x) for x in node.args])
        raise Unprovable

    def formula(self, node: ast.expr) -> tuple:
        if isinstance(node, ast.BoolOp):
            return junction("and" if isinstance(node.op, ast.And) else "or", map(self.formula, node.values))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return negate(self.formula(node.operand))
        if not isinstance(node, ast.Compare):
            return self.rel(self.term(node), "!=")
        parts, left = [], self.term(node.left)
        for op, comp in zip(node.ops, node.comparators):
            rel, sign, shift = REL[type(op)]
            right = self.term(comp)
            parts.append(self.rel(add({m: sign * c for m, c in add(left, right, -1).items()}, num(shift)), rel))
            left = right
        return junction("and", parts)

    def rel(self, d: dict, op: str) -> tuple:
        """``D op 0``, divided by the content of D, decided when D's bounds settle it."""
        if value(d) is None:
            g, k = math.gcd(*(c for m, c in d.items() if m)), d.get((), 0)
            if op != ">=" and k % g:
                return ("const", op == "!=")
            d = {m: (c // g if m or op != ">=" else k // g) for m, c in d.items()}  # floor: integer tightening
            if op != ">=" and d[min(m for m in d if m)] < 0:
                d = {m: -c for m, c in d.items()}
        lo, hi = self.lb(d), self.ub(d)
        truth = (True if at_least(lo, 0) else False if hi is not None and hi < 0 else None) if op == ">=" else \
            (False if at_least(lo, 1) or (hi is not None and hi < 0) else True if lo == hi == 0 else None)
        if truth is not None:
            return ("const", truth if op != "!=" else not truth)
        return ("cmp", freeze(d), op)

    def again(self, f: tuple) -> tuple:
        if f[0] == "cmp":
            return self.rel(self.simp(dict(f[1])), f[2])
        return f if f[0] == "const" else junction(f[0], map(self.again, f[1]))

    # ------------------------------------------------------------------------------------------------ facts
    def tighten(self, a: tuple, lo: int | None, hi: int | None) -> list:
        olo, ohi = self.bounds(a)
        lo = olo if lo is None or (olo is not None and olo >= lo) else lo
        hi = ohi if hi is None or (ohi is not None and ohi <= hi) else hi
        if lo is not None and hi is not None and lo > hi:
            raise Empty
        if (lo, hi) == (olo, ohi):
            return []
        self.b[a] = (lo, hi)
        self.memo.clear()
        if a[0] != "fd" or value(dict(a[2])) is None:
            return []
        p, k = dict(a[1]), value(dict(a[2]))  # lo <= P // k <= hi bounds P
        return [self.rel(add(p, num(-k * lo)), ">=") if lo is not None else ("const", True),
                self.rel(add(num(k * hi + k - 1), p, -1), ">=") if hi is not None else ("const", True)]

    def learn(self, d: dict, op: str) -> list:
        if op == "==":
            for m, c in sorted(d.items()):
                if len(m) == 1 and m[0][1] == 1 and m[0][0][0] == "v" and abs(c) == 1:
                    x, rest = m[0][0], add(d, {m: c}, -1)
                    if x not in set(atoms(rest)):  # x == -rest / c: substitute, x's range becomes a fact
                        e = {mm: -c * cc for mm, cc in rest.items()}
                        lo, hi = self.bounds(x)
                        self.sub[x[1]] = e
                        self.memo.clear()
                        return [self.rel(add(e, num(-lo)), ">=") if lo is not None else ("const", True),
                                self.rel(add(num(hi), e, -1), ">=") if hi is not None else ("const", True)]
        if any(len(m) != 1 or m[0][1] != 1 for m in d if m):
            return []
        new = []
        for m, c in d.items():
            if not m:
                continue
            a, rest = m[0][0], add(d, {m: c}, -1)
            rlo, rhi = self.lb(rest), self.ub(rest)
            if op == "!=":  # a single atom: its excluded value moves an edge
                k = value(rest)
                if k is not None and k % c == 0:
                    lo, hi = self.bounds(a)
                    v = -k // c
                    new += self.tighten(a, v + 1 if v == lo else None, v - 1 if v == hi else None)
                continue
            lo = hi = None  # c*a + rest >= 0 (or == 0)
            if c > 0:
                lo = None if rhi is None else -(rhi // c)
                hi = (-rlo) // c if op == "==" and rlo is not None else None
            else:
                hi = None if rhi is None else rhi // -c
                lo = -((-rlo) // -c) if op == "==" and rlo is not None else None
            new += self.tighten(a, lo, hi)
        return new

    def settle(self, hyps: Sequence[ast.expr]) -> list | None:
        """Learn from the hypotheses until nothing changes; their simplified forms, or None when contradictory."""
        facts, linked = [], set()
        for h in hyps:
            try:
                facts.append(self.formula(h))
            except Unprovable:  # a hypothesis it cannot read is left out: weaker, still sound
                pass
        try:
            for _ in range(12):
                state, out = (dict(self.b), dict(self.sub)), []
                for f in facts:
                    try:
                        f = self.again(f)
                    except Unprovable:
                        continue
                    if f == ("const", False):
                        return None
                    out += [g for g in (f[1] if f[0] == "and" else (f,)) if g[0] != "const" and g not in out]
                new = []
                for f in out:
                    if f[0] == "cmp":
                        new += self.learn(dict(f[1]), f[2])
                for a in {a for f in out if f[0] == "cmp" for a in atoms(dict(f[1])) if a[0] in ("fd", "md")}:
                    p, q = dict(a[1]), dict(a[2])
                    if (a[1], a[2]) in linked or not self.nonzero(q):
                        continue
                    linked.add((a[1], a[2]))  # P == Q * (P // Q) + P % Q, and P % Q < Q
                    fd, md = self.div("fd", p, q), self.div("md", p, q)
                    new.append(self.rel(add(add(p, mul(q, fd), -1), md, -1), "=="))
                    if at_least(self.lb(q), 1):
                        new.append(self.rel(add(add(q, num(-1)), md, -1), ">="))
                facts = out + [f for f in new if f not in out]
                if not [f for f in new if f not in out] and state == (self.b, self.sub):
                    break
        except Empty:
            return None
        return facts

    def proves(self, f: tuple, facts: list) -> bool:
        f = self.again(f)
        if f[0] != "cmp":
            return f[1] if f[0] == "const" else (all if f[0] == "and" else any)(self.proves(g, facts) for g in f[1])
        if f in facts:
            return True
        d, op = dict(f[1]), f[2]
        for h in facts:  # D - H >= 0 with H >= 0 a fact
            if h[0] == "cmp" and h[2] == ">=" and op in (">=", "!="):
                need = 0 if op == ">=" else 1
                if at_least(self.lb(add(d, dict(h[1]), -1)), need) or \
                        (op == "!=" and at_least(self.lb(add({m: -c for m, c in d.items()}, dict(h[1]), -1)), 1)):
                    return True
        return False

    def holds(self, goal: ast.expr, facts: list) -> bool:
        self.memo.clear()
        self.divisors = []
        ok = self.proves(self.formula(goal), facts)
        return ok and all(self.nonzero(q) for q in self.divisors)

    def nonzero(self, q: dict) -> bool:
        hi = self.ub(q)
        return bool(value(q)) or at_least(self.lb(q), 1) or (hi is not None and hi <= -1)

    def residues(self, goal: ast.expr) -> dict[str, int]:
        """The modulus to split each dim by so that the goal's ``// c`` and ``% c`` become polynomial."""
        need: dict[str, int] = {}

        def walk(p: dict, mult: int) -> None:
            for a in {a for m in p for a, _ in m}:
                if a[0] == "v" and mult > 1:
                    need[a[1]] = math.lcm(need.get(a[1], 1), mult)
                elif a[0] in ("fd", "md"):
                    walk(dict(a[1]), mult * (value(dict(a[2])) or 1))
                    walk(dict(a[2]), mult)
                elif a[0] != "v":
                    for x in a[1]:
                        walk(dict(x), mult)

        stack = [self.formula(goal)]
        while stack:
            f = stack.pop()
            if f[0] == "cmp":
                walk(dict(f[1]), 1)
            elif f[0] != "const":
                stack.extend(f[1])
        return need

