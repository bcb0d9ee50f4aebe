"""Disk space: whether a failure means the filesystem being written is full (:func:`is_full`, :func:`raise_if_full`),
and how much a folder holds and its filesystem has free (:func:`tree_bytes`, :func:`free_bytes`).

A full disk does not always say so: ``onnx.save`` raises ``OSError(ENOSPC)``, but OpenVINO's ``save_model`` raises
``RuntimeError: basic_ios::clear: iostream error``, and the code around the writers would take that for one graph
failing (and commit an export without it over a complete one), and removes what it wrote. So a failure also
counts as a full disk when the filesystem it wrote to has less left than the write wanted (``wanted``: a graph's
weights), or less than :data:`NEARLY_FULL_BYTES`.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from ..errors import DiskFullError

__all__ = ["FULL_ERRNOS", "NEARLY_FULL_BYTES", "is_full", "raise_if_full", "free_bytes", "tree_bytes", "mb"]

#: The errors a write into a full filesystem (or a full quota) raises.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: A filesystem with less than this left is taken as full when a write into it failed.
NEARLY_FULL_BYTES = 1 << 20


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and all(e is not s for s in seen):
        seen.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return seen


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged write may still use on the filesystem holding ``path`` (its nearest existing parent);
    None when that cannot be read."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def tree_bytes(path: str | os.PathLike) -> int:
    """The bytes of the regular files under ``path`` (a file counts itself; gone: 0)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    total = 0
    for root, _, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                continue
    return total


def is_full(e: BaseException, folder: str | os.PathLike, wanted: int = 0) -> bool:
    """``e`` (or what it wraps) is ``ENOSPC`` / ``EDQUOT``, or says so, or ``folder``'s filesystem has less free than
    ``wanted`` bytes (what the failed write was to write) or :data:`NEARLY_FULL_BYTES`."""
    for x in _chain(e):
        if isinstance(x, DiskFullError) or (isinstance(x, OSError) and x.errno in FULL_ERRNOS):
            return True
        if "No space left on device" in str(x) or "Disk quota exceeded" in str(x):
            return True
    free = free_bytes(folder)
    return free is not None and free < max(NEARLY_FULL_BYTES, wanted)


def raise_if_full(e: BaseException, folder: str | os.PathLike, what: str, wanted: int = 0) -> None:
    """Raise :class:`DiskFullError` (from ``e``) when ``e`` came from a full disk (:func:`is_full`); the export
    that catches it (``staged``) says how much space it needed."""
    if isinstance(e, DiskFullError):
        raise e  # named where it happened
    if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
        raise DiskFullError(f"{what}: {e.strerror or e}") from e
    if is_full(e, folder, wanted):
        text = " ".join(str(e).split())[:300]
        raise DiskFullError(f"{what}: the disk filled up ({type(e).__name__}: {text})") from e


def mb(n: int | None) -> str:
    """``n`` bytes for a message: ``"3.2 MB"``; ``"unknown"`` for None."""
    if n is None:
        return "unknown"
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"
