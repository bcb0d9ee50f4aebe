"""The one small runner interface every backend implements (Polygraphy ``backend/base/runner.py``).

A runner is a context manager: entering it loads the model (a session, a compiled model, a module), ``infer``
runs it on a feed of numpy arrays keyed by input name and returns numpy arrays keyed by output name, leaving it
frees what was loaded::

    with open_runner("onnxruntime", out_dir, entry) as runner:
        outputs = runner.infer({"sample": x, "timestep": t})

Runners cast each fed array to the dtype the model declares for that input (int32 vs int64, bool) and answer with
the output names of the manifest entry, so the comparison code never sees backend-specific naming.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._core import external_data
from .._core.files import inside
from ..errors import RunnerError
from ..manifest import GraphEntry

__all__ = ["Runner", "model_file", "default_threads", "cast_feed", "by_name_or_position", "match_inputs",
           "short_error"]


class Runner:
    """Base class: subclasses set ``name`` and implement ``_activate``, ``_infer`` and (optionally) ``_deactivate``.

    ``input_names`` / ``output_names`` are the manifest's, in order; ``infer`` returns exactly ``output_names``.
    """

    name = "runner"

    def __init__(self, input_names: Sequence[str], output_names: Sequence[str], label: str = "") -> None:
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.label = label or self.name
        self._active = False

    # ------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Runner":
        self._activate()
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._active = False
        self._deactivate()

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass

    # ------------------------------------------------------------------------------------------ inference
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on ``feed`` (input name -> array); return output name -> array, in ``output_names`` order.

        Anything the runtime raises comes out as :class:`~shapetrace.RunnerError` naming the runner."""
        if not self._active:
            raise RunnerError(f"{self!r} is not open; use it as a context manager: `with runner: runner.infer(...)`")
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise RunnerError(f"{self.label}: the feed lacks input(s) {', '.join(map(repr, missing))}; "
                              f"expected {', '.join(self.input_names)}")
        try:
            return self._infer({n: np.asarray(feed[n]) for n in self.input_names})
        except RunnerError:
            raise
        except Exception as e:  # a runtime refusing the inputs (a shape its graph cannot take, a dtype): say which
            raise RunnerError(f"{self.label}: {short_error(e)}") from e

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "open" if self._active else "closed"
        return f"<{type(self).__name__} {self.label!r}, {state}>"


def model_file(out_dir: str | os.PathLike, entry: GraphEntry, kind: str) -> Path:
    """The path of ``entry``'s ``kind`` file inside ``out_dir``, checked to exist (else :class:`RunnerError`) and,
    with the external data an ONNX file names, to stay inside ``out_dir`` (else :class:`UnsafePathError`)."""
    rel = entry.file(kind)
    if not rel:
        raise RunnerError(f"graph {entry.name!r} has no {kind} file in the manifest (it was not exported to {kind}); "
                          f"re-export it or leave that backend out")
    path = inside(out_dir, rel, f"graph {entry.name!r}'s {kind} file")
    if not path.is_file():
        raise RunnerError(f"{path} not found (the {kind} file of graph {entry.name!r}); the export folder is "
                          f"incomplete: re-run export_all")
    if kind == "onnx":  # the data files it names too, before a runtime opens it
        external_data.check_inside(path, out_dir)
    return path


def default_threads() -> int:
    """CPU threads to give one runner: the cores this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def cast_feed(array: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """``array`` as ``dtype``, C-contiguous, same rank (``np.ascontiguousarray`` would make a 0-d array 1-d)."""
    if dtype is not None and array.dtype != dtype:
        array = array.astype(dtype)
    return np.asarray(array, order="C")


def by_name_or_position(wanted: Sequence[str], available: Sequence[set[str]], what: str, label: str) -> list[int]:
    """Map each wanted name to the index of the port that carries it; by position when no names match at all."""
    index: list[int] = []
    for name in wanted:
        hits = [i for i, names in enumerate(available) if name in names]
        index.append(hits[0] if hits else -1)
    if all(i >= 0 for i in index):
        return index
    if all(i < 0 for i in index) and len(wanted) == len(available):
        return list(range(len(wanted)))
    missing = [n for n, i in zip(wanted, index) if i < 0]
    have = ", ".join(sorted(n for names in available for n in names)) or "(unnamed)"
    raise RunnerError(f"{label}: the model has no {what} named {', '.join(map(repr, missing))}; it has {have}. "
                      f"The manifest and the model file disagree: re-export")


def match_inputs(wanted: Sequence[str], available: Sequence[set[str]], label: str) -> list[int]:
    """Port index for each wanted input, ``-1`` for one the model dropped (unused); by position when unnamed."""
    index = [next((i for i, names in enumerate(available) if name in names), -1) for name in wanted]
    if all(i < 0 for i in index) and len(wanted) == len(available):
        return list(range(len(wanted)))
    uncovered = sorted(set(range(len(available))) - set(index))
    if uncovered:
        names = ", ".join(repr(sorted(available[i])[0]) if available[i] else f"#{i}" for i in uncovered)
        raise RunnerError(f"{label}: the model has input(s) {names} the manifest does not list "
                          f"({', '.join(wanted)}); the manifest and the model file disagree: re-export")
    return index


_LOCATION_LINE = re.compile(r"^(Exception from|Check '.*' failed at) \S+:\d+:?$")


def short_error(e: BaseException, limit: int = 400) -> str:
    """A runtime's exception as one line: ``Type: message``, OpenVINO's source-location header lines dropped."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not _LOCATION_LINE.match(ln)] or lines
    text = " ".join(useful)
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
