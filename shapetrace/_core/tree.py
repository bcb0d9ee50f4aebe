"""Flatten nested args / outputs into named tensor leaves, and rebuild them from a JSON-able spec.

A *spec* is a plain JSON-able dict tree describing a value's structure:

=============  ================================================================================
``tensor``     ``{"t": "tensor", "name": "down_block_additional_residuals.0"}``
``const``      ``{"t": "const", "type": "bool", "value": false}`` (None, bool, int, float, str, dtype ...)
``opaque``     ``{"t": "opaque", "type": "torch.Generator", "tensors": false}`` (recorded by type only)
``tuple``      ``{"t": "tuple", "items": [...], "fields": [...]?, "cls": "mod:Qual"?}`` (namedtuple: cls)
``list``       ``{"t": "list", "items": [...]}``
``dict``       ``{"t": "dict", "keys": [...], "items": [...]}``
``object``     ``{"t": "object", "cls": "mod:Qual", "how": "mapping|dataclass|registered",
               "keys": [...], "items": [...], "context": ...}``
=============  ================================================================================

Leaf names join one part per level with ``.``: the index for sequences, the key for mappings, the field for
dataclasses / ``ModelOutput`` / ``BaseOutput``. Types torch's pytree knows (with keys) are flattened with it; types
nobody knows are recorded as ``opaque`` and never crash a recording. Users teach shapetrace a new type with
:func:`register_flattener`.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.utils._pytree as pytree

from . import caches
from ..errors import FlattenError

__all__ = ["register_flattener", "flatten", "flatten_output", "unflatten", "constants_of", "qualname", "import_qualname",
           "tensor_names", "has_opaque_tensors", "spec_leaves", "split_call", "call_values", "const_value", "skeleton",
           "cache_tensor_names"]


@dataclass(frozen=True)
class _Flattener:
    flatten: Callable[[Any], tuple[dict[str, Any], Any]]
    unflatten: Callable[[type, dict[str, Any], Any], Any]


_REGISTRY: dict[str, _Flattener] = {}
_LOCK = threading.Lock()


def qualname(cls: type) -> str:
    """``'package.module:Outer.Inner'`` for a class (importable with :func:`import_qualname`)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def import_qualname(name: str) -> Any:
    module, _, qual = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def register_flattener(cls: type | str, flatten: Callable[[Any], tuple[dict[str, Any], Any]],
                       unflatten: Callable[[type, dict[str, Any], Any], Any]) -> None:
    """Teach shapetrace a type: ``flatten(obj) -> ({field: child}, json_context)``,
    ``unflatten(cls, {field: child}, json_context) -> obj``.

    ``cls`` may be the class or its ``'module:QualName'`` string (so the class's package need not be imported).
    """
    key = cls if isinstance(cls, str) else qualname(cls)
    with _LOCK:
        _REGISTRY[key] = _Flattener(flatten, unflatten)


# Built in: diffusers' DiagonalGaussianDistribution (what vae.encode returns) is fully described by `parameters`.
register_flattener(
    "diffusers.models.autoencoders.vae:DiagonalGaussianDistribution",
    lambda d: ({"parameters": d.parameters}, {"deterministic": bool(d.deterministic)}),
    lambda cls, fields, ctx: cls(fields["parameters"], deterministic=ctx["deterministic"]),
)

_JSON_SCALARS = (type(None), bool, int, float, str)


def _const(value: Any) -> dict:
    if isinstance(value, _JSON_SCALARS):
        if isinstance(value, str) and len(value) > 200:
            return {"t": "const", "type": "str", "value": value[:200], "truncated": True}
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            return {"t": "const", "type": "float", "value": repr(value), "special": True}
        return {"t": "const", "type": type(value).__name__, "value": value}
    if isinstance(value, torch.dtype):
        return {"t": "const", "type": "torch.dtype", "value": str(value)}
    if isinstance(value, torch.device):
        return {"t": "const", "type": "torch.device", "value": str(value)}
    return None  # type: ignore[return-value]


def _shallow_has_tensor(obj: Any) -> bool:
    try:
        own = vars(obj)
    except TypeError:  # a class with __slots__
        slots = [s for c in type(obj).__mro__ for s in getattr(c, "__slots__", ()) if isinstance(s, str)]
        own = {s: getattr(obj, s, None) for s in slots}
    for v in own.values():
        if isinstance(v, torch.Tensor):
            return True
        if isinstance(v, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in v[:8]):
            return True
        if isinstance(v, dict) and any(isinstance(x, torch.Tensor) for x in list(v.values())[:8]):
            return True
    return False


def _join(prefix: str, part: Any) -> str:
    return f"{prefix}.{part}" if prefix else str(part)


def flatten(value: Any, prefix: str = "", out: dict[str, Any] | None = None,
            fields: list[str] | None = None) -> tuple[dict, dict[str, Any]]:
    """Flatten ``value`` into ``(spec, leaves)``; ``leaves`` maps flat name -> tensor (and opaque objects).

    ``fields`` names the items of a top-level tuple (used for ``return_dict=False`` outputs whose fields are
    known from the method's return annotation).
    """
    leaves: dict[str, Any] = {} if out is None else out
    spec = _flatten(value, prefix, leaves, fields)
    return spec, leaves


def flatten_output(value: Any, fields: list[str] | None = None) -> tuple[dict, dict[str, Any]]:
    """Flatten a method's return value; a bare tensor is named ``output``."""
    return flatten(value, "output" if isinstance(value, torch.Tensor) else "", fields=fields)


def _flatten(value: Any, prefix: str, leaves: dict[str, Any], fields: list[str] | None = None) -> dict:
    if isinstance(value, torch.Tensor):
        leaves[prefix] = value
        return {"t": "tensor", "name": prefix}
    const = _const(value)
    if const is not None:
        return const
    cls = type(value)
    key = qualname(cls)
    flattener = _REGISTRY.get(key)
    if flattener is not None:
        children, context = flattener.flatten(value)
        keys = list(children)
        return {"t": "object", "cls": key, "how": "registered", "keys": keys, "context": context,
                "items": [_flatten(children[k], _join(prefix, k), leaves) for k in keys]}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return {"t": "tuple", "cls": key, "fields": list(value._fields),
                "items": [_flatten(v, _join(prefix, f), leaves) for f, v in zip(value._fields, value)]}
    if cls in (tuple, list):
        names = fields if (fields is not None and len(fields) >= len(value)) else None
        node: dict = {"t": cls.__name__,
                      "items": [_flatten(v, _join(prefix, names[i] if names else i), leaves)
                                for i, v in enumerate(value)]}
        if names:
            node["fields"] = list(names[: len(value)])
        return node
    if isinstance(value, collections.OrderedDict) and dataclasses.is_dataclass(value):  # ModelOutput / BaseOutput
        keys = [k for k in value.keys()]
        return {"t": "object", "cls": key, "how": "mapping", "keys": keys,
                "items": [_flatten(value[k], _join(prefix, k), leaves) for k in keys]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        keys = [f.name for f in dataclasses.fields(value) if f.init]
        return {"t": "object", "cls": key, "how": "dataclass", "keys": keys,
                "items": [_flatten(getattr(value, k), _join(prefix, k), leaves) for k in keys]}
    if cls in (dict, collections.OrderedDict) and all(isinstance(k, (str, int)) for k in value):
        keys = list(value.keys())
        return {"t": "dict", "keys": keys, "items": [_flatten(value[k], _join(prefix, k), leaves) for k in keys]}
    if cls is not list and cls is not tuple and (cls in pytree.SUPPORTED_NODES or caches.knows(cls)):
        node = _pytree_node(value, cls, key, prefix, leaves)
        if node is not None:
            return node
    if _attribute_object(value):  # a plain class holding tensors (a pipeline's own cache): by its attributes
        attrs = vars(value)
        return {"t": "object", "cls": key, "how": "attrs", "keys": list(attrs),
                "items": [_flatten(attrs[k], _join(prefix, k), leaves) for k in attrs]}
    leaves[prefix] = value
    return {"t": "opaque", "type": f"{cls.__module__}.{cls.__qualname__}", "name": prefix,
            "tensors": _shallow_has_tensor(value)}


_FOREIGN = ("builtins", "torch", "numpy", "PIL", "typing", "collections", "functools", "threading")


def _attribute_object(value: Any, depth: int = 3) -> bool:
    """An instance of a plain Python class (not torch's, not a module, not callable) whose attributes hold a tensor
    within ``depth`` levels of lists, dicts and other such objects: flattened by its attributes, rebuilt without
    calling ``__init__``."""
    cls = type(value)
    if (isinstance(value, (torch.nn.Module, type)) or callable(value) or getattr(cls, "__slots__", None)
            or cls.__module__.split(".")[0] in _FOREIGN or not hasattr(value, "__dict__")):
        return False
    return any(_holds_tensor(v, depth) for v in list(vars(value).values())[:64])


def _holds_tensor(value: Any, depth: int) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if depth <= 0:
        return False
    if isinstance(value, dict):
        return any(_holds_tensor(v, depth - 1) for v in list(value.values())[:64])
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v, depth - 1) for v in value[:64])
    return _attribute_object(value, depth - 1)


def _pytree_node(value: Any, cls: type, key: str, prefix: str, leaves: dict[str, Any]) -> dict | None:
    """A type torch's pytree knows (with keys), or a cache class transformers registers with it: its leaves by
    name, and its context when JSON can hold it (then ``unflatten`` rebuilds it with the pytree's own function)."""
    handler = pytree.SUPPORTED_NODES[cls]
    if handler.flatten_with_keys_fn is None:
        return None
    try:
        keyed, context = handler.flatten_with_keys_fn(value)
    except Exception:  # a pytree handler that rejects this instance: record opaquely
        return None
    try:
        json.dumps(context)
    except (TypeError, ValueError):
        context = _NO_CONTEXT
    keys = caches.leaf_names(context, len(keyed)) if context is not _NO_CONTEXT else None
    keys = keys or [_pytree_key(k) for k, _ in keyed]
    node = {"t": "object", "cls": key, "how": "pytree", "keys": keys,
            "items": [_flatten(v, _join(prefix, k), leaves) for k, (_, v) in zip(keys, keyed)]}
    if context is not _NO_CONTEXT:
        node["context"] = context
    if caches.is_cache_node(cls):
        node["cache"] = True
    return node


_NO_CONTEXT = object()


def _pytree_key(k: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def spec_leaves(spec: Mapping[str, Any], name: str = "") -> Iterator[tuple[str, dict]]:
    """Every leaf node (``tensor``, ``const``, ``opaque``) of ``spec`` with its flat name, in order.

    The one walk over a spec: names join one part per level with ``.`` (the field, key or index), an ``args``
    node starts each parameter at its name. The nodes are the spec's own dicts (callers may rewrite one in place).
    """
    t = spec["t"]
    if t in ("tensor", "const", "opaque"):
        yield name, spec  # type: ignore[misc]
    elif t == "args":
        for p in spec["params"]:
            yield from spec_leaves(p["node"], p["name"])
    elif t in ("tuple", "list"):
        names = spec.get("fields") or range(len(spec["items"]))
        for n, child in zip(names, spec["items"]):
            yield from spec_leaves(child, _join(name, n))
    elif t in ("dict", "object"):
        for k, child in zip(spec["keys"], spec["items"]):
            yield from spec_leaves(child, _join(name, k))


def cache_tensor_names(spec: Mapping[str, Any]) -> set[str]:
    """Flat names of the tensors inside a cache object (a pytree node flagged ``cache``: a KV cache)."""
    found: set[str] = set()

    def walk(node: Mapping[str, Any], inside: bool) -> None:
        inside = inside or bool(node.get("cache"))
        if node["t"] == "tensor" and inside:
            found.add(node["name"])
        for child in node.get("items", ()):
            walk(child, inside)
        for p in node.get("params", ()):
            walk(p["node"], inside)

    walk(spec, False)
    return found


def tensor_names(spec: Mapping[str, Any]) -> list[str]:
    """Flat names of the tensor leaves of ``spec`` in order."""
    return [node["name"] for _, node in spec_leaves(spec) if node["t"] == "tensor"]


def has_opaque_tensors(spec: Mapping[str, Any]) -> list[str]:
    """Types of opaque leaves that hold tensors (they cannot be exported)."""
    return [node["type"] for _, node in spec_leaves(spec) if node["t"] == "opaque" and node.get("tensors")]


def constants_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Non-tensor leaves of ``spec`` as ``{flat name: value}`` (opaque ones as ``'<type>'``)."""
    return {name: node["value"] if node["t"] == "const" else f"<{node['type']}>"
            for name, node in spec_leaves(spec) if node["t"] != "tensor"}


def skeleton(spec: Mapping[str, Any], as_const: frozenset[str] | set[str] = frozenset(), name: str = "") -> str:
    """The structure of a value or call, without its values: what tells one call variant of a graph from another
    (a decoder's first step with an empty cache, the later ones with a full one). Tensors are ``T`` (``as_const``
    names count as constants: promoted scalars), None is ``N``, other constants ``C``, opaque values their type."""
    def walk(node: Mapping[str, Any], name: str) -> Any:
        t = node["t"]
        if t == "tensor":
            return "C" if name in as_const else "T"
        if t == "const":
            return "N" if node["value"] is None else "C"
        if t == "opaque":
            return node["type"]
        if t == "args":
            return [[p["name"], p["kind"], walk(p["node"], p["name"])] for p in node["params"]]
        if t in ("tuple", "list"):
            names = node.get("fields") or range(len(node["items"]))
            return [t, [walk(c, _join(name, n)) for n, c in zip(names, node["items"])]]
        return [node.get("cls", t), [[k, walk(c, _join(name, k))] for k, c in zip(node["keys"], node["items"])]]

    return json.dumps(walk(spec, name), separators=(",", ":"))


def call_values(input_tree: Mapping[str, Any], leaves: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """A call's ``(parameter name, kind, value)`` rebuilt from its ``args`` spec and leaves (flat name -> value)."""
    return [(param["name"], param["kind"], unflatten(param["node"], leaves)) for param in input_tree["params"]]


def split_call(input_tree: Mapping[str, Any], leaves: Mapping[str, Any],
               values: list[tuple[str, str, Any]] | None = None) -> tuple[list, dict[str, Any]]:
    """Rebuild a call's ``(args, kwargs)`` from its ``args`` spec and its leaves (or from its ``values``)."""
    args: list = []
    kwargs: dict[str, Any] = {}
    for name, kind, value in values if values is not None else call_values(input_tree, leaves):
        if kind == "VAR_POSITIONAL":
            args.extend(value)
        elif kind == "POSITIONAL_ONLY":
            args.append(value)
        else:
            kwargs[name] = value
    return args, kwargs


def const_value(node: Mapping[str, Any]) -> Any:
    typ, value = node["type"], node["value"]
    if typ == "torch.dtype":
        return getattr(torch, value.replace("torch.", ""))
    if typ == "torch.device":
        return torch.device(value)
    if node.get("special"):
        return float(value)
    return value


def unflatten(spec: dict, leaves: Mapping[str, Any], *, as_tuple: bool = False) -> Any:
    """Rebuild a value from ``spec`` and ``leaves`` (flat name -> tensor / opaque object).

    ``as_tuple`` turns a top-level ``ModelOutput``-like object back into the tuple ``return_dict=False`` gives.
    """
    t = spec["t"]
    if t == "tensor":
        try:
            return leaves[spec["name"]]
        except KeyError:
            raise FlattenError(f"no value for tensor {spec['name']!r}") from None
    if t == "const":
        follows = spec.get("follows")  # a number exported as the size of an input's dim (flat.prepare)
        if follows:
            source, dim = follows.rsplit(".", 1)
            if isinstance(leaves.get(source), torch.Tensor):
                return leaves[source].shape[int(dim)]
        return const_value(spec)
    if t == "opaque":
        if spec.get("name") in leaves:
            return leaves[spec["name"]]
        raise FlattenError(
            f"cannot rebuild a value of type {spec['type']} (recorded by type only); register a flattener: "
            f"shapetrace.register_flattener({spec['type'].rsplit('.', 1)[-1]}, flatten, unflatten)")
    items = [unflatten(child, leaves) for child in spec.get("items", ())]
    if t == "list":
        return items
    if t == "tuple":
        if spec.get("cls"):
            return import_qualname(spec["cls"])(*items)
        return tuple(items)
    if t == "dict":
        return dict(zip(spec["keys"], items))
    if t == "object":
        cls = import_qualname(spec["cls"])
        fields = dict(zip(spec["keys"], items))
        if spec["how"] == "registered":
            flattener = _REGISTRY.get(spec["cls"])
            if flattener is None:
                raise FlattenError(f"no flattener registered for {spec['cls']}; call shapetrace.register_flattener")
            obj = flattener.unflatten(cls, fields, spec.get("context"))
        elif spec["how"] == "pytree" and "context" in spec:
            if cls not in pytree.SUPPORTED_NODES:
                caches.knows(cls)
            obj = pytree.SUPPORTED_NODES[cls].unflatten_fn(items, spec["context"])
        elif spec["how"] == "pytree":
            obj = pytree.tree_unflatten(items, pytree.tree_structure(_pytree_probe(cls, fields)))
        elif spec["how"] == "attrs":
            obj = cls.__new__(cls)
            obj.__dict__.update(fields)
        else:
            obj = cls(**fields)
        if as_tuple and hasattr(obj, "to_tuple"):
            return obj.to_tuple()
        return obj
    raise FlattenError(f"unknown spec node type {t!r}")


def _pytree_probe(cls: type, fields: dict) -> Any:
    return cls(**fields)
