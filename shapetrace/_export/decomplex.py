"""A real-valued rewrite of the complex arithmetic inside an exported program (rotary embeddings computed with
``torch.view_as_complex`` / ``torch.polar``), so that ONNX and OpenVINO, which have no complex tensors, get it.

Every complex value of the graph is carried as a real tensor with a trailing dim of 2 (the ``view_as_real`` form):
``view_as_complex(x)`` is ``x`` itself, a complex product is ``(ar*br - ai*bi, ar*bi + ai*br)``, a complex buffer is
stored as its ``view_as_real``, and shape ops (reshape, unsqueeze, cat, index, slice, ...) act on the leading dims
(negative dims shifted by one). :func:`rewrite` returns the rewritten module, which ``torch.export`` then traces like
any other (its inputs and outputs are the original ones: a graph with complex inputs or outputs is not rewritten),
or raises :class:`NotRewritable` naming the op it does not know.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx

__all__ = ["rewrite", "NotRewritable"]


class NotRewritable(Exception):
    """The graph uses complex values in a way the rewrite does not cover (the op is named)."""


def _is_complex(node: Any) -> bool:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and val.is_complex()


def _dim(d: int) -> int:
    return d - 1 if d < 0 else d


_SAME = {"clone", "contiguous", "alias", "detach", "lift_fresh_copy", "_assert_tensor_metadata"}
_DIM_ARG = {"unsqueeze": 1, "squeeze": 1, "select": 1, "slice": 1, "narrow": 1, "cat": 1, "stack": 1,
            "flatten": (1, 2), "transpose": (1, 2), "movedim": (1, 2), "roll": 2, "repeat_interleave": 2}


def rewrite(gm: torch.fx.GraphModule) -> torch.nn.Module:
    """The real-valued form of ``gm`` (an exported program's ``module()``), see the module docstring."""
    return _Positional(_Rewrite(gm).run())


aten = torch.ops.aten
Node = torch.fx.Node


class _Rewrite:
    """One pass over ``gm``'s nodes into a new graph: nodes without complex values are copied, each complex op
    goes to its handler in :data:`_HANDLERS` (by the op's name), which returns its ``[..., 2]`` real node."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm
        self.graph = torch.fx.Graph()
        self.graph.set_codegen(gm.graph._codegen)  # the exported module's pytree calling convention
        self.env: dict[Node, Any] = {}
        self.real_of: dict[Node, Node] = {}  # complex node -> its [..., 2] real node
        self.owner = torch.nn.Module()

    # ---- helpers the handlers use
    def arg(self, a: Any) -> Any:
        return torch.fx.map_arg(a, lambda n: self.env[n])

    def r(self, n: Any) -> Any:
        if isinstance(n, Node) and n in self.real_of:
            return self.real_of[n]
        raise NotRewritable(f"a complex value reaches an op from a non-complex one ({n})")

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Node:
        return self.graph.call_function(fn, args, kwargs or None)

    def parts(self, n: Node) -> tuple[Node, Node]:
        return self.call(aten.select.int, n, -1, 0), self.call(aten.select.int, n, -1, 1)

    def pair(self, re: Any, im: Any) -> Node:
        return self.call(aten.stack.default, [re, im], -1)

    # ---- the pass
    def run(self) -> torch.fx.GraphModule:
        for node in self.gm.graph.nodes:
            self._node(node)
        self.graph.lint()
        for name, buf in self.owner.named_buffers():
            self.gm.register_buffer(name, buf)
        return torch.fx.GraphModule(self.gm, self.graph)

    def _node(self, node: Node) -> None:
        env, graph = self.env, self.graph
        complex_in = any(_is_complex(a) for a in node.all_input_nodes)
        if node.op == "placeholder":
            if _is_complex(node):
                raise NotRewritable(f"complex graph input {node.name}")
            env[node] = graph.placeholder(node.name)
            env[node].meta = dict(node.meta)
        elif node.op == "output":
            if complex_in:
                raise NotRewritable("a complex graph output")
            graph.output(self.arg(node.args[0]))
        elif node.op == "get_attr":
            value = _fetch(self.gm, node.target)
            if isinstance(value, torch.Tensor) and value.is_complex():
                name = f"_real_{node.target.replace('.', '_')}"
                self.owner.register_buffer(name, torch.view_as_real(value.resolve_conj()).clone())
                env[node] = self.real_of[node] = graph.get_attr(name)
            else:
                env[node] = graph.node_copy(node, lambda n: env[n])
        elif not (_is_complex(node) or complex_in):
            env[node] = graph.node_copy(node, lambda n: env[n])
        elif node.op != "call_function":
            raise NotRewritable(f"{node.op} {node.target} on complex values")
        elif node.target is operator.getitem:
            raise NotRewritable("getitem on complex values")
        else:
            op = getattr(getattr(node.target, "overloadpacket", None), "__name__", str(node.target))
            handler = _HANDLERS.get(op) or (_same if op in _SAME else _dim_arg if op in _DIM_ARG else None)
            if handler is None:
                raise NotRewritable(f"aten.{op} on complex values")
            out = handler(self, node, op, list(node.args))
            env[node] = out
            if _is_complex(node):  # a real result (view_as_real, a cast to real) is an ordinary value
                out.meta = {}
                self.real_of[node] = out


# ---- one handler per op: (rewrite, node, op name, args) -> the node standing for the result
def _view_as_complex(rw: _Rewrite, node: Node, op: str, a: list) -> Node:
    return rw.env[a[0]]


def _view_as_real(rw: _Rewrite, node: Node, op: str, a: list) -> Node:
    return rw.r(a[0])


def _same(rw: _Rewrite, node: Node, op: str, a: list) -> Node:
    return rw.call(node.target, rw.r(a[0]), *[rw.arg(x) for x in a[1:]])


def _cast(rw: _Rewrite, node: Node, op: str, a: list) -> Node:
    dtype = node.kwargs.get("dtype", a[1] if len(a) > 1 and isinstance(a[1], torch.dtype) else None)
    src = a[0]
    if _is_complex(node) and not _is_complex(src):  # real -> complex: imaginary part 0
        x = rw.call(aten._to_copy.default, rw.env[src], dtype=_real_dtype(dtype))
        return rw.pair(x, rw.call(aten.zeros_like.default, x))
    if _is_complex(node):  # complex -> complex
        return rw.call(aten._to_copy.default, rw.r(src), dtype=_real_dtype(dtype))
    return rw.call(aten._to_copy.default, rw.call(aten.select.int, rw.r(src), -1, 0), dtype=dtype)  # the real part


def _arith(rw: _Rewrite, node: Node, op: str, a: list) -> Node:
    x, y = a[0], a[1]
    xc, yc = _is_complex(x), _is_complex(y)
    if op == "mul" and xc and yc:
        (xr, xi), (yr, yi) = rw.parts(rw.r(x)), rw.parts(rw.r(y))
        mul = aten.mul.Tensor
        return rw.pair(rw.call(aten.sub.Tensor, rw.call(mul, xr, yr), rw.call(mul, xi, yi)),
                       rw.call(aten.add.Tensor, rw.call(mul, xr, yi), rw.call(mul, xi, yr)))
    if op == "mul":  # complex times real
        c, s = (x, y) if xc else (y, x)
        s = rw.call(aten.unsqueeze.default, rw.env[s], -1) if isinstance(s, Node) else s
        return rw.call(aten.mul.Tensor, rw.r(c), s)
    if xc and yc:
        return rw.call(node.target, rw.r(x), rw.r(y))
    raise NotRewritable(f"{op} of a complex and a real value")


def _polar(rw: _Rewrite, node: Node, op: str, a: list) -> Node:
    mag, ang = rw.env[a[0]], rw.env[a[1]]
    return rw.pair(rw.call(aten.mul.Tensor, mag, rw.call(aten.cos.default, ang)),
                   rw.call(aten.mul.Tensor, mag, rw.call(aten.sin.default, ang)))


def _reshape(rw: _Rewrite, node: Node, op: str, a: list) -> Node:
    return rw.call(node.target, rw.r(a[0]), [*rw.arg(a[1]), 2])


def _permute(rw: _Rewrite, node: Node, op: str, a: list) -> Node:
    rank = len(node.meta["val"].shape)
    return rw.call(node.target, rw.r(a[0]), [d % rank for d in a[1]] + [rank])


def _index(rw: _Rewrite, node: Node, op: str, a: list) -> Node:
    return rw.call(node.target, rw.r(a[0]), rw.arg(a[1]))


def _join(rw: _Rewrite, node: Node, op: str, a: list) -> Node:
    if not all(_is_complex(t) for t in a[0]):
        raise NotRewritable(f"{op} of complex and real values")
    return rw.call(node.target, [rw.r(t) for t in a[0]], _dim(a[1] if len(a) > 1 else 0))


def _dim_arg(rw: _Rewrite, node: Node, op: str, a: list) -> Node:
    where = _DIM_ARG[op] if isinstance(_DIM_ARG[op], tuple) else (_DIM_ARG[op],)
    new = [rw.r(a[0]), *[rw.arg(x) for x in a[1:]]]
    for i in where:
        if i < len(new) and isinstance(new[i], int):
            new[i] = _dim(new[i])
    if op == "flatten" and len(new) == 2:
        new.append(-2)
    return rw.call(node.target, *new)


_HANDLERS: dict[str, Any] = {
    "view_as_complex": _view_as_complex, "view_as_real": _view_as_real, "_to_copy": _cast, "to": _cast,
    "mul": _arith, "add": _arith, "sub": _arith, "polar": _polar, "view": _reshape, "reshape": _reshape,
    "_unsafe_view": _reshape, "expand": _reshape, "permute": _permute, "index": _index, "cat": _join, "stack": _join,
}


class _Positional(torch.nn.Module):
    """``forward(*tensors)`` like the flat module it replaces (so the plan's dynamic shapes still apply)."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *tensors: torch.Tensor) -> Any:
        return self.gm(*tensors)


def _fetch(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _real_dtype(dtype: Any) -> Any:
    return {torch.complex64: torch.float32, torch.complex128: torch.float64,
            torch.complex32: torch.float16}.get(dtype, torch.float32)
