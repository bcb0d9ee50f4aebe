"""Named phases of a long operation, reported to whoever listens: the export marks its steps (``prepare``,
``torch.export``, the ONNX writer, ``onnx.checker``, OpenVINO's converter ...) with ``with phase("torch.export"):``
(or ``@phase(...)`` on a function), and a listener installed for a block receives one frozen :class:`Phase` per
finished phase, nested ones included::

    from shapetrace._core import phases

    seen = []
    with phases.listen(seen.append):
        shapetrace.export_all(pipe, "out")
    for p in seen:
        print(p.name, p.seconds, p.rss_start)

This is how ``bench/`` times the export's steps without patching anything. With no listener a phase costs one
list check. Listeners are process-wide (the export runs in one thread); a listener that raises is not shielded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .memory import resident_bytes

__all__ = ["Phase", "listen", "phase"]


@dataclass(frozen=True)
class Phase:
    """One finished phase: ``start`` / ``end`` are ``time.perf_counter()`` values, ``rss_start`` the resident
    bytes when it began."""

    name: str
    start: float
    end: float
    rss_start: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


_listeners: list[Callable[[Phase], None]] = []


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Mark the block (or, as a decorator, each call of the function) as the phase ``name``."""
    if not _listeners:
        yield
        return
    start, rss = time.perf_counter(), resident_bytes()
    try:
        yield
    finally:
        done = Phase(name, start, time.perf_counter(), rss)
        for listener in tuple(_listeners):
            listener(done)


@contextlib.contextmanager
def listen(callback: Callable[[Phase], None]) -> Iterator[None]:
    """Call ``callback(Phase)`` for every phase that finishes inside the block."""
    _listeners.append(callback)
    try:
        yield
    finally:
        _listeners.remove(callback)
