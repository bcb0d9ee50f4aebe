"""A module's Python under ``torch.jit.trace``, made to run as it runs eagerly.

The exporters that trace by running the module (``torch.onnx.export(dynamo=False)``, OpenVINO's PyTorch frontend)
take over when ``torch.export`` cannot follow it. Six things stand in their way on transformers models, each a
mechanism, none a model: three are the models' Python running otherwise under a trace (the cache, a module casting
itself, sizes as tensors), three are patterns the exporters convert wrongly or not at all (an empty cache layer,
grouped-query attention in one call, and an assignment through indices after a full slice, which OpenVINO's
frontend writes in the wrong order -- a frontend bug, not the models' Python):

- **The KV cache is not built.** ``if use_cache and cache is None and not torch.jit.is_tracing(): cache =
  DynamicCache(...)``: the traced call returns no cache, so a graph recorded with one loses those outputs. Every other
  ``torch.jit.is_tracing()`` test (positional tables interpolated at any size instead of the recorded size's
  shortcut, sizes kept as tensors) must keep its answer, or the trace would bake the recorded sizes in. So
  ``torch.jit.is_tracing()`` answers False to a caller whose source line reads a ``use_cache`` flag, and the truth to
  every other caller.
- **An empty cache layer.** A layer starts as ``torch.tensor([])`` and grows by ``torch.cat([keys, new], dim=-2)``,
  which torch allows only because it skips 1-D empty operands (legacy behaviour). OpenVINO's frontend converts
  neither the empty list (``SequenceMark``) nor a rank-1 operand on axis -2 (``Axis -2 out of the tensor rank
  range``). ``torch.cat`` drops such operands, as torch itself does with them, so the constant leaves the graph.
- **Grouped-query attention in one call.** ``scaled_dot_product_attention(..., enable_gqa=True)`` (transformers passes
  it where no mask is given: vision encoders) has no TorchScript ONNX translation (``conversion of
  scaled_dot_product_attention not implemented if enable_gqa is True``). The key and value heads are repeated to the
  query's count first, which is what ``enable_gqa`` means, and the call goes on without it.
- **A module casts itself.** ``self.classifier = self.classifier.to(self.dtype)`` in ``forward`` (a router kept in
  float32): under ``torch.export`` the weights are fake tensors, which ``Module.to`` swaps in place, and the swap
  fails (``_apply(): Couldn't swap Linear.weight``) even when nothing changes. ``Module.to`` returns the module
  untouched when every parameter and buffer already has the dtype and device asked for, as it would be after it.
- **Sizes are tensors.** The tracer hands out sizes as 0-d tensors, and ``round(size * scale, 7)`` then fails (``type
  Tensor doesn't define __round__``). A 0-d tensor rounds as the number it holds (the trace records it as a
  constant, as it does for ``int(size)``).
- **An assignment through indices after a full slice.** ``position_ids[:, b, mask] = positions`` (multimodal rotary
  positions) is an ``index_put`` whose first index is "every row": OpenVINO's frontend writes the values in the
  wrong order there (the ``[3, n]`` values land as if they were ``[n, 3]``). Every full slice in front becomes an
  index of its own (``arange`` over that dim), a 1-D boolean mask its ``nonzero()`` positions, so the assignment
  has only indices, the form both frontends translate right; the same elements get the same values.

:func:`traced_as_run` installs them while a TorchScript trace runs the block, and the second and the fourth under
``torch.export`` too (OpenVINO converting the exported program meets the same empty operand); otherwise it changes
nothing.
"""

from __future__ import annotations

import contextlib
import linecache
import sys
from typing import Any, Iterator

import torch

__all__ = ["traced_as_run", "CACHE_FLAG"]

CACHE_FLAG = "use_cache"  # a line that tests this flag next to is_tracing() decides whether the cache is built


def _reads_cache_flag(depth: int) -> bool:
    frame = sys._getframe(depth + 1)
    return CACHE_FLAG in linecache.getline(frame.f_code.co_filename, frame.f_lineno)


def _legacy_empty(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] == 0


def _sdpa_heads_repeated(sdpa: Any) -> Any:
    def attention(query, key, value, *args, enable_gqa: bool = False, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if enable_gqa and key.dim() >= 3 and key.shape[-3] != query.shape[-3]:
            groups = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(groups, dim=-3), value.repeat_interleave(groups, dim=-3)
        return sdpa(query, key, value, *args, **kwargs)
    return attention


def _to_unless_already(to: Any) -> Any:
    def module_to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        device, dtype, _non_blocking, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        if memory_format is None:
            tensors = [*self.parameters(), *self.buffers()]
            if all((device is None or t.device == device)
                   and (dtype is None or t.dtype == dtype or not (t.is_floating_point() or t.is_complex()))
                   for t in tensors):
                return self  # nothing would change: no swap of (fake) weights
        return to(self, *args, **kwargs)
    return module_to


def _round(t: torch.Tensor, ndigits: int | None = None) -> Any:
    if t.dim() != 0:
        raise TypeError(f"type Tensor of shape {tuple(t.shape)} doesn't define __round__ method")
    return round(t.item(), ndigits)


def _full_slice(k: object) -> bool:
    return isinstance(k, slice) and k.start is None and k.stop is None and k.step is None


def _only_indices(self: torch.Tensor, key: object) -> tuple | None:
    """``key`` with its leading full slices as ``arange`` indices and 1-D masks as positions, or None where the
    key is not "full slices, then only ints and 1-D integer / boolean tensors"."""
    if not isinstance(key, tuple) or not key or not _full_slice(key[0]):
        return None
    lead = next((i for i, k in enumerate(key) if not _full_slice(k)), len(key))
    rest = key[lead:]
    if not rest or not any(isinstance(k, torch.Tensor) for k in rest):
        return None
    indices = []
    for k in rest:
        if isinstance(k, bool) or not isinstance(k, (int, torch.Tensor)):
            return None
        if isinstance(k, int):
            k = torch.tensor(k, device=self.device)
        elif k.dtype == torch.bool:
            if k.dim() != 1:
                return None
            k = k.nonzero().squeeze(-1)
        elif k.is_floating_point() or k.is_complex():
            return None
        indices.append(k)
    if lead + len(indices) > self.dim():
        return None
    shape = torch.broadcast_shapes(*(k.shape for k in indices))
    front = [torch.arange(self.shape[d], device=self.device).view(-1, *[1] * (lead - d - 1 + len(shape)))
             for d in range(lead)]
    return (*front, *(k.expand(shape).view(*[1] * lead, *shape) if shape else k for k in indices))


def _setitem_by_indices(setitem: Any) -> Any:
    def __setitem__(self: torch.Tensor, key: Any, value: Any) -> None:  # noqa: N807 -- Tensor's own dunder
        indices = _only_indices(self, key)
        if indices is None:
            return setitem(self, key, value)
        value = value.to(self.dtype) if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=self.dtype)
        self.index_put_(indices, value)
        return None
    return __setitem__


@contextlib.contextmanager
def traced_as_run() -> Iterator[None]:
    """While a TorchScript trace runs the block: ``torch.jit.is_tracing()`` is False for a caller whose line reads
    ``use_cache``, ``torch.cat`` skips 1-D empty operands next to real ones, grouped-query attention repeats its key
    and value heads instead of passing ``enable_gqa``, an assignment after a full slice indexes every dim, and a 0-d
    tensor can be ``round``-ed
    (see the module docstring); under ``torch.export`` and the trace, ``Module.to`` leaves a module alone when
    nothing would change. Otherwise a no-op. Restored on exit."""
    tracing = torch._C._is_tracing()
    if not tracing and not torch.compiler.is_exporting():
        yield
        return
    is_tracing, cat = torch.jit.is_tracing, torch.cat
    had_round = "__round__" in vars(torch.Tensor) or not tracing

    def cache_is_built() -> bool:
        return False if _reads_cache_flag(1) else is_tracing()

    def cat_skipping_empty(tensors, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 -- torch.cat's own signature
        if isinstance(tensors, (list, tuple)) and any(_legacy_empty(t) for t in tensors) and \
                any(isinstance(t, torch.Tensor) and t.dim() > 1 for t in tensors):
            tensors = type(tensors)(t for t in tensors if not _legacy_empty(t))  # a copy still, never an alias
        return cat(tensors, *args, **kwargs)

    sdpa, module_to = torch.nn.functional.scaled_dot_product_attention, torch.nn.Module.to
    torch.cat = cat_skipping_empty
    torch.nn.Module.to = _to_unless_already(module_to)
    setitem, had_setitem = torch.Tensor.__setitem__, "__setitem__" in vars(torch.Tensor)
    if tracing:
        torch.jit.is_tracing = cache_is_built
        torch.nn.functional.scaled_dot_product_attention = _sdpa_heads_repeated(sdpa)
        torch.Tensor.__setitem__ = _setitem_by_indices(setitem)
    if not had_round:
        torch.Tensor.__round__ = _round
    try:
        yield
    finally:
        torch.jit.is_tracing, torch.cat = is_tracing, cat
        if had_setitem:
            torch.Tensor.__setitem__ = setitem
        elif tracing:
            del torch.Tensor.__setitem__
        torch.nn.functional.scaled_dot_product_attention, torch.nn.Module.to = sdpa, module_to
        if not had_round:
            del torch.Tensor.__round__
