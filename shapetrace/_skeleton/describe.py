"""Write an object's skeleton: a JSON tree of what it is made of, every module weight left out.

Each value becomes one node, ``{"k": kind, ...}``, tried in this order:

========== ===============================================================================================
``v``      ``None``, ``bool``, ``int``, ``float``, ``str``
``ref``    an object met before (shared parts stay shared; cycles close)
``dtype``  ``torch.dtype``; ``device``: ``torch.device``; ``enum``: an ``Enum`` member; ``class``: a class;
           ``path``: a ``pathlib`` path
``list``   ``list`` / ``tuple`` / ``set`` / ``frozenset``; ``dict``: a ``dict`` (or subclass, rebuilt by calling it)
``tensor`` a tensor or numpy array outside any module, up to 64 Ki elements, by value
``model``  a module with a Hugging Face config (``config.save_pretrained`` or ``save_config`` + ``from_config``):
           the config files; rebuilt from them with every parameter on ``meta``
``pretrained`` anything else with ``save_pretrained`` and a class ``from_pretrained`` (tokenizers, processors,
           schedulers, generation configs): its own files
``module`` any other ``torch.nn.Module``: its class, plain attributes, children, and each parameter's and buffer's
           shape and dtype (never its values)
``obj``    any other object with a ``__dict__``: its class and attributes (rebuilt without running ``__init__``)
========== ===============================================================================================

A value none of these describe (a function, an open file, a lock) fails the skeleton with :class:`SkeletonError`
naming its path -- unless it is a private attribute (``_name``) that is not a container, which is left out and
listed in ``dropped`` (a private dict or list, such as a pipeline's config, is never left out).
"""

from __future__ import annotations

import enum
import inspect
import math
import re
import shutil
from pathlib import Path, PurePath
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .._core import diskspace
from ..errors import SkeletonError
from . import weights as weight_files
from .classes import name_of

__all__ = ["describe", "describe_or_why", "SKELETON_DIR", "MODULE_STATE", "MAX_ELEMENTS"]

#: the folder, inside the export, that holds the files of the object's Hugging Face parts
SKELETON_DIR = "skeleton"

#: ``nn.Module`` bookkeeping a ``module`` node describes itself (parameters, buffers, children) or leaves out (hooks)
MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training"})
MAX_ELEMENTS = 1 << 16


class _Describer:
    def __init__(self, folder: Path, rel: str, weights: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        self.folder, self.rel = folder, rel
        self.weights = weights
        self.ids: dict[int, int] = {}
        self.alive: list[Any] = []  # keeps every described object alive so that ids stay unique
        self.dropped: list[str] = []
        self.dirs = 0

    def node(self, v: Any, where: str) -> dict:
        if v is None or isinstance(v, (bool, int, str)) and type(v) in (bool, int, str):
            return {"k": "v", "v": v}
        if type(v) is float:
            return {"k": "v", "v": v} if math.isfinite(v) else {"k": "float", "v": repr(v)}
        if id(v) in self.ids:
            return {"k": "ref", "id": self.ids[id(v)]}
        simple = _simple(v, where)
        if simple is not None:
            return simple
        n = self.ids[id(v)] = len(self.ids)
        self.alive.append(v)
        for test, make in self._kinds():
            if test(v):
                return {"id": n, **make(v, where)}
        raise SkeletonError(f"{where} is a {type(v).__name__}, which a skeleton cannot describe; leave it out of the "
                            f"object (or keep it in a private attribute, _name)")

    def _kinds(self) -> list[tuple[Callable[[Any], bool], Callable[[Any, str], dict]]]:
        return [
            (lambda v: type(v) in (list, tuple, set, frozenset), self._sequence),
            (lambda v: isinstance(v, dict), self._mapping),
            (lambda v: isinstance(v, (torch.Tensor, np.ndarray)), _tensor),
            (lambda v: isinstance(v, torch.nn.Module) and _config_route(v) is not None, self._model),
            (lambda v: not isinstance(v, torch.nn.Module) and _pretrained(v), self._pretrained),
            (lambda v: isinstance(v, torch.nn.Module), self._module),
            (_plain_object, self._object),
        ]

    # ---- containers ------------------------------------------------------------------------------------
    def _sequence(self, v: Any, where: str) -> dict:
        items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
        return {"k": type(v).__name__, "items": [self.node(x, f"{where}[{i}]") for i, x in enumerate(items)]}

    def _mapping(self, v: dict, where: str) -> dict:
        out: dict[str, Any] = {"k": "dict", "items": [[self.node(k, f"{where} key {k!r}"), self.node(x, f"{where}[{k!r}]")]
                                                      for k, x in v.items()]}
        if type(v) is not dict:
            out["cls"] = name_of(type(v), where)
        return out

    # ---- Hugging Face parts ----------------------------------------------------------------------------
    def _dir(self, where: str) -> tuple[Path, str]:
        self.dirs += 1
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", where.partition(".")[2] or where)[-60:].strip("._") or "root"
        rel = f"{self.rel}/{self.dirs:02d}-{slug}"
        path = self.folder / rel
        path.mkdir(parents=True, exist_ok=True)
        return path, rel

    def _pretrained(self, v: Any, where: str) -> dict:
        """Its own files, and its plain public attributes: a round trip through them may drop some (a generation
        config's extra token ids), which the rebuild puts back where they differ."""
        path, rel = self._dir(where)
        v.save_pretrained(path)
        attrs = {k: _plain(x) for k, x in vars(v).items() if not k.startswith("_")}
        return {"k": "pretrained", "cls": name_of(type(v), where), "dir": rel,
                "attrs": {k: x for k, x in attrs.items() if x is not None}}

    def _model(self, v: torch.nn.Module, where: str) -> dict:
        route = _config_route(v)
        path, rel = self._dir(where)
        if route == "transformers":
            v.config.save_pretrained(path)
            config_cls = name_of(type(v.config), f"{where}.config")
        else:
            v.save_config(path)
            config_cls = None
        dtypes = {p.dtype for p in v.parameters()}
        attrs = {}
        for k, x in vars(v).items():
            if k in MODULE_STATE or k == "config" or k.startswith("_") or isinstance(x, torch.nn.Module):
                continue
            try:
                attrs[k] = self.node(x, f"{where}.{k}")
            except SkeletonError:
                self.dropped.append(f"{where}.{k}")
        return {"k": "model", "cls": name_of(type(v), where), "route": route, "config_cls": config_cls, "dir": rel,
                "dtype": str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else None,
                "training": v.training, "attrs": attrs, **self._weights(v, path, rel)}

    def _weights(self, v: torch.nn.Module, path: Path | None, rel: str | None) -> dict:
        """``{"weights": file, "aliases": ...}`` for a module with no exported graph, else nothing."""
        tensors = self.weights.get(id(v))
        if not tensors:
            return {}
        if path is None:
            path, rel = self._dir(f"{type(v).__name__}.weights")
        return {"weights": f"{rel}/weights.safetensors", "aliases": weight_files.save(tensors, path / "weights.safetensors")}

    # ---- anything else -----------------------------------------------------------------------------------
    def _module(self, v: torch.nn.Module, where: str) -> dict:
        out = self._object(v, where, skip=MODULE_STATE)
        out["k"] = "module"
        out["training"] = v.training
        out["params"] = {k: _spec(p, requires_grad=True) for k, p in v._parameters.items()}
        persistent = set(v._buffers) - set(v._non_persistent_buffers_set)
        out["buffers"] = {k: {**_spec(b), "persistent": k in persistent} for k, b in v._buffers.items()}
        out["children"] = {k: self.node(c, f"{where}.{k}") for k, c in v._modules.items()}
        out.update(self._weights(v, None, None))
        return out

    def _object(self, v: Any, where: str, skip: frozenset = frozenset()) -> dict:
        attrs = {}
        for k, x in vars(v).items():
            if k in skip or k.startswith("_") and "hooks" in k and not x:
                continue
            try:
                attrs[k] = self.node(x, f"{where}.{k}")
            except SkeletonError:
                if not k.startswith("_") or isinstance(x, (dict, list, tuple)):  # a config dict is never optional
                    raise
                self.dropped.append(f"{where}.{k}")
        return {"k": "obj", "cls": name_of(type(v), where), "attrs": attrs}


def _simple(v: Any, where: str) -> dict | None:
    if isinstance(v, torch.dtype):
        return {"k": "dtype", "v": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"k": "device", "v": str(v)}
    if isinstance(v, enum.Enum):
        return {"k": "enum", "cls": name_of(type(v), where), "name": v.name}
    if isinstance(v, type):
        return {"k": "class", "cls": name_of(v, where)}
    if isinstance(v, PurePath):  # a config's _name_or_path from from_pretrained(Path(...))
        return {"k": "path", "v": str(v)}
    return None


def _plain(v: Any, depth: int = 0) -> dict | None:
    """A node for a value made only of JSON scalars, lists, tuples and str-keyed dicts; None otherwise."""
    if v is None or type(v) in (bool, int, str) or type(v) is float and math.isfinite(v):
        return {"k": "v", "v": v}
    if depth > 8:
        return None
    if type(v) in (list, tuple):
        items = [_plain(x, depth + 1) for x in v]
        return None if any(i is None for i in items) else {"k": type(v).__name__, "items": items}
    if type(v) is dict and all(type(k) is str for k in v):
        items = [[{"k": "v", "v": k}, _plain(x, depth + 1)] for k, x in v.items()]
        return None if any(i[1] is None for i in items) else {"k": "dict", "items": items}
    return None


def _plain_object(v: Any) -> bool:
    """An instance with a ``__dict__`` (a holder, a detector, a pipeline); not a function, module or class."""
    return (isinstance(getattr(v, "__dict__", None), dict) and not inspect.isroutine(v)
            and not inspect.ismodule(v) and not isinstance(v, type))


def _pretrained(v: Any) -> bool:
    """Saves and loads itself, and holds no module (a pipeline's ``save_pretrained`` would write weights)."""
    return (callable(getattr(v, "save_pretrained", None)) and callable(getattr(type(v), "from_pretrained", None))
            and not any(isinstance(x, torch.nn.Module) for x in vars(v).values()))


def _config_route(m: torch.nn.Module) -> str | None:
    """How a module rebuilds from its config: ``"transformers"`` (``cls(config)`` from ``config.save_pretrained``),
    ``"config"`` (``cls.from_config`` from ``save_config``, when the config holds every argument ``__init__``
    needs), or None (a plain module)."""
    config = getattr(m, "config", None)
    if config is not None and callable(getattr(config, "save_pretrained", None)) and \
            callable(getattr(type(config), "from_pretrained", None)):
        return "transformers"
    if callable(getattr(m, "save_config", None)) and callable(getattr(type(m), "from_config", None)) and \
            isinstance(config, dict):
        try:
            params = inspect.signature(type(m).__init__).parameters.values()
        except (TypeError, ValueError):
            return None
        needed = [p.name for p in params if p.name != "self" and p.default is p.empty
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return "config" if all(n in config for n in needed) else None
    return None


def _spec(t: torch.Tensor | None, requires_grad: bool = False) -> dict | None:
    if t is None:
        return None
    out = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    if requires_grad:
        out["requires_grad"] = bool(t.requires_grad)
    return out


def _tensor(v: Any, where: str) -> dict:
    n = int(v.numel()) if isinstance(v, torch.Tensor) else int(v.size)
    if n > MAX_ELEMENTS:
        raise SkeletonError(f"{where} is a {tuple(v.shape)} {type(v).__name__} outside any module ({n} elements); a "
                            f"skeleton keeps at most {MAX_ELEMENTS} by value: register it as a module's buffer")
    if isinstance(v, torch.Tensor):
        if v.device.type == "meta":
            raise SkeletonError(f"{where} is a tensor on the meta device: its values are unknown")
        return {"k": "tensor", "dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape),
                "data": v.detach().cpu().reshape(-1).tolist(), "requires_grad": bool(v.requires_grad)}
    return {"k": "ndarray", "dtype": str(v.dtype), "shape": list(v.shape), "data": v.reshape(-1).tolist()}


def describe(obj: Any, folder: Path, weights: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
             rel: str = SKELETON_DIR) -> dict:
    """The skeleton of ``obj`` as JSON (``{"root": node, "dropped": [...]}``); the files of its Hugging Face parts
    go under ``folder / rel``, and ``weights`` (``{id(module): tensors}``, :func:`weights.tensors_of`) of the modules
    that have no graph. Raises :class:`SkeletonError` naming the first part it cannot describe."""
    d = _Describer(Path(folder), rel, weights or {})
    root = d.node(obj, type(obj).__name__)
    return {"format": 1, "root": root, "dropped": d.dropped}


def describe_or_why(obj: Any, folder: Path, weights: Mapping[int, Mapping[str, torch.Tensor]] | None = None) -> dict:
    """:func:`describe`, or ``{"error": why}`` (nothing left under ``folder / SKELETON_DIR``) when it cannot be."""
    try:
        return describe(obj, folder, weights)
    except Exception as e:  # noqa: BLE001 -- a part's own save_pretrained may raise anything: the graphs still export
        diskspace.raise_if_full(e, folder, "the skeleton")  # but a full disk stops the export
        shutil.rmtree(Path(folder) / SKELETON_DIR, ignore_errors=True)
        return {"error": f"{type(e).__name__}: {e}"}
