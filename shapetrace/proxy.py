"""The transparent recording proxy, and ``record()`` which installs it.

A :class:`RecordingProxy` stands where a module was (``pipe.unet``) and forwards everything to it: attribute
reads and writes, ``.config``, ``.dtype``, ``.to()`` and ``__class__`` (so ``isinstance(proxy, ControlNetModel)``
holds). Everything the proxy owns lives under the ``_st_`` prefix. Calls of ``forward`` (through ``__call__``)
and of the module's own public methods (``vae.decode``) that receive a tensor are recorded into a shared
:class:`Recorder`; the call itself runs untouched, so outputs are bit-identical.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
import typing
import weakref
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator

import torch

from . import tree
from .errors import ModuleNotFoundInObject, RecordingError
from .recording import GraphRecord, Recording, TensorSpec
from .walker import _select, find_module_paths, format_path, replace

__all__ = ["RecordingProxy", "record", "recording_for", "Recorder"]

# Methods defined on framework base classes (not the model's own compute) are forwarded, never recorded.
_FRAMEWORK_PREFIXES = ("torch.", "transformers.modeling_utils", "transformers.generation", "transformers.integrations",
                       "transformers.utils", "diffusers.models.modeling_utils", "diffusers.configuration_utils",
                       "diffusers.loaders", "accelerate.", "peft.", "huggingface_hub.", "safetensors.")


def _is_framework(cls: type) -> bool:
    mod = cls.__module__ + "."
    return any(mod.startswith(p) for p in _FRAMEWORK_PREFIXES)


_method_cache: dict[tuple[type, str], Any] = {}
_cache_lock = threading.Lock()


def _recordable(cls: type, name: str) -> bool:
    """Is ``cls.name`` a public method of the model's own code (not of torch / the framework)?"""
    key = (cls, name)
    hit = _method_cache.get(key)
    if hit is None:
        hit = False
        if not name.startswith("_"):
            for klass in cls.__mro__:
                if name in klass.__dict__:
                    attr = klass.__dict__[name]
                    hit = inspect.isfunction(attr) and not _is_framework(klass)
                    break
        with _cache_lock:
            _method_cache[key] = hit
    return hit


@dataclass(frozen=True)
class _MethodInfo:
    signature: inspect.Signature | None
    output_fields: list[str] | None


_info_cache: dict[tuple[type, str], _MethodInfo] = {}


def _method_info(cls: type, method: str) -> _MethodInfo:
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
        info = _MethodInfo(sig, _output_fields(fn))
        with _cache_lock:
            _info_cache[key] = info
    return info


def _output_fields(fn: Any) -> list[str] | None:
    """Field names of the ModelOutput / BaseOutput class named in ``fn``'s return annotation (if exactly one).

    HF models return ``output.to_tuple()`` when ``return_dict=False``; these names let the tuple's items keep
    their field names (``sample``, ``down_block_res_samples``) instead of positions.
    """
    import collections
    import dataclasses

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
    if len(unique) != 1:
        return None
    return [f.name for f in dataclasses.fields(unique[0])]


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


def _spec_of(t: torch.Tensor) -> TensorSpec:
    vr = None
    if (not t.is_floating_point() and not t.is_complex()) and t.numel() > 0:
        vr = (float(t.min()), float(t.max()))
    return TensorSpec(tuple(t.shape), t.dtype, str(t.device), vr)


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy (a channels_last input would otherwise give PyTorch a different kernel
    than every runtime sees, and a reference that differs by ~1e-4)."""
    with torch.inference_mode(False), torch.no_grad():
        return t.detach().to("cpu", copy=True).contiguous()


class _GraphBuilder:
    """Mutable per-graph accumulator; turned into a frozen :class:`GraphRecord` by ``freeze``."""

    __slots__ = ("name", "module_path", "method", "module_class", "calls", "input_tree", "output_tree",
                 "input_specs", "output_specs", "input_shapes", "output_shapes", "consts", "examples")

    def __init__(self, name: str, module_path: str, method: str, module_class: str) -> None:
        self.name, self.module_path, self.method, self.module_class = name, module_path, method, module_class
        self.calls = 0
        self.input_tree: dict | None = None
        self.output_tree: dict | None = None
        self.input_specs: dict[str, TensorSpec] = {}
        self.output_specs: dict[str, TensorSpec] = {}
        self.input_shapes: dict[str, dict] = {}
        self.output_shapes: dict[str, dict] = {}
        self.consts: dict[str, dict] = {}  # flat name -> {repr: value} of distinct values seen
        self.examples: dict[str, Any] = {}

    def freeze(self) -> GraphRecord:
        def specs(first: dict[str, TensorSpec], seen: dict[str, dict]) -> MappingProxyType:
            out = {}
            for n, s in first.items():
                shapes = tuple(seen.get(n, {s.shape: None}))
                varying = tuple(i for i in range(len(s.shape))
                                if len({sh[i] for sh in shapes if len(sh) == len(s.shape)}) > 1)
                out[n] = TensorSpec(s.shape, s.dtype, s.device, s.value_range, shapes, varying)
            return MappingProxyType(out)

        varying_consts = {k: tuple(v.values()) for k, v in self.consts.items() if len(v) > 1}
        return GraphRecord(self.name, self.module_path, self.method, self.module_class, self.calls,
                           specs(self.input_specs, self.input_shapes), specs(self.output_specs, self.output_shapes),
                           self.input_tree or {"t": "args", "params": []}, self.output_tree or {"t": "const",
                                                                                                  "type": "NoneType",
                                                                                                  "value": None},
                           MappingProxyType(varying_consts), MappingProxyType(dict(self.examples)))


class Recorder:
    """Collects the calls of every proxy of one ``record`` block (thread-safe)."""

    def __init__(self) -> None:
        self._graphs: dict[str, _GraphBuilder] = {}
        self._lock = threading.Lock()

    def snapshot(self) -> MappingProxyType:
        with self._lock:
            return MappingProxyType({n: b.freeze() for n, b in self._graphs.items()})

    def call(self, proxy_path: str, module: torch.nn.Module, method: str, fn: Callable, args: tuple,
             kwargs: dict) -> Any:
        cls = type(module)
        info = _method_info(cls, method)
        bound = bind_call(info.signature, args, kwargs)
        leaves: dict[str, Any] = {}
        params = [{"name": n, "kind": k, "node": tree._flatten(v, n, leaves)} for n, k, v in bound]
        tensors = {n: v for n, v in leaves.items() if isinstance(v, torch.Tensor)}
        if not tensors:  # not a tensor call (e.g. enable_slicing()): not a graph
            return fn(*args, **kwargs)
        output = fn(*args, **kwargs)
        name = proxy_path if method == "forward" else f"{proxy_path}.{method}"
        out_tree, out_leaves = tree.flatten_output(output, info.output_fields)
        with self._lock:
            b = self._graphs.get(name)
            if b is None:
                b = self._graphs[name] = _GraphBuilder(name, proxy_path, method, tree.qualname(cls))
            first = b.calls == 0
            b.calls += 1
            if first:
                b.input_tree = {"t": "args", "params": params}
                b.output_tree = out_tree
                b.input_specs = {n: _spec_of(t) for n, t in tensors.items()}
                b.output_specs = {n: _spec_of(t) for n, t in out_leaves.items() if isinstance(t, torch.Tensor)}
                b.examples = {n: (_copy(v) if isinstance(v, torch.Tensor) else v) for n, v in leaves.items()}
            for n, t in tensors.items():
                b.input_shapes.setdefault(n, {})[tuple(t.shape)] = None
            for n, t in out_leaves.items():
                if isinstance(t, torch.Tensor):
                    b.output_shapes.setdefault(n, {})[tuple(t.shape)] = None
            for p in params:
                _collect_consts(p["node"], p["name"], b.consts)
        return output


def _collect_consts(node: dict, name: str, into: dict) -> None:
    t = node["t"]
    if t == "const":
        seen = into.setdefault(name, {})
        if len(seen) < 16:
            seen.setdefault(repr(node["value"]), node["value"])
    elif t in ("tuple", "list"):
        for i, child in enumerate(node["items"]):
            _collect_consts(child, f"{name}.{(node.get('fields') or range(len(node['items'])))[i]}", into)
    elif t in ("dict", "object"):
        for k, child in zip(node["keys"], node["items"]):
            _collect_consts(child, f"{name}.{k}", into)


class RecordingProxy:
    """Stands in for a module: forwards everything, records tensor calls. See the module docstring."""

    __slots__ = ("_st_wrapped", "_st_path", "_st_recorder", "__weakref__")
    _st_kind = "recording"

    def __init__(self, wrapped: torch.nn.Module, path: str, recorder: Recorder) -> None:
        object.__setattr__(self, "_st_wrapped", wrapped)
        object.__setattr__(self, "_st_path", path)
        object.__setattr__(self, "_st_recorder", recorder)

    # ---- identity ------------------------------------------------------------------------------------
    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(proxy, UNet2DConditionModel) holds
        return type(object.__getattribute__(self, "_st_wrapped"))

    @property
    def __wrapped__(self) -> torch.nn.Module:
        return object.__getattribute__(self, "_st_wrapped")

    def __repr__(self) -> str:
        wrapped = object.__getattribute__(self, "_st_wrapped")
        path = object.__getattribute__(self, "_st_path")
        recorder = object.__getattribute__(self, "_st_recorder")
        with recorder._lock:
            calls = sum(b.calls for b in recorder._graphs.values() if b.module_path == path)
        return f"<RecordingProxy {path!r} for {type(wrapped).__name__}, {calls} calls>"

    def __copy__(self):
        raise RecordingError(f"cannot copy {self!r} while recording; copy the pipeline outside the record() block")

    def __deepcopy__(self, memo):
        raise RecordingError(f"cannot deepcopy {self!r} while recording; copy the pipeline outside the record() block")

    def __reduce_ex__(self, protocol):
        raise RecordingError(f"cannot pickle {self!r} while recording; pickle the pipeline outside the record() block")

    # ---- calls ---------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        wrapped = object.__getattribute__(self, "_st_wrapped")
        return object.__getattribute__(self, "_st_recorder").call(
            object.__getattribute__(self, "_st_path"), wrapped, "forward", wrapped, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        wrapped = object.__getattribute__(self, "_st_wrapped")
        value = getattr(wrapped, name)
        if not callable(value) or getattr(value, "__self__", None) is not wrapped:
            return value
        if name == "forward" or _recordable(type(wrapped), name):
            recorder = object.__getattribute__(self, "_st_recorder")
            path = object.__getattribute__(self, "_st_path")

            def recorded(*args: Any, **kwargs: Any) -> Any:
                return recorder.call(path, wrapped, name, value, args, kwargs)

            recorded.__name__ = name
            recorded.__wrapped__ = value  # type: ignore[attr-defined]
            return recorded

        def forwarded(*args: Any, **kwargs: Any) -> Any:  # .to() / .eval() return the proxy, not the module
            result = value(*args, **kwargs)
            return self if result is wrapped else result

        forwarded.__name__ = name
        forwarded.__wrapped__ = value  # type: ignore[attr-defined]
        return forwarded

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_st_wrapped"), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(object.__getattribute__(self, "_st_wrapped"), name)

    def __dir__(self) -> Iterable[str]:
        return dir(object.__getattribute__(self, "_st_wrapped"))

    # container modules (ModuleList, Sequential, ModuleDict)
    def __len__(self) -> int:
        return len(object.__getattribute__(self, "_st_wrapped"))

    def __iter__(self) -> Iterator:
        return iter(object.__getattribute__(self, "_st_wrapped"))

    def __getitem__(self, key: Any) -> Any:
        return object.__getattribute__(self, "_st_wrapped")[key]

    def __contains__(self, key: Any) -> bool:
        return key in object.__getattribute__(self, "_st_wrapped")

    def __bool__(self) -> bool:
        return bool(object.__getattribute__(self, "_st_wrapped"))

    def __eq__(self, other: Any) -> bool:
        wrapped = object.__getattribute__(self, "_st_wrapped")
        return other is self or other is wrapped

    def __hash__(self) -> int:
        return hash(object.__getattribute__(self, "_st_wrapped"))


# ----------------------------------------------------------------------------------------------- record()
_active: set[int] = set()
_last: dict[int, tuple[Any, Recording]] = {}
_state_lock = threading.Lock()


def _remember(obj: Any, rec: Recording) -> None:
    key = id(obj)
    try:
        ref: Any = weakref.ref(obj, lambda _r, k=key: _last.pop(k, None))
    except TypeError:
        ref = lambda o=obj: o  # noqa: E731 - objects that refuse weak references are kept alive
    with _state_lock:
        _last[key] = (ref, rec)


def recording_for(obj: Any) -> Recording:
    """The last recording made for ``obj`` (raises :class:`RecordingError` if there is none)."""
    with _state_lock:
        entry = _last.get(id(obj))
    if entry is None or entry[0]() is not obj:
        raise RecordingError(
            f"no recording for this {type(obj).__name__}; run it once inside `with shapetrace.record(obj): ...` "
            f"or pass recording=... explicitly")
    return entry[1]


@contextlib.contextmanager
def record(obj: Any, include: Iterable[str] | str | None = None,
           exclude: Iterable[str] | str | None = None) -> Iterator[Recording]:
    """Swap every module in ``obj`` for a recording proxy for the duration of the block.

    >>> with shapetrace.record(pipe) as rec:
    ...     pipe("a chef", image)
    >>> rec.graphs["unet"].inputs["sample"].shape

    Originals are put back on exit, also when the block raises or is interrupted.
    """
    found = find_module_paths(obj)
    for path, module in found:
        kind = getattr(type(module), "_st_kind", None)
        if kind == "recording":
            raise RecordingError(f"{format_path(path)!r} is already being recorded: record() blocks on the same "
                                 f"object cannot be nested")
        if kind is not None:
            raise RecordingError(f"{format_path(path)!r} is served by shapetrace.load(): record the original "
                                 f"pipeline, outside the load() block (or after runtime.close())")
    found = _select(found, include, exclude)
    if not found:
        raise ModuleNotFoundInObject(
            f"no torch.nn.Module found in this {type(obj).__name__}; record() needs an object that holds modules "
            f"as attributes, list items or dict values")
    with _state_lock:
        if id(obj) in _active:
            raise RecordingError(f"this {type(obj).__name__} is already being recorded: record() blocks on the "
                                 f"same object cannot be nested")
        _active.add(id(obj))
    recorder = Recorder()
    rec = Recording(object_class=tree.qualname(type(obj)), _source=recorder)
    installed: list = []
    try:
        for path, module in found:
            replace(obj, path, RecordingProxy(module, format_path(path), recorder))
            installed.append((path, module))
        yield rec
    finally:
        try:
            for path, module in reversed(installed):
                replace(obj, path, module)
        finally:
            rec._finish()
            with _state_lock:
                _active.discard(id(obj))
            if rec.graphs:
                _remember(obj, rec)
