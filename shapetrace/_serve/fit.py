"""Does an export fit an object? :func:`plan_load` checks it all before ``load`` touches anything: the object's
class, every graph's module (present at its path, of the recorded class and dtype, not already wrapped), the files
the backend needs, failed graphs; and returns the :class:`LoadPlan` ``load`` carries out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import torch

from .. import manifest as manifest_mod
from .._core import tree
from ..errors import RuntimeMismatchError, SignatureFileError
from .._export.flat import weights_dtype
from ..manifest import GraphEntry
from .weightless import is_weightless, meta_paths
from .._core.walker import find_module_aliases, find_module_paths, format_path, parse_path, resolve

__all__ = ["LoadPlan", "plan_load", "BACKENDS"]

#: ``backend=`` choices and the manifest ``files`` key each runs.
BACKENDS = {"openvino": "openvino", "onnxruntime": "onnx"}


@dataclass(frozen=True)
class LoadPlan:
    """What :func:`load` checked: the graphs to serve, their modules by path, and the modules with no graph."""

    entries: tuple[GraphEntry, ...]
    modules: Mapping[str, tuple[tuple, torch.nn.Module]]
    others: tuple[tuple[tuple, torch.nn.Module], ...]
    aliases: Mapping[int, list[tuple]]  # id(module) -> the other paths that reach it


def _check_not_wrapped(path: str, module: Any) -> None:
    kind = getattr(type(module), "_st_kind", None)  # type() sees a stand-in's own class
    if kind == "recording":
        raise RuntimeMismatchError(f"{path!r} is being recorded; call load() after the record() block")
    if kind is not None:
        raise RuntimeMismatchError(f"{path!r} already runs on {object.__getattribute__(module, '_st_runtime')!r}; "
                                   f"close that runtime first")


def plan_load(obj: Any, out: Path, manifest: manifest_mod.Manifest, backend: str, graphs: Iterable[str] | None,
          strict: bool) -> LoadPlan:
    """Check that the export fits ``obj`` and ``backend``; nothing is touched yet.

    Long by design: every check before ``load`` touches the object, in the order their messages read best (the
    folder, the backend, each module, the modules without a graph); all problems are gathered into one error."""
    where = f"the export in {out}"
    if manifest.object_class and manifest.object_class != tree.qualname(type(obj)):
        raise RuntimeMismatchError(
            f"{where} was made from a {manifest.object_class.rsplit(':', 1)[-1]}, not this "
            f"{type(obj).__name__}; load it into the object it was exported from, or record and export this one")
    names, unknown = manifest_mod.pick(manifest.names, graphs)
    if unknown:
        raise RuntimeMismatchError(f"graphs={unknown!r} are not in {where}; it holds {', '.join(manifest.names)}")
    entries = [manifest.graph(n) for n in names]
    failed = [e for e in entries if not e.ok]
    if failed and strict:
        lines = "; ".join(f"{e.name}: {str(e.error)[:200]}" for e in failed)
        raise RuntimeMismatchError(
            f"{where} holds graph(s) that failed to export ({lines}); export them again, or run them in PyTorch "
            f"with load(..., strict=False) or graphs=[...] without them")
    entries = [e for e in entries if e.ok]
    for e in entries:
        if e.lacks():
            raise SignatureFileError(f"{out / manifest_mod.MANIFEST}: graph {e.name!r} lacks "
                                     f"{', '.join(map(repr, e.lacks()))}; re-create it with export_all")
    if not entries:
        raise RuntimeMismatchError(f"{where} holds no exported graph to serve")
    # every module: present, of the recorded class, not already swapped
    modules: dict[str, tuple[tuple, torch.nn.Module]] = {}
    problems: list[str] = []
    for e in entries:
        if e.module in modules:
            continue
        try:
            steps = parse_path(e.module)
            _, _, module = resolve(obj, steps)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            problems.append(f"graph {e.name!r}: this {type(obj).__name__} has no module at {e.module!r}")
            continue
        _check_not_wrapped(e.module, module)
        if tree.qualname(type(module)) != e.cls:
            problems.append(f"graph {e.name!r}: the module at {e.module!r} is a {tree.qualname(type(module))}, the "
                            f"export was made from a {e.cls}")
            continue
        now = weights_dtype(module)
        if e.weights_dtype and now and now != e.weights_dtype:
            problems.append(f"graph {e.name!r}: the module at {e.module!r} is {now} now, the graph was exported from "
                            f"it in {e.weights_dtype}; cast it back (.to({e.weights_dtype})) or record and export it "
                            f"in {now}")
            continue
        modules[e.module] = (steps, module)
    # the modules with no exported graph get a stand-in too, so that their calls are reported as PyTorch calls
    exported_paths = {e.module for e in entries}
    others = []
    for steps, module in find_module_paths(obj):
        if format_path(steps) not in exported_paths:
            _check_not_wrapped(format_path(steps), module)
            others.append((steps, module))
            if is_weightless(module):
                problems.append(f"{format_path(steps)!r} has no exported graph and no weights (its parameters are on "
                                f"the meta device, e.g. {', '.join(meta_paths(module)) or 'a buffer'}): record a run "
                                f"that calls it and export again, or give it its weights before load()")
    kind = BACKENDS[backend]
    for e in entries:
        rel = e.file(kind)
        if not rel:
            why = str(kind == "onnx" and e.no_onnx or "").split("; ")[0]  # degraded at export
            why = why or f"exported with formats without {kind!r}?"
            problems.append(f"graph {e.name!r} has no {kind} file ({why}); use the other backend or export again")
        elif not (out / rel).is_file():
            raise SignatureFileError(f"{out / rel} (the {kind} file of graph {e.name!r}) is missing: the export "
                                     f"folder is incomplete; re-run export_all")
    if problems:
        raise RuntimeMismatchError(f"{where} does not fit this {type(obj).__name__}:\n  - " + "\n  - ".join(problems)
                                   + "\nload it into the object it was exported from, or record and export this one")
    return LoadPlan(tuple(entries), MappingProxyType(modules), tuple(others),
                     MappingProxyType(find_module_aliases(obj)))
