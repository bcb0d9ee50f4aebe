"""Ops PyTorch runs that a runtime refuses, rewritten while exporting into the same computation it accepts.

One so far, a mechanism, not a model:

- **An average pool wider than its input.** ``nn.AvgPool2d(kernel, ceil_mode=True)`` with the kernel as wide as
  the channels (an EfficientNet-style head pooling a 1x1 map with a 64- or 2560-wide kernel): PyTorch gives one
  window, the mean of the whole map; OpenVINO's shape inference refuses a kernel larger than the dim (``Kernel
  after dilation has size (dim: 64)``), at every size. Exported, such a pool is that mean (``mean`` over the two
  spatial dims, kept), under the guard that the map fits in one window (``height <= kernel``), which the
  export records as a constraint.

:func:`portable_ops` installs the rewrites while ``torch.export`` or a TorchScript trace runs the block; otherwise
it changes nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

__all__ = ["portable_ops"]


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v) if len(v) == 2 else (v[0], v[0])  # type: ignore[return-value]


def _one_window(avg_pool2d: Any) -> Any:
    def pool(input: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,  # noqa: A002 -- torch's
             ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: Any = None) -> torch.Tensor:
        kernel = _pair(kernel_size)
        steps = kernel if stride is None or stride == [] or stride == () else _pair(stride)
        if ceil_mode and _pair(padding) == (0, 0) and divisor_override is None and steps == kernel \
                and input.dim() >= 3 and input.shape[-2] <= kernel[0] and input.shape[-1] <= kernel[1]:
            return input.mean(dim=(-2, -1), keepdim=True)  # the one window PyTorch averages: the whole map
        return avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return pool


@contextlib.contextmanager
def portable_ops() -> Iterator[None]:
    """While ``torch.export`` or a TorchScript trace runs the block, an average pool whose one window covers the
    whole map is exported as its mean (see the module docstring). Otherwise a no-op. Restored on exit."""
    if not torch._C._is_tracing() and not torch.compiler.is_exporting():
        yield
        return
    avg_pool2d = torch.nn.functional.avg_pool2d
    torch.nn.functional.avg_pool2d = _one_window(avg_pool2d)
    try:
        yield
    finally:
        torch.nn.functional.avg_pool2d = avg_pool2d
