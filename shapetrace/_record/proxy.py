"""The transparent recording proxy, and ``record()`` which installs it.

A :class:`RecordingProxy` stands where a module was (``pipe.unet``) and forwards everything to it: attribute
reads and writes, ``.config``, ``.dtype``, ``.to()`` and ``__class__`` (so ``isinstance(proxy, ControlNetModel)``
holds). Everything the proxy owns lives under the ``_st_`` prefix. Calls of ``forward`` (through ``__call__``)
and of the module's own public methods (``vae.decode``) that receive a tensor are recorded into a shared
:class:`Recorder`; the call itself runs untouched, so outputs are bit-identical.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from .._core import tree
from ..errors import ModuleNotFoundInObject, RecordingError
from .recorder import Recorder
from .recording import Recording
from .samples import SampleStore
from .._core.standin import StandIn
from .._core.walker import _select, find_module_aliases, find_module_paths, format_path, replace

__all__ = ["RecordingProxy", "record", "recording_for", "Recorder"]


class RecordingProxy(StandIn):
    """Stands in for a module (:class:`~shapetrace._core.standin.StandIn`): forwards everything, records tensor calls."""

    __slots__ = ("_st_recorder",)
    _st_kind = "recording"

    def __init__(self, wrapped: torch.nn.Module, path: str, recorder: Recorder) -> None:
        super().__init__(wrapped, path)
        object.__setattr__(self, "_st_recorder", recorder)

    def _st_call(self, method: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        return object.__getattribute__(self, "_st_recorder").call(
            object.__getattribute__(self, "_st_path"), object.__getattribute__(self, "_st_wrapped"), method, fn,
            args, kwargs)

    def __getattr__(self, name: str) -> Any:  # counted: an attribute read forwarded to the module (rec.stats)
        object.__getattribute__(self, "_st_recorder").stats.attribute_reads += 1
        return StandIn.__getattr__(self, name)

    def _st_run_forwarded(self, method: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        return object.__getattribute__(self, "_st_recorder").run_forwarded(
            object.__getattribute__(self, "_st_path"), object.__getattribute__(self, "_st_wrapped"), fn, args, kwargs)

    def _st_describe(self) -> str:
        path = object.__getattribute__(self, "_st_path")
        return f"{object.__getattribute__(self, '_st_recorder').calls_of(path)} calls"

    def _st_refusal(self, verb: str) -> RecordingError:
        return RecordingError(f"cannot {verb} {self!r} while recording; {verb} the pipeline outside the record() "
                              f"block")


# ----------------------------------------------------------------------------------------------- record()
_active: set[int] = set()
#: The last recording of each object, weakly: an entry goes when its object does (for an object that refuses weak
#: references, a dict of modules say, when the first of the modules inside it does); no object is kept alive here.
_last: dict[int, tuple[Callable[[Any], bool], Recording]] = {}
_state_lock = threading.Lock()


def _forget(key: int) -> None:
    with _state_lock:
        _last.pop(key, None)


def _remember(obj: Any, rec: Recording, modules: Sequence[torch.nn.Module]) -> None:
    key = id(obj)
    try:
        ref = weakref.ref(obj, lambda _r, k=key: _forget(k))
        same: Callable[[Any], bool] = lambda o: ref() is o  # noqa: E731
    except TypeError:  # held by the modules inside it, never by us: same object while they live and it holds them
        anchors = [weakref.ref(m, lambda _r, k=key: _forget(k)) for m in modules]
        same = lambda o: id(o) == key and {id(a()) for a in anchors} <= {id(m) for _, m in find_module_paths(o)}  # noqa: E731,E501
    with _state_lock:
        _last[key] = (same, rec)


def recording_for(obj: Any) -> Recording:
    """The last recording made for ``obj`` (raises :class:`RecordingError` if there is none)."""
    with _state_lock:
        entry = _last.get(id(obj))
    if entry is None or not entry[0](obj):
        raise RecordingError(
            f"no recording for this {type(obj).__name__}; run it once inside `with shapetrace.record(obj): ...` "
            f"or pass recording=... explicitly")
    return entry[1]


@contextlib.contextmanager
def record(obj: Any, include: Iterable[str] | str | None = None,
           exclude: Iterable[str] | str | None = None, samples: int | None = None) -> Iterator[Recording]:
    """Swap every module in ``obj`` for a recording proxy for the duration of the block.

    >>> with shapetrace.record(pipe) as rec:
    ...     pipe("a chef", image)
    >>> rec.graphs["unet"].inputs["sample"].shape

    Every call of a found module is recorded, whichever way it arrives: through the proxy, through another path
    to the same module (a combined pipeline's ``decoder_pipe.unet``; the proxy is installed at every path and the
    graph is named by the shortest), or without any path (the module calling itself from ``generate``: a forward
    hook catches it). Originals are put back on exit, also when the block raises or is interrupted.

    ``samples=N`` also keeps the inputs of up to N calls per graph, spread over the whole block, on disk
    (calibration samples for ``export_all(quantize=...)``: :mod:`shapetrace._record.samples` says which calls);
    ``rec.samples`` is that :class:`~shapetrace._record.samples.SampleStore`. Default: the first call only, as always.
    """
    store = SampleStore(samples) if samples is not None else None
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
    recorder = Recorder(store)
    rec = Recording(object_class=tree.qualname(type(obj)), _source=recorder, samples=store)
    aliases = find_module_aliases(obj)
    installed: list = []
    hooks: list = []
    try:
        for path, module in found:
            name = format_path(path)
            hooks.extend(recorder.hooks(name, module))
            proxy = RecordingProxy(module, name, recorder)
            for where in [path, *aliases.get(id(module), ())]:  # one graph, whichever path reaches it
                replace(obj, where, proxy)
                installed.append((where, module))
        yield rec
    finally:
        try:
            for h in hooks:
                h.remove()
            for path, module in reversed(installed):
                replace(obj, path, module)
        finally:
            rec._finish()
            with _state_lock:
                _active.discard(id(obj))
            if rec.graphs:
                _remember(obj, rec, [module for _, module in found])
