"""What a module's method looks like from outside: which methods are graphs, how a call binds to parameter names,
and which ``ModelOutput`` class the method returns. Shared by recording (:mod:`shapetrace._record.proxy`) and serving
(:mod:`shapetrace._serve.serve`), so that both see a call the same way.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import re
import threading
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["MethodInfo", "method_info", "bind_call", "is_recordable", "FRAMEWORK_PREFIXES"]

#: Methods defined on framework base classes (not the model's own compute) are forwarded, never recorded.
FRAMEWORK_PREFIXES = ("torch.", "transformers.modeling_utils", "transformers.generation", "transformers.integrations",
                      "transformers.utils", "diffusers.models.modeling_utils", "diffusers.configuration_utils",
                      "diffusers.loaders", "accelerate.", "peft.", "huggingface_hub.", "safetensors.")

_lock = threading.Lock()
_recordable_cache: dict[tuple[type, str], bool] = {}
_info_cache: dict[tuple[type, str], "MethodInfo"] = {}


def _is_framework(cls: type) -> bool:
    mod = cls.__module__ + "."
    return any(mod.startswith(p) for p in FRAMEWORK_PREFIXES)


def is_recordable(cls: type, name: str) -> bool:
    """Is ``cls.name`` a public method of the model's own code (not of torch / the framework)?"""
    key = (cls, name)
    hit = _recordable_cache.get(key)
    if hit is None:
        hit = False
        if not name.startswith("_"):
            for klass in cls.__mro__:
                if name in klass.__dict__:
                    attr = klass.__dict__[name]
                    hit = inspect.isfunction(attr) and not _is_framework(klass)
                    break
        with _lock:
            _recordable_cache[key] = hit
    return hit


@dataclass(frozen=True)
class MethodInfo:
    """A method's signature (``self`` dropped) and the ``ModelOutput`` class its return annotation names."""

    signature: inspect.Signature | None
    output_class: type | None

    @property
    def output_fields(self) -> list[str] | None:
        """The output class's field names: HF models return ``output.to_tuple()`` when ``return_dict=False``, and
        these names let the tuple's items keep their field names (``sample``) instead of positions."""
        if self.output_class is None:
            return None
        return [f.name for f in dataclasses.fields(self.output_class)]


def method_info(cls: type, method: str) -> MethodInfo:
    """The (cached) :class:`MethodInfo` of ``cls.method``."""
    key = (cls, method)
    info = _info_cache.get(key)
    if info is None:
        fn = inspect.getattr_static(cls, method, None)
        if isinstance(fn, (staticmethod, classmethod)):
            fn = fn.__func__
        sig = None
        try:
            sig = inspect.signature(fn)
            params = list(sig.parameters.values())
            if params and params[0].name == "self":
                sig = sig.replace(parameters=params[1:])
        except (TypeError, ValueError):
            pass
        info = MethodInfo(sig, _output_class(fn))
        with _lock:
            _info_cache[key] = info
    return info


def _output_class(fn: Any) -> type | None:
    """The ModelOutput / BaseOutput class named in ``fn``'s return annotation, if exactly one."""
    candidates: list[type] = []

    def collect(tp: Any) -> None:
        if isinstance(tp, type):
            if issubclass(tp, collections.OrderedDict) and dataclasses.is_dataclass(tp):
                candidates.append(tp)
            return
        for arg in getattr(tp, "__args__", ()) or ():
            collect(arg)

    try:
        hints = typing.get_type_hints(fn)
        collect(hints.get("return"))
    except Exception:  # unresolvable string annotations: look the names up in the function's globals
        ann = getattr(fn, "__annotations__", {}).get("return")
        if isinstance(ann, str):
            glb = getattr(fn, "__globals__", {})
            for ident in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", ann):
                collect(glb.get(ident))
        elif ann is not None:
            collect(ann)
    unique = list(dict.fromkeys(candidates))
    return unique[0] if len(unique) == 1 else None


def bind_call(sig: inspect.Signature | None, args: tuple, kwargs: dict) -> list[tuple[str, str, Any]]:
    """``[(name, kind, value)]`` for a call, positional args bound to their real parameter names."""
    if sig is not None:
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError:
            bound = None
        if bound is not None:
            out = []
            for name, value in bound.arguments.items():
                kind = sig.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    out.extend((k, "VAR_KEYWORD", v) for k, v in value.items())
                else:
                    out.append((name, kind.name, value))
            return out
    return ([("args", "VAR_POSITIONAL", tuple(args))] if args else []) + \
        [(k, "VAR_KEYWORD", v) for k, v in kwargs.items()]
