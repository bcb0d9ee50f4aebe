"""The bench's small measuring helpers, shared by every section and bench script: the library's own metrics
(``shapetrace.psnr``, the output SNR of :mod:`shapetrace._verify.quality`, the RSS reading of
:mod:`shapetrace._core.memory`), the kernel's high-water mark (VmHWM, reset through ``clear_refs``), an RSS sampler
that also splits off the anonymous part, medians, timing and byte / dB formatting.

shapetrace is imported inside the functions that use it: bench/optimum_infer.py runs a child in optimum-intel's venv,
which has numpy but no shapetrace, and shares the plain helpers (``timed``, ``med``, ``vm_hwm``)."""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "Sampler",
    "fmt_db",
    "gb",
    "jsonable",
    "med",
    "psnr",
    "reset_hwm",
    "rss",
    "rss_split",
    "snr_db",
    "timed",
    "vm_hwm",
]

def rss() -> int:
    """Resident bytes now (:func:`shapetrace._core.memory.resident_bytes`, what ``PeakRSS`` samples)."""
    from shapetrace._core.memory import resident_bytes

    return resident_bytes()


def psnr(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """PSNR of two float images in [0, 1] (``shapetrace.psnr`` with the range fixed at 1); None if one is missing."""
    from shapetrace import psnr as _psnr

    return None if a is None or b is None else _psnr(a, b, data_range=1.0)


def snr_db(out: np.ndarray, ref: np.ndarray) -> float:
    """Output SNR in dB (:func:`shapetrace._verify.quality.snr_db`, what verify holds quantized graphs to)."""
    from shapetrace._verify.quality import snr_db as _snr_db

    return _snr_db(out, ref)


def rss_split() -> tuple[int, int]:
    """(resident, resident file-backed + shmem): statm's 2nd and 3rd fields; anonymous = the difference."""
    with open("/proc/self/statm") as f:
        parts = f.read().split()
    page = os.sysconf("SC_PAGE_SIZE")
    return int(parts[1]) * page, int(parts[2]) * page


def vm_hwm() -> int | None:
    """The kernel's resident high-water mark (``VmHWM`` of /proc/self/status), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler:
    """RSS every ``interval`` s in a thread, with its anonymous part: ``samples`` are (t, rss), ``anon`` beside."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.anon: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        total, shared = rss_split()
        self.samples.append((time.perf_counter(), total))
        self.anon.append(total - shared)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def peak(self, t0: float = float("-inf"), t1: float = float("inf")) -> int:
        return max((r for t, r in self.samples if t0 <= t <= t1), default=0)

    def peak_anon(self, t0: float = float("-inf"), t1: float = float("inf")) -> int:
        return max((a for (t, _), a in zip(self.samples, self.anon) if t0 <= t <= t1), default=0)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def gb(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e9 else f"{n / 1e6:.1f} MB"


def fmt_db(x: float | None) -> str:
    if x is None:
        return "-"
    return "exact" if x == float("inf") else f"{x:.1f} dB"


def jsonable(v: Any) -> Any:
    """``json.dumps(default=...)``: inf / nan as their repr, numpy scalars as numbers, paths as strings."""
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return repr(v)
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v) if hasattr(v, "__fspath__") else repr(v)
