"""Dynamic-axis policy, dim names shared across a graph's inputs, and the constraints that hold between them.

Policy (``dynamic="auto"``): dim 0 of every tensor of rank >= 1 (batch), the spatial dims of rank-4/5 tensors
(height, width, frames), the sequence dim of integer / bool token tensors of rank 2 and of rank-3 float
sequences, dim 1 of a float rank-2 tensor as long as the prompt (a float attention mask), the dims of other integer
tensors as long as the prompt's, plus every dim whose size changed across the recorded calls. ``"static"`` makes nothing dynamic; a
mapping ``{input name: [dims] or {dim: name}}`` says exactly which.

``torch.export`` (with ``Dim.AUTO``) then decides: dims it can keep dynamic get one symbol each, shared where the
model ties them (sample's batch is encoder_hidden_states' batch); dims it specialises to a constant are reported.
Its guards (``ep._guards_code``) become the manifest's ``guards``: Python expressions over dim names such as
``height % 2 == 0`` or ``height == 1 + (-1 + controlnet_cond_height) // 2``. :mod:`shapetrace.constraints`
evaluates them (safely, no ``eval``), prunes them to the ``constraints`` a user must respect, and solves them for
verify's second input set.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..errors import ExportError

__all__ = ["candidate_dims", "DimInfo", "describe_program", "role_name", "symbol_map_rename", "index_bounds"]

_ROLES = {1: ("batch",), 2: ("batch", "sequence"), 3: ("batch", "sequence", "hidden"),
          4: ("batch", "channels", "height", "width"), 5: ("batch", "channels", "frames", "height", "width")}


def role_name(rank: int, dim: int) -> str:
    roles = _ROLES.get(rank)
    return roles[dim] if roles and dim < len(roles) else f"dim{dim}"


def candidate_dims(inputs: Mapping[str, Any], dynamic: Any = "auto",
                   cache_inputs: frozenset[str] | set[str] = frozenset()) -> dict[str, dict[int, str | None]]:
    """Which dims of each input (name -> TensorSpec) to ask torch.export to keep dynamic.

    ``cache_inputs`` are the tensors of a KV cache (``[batch, heads, past_sequence, head_dim]``): their batch, and
    the dims that grew across the recorded calls (else the second to last), named ``past_sequence``.

    Returns ``{input: {dim: requested name or None}}``.
    """
    if dynamic == "static" or dynamic is False or dynamic is None:
        return {n: {} for n in inputs}
    if isinstance(dynamic, Mapping):
        out: dict[str, dict[int, str | None]] = {n: {} for n in inputs}
        for name, dims in dynamic.items():
            if name not in inputs:
                raise ExportError(f"dynamic= names input {name!r}, which this graph does not have; inputs: "
                                  f"{', '.join(inputs)}")
            rank = len(inputs[name].shape)
            items = dims.items() if isinstance(dims, Mapping) else ((d, None) for d in dims)
            for d, dim_name in items:
                if not -rank <= int(d) < rank:
                    raise ExportError(f"dynamic= asks for dim {d} of {name!r}, which has rank {rank}")
                out[name][int(d) % rank] = dim_name
        return out
    if dynamic != "auto" and dynamic is not True:
        raise ExportError(f"dynamic={dynamic!r} is not understood; use 'auto', 'static' or a mapping "
                          f"{{input name: [dims]}}")
    out = {}
    for name, spec in inputs.items():
        rank = len(spec.shape)
        dims: dict[int, str | None] = {}
        if name in cache_inputs and rank >= 2:
            grown = tuple(getattr(spec, "varying_dims", ())) or (rank - 2,)
            out[name] = {0: None, **{d: "past_sequence" for d in grown if d}}
            continue
        if rank >= 1:
            dims[0] = None
        floating = spec.dtype.is_floating_point
        if rank == 2 and not floating:
            dims[1] = None
        if rank == 3 and floating:
            dims[1] = None
        if rank == 4:
            dims.update({2: None, 3: None})
        if rank == 5:
            dims.update({2: None, 3: None, 4: None})
        for d in getattr(spec, "varying_dims", ()):
            dims[d] = None
        out[name] = dims
    _align_with_the_prompt(inputs, out, cache_inputs)
    return out


def _align_with_the_prompt(inputs: Mapping[str, Any], out: dict[str, dict[int, str | None]],
                           cache_inputs: frozenset[str] | set[str]) -> None:
    """Integer tensors of other ranks laid along the prompt (multimodal rotary positions ``[sections, batch,
    sequence]``, per-token type ids in 3-D) keep the prompt's dims dynamic too: a dim of such a tensor as long as a
    dynamic dim of a ``[batch, sequence]`` id tensor is asked dynamic (else the rank rule fixes the prompt length).
    So is dim 1 of a float ``[batch, n]`` tensor when n is the prompt's length (an attention mask given as floats:
    fixed, it fixed the prompt length through the mask's padding check)."""
    ids = [n for n in out if n not in cache_inputs and len(inputs[n].shape) == 2
           and not inputs[n].dtype.is_floating_point]
    prompt = {inputs[n].shape[d] for n in ids for d in out[n]} - {0, 1}
    lengths = {inputs[n].shape[1] for n in ids if 1 in out[n]} - {0, 1}
    for name, spec in inputs.items():
        if name not in cache_inputs and spec.dtype.is_floating_point and len(spec.shape) == 2 \
                and spec.shape[1] in lengths:
            out[name].setdefault(1, None)
        if name in cache_inputs or spec.dtype.is_floating_point or spec.dtype.is_complex or len(spec.shape) < 3:
            continue
        out[name].update({d: None for d, size in enumerate(spec.shape) if size in prompt and d not in out[name]})


@dataclass(frozen=True)
class DimInfo:
    """What torch.export made of a graph's dims."""

    input_shapes: Mapping[str, list]  # input name -> [int | dim name]
    output_shapes: Mapping[str, list]  # output name -> [int | dim name | expression]
    dims: Mapping[str, dict]  # dim name -> {"min", "max", "example", "sources"}
    constraints: tuple[str, ...]
    specialized: tuple[dict, ...]  # {"input", "dim", "value"} asked dynamic but exported static
    symbols: Mapping[str, str] = field(default_factory=dict)  # torch symbol ("s32") -> dim name


def _sym_str(x: Any) -> str | int:
    if isinstance(x, int):
        return x
    if isinstance(x, torch.SymInt):
        node = x.node
        expr = node.expr
        if getattr(expr, "is_number", False):
            return int(expr)
        return str(expr)
    return str(x)


_SYM = re.compile(r"\b[su]\d+\b")


def _offset_of_unnamed(size: Any, symbols: Mapping[str, str]) -> tuple[str, int] | None:
    """``(symbol, c)`` when ``size`` is ``symbol + c`` for a symbol no dim is named after yet, else None."""
    expr = getattr(getattr(size, "node", None), "expr", None)
    free = getattr(expr, "free_symbols", ())
    if expr is None or len(free) != 1:
        return None
    (sym,) = free
    rest = expr - sym
    if str(sym) in symbols or not _SYM.fullmatch(str(sym)) or not getattr(rest, "is_Integer", False):
        return None
    return str(sym), int(rest)


def symbol_map_rename(text: str, symbols: Mapping[str, str]) -> str:
    return _SYM.sub(lambda m: symbols.get(m.group(0), m.group(0)), text)


def describe_program(ep: "torch.export.ExportedProgram", input_names: Sequence[str], output_names: Sequence[str],
                     candidates: Mapping[str, Mapping[int, str | None]],
                     example_shapes: Mapping[str, tuple]) -> DimInfo:
    """Read dims, names, ranges and guards off an exported program whose inputs are ``*args`` in order.

    Long by design: one pass over the program's symbols, each step reading the names the one before gave."""
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user = [n for n in placeholders if n.name in set(ep.graph_signature.user_inputs)]
    if len(user) != len(input_names):
        raise ExportError(f"exported program has {len(user)} inputs, expected {len(input_names)}")
    symbols: dict[str, str] = {}
    used: set[str] = set()
    sources: dict[str, list[str]] = {}
    input_shapes: dict[str, list] = {}
    specialized: list[dict] = []
    derived: dict[str, int] = {}  # symbols only seen plus a constant: their example
    for name, node in zip(input_names, user):
        val = node.meta.get("val")
        shape = list(val.shape) if isinstance(val, torch.Tensor) else []
        rank = len(shape)
        row: list = []
        for d, size in enumerate(shape):
            s = _sym_str(size)
            if isinstance(s, int):
                row.append(s)
                if d in candidates.get(name, {}):
                    specialized.append({"input": name, "dim": d, "value": s})
                continue
            fresh = s if s not in symbols and _SYM.fullmatch(s) else None
            offset = _offset_of_unnamed(size, symbols) if fresh is None else None
            if offset is not None:  # `s21 + 1`: a dim torch.export only knows one off its own (a step's mask)
                fresh = offset[0]
                derived[fresh] = int(example_shapes[name][d]) - offset[1]
            if fresh is not None:
                wanted = candidates.get(name, {}).get(d)
                base = wanted or role_name(rank, d)
                dim_name = base if base not in used else f"{_ident(name)}_{base}"
                k = 2
                while dim_name in used:
                    dim_name, k = f"{_ident(name)}_{base}_{k}", k + 1
                used.add(dim_name)
                symbols[fresh] = dim_name
            label = symbols.get(s) or symbol_map_rename(s, symbols)
            row.append(label)
            sources.setdefault(label, []).append(f"{name}.{d}")
        input_shapes[name] = row
    ranges = {str(k): v for k, v in ep.range_constraints.items()}
    dims: dict[str, dict] = {}
    for sym, dim_name in symbols.items():
        vr = ranges.get(sym)
        lo = int(vr.lower) if vr is not None else 0
        # torch.export reports [2, ...] for every dynamic dim (it specialises 0 and 1 while tracing); the graph
        # itself does not branch on it, so 1 is allowed and proven by verify()'s second input set
        lo = 1 if lo == 2 else lo
        hi = vr.upper if vr is not None else None
        hi = int(hi) if hi is not None and str(hi) not in ("oo", "int_oo") and hi.is_finite else None
        if sym in derived and dim_name not in sources:  # no input has it alone: its example is read off the sum
            dims[dim_name] = {"min": lo, "max": hi, "example": derived[sym], "sources": []}
            continue
        first = sources[dim_name][0]
        inp, d = first.rsplit(".", 1)
        dims[dim_name] = {"min": lo, "max": hi, "example": int(example_shapes[inp][int(d)]),
                          "sources": sources[dim_name]}
    output_shapes: dict[str, list] = {}
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    for name, node in zip(output_names, outs):
        val = node.meta.get("val") if hasattr(node, "meta") else None
        shape = list(val.shape) if isinstance(val, torch.Tensor) else []
        output_shapes[name] = [s if isinstance(s, int) else symbol_map_rename(s, symbols)
                               for s in (_sym_str(x) for x in shape)]
    constraints = _translate_guards(getattr(ep, "_guards_code", None) or [], input_names, input_shapes)
    return DimInfo(input_shapes, output_shapes, dims, tuple(constraints), tuple(specialized), symbols)


def _ident(name: str) -> str:
    return re.sub(r"\W", "_", name)


_GUARD_REF = re.compile(r"L\['[^']+'\]\[(\d+)\]\.size\(\)\[(\d+)\]|L\['([^']+)'\]\.size\(\)\[(\d+)\]")


def _translate_guards(guards: Sequence[str], input_names: Sequence[str], input_shapes: Mapping[str, list]) -> list[str]:
    out: list[str] = []
    for g in guards:
        ok = True

        def sub(m: re.Match) -> str:
            nonlocal ok
            if m.group(1) is not None:
                idx, d = int(m.group(1)), int(m.group(2))
                name = input_names[idx] if idx < len(input_names) else None
            else:
                name, d = m.group(3), int(m.group(4))
                if name not in input_shapes and name.startswith("args_"):
                    name = input_names[int(name[5:])] if name[5:].isdigit() else name
            if name not in input_shapes or d >= len(input_shapes[name]):
                ok = False
                return "?"
            v = input_shapes[name][d]
            return str(v)

        text = _GUARD_REF.sub(sub, g)
        text = text.replace("torch.sym_max(", "max(").replace("torch.sym_min(", "min(")
        if not ok or "L[" in text:
            continue
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError:
            continue
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        if not names:  # a guard over static dims only says nothing about what a user may change
            continue
        body = tree.body
        if (isinstance(body, ast.Compare) and len(body.ops) == 1 and isinstance(body.ops[0], (ast.Eq, ast.LtE, ast.GtE))
                and ast.dump(body.left) == ast.dump(body.comparators[0])):
            continue  # a tautology such as "batch == batch" 
        if text not in out:
            out.append(text)
    return out


_PASS_THROUGH = {"view", "reshape", "unsqueeze", "squeeze", "expand", "_to_copy", "to", "clone", "contiguous",
                 "alias", "flatten"}


def index_bounds(ep: "torch.export.ExportedProgram", input_names: Sequence[str]) -> dict[str, int]:
    """Integer inputs the program uses (directly, or through a reshape / cast) as row indices into a table of fixed
    size (``embedding``, ``index_select`` on a weight): input name -> the largest valid index. An index past the table
    makes PyTorch raise, but some runtimes read zeros or another row (OpenVINO's Gather): ``load`` checks it."""
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user = [n for n in placeholders if n.name in set(ep.graph_signature.user_inputs)]
    origin = {node: name for node, name in zip(user, input_names)}
    bounds: dict[str, int] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        op = getattr(getattr(node.target, "overloadpacket", None), "__name__", "")
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if op in _PASS_THROUGH and args and args[0] in origin:
            origin[node] = origin[args[0]]
            continue
        table = index = None
        if op == "embedding" and len(args) >= 2:
            table, index = args[0], args[1]
        elif op == "index_select" and len(node.args) >= 3 and node.args[1] == 0:
            table, index = node.args[0], node.args[2]
        if table is None or index not in origin or table in origin:
            continue
        rows = getattr(table.meta.get("val"), "shape", None)
        if rows is not None and len(rows) and isinstance(rows[0], int):
            name = origin[index]
            bounds[name] = min(bounds.get(name, rows[0] - 1), rows[0] - 1)
    return bounds
