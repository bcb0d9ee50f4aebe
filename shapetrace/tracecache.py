"""KV caches under ``torch.jit.trace``: built as the eager call builds them, and traced into ops OpenVINO converts.

Some decoders decide whether to build their KV cache with ``if use_cache and cache is None and not
torch.jit.is_tracing(): cache = DynamicCache(...)``: under TorchScript tracing (``torch.onnx.export(dynamo=False)``,
OpenVINO's PyTorch frontend) the call returns no cache, so a graph recorded with one loses those outputs on exactly the
path used when ``torch.export`` cannot trace the module. Every other ``torch.jit.is_tracing()`` test in a model
(positional tables interpolated at any size instead of the recorded one's shortcut, sizes kept as tensors) must keep
its answer, or the trace would bake the recorded sizes in.

:func:`caches_built_while_tracing` answers False to the calls made from a source line that reads a ``use_cache``
flag, and the truth to every other caller: the trace then builds the cache as the eager call did.

A cache layer starts empty as ``torch.tensor([])`` and grows by ``torch.cat([keys, new], dim=-2)``, which torch
allows only because it skips 1-D empty operands (legacy behaviour). OpenVINO's PyTorch frontend converts neither the
empty list (``SequenceMark``) nor the cat of a rank-1 operand on axis -2 (``Axis -2 out of the tensor rank
range``). While tracing, the same context drops such operands from ``torch.cat`` (what torch itself does with them),
so the empty constant leaves the graph. Nothing is changed outside a trace.
"""

from __future__ import annotations

import contextlib
import linecache
import sys
from typing import Iterator

import torch

__all__ = ["caches_built_while_tracing", "CACHE_FLAG"]

CACHE_FLAG = "use_cache"  # a line that tests this flag next to is_tracing() decides whether the cache is built


def _reads_cache_flag(depth: int) -> bool:
    frame = sys._getframe(depth + 1)
    return CACHE_FLAG in linecache.getline(frame.f_code.co_filename, frame.f_lineno)


@contextlib.contextmanager
def caches_built_while_tracing() -> Iterator[None]:
    """While a TorchScript trace runs the block, ``torch.jit.is_tracing()`` is False for a caller whose line reads
    ``use_cache`` (it builds its cache as the eager call did) and unchanged for every other caller; outside a trace,
    a no-op. Restored on exit."""
    if not torch._C._is_tracing():
        yield
        return
    original = torch.jit.is_tracing

    def is_tracing() -> bool:
        return False if _reads_cache_flag(1) else original()

    cat = torch.cat

    def cat_skipping_empty(tensors, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 -- torch.cat's own signature
        if isinstance(tensors, (list, tuple)) and any(_legacy_empty(t) for t in tensors) and \
                any(isinstance(t, torch.Tensor) and t.dim() > 1 for t in tensors):
            kept = [t for t in tensors if not _legacy_empty(t)]
            if len(kept) == 1 and not args and set(kwargs) <= {"dim"}:
                return kept[0]
            tensors = type(tensors)(kept)
        return cat(tensors, *args, **kwargs)

    torch.jit.is_tracing, torch.cat = is_tracing, cat_skipping_empty
    try:
        yield
    finally:
        torch.jit.is_tracing, torch.cat = original, cat


def _legacy_empty(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] == 0
