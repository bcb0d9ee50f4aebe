"""Modules without weights (parameters on torch's ``meta`` device): served, never run.

An object rebuilt by :func:`shapetrace.load_pipeline`, or built by the user under ``torch.device("meta")`` /
``accelerate.init_empty_weights()``, holds modules whose parameters have no storage. Their graphs answer their
calls; what remains is the Python around them that asks a module where it lives -- ``pipe.unet.device``,
``model.device`` inside ``generate``, ``next(model.parameters()).device`` in a detector -- which would say ``meta``
and move the inputs there, where their values are gone. While served, such a module answers with the CPU, where the
runtime takes its inputs and puts its outputs: through a subclass of its own class (same name, same module, so
``isinstance`` and the manifest's class checks hold) whose ``device`` is the CPU and whose ``parameters()`` /
``named_parameters()`` give, for each meta parameter, a CPU tensor of its shape and dtype that holds one element
(expanded, never written). The module's own parameters stay on ``meta``; :func:`undress` puts its class back.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import torch

from .._core import tree
from ..errors import FlattenError, RuntimeMismatchError

__all__ = ["is_weightless", "dress", "undress", "meta_paths", "checked"]

_CPU = torch.device("cpu")
_DRESSED: dict[type, type] = {}
_LOCK = threading.Lock()


def meta_paths(module: torch.nn.Module, limit: int = 3) -> list[str]:
    """The first ``limit`` parameter / buffer names on ``meta`` (read from the module's own tables, not through a
    dressed ``named_parameters``)."""
    found = []
    for name, m in module.named_modules():
        for table in (m._parameters, m._buffers):
            found += [f"{name}.{k}" if name else k for k, t in table.items() if t is not None and t.is_meta]
            if len(found) >= limit:
                return found[:limit]
    return found


def is_weightless(module: torch.nn.Module) -> bool:
    """Any parameter or buffer of ``module`` on ``meta`` (no values to run it with)."""
    return bool(meta_paths(module, 1))


def _placed(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=t.dtype).expand(t.shape) if t.is_meta else t


def _parameters(self: torch.nn.Module, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
    for _, p in _named_parameters(self, recurse=recurse):
        yield p


def _named_parameters(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    for n, p in torch.nn.Module.named_parameters(self, *args, **kwargs):
        yield n, _placed(p)


def _dressed(cls: type) -> type:
    with _LOCK:
        if cls not in _DRESSED:
            body: dict[str, Any] = {"parameters": _parameters, "named_parameters": _named_parameters,
                                    "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                    "_st_undressed": cls}
            if isinstance(getattr(cls, "device", None), property):
                body["device"] = property(lambda self: _CPU, doc="Served by a runtime: inputs and outputs on the CPU")
            _DRESSED[cls] = type(cls.__name__, (cls,), body)
        return _DRESSED[cls]


def dress(module: torch.nn.Module) -> bool:
    """Make a weightless module answer the CPU where Python code asks where it lives; True if it did."""
    cls = type(module)
    if "_st_undressed" in cls.__dict__ or not is_weightless(module):
        return False
    module.__class__ = _dressed(cls)
    return True


def undress(module: torch.nn.Module) -> None:
    """Put back the module's own class."""
    original = type(module).__dict__.get("_st_undressed")
    if original is not None:
        module.__class__ = original


def checked(name: str, path: str, module: torch.nn.Module, fn: Callable, args: tuple, kwargs: dict) -> Any:
    """Run a method that was not exported on a weightless module: fine when it only calls served graphs (a
    ``generate`` loop); a :class:`~shapetrace.RuntimeMismatchError` naming it when it needs the missing weights
    (PyTorch refuses to read a meta tensor, or the result holds one)."""
    def refuse(cause: BaseException | None = None) -> RuntimeMismatchError:
        return RuntimeMismatchError(
            f"{name} was not exported and needs the weights of {path}, which has none here (its parameters are on "
            f"the meta device, e.g. {', '.join(meta_paths(module))}): record a run that calls {name} and export "
            f"again" + (f" ({type(cause).__name__}: {str(cause)[:160]})" if cause else ""))

    try:
        out = fn(*args, **kwargs)
    except (NotImplementedError, RuntimeError) as e:
        if "meta" in str(e):
            raise refuse(e) from e
        raise
    try:
        leaves = tree.flatten(out)[1].values()
    except FlattenError:  # an output shapetrace cannot walk: nothing to check in it
        return out
    if any(isinstance(v, torch.Tensor) and v.is_meta for v in leaves):
        raise refuse()
    return out
