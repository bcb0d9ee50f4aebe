"""Find the ``torch.nn.Module`` objects inside any Python object, and swap them in place.

A *path* is a tuple of small frozen keys (:class:`Attr`, :class:`Index`, :class:`Key`) that prints the way
Python spells it (``body_estimation.model``, ``nets[0]``, ``models['x']``) and resolves back to the object.

The walk is breadth first, so the shortest path to a module wins, ties broken alphabetically. It reads only
instance ``__dict__`` entries, ``__slots__`` and container items -- never properties -- so nothing is loaded or
computed by looking. It stops at the first module on each path (the module's children belong to it), visits every
object once (cycles are fine) and skips leaf-like values (tensors, arrays, images, tokenizers, schedulers) cheaply.
"""

from __future__ import annotations

import fnmatch
import sys
from collections import deque
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, Union

import torch

from ..errors import ModuleNotFoundInObject, RecordingError

__all__ = ["Attr", "Index", "Key", "Path", "find_modules", "find_module_paths", "find_module_aliases", "format_path",
           "parse_path", "resolve", "replace"]


@dataclass(frozen=True)
class Attr:
    """An attribute step: ``.name``."""

    name: str

    def __str__(self) -> str:
        return f".{self.name}"


@dataclass(frozen=True)
class Index:
    """A sequence item step: ``[i]``."""

    index: int

    def __str__(self) -> str:
        return f"[{self.index}]"


@dataclass(frozen=True)
class Key:
    """A mapping item step: ``['key']``."""

    key: Union[str, int]

    def __str__(self) -> str:
        return f"[{self.key!r}]"


Step = Union[Attr, Index, Key]
Path = tuple  # tuple[Step, ...]

_MAX_DEPTH = 8
_MAX_NODES = 50_000
_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None), range, slice)
# Packages whose objects never hold a torch module: skipped without looking inside.
_LEAF_PACKAGES = frozenset({"numpy", "PIL", "tokenizers", "scipy", "pandas", "logging", "threading", "typing",
                            "re", "pathlib", "enum", "inspect", "importlib", "safetensors", "huggingface_hub"})
# Classes (by qualified name, checked only when their package is imported) whose instances hold no modules.
_LEAF_BASES = (
    ("transformers", "transformers.tokenization_utils_base", "PreTrainedTokenizerBase"),
    ("transformers", "transformers.image_processing_base", "ImageProcessingMixin"),
    ("transformers", "transformers.feature_extraction_utils", "FeatureExtractionMixin"),
    ("transformers", "transformers.processing_utils", "ProcessorMixin"),
    ("diffusers", "diffusers.schedulers.scheduling_utils", "SchedulerMixin"),
)


def format_path(path: Sequence[Step]) -> str:
    """Render a path: ``(Attr('body_estimation'), Attr('model'))`` -> ``'body_estimation.model'``."""
    text = "".join(str(step) for step in path)
    return text[1:] if text.startswith(".") else text


def parse_path(text: str) -> tuple:
    """Parse a rendered path back into steps (inverse of :func:`format_path`)."""
    import ast
    import re

    steps: list = []
    pos = 0
    # ".0": a child as torch's named_modules() names it (a ModuleList item, reached as an attribute)
    token = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\.(\d+)|\[(-?\d+)\]|\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]")
    while pos < len(text):
        m = token.match(text, pos)
        if m is None:
            raise ValueError(f"cannot parse module path {text!r} at position {pos}")
        if m.group(1) is not None or m.group(2) is not None:
            steps.append(Attr(m.group(1) or m.group(2)))
        elif m.group(3) is not None:
            steps.append(Index(int(m.group(3))))
        else:
            steps.append(Key(ast.literal_eval(m.group(4))))
        pos = m.end()
    return tuple(steps)


def _leaf_bases() -> tuple[type, ...]:
    found = []
    for package, module, name in _LEAF_BASES:
        if package in sys.modules:
            mod = sys.modules.get(module)
            cls = getattr(mod, name, None) if mod is not None else None
            if isinstance(cls, type):
                found.append(cls)
    return tuple(found)


def _is_leaf(value: Any, leaf_bases: tuple[type, ...]) -> bool:
    if isinstance(value, _SCALARS) or isinstance(value, (torch.Tensor, torch.dtype, torch.device, torch.Generator)):
        return True
    cls = type(value)
    if isinstance(value, type) or cls.__module__ in ("builtins",) and not isinstance(value, (list, tuple, dict, set, frozenset)):
        return True
    if callable(value) and not hasattr(value, "__dict__") and not isinstance(value, (list, tuple, dict)):
        return True
    package = cls.__module__.split(".", 1)[0]
    if package in _LEAF_PACKAGES:
        return True
    return bool(leaf_bases) and isinstance(value, leaf_bases)


def _children(value: Any) -> Iterator[tuple[Step, Any]]:
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield Index(i), item
        return
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items() if isinstance(k, (str, int)) and not isinstance(k, bool)]
        for k, v in sorted(items, key=lambda kv: (isinstance(kv[0], str), str(kv[0]))):
            yield Key(k), v
        return
    if isinstance(value, (set, frozenset)):
        return
    attrs: dict[str, Any] = {}
    try:
        own = object.__getattribute__(value, "__dict__")
    except AttributeError:
        own = {}
    if isinstance(own, dict):
        attrs.update(own)
    for klass in type(value).__mro__:
        for slot in getattr(klass, "__slots__", ()) or ():
            if isinstance(slot, str) and not slot.startswith("__") and slot not in attrs:
                try:
                    attrs[slot] = object.__getattribute__(value, slot)
                except AttributeError:
                    pass
    names = [n for n in attrs if isinstance(n, str) and not (n.startswith("__") and n.endswith("__"))]
    # public names before private ones, each alphabetically
    for name in sorted(names, key=lambda n: (n.startswith("_"), n)):
        yield Attr(name), attrs[name]


def find_module_paths(obj: Any) -> list[tuple[tuple, torch.nn.Module]]:
    """Every module reachable from ``obj`` as ``(path, module)``, shortest path first, each module once."""
    return _walk(obj)[0]


def find_module_aliases(obj: Any) -> dict[int, list[tuple]]:
    """For each module reachable by more than one path (a combined pipeline's ``unet`` that is also its
    ``decoder_pipe.unet``): ``{id(module): [the other paths]}``. :func:`find_module_paths` gives its shortest."""
    return _walk(obj)[1]


def _walk(obj: Any) -> tuple[list[tuple[tuple, torch.nn.Module]], dict[int, list[tuple]]]:
    if isinstance(obj, torch.nn.Module):
        raise ModuleNotFoundInObject(
            f"{type(obj).__name__} is itself a torch.nn.Module; pass the object that holds it "
            f"(e.g. a pipeline), or wrap it: shapetrace.record({{'model': module}})")
    leaf_bases = _leaf_bases()
    seen: set[int] = {id(obj)}
    found: list[tuple[tuple, torch.nn.Module]] = []
    modules: set[int] = set()
    aliases: dict[int, list[tuple]] = {}
    queue: deque = deque([((), obj)])
    visited = 0
    while queue:
        path, value = queue.popleft()
        visited += 1
        if visited > _MAX_NODES or len(path) >= _MAX_DEPTH:
            continue
        level: list[tuple[tuple, Any]] = []
        try:
            children = list(_children(value))
        except Exception as e:  # noqa: BLE001 -- an object that refuses introspection: its modules stay unfound
            warnings.warn(f"cannot look inside {format_path(path) or 'the object'} ({type(value).__name__}: "
                          f"{type(e).__name__}: {e}); modules held there are not found", stacklevel=3)
            continue
        for step, child in children:
            if id(child) in seen:
                if isinstance(child, torch.nn.Module) and id(child) in modules and len(aliases) < _MAX_NODES:
                    aliases.setdefault(id(child), []).append(path + (step,))
                continue
            child_path = path + (step,)
            if isinstance(child, torch.nn.Module):
                seen.add(id(child))
                modules.add(id(child))
                found.append((child_path, child))
            elif not _is_leaf(child, leaf_bases):
                seen.add(id(child))
                level.append((child_path, child))
        queue.extend(level)
    # the walk is breadth first, so the first path met is a shortest one; ties are broken alphabetically
    everything = {id(m): [p] + aliases.get(id(m), []) for p, m in found}
    by_id = {id(m): m for _, m in found}
    found, aliases = [], {}
    for key, paths in everything.items():
        paths.sort(key=lambda p: (len(p), format_path(p)))
        found.append((paths[0], by_id[key]))
        if len(paths) > 1:
            aliases[key] = paths[1:]
    found.sort(key=lambda pm: (len(pm[0]), format_path(pm[0])))
    return found, aliases


def _select(found: list, include: Iterable[str] | None, exclude: Iterable[str] | None) -> list:
    def matches(path_text: str, pattern: str) -> bool:
        return (fnmatch.fnmatchcase(path_text, pattern) or path_text == pattern)

    available = ", ".join(format_path(p) for p, _ in found) or "(none)"
    selected = found
    for what, patterns, keep in (("include", include, True), ("exclude", exclude, False)):
        if patterns is None:
            continue
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        for pattern in patterns:
            if not any(matches(format_path(p), pattern) for p, _ in found):
                raise ModuleNotFoundInObject(
                    f"{what} pattern {pattern!r} matched no module; modules found: {available}")
        selected = [(p, m) for p, m in selected
                    if any(matches(format_path(p), pat) for pat in patterns) == keep]
    return selected


def find_modules(obj: Any, include: Iterable[str] | str | None = None,
                 exclude: Iterable[str] | str | None = None) -> dict[str, torch.nn.Module]:
    """The ``torch.nn.Module`` objects inside ``obj``, keyed by dotted path.

    ``include`` / ``exclude`` take paths or glob patterns (``"vae"``, ``"text_encoder*"``); a pattern that
    matches nothing raises :class:`ModuleNotFoundInObject` listing the paths that exist.
    """
    found = _select(find_module_paths(obj), include, exclude)
    return {format_path(p): m for p, m in found}


def resolve(obj: Any, path: Sequence[Step]) -> tuple[Any, Step, Any]:
    """Follow ``path`` from ``obj``; return ``(parent, last_step, value)``."""
    if not path:
        raise ValueError("empty path")
    parent = obj
    for step in path[:-1]:
        parent = _get(parent, step)
    last = path[-1]
    return parent, last, _get(parent, last)


def _get(parent: Any, step: Step) -> Any:
    if isinstance(step, Attr):
        own = getattr(parent, "__dict__", None)
        if isinstance(own, dict) and step.name in own:
            return own[step.name]
        children = _submodules(parent)
        if children is not None and step.name in children:  # a module's child (model.text_decoder)
            return children[step.name]
        return object.__getattribute__(parent, step.name)
    if isinstance(step, Index):
        return parent[step.index]
    return parent[step.key]


def _submodules(parent: Any) -> dict | None:
    """A module's ``_modules`` (where its children live, out of ``__dict__``), or None for other objects."""
    if isinstance(parent, torch.nn.Module):
        own = getattr(parent, "__dict__", {})
        children = own.get("_modules")
        return children if isinstance(children, dict) else None
    return None


def replace(obj: Any, path: Sequence[Step], new: Any) -> Any:
    """Put ``new`` at ``path`` without running the parent's ``__setattr__``; return the value it replaced.

    Writing straight into the instance ``__dict__`` keeps e.g. diffusers' ``DiffusionPipeline.__setattr__``
    from rewriting ``pipe.config`` when a component is swapped.
    """
    parent, last, old = resolve(obj, path)
    if isinstance(last, Attr):
        own = getattr(parent, "__dict__", None)
        children = _submodules(parent)
        if isinstance(own, dict) and last.name in own:
            own[last.name] = new
        elif children is not None and last.name in children:
            children[last.name] = new
        else:
            object.__setattr__(parent, last.name, new)
    elif isinstance(parent, tuple):
        raise RecordingError(
            f"the module at {format_path(path)!r} sits in a tuple, which cannot be changed in place; "
            f"exclude it (exclude=[{format_path(path)!r}]) or hold it in a list")
    elif isinstance(last, Index):
        parent[last.index] = new
    else:
        parent[last.key] = new
    return old
