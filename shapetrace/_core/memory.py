"""This process's resident memory: :func:`resident_bytes` now, :class:`PeakRSS` its high-water mark over a block
(sampled in a thread). ``export_all`` measures each graph's peak with it (``peak_rss_bytes`` in the manifest); the
phase hook (:mod:`shapetrace._core.phases`) reads the RSS at each phase's start with it."""

from __future__ import annotations

import os
import threading

__all__ = ["PeakRSS", "resident_bytes"]


def resident_bytes() -> int:
    """Resident set size in bytes (``/proc/self/statm``; elsewhere the process's peak from ``getrusage``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak`` is the high-water mark in bytes."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    current = staticmethod(resident_bytes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())
