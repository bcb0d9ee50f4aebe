"""Does a call match the one an export was made from? Argument by argument, as the recorder flattened it.

Argument matching rules (what counts as "the same call"):

- a parameter the call leaves out counts as its signature default, on both sides;
- ``None`` and "not passed" are the same for ``**kwargs`` parameters (no default to compare with);
- numbers compare by value (``1 == 1.0``), but ``True`` is not ``1``;
- lists and tuples are interchangeable (modules index them alike);
- a ``torch.Generator`` (or None in its place) is never part of a graph and always matches;
- a Python number may stand for a 0-d tensor input (``timestep=501`` for ``tensor(501)``);
- a number exported as the size of an input's dim (``"follows"`` on its node, :func:`shapetrace._export.flat.prepare`)
  matches when it equals that size in this call.

:func:`match_call` walks the recorded call's argument tree beside the new call's, collects the tensor leaves that
feed the graph's inputs, and says in plain words what differs (a frozen constant changed, a tensor where None was
recorded, a list of another length) and what to do about it.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from .._core import tree
from ..manifest import InputSpec

__all__ = ["match_call", "signature_defaults", "describe"]

_MISSING = object()


def signature_defaults(sig: inspect.Signature | None) -> dict[str, Any]:
    """The default value of every parameter that has one."""
    if sig is None:
        return {}
    return {p.name: p.default for p in sig.parameters.values() if p.default is not inspect.Parameter.empty}


def match_call(params: Mapping[str, Mapping[str, Any]], nodes: Mapping[str, dict], leaves: Mapping[str, Any],
               defaults: Mapping[str, Any], inputs: Mapping[str, InputSpec]) -> tuple[dict[str, Any], list[str]]:
    """Compare a bound call (``nodes``: param -> spec node, ``leaves``: flat name -> value) with the recorded one
    (``params``: the manifest's ``input_tree`` params by name). Returns ``(feed, problems)``: the value for each
    graph input, and what does not match (empty when the call fits)."""
    def default_node(name: str) -> Any:
        return tree.flatten(defaults[name], name, {})[0] if name in defaults else _MISSING

    problems: list[str] = []
    feed: dict[str, Any] = {}
    follows: list[tuple[str, Any, str, int]] = []
    for name in list(params) + [n for n in nodes if n not in params]:
        if name == "return_dict":
            continue  # the output is rebuilt either way (shapetrace._serve.serve)
        rec = params[name]["node"] if name in params else default_node(name)
        got = nodes[name] if name in nodes else default_node(name)
        if rec is _MISSING and got is not _MISSING and _is_none(got):
            continue
        if got is _MISSING and rec is not _MISSING and _is_none(rec):
            continue
        if rec is _MISSING or got is _MISSING:
            problems.append(f"{name}: this call passes {describe(got)}, the recorded call passed "
                            f"{describe(rec)}; record a call that passes {name} the way you call it")
            continue
        _compare(name, rec, got, leaves, inputs, feed, problems, follows)
    for name, value, source, dim in follows:  # numbers exported as an input's size: checked once all are fed
        size = feed[source].shape[dim] if hasattr(feed.get(source), "shape") else None
        if value != size:
            problems.append(f"{name}={value!r}, but the graph takes it as the size of {source}'s dim {dim} "
                            f"({size} in this call); pass {name}={size}, or record and export a call where {name} "
                            f"differs from that size")
    return feed, problems


def _compare(name: str, rec: dict, got: dict, leaves: Mapping[str, Any], inputs: Mapping[str, InputSpec],
             feed: dict, problems: list[str], follows: list[tuple[str, Any, str, int]]) -> None:
    """One node of the recorded argument tree against the call's: tensors go to ``feed``, what differs to
    ``problems``. Long by design: one arm per node kind of :mod:`shapetrace._core.tree` (tensor, const, list,
    dict, object, ...), recursing into containers; the arms share the accumulators."""
    rt, gt = rec["t"], got["t"]
    if rt == "tensor":
        spec = inputs.get(rec["name"])
        if spec is None:
            problems.append(f"{name}: the manifest lists no input {rec['name']!r}; re-export")
        elif gt == "tensor":
            feed[rec["name"]] = leaves[got["name"]]
        elif gt == "const" and isinstance(got["value"], (int, float)) and not isinstance(got["value"], bool) \
                and len(spec.shape) == 0:
            feed[rec["name"]] = got["value"]  # a number for a 0-d tensor input (timestep=501, promoted scalars)
        else:
            problems.append(f"{name}: the graph takes a tensor here (input {rec['name']!r}), this call passes "
                            f"{describe(got)}; record a call that passes {name} like this one")
        return
    if _is_generator_node(rec) or _is_generator_node(got):
        if (_is_generator_node(rec) or _is_none(rec)) and (_is_generator_node(got) or _is_none(got)):
            return
    if rt == "const" and gt == "const" and rec.get("follows"):
        source, dim = rec["follows"].rsplit(".", 1)
        follows.append((name, tree.const_value(got), source, int(dim)))
        return
    if rt == "const" and gt == "const":
        if not _const_equal(rec, got):
            value, frozen = describe(got), describe(rec)
            if isinstance(tree.const_value(got), (int, float)) and not isinstance(tree.const_value(got), bool) \
                    and isinstance(tree.const_value(rec), (int, float)):
                hint = (f"record a call with {name}={value} too (beside {name}={frozen}), so it is exported "
                        f"as an input")
            else:
                hint = (f"only int / float arguments that vary across the recorded calls become graph inputs, "
                        f"others stay frozen: record and export a run that passes {name}={value}, and load "
                        f"that export")
            problems.append(f"{name}={value}, but the export froze {name}={frozen} into the graph; {hint}")
        return
    if rt == "opaque" and gt == "opaque":
        if rec.get("type") != got.get("type"):
            problems.append(f"{name}: this call passes {describe(got)}, the recorded call passed "
                            f"{describe(rec)}; record a call like this one")
        return
    if rt in ("list", "tuple") and gt in ("list", "tuple"):
        if len(rec["items"]) != len(got["items"]):
            problems.append(f"{name}: this call passes {describe(got)}, the graph was exported for "
                            f"{describe(rec)}; record a call like this one")
            return
        keys = rec.get("fields") or list(range(len(rec["items"])))
        for k, r, g in zip(keys, rec["items"], got["items"]):
            _compare(f"{name}[{k!r}]" if isinstance(k, str) else f"{name}[{k}]", r, g, leaves, inputs, feed,
                     problems, follows)
        return
    if rt in ("dict", "object") and gt == rt:
        if rt == "object" and rec.get("cls") != got.get("cls"):
            problems.append(f"{name}: this call passes {describe(got)}, the recorded call passed "
                            f"{describe(rec)}")
            return
        rk, gk = dict(zip(rec["keys"], rec["items"])), dict(zip(got["keys"], got["items"]))
        for k in list(rk) + [k for k in gk if k not in rk]:
            r, g = rk.get(k, _MISSING), gk.get(k, _MISSING)
            if r is _MISSING or g is _MISSING:
                if (r is _MISSING and _is_none(g)) or (g is _MISSING and _is_none(r)):
                    continue
                problems.append(f"{name}[{k!r}]: this call passes {describe(g)}, the recorded call passed "
                                f"{describe(r)}; record a call like this one")
                continue
            _compare(f"{name}[{k!r}]", r, g, leaves, inputs, feed, problems, follows)
        return
    if rt == "const" and rec["value"] is None:
        problems.append(f"{name}: this call passes {describe(got)}, but {name} was None when recorded, so "
                        f"the graph has no input for it; record (and export) a call that passes {name}")
        return
    problems.append(f"{name}: this call passes {describe(got)}, the recorded call passed {describe(rec)}; "
                    f"record a call that passes {name} like this one")


def _is_generator_node(node: Mapping[str, Any]) -> bool:
    return node["t"] == "opaque" and "Generator" in node.get("type", "") and node.get("type", "").startswith("torch")


def _is_none(node: Mapping[str, Any]) -> bool:
    return node["t"] == "const" and node["value"] is None


def describe(node: Any) -> str:
    """A spec node in words: ``1.0``, ``a tensor``, ``a list of 3``, ``nothing``."""
    if node is _MISSING:
        return "nothing"
    t = node["t"]
    if t == "const":
        return repr(tree.const_value(node))
    if t == "tensor":
        return "a tensor"
    if t == "opaque":
        return f"a {node['type']}"
    if t in ("list", "tuple"):
        return f"a {t} of {len(node['items'])}"
    if t == "dict":
        return f"a dict with keys {node['keys']}"
    return f"a {node.get('cls', t).rsplit(':', 1)[-1]}"


def _const_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    va, vb = tree.const_value(a), tree.const_value(b)
    if isinstance(va, bool) or isinstance(vb, bool):
        return type(va) is type(vb) and va == vb
    if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
        return va == vb or (va != va and vb != vb)
    return a["type"] == b["type"] and va == vb
