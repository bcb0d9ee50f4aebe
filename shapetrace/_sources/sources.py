"""What ``shapetrace export SOURCE OUT`` exports: :func:`open_source` turns SOURCE into a :class:`Source` -- the
object, and a callable that runs it once -- and :func:`record_source` records that run.

SOURCE is one of:

a folder saved with ``save_pretrained``
    ``model_index.json``: a diffusers pipeline (``DiffusionPipeline.from_pretrained``); ``config.json``: a
    transformers model, served through ``transformers.pipeline`` with the task read from the config or given by
    ``--task``. It runs once on a call built from the options (``--prompt``, ``--image``, ``--height`` /
    ``--width``, ``--steps``, ``--max-new-tokens``, ``--call-json``) or on a default call for its class
    (:mod:`shapetrace._sources.hf`). Nothing is ever downloaded: files are read with ``local_files_only=True`` under
    ``HF_HUB_OFFLINE=1``, and a folder that lacks what its index names is refused before loading.
``module:function`` or ``path/to/file.py:function``
    user code that builds the object. The function is called with no argument, or with ``record=`` when it has a
    parameter of that name, and either

    - returns ``(obj, run)``: ``run()`` (or ``run(obj)``) calls the object once; shapetrace records that call, and
      calls ``run`` again on each runtime for the report's end-to-end images; or
    - records the object itself with the ``record`` it is handed (``shapetrace.record`` with the ``--include`` /
      ``--exclude`` of the command line) and returns ``obj`` (or ``(obj, run)``).

    ``run`` should be deterministic (seed its generators): the report compares its output on each runtime.

Every failure is a :class:`~shapetrace.errors.SourceError` whose one-line message names SOURCE and what to do.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from . import hf as hf_sources
from ..errors import RecordingError, ShapetraceError, SourceError
from .hf import CallOptions
from .._record.proxy import record, recording_for
from .._record.recording import Recording

__all__ = ["Source", "CallOptions", "open_source", "record_source", "describe_error"]

_FUNCTION = re.compile(r"^(?P<target>[^:]+):(?P<function>[A-Za-z_][A-Za-z0-9_.]*)$")


@dataclass
class Source:
    """The object to export and how to run it.

    ``run()`` calls the object once (the same call each time, seeded) and returns its output; it is None when a
    user function recorded the object itself and gave no callable. ``recording`` is set once the object has been
    recorded. ``call`` describes the call for the printout (keyword -> short text).
    """

    spec: str
    obj: Any
    run: Callable[[], Any] | None
    label: str
    call: Mapping[str, str] = field(default_factory=dict)
    recording: Recording | None = None
    output: Any = None  # the output of the recorded run, PyTorch's reference for the end-to-end images


def describe_error(e: BaseException) -> str:
    """``TypeError: message`` on one line, at most 300 characters."""
    text = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {text[:300]}"


@contextlib.contextmanager
def _user_code(spec: str, what: str) -> Iterator[None]:
    """Turn anything user code raises into one SourceError line (shapetrace's own errors pass through)."""
    try:
        yield
    except (ShapetraceError, KeyboardInterrupt):
        raise
    except BaseException as e:  # SystemExit from a script's argparse too: it must not end the CLI silently
        raise SourceError(f"{spec}: {what} raised {describe_error(e)}") from e


def open_source(spec: str, options: CallOptions | None = None, *, include: Any = None,
                exclude: Any = None) -> Source:
    """Load SOURCE (a folder, ``module:function`` or ``file.py:function``; see the module docstring).

    A user function that records the object itself is called here, so the returned Source may already hold its
    ``recording``; otherwise :func:`record_source` records the run.
    """
    options = options or CallOptions()
    path = Path(spec)
    if path.is_dir():
        obj, run, label, call = hf_sources.open_folder(path, options)
        return Source(spec, obj, run, label, call)
    match = _FUNCTION.match(spec)
    if match and not path.exists():
        return _open_function(spec, match["target"], match["function"], include, exclude)
    if path.exists():
        raise SourceError(f"{spec} is a file: pass a folder saved with save_pretrained, module:function or "
                          f"file.py:function")
    hint = (" (it looks like a hub model id: shapetrace never downloads; save the model into a local folder with "
            "save_pretrained first)" if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) else "")
    raise SourceError(f"{spec}: no such folder{hint}; SOURCE is a local folder saved with save_pretrained, "
                      f"module:function or path/to/file.py:function")


def _import_target(spec: str, target: str) -> Any:
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise SourceError(f"{spec}: {target} does not exist")
        name = f"_shapetrace_source_{abs(hash(str(file.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, file)
        if module_spec is None or module_spec.loader is None:
            raise SourceError(f"{spec}: cannot import {target}")
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(file.resolve().parent))  # its sibling imports work as when run as a script
        try:
            with _user_code(spec, f"importing {target}"):
                module_spec.loader.exec_module(module)
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(file.resolve().parent))
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:  # the console script: modules of the current folder
        sys.path.insert(0, os.getcwd())
    try:
        if importlib.util.find_spec(target.split(".")[0]) is None:
            raise SourceError(f"{spec}: no module named {target.split('.')[0]!r} (and no folder {spec!r}); pass "
                              f"module:function importable from here, or path/to/file.py:function")
    except (ImportError, ValueError) as e:
        raise SourceError(f"{spec}: cannot find module {target!r} ({describe_error(e)})") from e
    with _user_code(spec, f"importing {target}"):
        return importlib.import_module(target)


def _open_function(spec: str, target: str, function: str, include: Any, exclude: Any) -> Source:
    module = _import_target(spec, target)
    fn: Any = module
    for part in function.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise SourceError(f"{spec}: {target} has no {function!r}; callables there: {', '.join(names) or '(none)'}")
    if not callable(fn):
        raise SourceError(f"{spec}: {function} is a {type(fn).__name__}, not a function")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs: dict[str, Any] = {}
    if "record" in params:
        kwargs["record"] = functools.partial(record, include=include, exclude=exclude)
    required = [n for n, p in params.items() if n not in kwargs and p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        raise SourceError(f"{spec}: {function}() needs {', '.join(required)}; a source function takes no argument, "
                          f"or record= (see `shapetrace export --help`)")
    with _user_code(spec, f"{function}()"):
        result = fn(**kwargs)
    obj, run = result, None
    if isinstance(result, tuple) and len(result) == 2 and callable(result[1]):
        obj, run = result
    recording = None
    if "record" in kwargs:
        try:
            recording = recording_for(obj)
        except RecordingError:
            recording = None
    if run is None and recording is None:
        raise SourceError(f"{spec}: {function}() returned a {type(obj).__name__} and nothing that runs it; return "
                          f"(obj, run) or record the object with the record= it is handed")
    label = f"{type(obj).__name__} from {spec}"
    return Source(spec, obj, _bind_run(run, obj) if run is not None else None, label, {}, recording)


def _bind_run(run: Callable[..., Any], obj: Any) -> Callable[[], Any]:
    try:
        takes_obj = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
                        for p in inspect.signature(run).parameters.values())
    except (TypeError, ValueError):
        takes_obj = False
    return functools.partial(run, obj) if takes_obj else run


def run_once(source: Source, seed: int = 0) -> Any:
    """Call ``source.run()`` with torch's global RNG seeded (a run that draws from it repeats exactly)."""
    if source.run is None:
        raise SourceError(f"{source.spec}: no callable to run the object (the source function recorded it itself)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _user_code(source.spec, f"running {source.label}" + (f" with {_short(source.call)}" if source.call
                                                                   else "")):
            return source.run()


def record_source(source: Source, *, include: Any = None, exclude: Any = None, seed: int = 0) -> Recording:
    """Record one run of the source (unless its function recorded it already); sets ``source.recording`` and
    ``source.output``."""
    if source.recording is None:
        with record(source.obj, include=include, exclude=exclude) as rec:
            source.output = run_once(source, seed)
        source.recording = rec
    if not source.recording.graphs:
        raise SourceError(f"{source.spec}: the run called no torch module with a tensor; nothing to export")
    return source.recording


def _short(call: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in call.items())
