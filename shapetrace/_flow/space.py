"""The disk space an export needs: a lower bound from the graphs' weights (:func:`estimate`, known before anything
is written), and the :class:`~shapetrace.errors.DiskFullError` that says, when the export folder's filesystem
filled up, how much the export needed, how much is free and what to do (:func:`full_error`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .._core.diskspace import FULL_ERRNOS, free_bytes, mb
from ..errors import DiskFullError

__all__ = ["estimate", "full_error", "is_full_disk"]


def estimate(modules: Iterable[torch.nn.Module], formats: Sequence[str], compress_to_fp16: bool = False) -> int:
    """A lower bound of the bytes an export writes: each graph's weights (one module per graph, a module exported
    as two variants counted twice: each file holds its own copy) once per format, halved in an IR compressed to
    fp16. Reference inputs and outputs, the skeleton and stateful or quantized forms come on top."""
    copies = ("onnx" in formats) + ("openvino" in formats) * (0.5 if compress_to_fp16 else 1.0)
    total = 0
    for m in modules:
        total += sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()] if not t.is_meta)
    return int(total * copies)


def is_full_disk(e: BaseException) -> bool:
    """``e`` is the error of a write into a full filesystem (or quota), or shapetrace's own word for it."""
    return isinstance(e, DiskFullError) or (isinstance(e, OSError) and e.errno in FULL_ERRNOS)


def full_error(out: Path, e: BaseException, written: int, needed: int, had_export: bool) -> DiskFullError:
    """The error for an export into ``out`` that filled its filesystem after writing ``written`` bytes (its staging
    folder, already removed), ``needed`` being :func:`estimate`'s bound."""
    if isinstance(e, DiskFullError):
        cause = str(e)
    else:
        where = f" writing {Path(str(e.filename)).name}" if isinstance(e, OSError) and e.filename else ""
        cause = f"{getattr(e, 'strerror', None) or e}{where}"
    need = max(needed, written)
    free = free_bytes(out)
    try:
        total: int | None = shutil.disk_usage(out).total
    except OSError:
        total = None
    more = f"free at least {mb(need - free)} more there" if free is not None and need > free else "free space there"
    return DiskFullError(
        f"the export into {out} ran out of disk space ({cause}). It needs at least {mb(need)} there ({mb(written)} "
        f"written before the disk filled; the graphs' weights alone take {mb(needed)} in the formats asked for) and "
        f"the filesystem holding {out} has {mb(free)} free of {mb(total)}: {more}, or export into a folder on a "
        f"larger disk. Nothing of this export was kept; "
        + ("the earlier export in the folder is intact." if had_export else "the folder holds no export."))
