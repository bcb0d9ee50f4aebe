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
    graph = torch.fx.Graph()
    graph.set_codegen(gm.graph._codegen)  # the exported module's pytree calling convention
    env: dict[torch.fx.Node, Any] = {}
    real_of: dict[torch.fx.Node, torch.fx.Node] = {}  # complex node -> its [..., 2] real node
    owner = torch.nn.Module()
    aten = torch.ops.aten

    def arg(a: Any) -> Any:
        return torch.fx.map_arg(a, lambda n: env[n])

    def r(n: Any) -> Any:
        if isinstance(n, torch.fx.Node) and n in real_of:
            return real_of[n]
        raise NotRewritable(f"a complex value reaches an op from a non-complex one ({n})")

    def call(fn: Any, *args: Any) -> torch.fx.Node:
        return graph.call_function(fn, args)

    def parts(n: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node]:
        return call(aten.select.int, n, -1, 0), call(aten.select.int, n, -1, 1)

    def pair(re: Any, im: Any) -> torch.fx.Node:
        return call(aten.stack.default, [re, im], -1)

    for node in gm.graph.nodes:
        complex_in = any(_is_complex(a) for a in node.all_input_nodes)
        if node.op == "placeholder":
            if _is_complex(node):
                raise NotRewritable(f"complex graph input {node.name}")
            env[node] = graph.placeholder(node.name)
            env[node].meta = dict(node.meta)
            continue
        if node.op == "output":
            if any(_is_complex(a) for a in node.all_input_nodes):
                raise NotRewritable("a complex graph output")
            graph.output(arg(node.args[0]))
            continue
        if node.op == "get_attr":
            value = _fetch(gm, node.target)
            if isinstance(value, torch.Tensor) and value.is_complex():
                name = f"_real_{node.target.replace('.', '_')}"
                owner.register_buffer(name, torch.view_as_real(value.resolve_conj()).clone())
                real_of[node] = graph.get_attr(name)
                env[node] = real_of[node]
            else:
                env[node] = graph.node_copy(node, lambda n: env[n])
            continue
        if not (_is_complex(node) or complex_in):
            env[node] = graph.node_copy(node, lambda n: env[n])
            continue
        if node.op != "call_function":
            raise NotRewritable(f"{node.op} {node.target} on complex values")
        if node.target is operator.getitem:
            raise NotRewritable("getitem on complex values")
        op = getattr(getattr(node.target, "overloadpacket", None), "__name__", str(node.target))
        a = list(node.args)
        out: Any
        if op == "view_as_complex":
            out = env[a[0]]
        elif op == "view_as_real":
            env[node] = r(a[0])
            continue
        elif op in _SAME:
            out = call(node.target, r(a[0]), *[arg(x) for x in a[1:]])
        elif op in ("_to_copy", "to"):
            dtype = node.kwargs.get("dtype", a[1] if len(a) > 1 and isinstance(a[1], torch.dtype) else None)
            src = a[0]
            if _is_complex(node) and not _is_complex(src):  # real -> complex: imaginary part 0
                x = graph.call_function(aten._to_copy.default, (env[src],), {"dtype": _real_dtype(dtype)})
                out = pair(x, call(aten.zeros_like.default, x))
            elif _is_complex(node):  # complex -> complex
                out = graph.call_function(aten._to_copy.default, (r(src),), {"dtype": _real_dtype(dtype)})
            else:  # complex -> real: the real part
                out = graph.call_function(aten._to_copy.default, (call(aten.select.int, r(src), -1, 0),),
                                          {"dtype": dtype})
                env[node] = out
                continue
        elif op in ("mul", "add", "sub"):
            x, y = a[0], a[1]
            xc, yc = _is_complex(x), _is_complex(y)
            if op == "mul" and xc and yc:
                xr, xi = parts(r(x))
                yr, yi = parts(r(y))
                out = pair(call(aten.sub.Tensor, call(aten.mul.Tensor, xr, yr), call(aten.mul.Tensor, xi, yi)),
                           call(aten.add.Tensor, call(aten.mul.Tensor, xr, yi), call(aten.mul.Tensor, xi, yr)))
            elif op == "mul":  # complex times real
                c, s = (x, y) if xc else (y, x)
                s = call(aten.unsqueeze.default, env[s], -1) if isinstance(s, torch.fx.Node) else s
                out = call(aten.mul.Tensor, r(c), s)
            elif xc and yc:
                out = call(node.target, r(x), r(y))
            else:
                raise NotRewritable(f"{op} of a complex and a real value")
        elif op == "polar":
            mag, ang = env[a[0]], env[a[1]]
            out = pair(call(aten.mul.Tensor, mag, call(aten.cos.default, ang)),
                       call(aten.mul.Tensor, mag, call(aten.sin.default, ang)))
        elif op in ("view", "reshape", "_unsafe_view", "expand"):
            out = call(node.target, r(a[0]), [*arg(a[1]), 2])
        elif op == "permute":
            rank = len(node.meta["val"].shape)
            out = call(node.target, r(a[0]), [d % rank for d in a[1]] + [rank])
        elif op == "index":
            out = call(node.target, r(a[0]), arg(a[1]))
        elif op in ("cat", "stack"):
            if not all(_is_complex(t) for t in a[0]):
                raise NotRewritable(f"{op} of complex and real values")
            out = call(node.target, [r(t) for t in a[0]], _dim(a[1] if len(a) > 1 else 0))
        elif op in _DIM_ARG:
            where = _DIM_ARG[op]
            where = where if isinstance(where, tuple) else (where,)
            new = [r(a[0]), *[arg(x) for x in a[1:]]]
            for i in where:
                if i < len(new) and isinstance(new[i], int):
                    new[i] = _dim(new[i])
            if op == "flatten" and len(new) == 2:
                new.append(-2)
            out = call(node.target, *new)
        else:
            raise NotRewritable(f"aten.{op} on complex values")
        out.meta = {}
        real_of[node] = out
        env[node] = out
    graph.lint()
    for name, buf in owner.named_buffers():
        gm.register_buffer(name, buf)
    return _Positional(torch.fx.GraphModule(gm, graph))


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
