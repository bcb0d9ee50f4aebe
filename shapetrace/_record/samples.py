"""Calibration samples: the real inputs of up to N calls per graph, kept on disk while recording.

``shapetrace.record(obj, samples=N)`` gives the recorder a :class:`SampleStore`; every graph then keeps the flat
inputs (tensor leaves, and numeric scalars such as a varying ``conditioning_scale``) of at most ``N`` of its calls,
one ``.npz`` per call, written as the call finishes -- never held in RAM (a full-size UNet call is ~10 MB).

Which calls (:meth:`SampleStore.wants`): **every k-th call of the graph, counting across every run of the record
block**, k the smallest power of two that keeps at most N: calls 0, 1, 2, ... while they fit; when call N would
be one too many, k doubles and the kept calls whose index is not a multiple of the new k are deleted. The calls
kept are thus evenly spread over the whole block (the first call, index 0, is always one), the choice is
deterministic, and a graph called M times writes each kept call once (about ``N * log2(M / N)`` writes in all).
Each sample keeps the index of the call it came from (0 = the graph's first call).

The store owns a temporary folder (deleted with the store, or at exit); :meth:`SampleStore.save` copies the kept
files into ``<dir>/samples/`` with an index ``samples.json``, and :meth:`SampleStore.load` reads such a folder
back (it then reads the files in place and deletes nothing).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from ..errors import RecordingError, SignatureFileError
from .._core.files import FORMAT_VERSION, load_npz, read_json, save_npz, write_json

__all__ = ["CallSample", "SampleStore", "SAMPLES_DIR", "SAMPLES_INDEX", "stride_for", "arrays_of"]

SAMPLES_DIR = "samples"
SAMPLES_INDEX = "samples.json"


@dataclass(frozen=True)
class CallSample:
    """One kept call of one graph: the index of the call (0 = first) and the ``.npz`` that holds its inputs."""

    graph: str
    call: int
    path: Path

    def arrays(self) -> dict[str, np.ndarray]:
        """The call's flat inputs by flat name (tensor leaves, and numeric scalars as 0-d arrays)."""
        return load_npz(self.path, f"calibration sample {self.call} of graph {self.graph!r}",
                        error=SignatureFileError)


def stride_for(calls: int, limit: int) -> int:
    """The stride k (a power of two) once ``calls`` calls were seen, so that at most ``limit`` are kept."""
    k = 1
    while (calls - 1) // k + 1 > limit:
        k *= 2
    return k


def arrays_of(leaves: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The leaves a sample keeps, as numpy: tensors (bf16 widened to f32), arrays and int / float / bool scalars."""
    out: dict[str, np.ndarray] = {}
    for name, v in leaves.items():
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            out[name] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        elif isinstance(v, np.ndarray):
            out[name] = v
        elif isinstance(v, (bool, int, float)):
            out[name] = np.asarray(v)
    return out


def _stem(graph: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in graph)


class SampleStore:
    """Up to ``limit`` calls per graph, chosen by :meth:`wants`, one ``.npz`` each under ``root`` (thread-safe)."""

    def __init__(self, limit: int, root: str | os.PathLike | None = None,
                 kept: Mapping[str, Mapping[int, Path]] | None = None, calls: Mapping[str, int] | None = None) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise RecordingError(f"samples={limit!r}: pass a positive number of calls to keep per graph")
        self.limit = limit
        self._lock = threading.Lock()
        self._kept: dict[str, dict[int, Path]] = {g: dict(v) for g, v in (kept or {}).items()}
        self._calls: dict[str, int] = dict(calls or {})
        if root is None:
            self.root = Path(tempfile.mkdtemp(prefix="shapetrace-samples-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.root), True)
        else:
            self.root = Path(root)
            self._cleanup = None

    # ------------------------------------------------------------------------------------------ recording
    def wants(self, graph: str, call: int) -> bool:
        """Whether call number ``call`` (0-based) of ``graph`` is one to keep (see the module docstring)."""
        return call % stride_for(call + 1, self.limit) == 0

    def add(self, graph: str, call: int, leaves: Mapping[str, Any]) -> None:
        """Count call ``call`` of ``graph``; write its inputs if it is one to keep, dropping calls the new stride
        leaves out."""
        with self._lock:
            self._calls[graph] = max(self._calls.get(graph, 0), call + 1)
        if not self.wants(graph, call):
            return
        folder = self.root / _stem(graph)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"call-{call:06d}.npz"
        save_npz(path, arrays_of(leaves))
        with self._lock:
            kept = self._kept.setdefault(graph, {})
            kept[call] = path
            k = stride_for(self._calls[graph], self.limit)
            for old in [c for c in kept if c % k]:
                kept.pop(old).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ reading
    def graphs(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._kept)

    def samples(self, graph: str) -> tuple[CallSample, ...]:
        """The kept calls of ``graph``, by call index (empty when none were kept)."""
        with self._lock:
            kept = dict(self._kept.get(graph, {}))
        return tuple(CallSample(graph, c, kept[c]) for c in sorted(kept))

    def calls_seen(self, graph: str) -> int:
        with self._lock:
            return self._calls.get(graph, 0)

    def __iter__(self) -> Iterator[CallSample]:
        for g in self.graphs():
            yield from self.samples(g)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._kept.values())

    def __repr__(self) -> str:
        return f"<SampleStore up to {self.limit} calls per graph, {len(self)} kept in {self.root}>"

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Copy the kept calls into ``directory/samples/<graph>/call-NNNNNN.npz`` plus ``samples.json``."""
        out = Path(directory) / SAMPLES_DIR
        out.mkdir(parents=True, exist_ok=True)
        index = {"format_version": FORMAT_VERSION, "limit": self.limit, "graphs": {}}
        for g in self.graphs():
            folder = out / _stem(g)
            folder.mkdir(exist_ok=True)
            entries = []
            for s in self.samples(g):
                target = folder / s.path.name
                if s.path.resolve() != target.resolve():
                    shutil.copyfile(s.path, target)
                entries.append({"call": s.call, "file": f"{_stem(g)}/{s.path.name}"})
            index["graphs"][g] = {"calls_seen": self.calls_seen(g), "samples": entries}
        write_json(out / SAMPLES_INDEX, index)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "SampleStore | None":
        """The store saved in ``directory`` (a recording folder), or None when it holds no ``samples/``."""
        root = Path(directory) / SAMPLES_DIR
        if not (root / SAMPLES_INDEX).exists():
            return None
        data = read_json(root / SAMPLES_INDEX, what="calibration samples index")
        try:
            kept = {g: {int(e["call"]): root / e["file"] for e in v["samples"]} for g, v in data["graphs"].items()}
            calls = {g: int(v.get("calls_seen", 0)) for g, v in data["graphs"].items()}
            store = cls(int(data["limit"]), root=root, kept=kept, calls=calls)
        except (KeyError, TypeError, ValueError) as e:
            raise SignatureFileError(f"{root / SAMPLES_INDEX} is malformed ({e}); save the recording again") from e
        missing = [str(p) for v in kept.values() for p in v.values() if not p.is_file()]
        if missing:
            raise SignatureFileError(f"{missing[0]} not found (a calibration sample listed in {SAMPLES_INDEX}); the "
                                     f"recording folder is incomplete: save the recording again")
        return store
