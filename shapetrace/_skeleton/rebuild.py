"""Rebuild an object from its skeleton (:mod:`shapetrace._skeleton.describe`), every parameter on ``meta``.

Only what the tree names is built, and only in these ways: containers and scalars from JSON; classes resolved by
:func:`shapetrace._skeleton.classes.resolve` (installed packages only); ``model`` nodes by the class's own config
constructor under ``torch.device("meta")``; ``pretrained`` nodes by the class's own ``from_pretrained`` on a folder
inside the export; ``module`` / ``obj`` nodes by ``cls.__new__`` and their attributes, never ``__init__``; dict
subclasses by calling the class on their items. No pickle, no ``eval``, no code from the folder.
"""

from __future__ import annotations

import enum
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .._core.files import inside
from ..errors import SkeletonError
from . import weights as weight_files
from .classes import resolve

__all__ = ["rebuild"]

_MISSING = object()


def _dtype(name: Any) -> torch.dtype:
    value = getattr(torch, str(name), None)
    if not isinstance(value, torch.dtype):
        raise SkeletonError(f"the skeleton names dtype {name!r}, which torch does not have; re-export")
    return value


def _meta(spec: Mapping[str, Any] | None, parameter: bool) -> torch.Tensor | None:
    if spec is None:
        return None
    t = torch.empty([int(s) for s in spec["shape"]], dtype=_dtype(spec["dtype"]), device="meta")
    return torch.nn.Parameter(t, requires_grad=bool(spec.get("requires_grad", True))) if parameter else t


class _Rebuilder:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.made: dict[int, Any] = {}

    def cls(self, name: Any, base: type = object) -> type:
        cls = resolve(str(name), self.out)
        if not issubclass(cls, base):
            raise SkeletonError(f"the skeleton names {name!r} where a {base.__name__} belongs; re-export the object")
        return cls

    def keep(self, node: Mapping[str, Any], value: Any) -> Any:
        if "id" in node:
            self.made[int(node["id"])] = value
        return value

    def node(self, node: Any) -> Any:
        if not isinstance(node, Mapping) or not isinstance(node.get("k"), str):
            raise SkeletonError(f"the skeleton holds {str(node)[:80]!r}, not a node; re-export the object")
        handler = getattr(self, f"_{node['k']}", None)
        if handler is None:
            raise SkeletonError(f"the skeleton holds a node of kind {node['k']!r}, which this shapetrace does not "
                                f"know; upgrade shapetrace or re-export")
        return handler(node)

    # ---- values --------------------------------------------------------------------------------------
    def _v(self, node: Mapping) -> Any:
        value = node.get("v")
        if value is not None and type(value) not in (bool, int, float, str):
            raise SkeletonError(f"the skeleton holds {value!r} as a plain value; re-export the object")
        return value

    def _float(self, node: Mapping) -> float:
        value = float(str(node["v"]))
        if math.isfinite(value):
            raise SkeletonError(f"the skeleton holds {node['v']!r} as a non-finite float")
        return value

    def _ref(self, node: Mapping) -> Any:
        try:
            return self.made[int(node["id"])]
        except KeyError:
            raise SkeletonError(f"the skeleton refers to part #{node['id']} before it is built; re-export") from None

    def _dtype(self, node: Mapping) -> torch.dtype:
        return _dtype(node["v"])

    def _device(self, node: Mapping) -> torch.device:
        return torch.device(str(node["v"]))

    def _enum(self, node: Mapping) -> Any:
        return self.cls(node["cls"], enum.Enum)[str(node["name"])]

    def _class(self, node: Mapping) -> type:
        return self.cls(node["cls"])

    def _path(self, node: Mapping) -> Path:
        return Path(str(node["v"]))

    # ---- containers ----------------------------------------------------------------------------------
    def _list(self, node: Mapping) -> list:
        out = self.keep(node, [])
        out.extend(self.node(x) for x in node["items"])
        return out

    def _tuple(self, node: Mapping) -> tuple:
        return self.keep(node, tuple(self.node(x) for x in node["items"]))

    def _set(self, node: Mapping) -> set:
        return self.keep(node, {self.node(x) for x in node["items"]})

    def _frozenset(self, node: Mapping) -> frozenset:
        return self.keep(node, frozenset(self.node(x) for x in node["items"]))

    def _dict(self, node: Mapping) -> dict:
        if node.get("cls") is None:
            out = self.keep(node, {})
            out.update((self.node(k), self.node(v)) for k, v in node["items"])
            return out
        cls = self.cls(node["cls"], dict)
        return self.keep(node, cls([(self.node(k), self.node(v)) for k, v in node["items"]]))

    def _tensor(self, node: Mapping) -> torch.Tensor:
        t = torch.tensor(node["data"], dtype=_dtype(node["dtype"])).reshape([int(s) for s in node["shape"]])
        return self.keep(node, t.requires_grad_(bool(node.get("requires_grad"))) if t.is_floating_point() else t)

    def _ndarray(self, node: Mapping) -> np.ndarray:
        return self.keep(node, np.asarray(node["data"], dtype=np.dtype(str(node["dtype"]))).reshape(node["shape"]))

    # ---- Hugging Face parts --------------------------------------------------------------------------
    def _pretrained(self, node: Mapping) -> Any:
        cls = self.cls(node["cls"])
        made = self.keep(node, cls.from_pretrained(str(inside(self.out, node["dir"], "a skeleton folder"))))
        for k, v in node.get("attrs", {}).items():
            value = self.node(v)
            if made.__dict__.get(k, _MISSING) != value:
                made.__dict__[str(k)] = value
        return made

    def _model(self, node: Mapping) -> torch.nn.Module:
        cls = self.cls(node["cls"], torch.nn.Module)
        folder = str(inside(self.out, node["dir"], "a skeleton folder"))
        with torch.device("meta"):
            if node["route"] == "transformers":
                config = self.cls(node["config_cls"]).from_pretrained(folder)
                make = getattr(cls, "_from_config", None)
                module = make(config) if callable(make) else cls(config)
            else:
                module = cls.from_config(cls.load_config(folder))
        if node.get("dtype") and {p.dtype for p in module.parameters()} != {_dtype(node["dtype"])}:
            module.to(_dtype(node["dtype"]))
        module.train(bool(node.get("training")))
        self.keep(node, module)
        for k, v in node.get("attrs", {}).items():
            module.__dict__[str(k)] = self.node(v)
        return self._weights(module, node)

    def _weights(self, module: torch.nn.Module, node: Mapping) -> torch.nn.Module:
        if node.get("weights"):
            weight_files.load_into(module, inside(self.out, node["weights"], "a weights file"), node.get("aliases") or {})
        return module

    # ---- anything else -------------------------------------------------------------------------------
    def _module(self, node: Mapping) -> torch.nn.Module:
        module = self._new(node, torch.nn.Module)
        torch.nn.Module.__init__(module)
        self._fill(module, node)
        for k, spec in node["params"].items():
            module._parameters[str(k)] = _meta(spec, parameter=True)
        for k, spec in node["buffers"].items():
            module._buffers[str(k)] = _meta(spec, parameter=False)
            if spec is not None and not spec.get("persistent", True):
                module._non_persistent_buffers_set.add(str(k))
        for k, child in node["children"].items():
            module._modules[str(k)] = self.node(child)
        module.training = bool(node.get("training"))
        return self._weights(module, node)

    def _obj(self, node: Mapping) -> Any:
        return self._fill(self._new(node, object), node)

    def _new(self, node: Mapping, base: type) -> Any:
        cls = self.cls(node["cls"], base)
        try:
            made = cls.__new__(cls)
        except TypeError as e:
            raise SkeletonError(f"{node['cls']} cannot be made without its constructor ({e}); it cannot be rebuilt "
                                f"from a skeleton: build it yourself and load(obj, out) into it") from e
        return self.keep(node, made)

    def _fill(self, made: Any, node: Mapping) -> Any:
        made.__dict__.update({str(k): self.node(v) for k, v in node["attrs"].items()})
        return made


def rebuild(skeleton: Mapping[str, Any], out: str | Path) -> Any:
    """The object described by ``skeleton`` (a manifest's ``skeleton``), its Hugging Face parts read from ``out``."""
    if skeleton.get("format") != 1 or "root" not in skeleton:
        raise SkeletonError(f"the skeleton in {out} has format {skeleton.get('format')!r}; this shapetrace reads "
                            f"format 1: upgrade shapetrace or re-export")
    return _Rebuilder(Path(out)).node(skeleton["root"])
