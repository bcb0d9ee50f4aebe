"""Image-level comparisons of a pipeline's final output: :func:`psnr` and :func:`max_abs_diff`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._record.recording import to_numpy

__all__ = ["psnr", "max_abs_diff"]


def _as_array(x: Any) -> np.ndarray:
    """An image / array / tensor / list of images as a float64 array (PIL images as 0..255)."""
    if isinstance(x, torch.Tensor):
        return to_numpy(x).astype(np.float64)
    if isinstance(x, (list, tuple)):
        return np.stack([_as_array(v) for v in x])
    return np.asarray(x, dtype=np.float64)


def _data_range(a: np.ndarray, b: np.ndarray) -> float:
    top = max(float(a.max(initial=0.0)), float(b.max(initial=0.0)))
    return 255.0 if top > 1.0 else 1.0


def psnr(a: Any, b: Any, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio of ``a`` against ``b`` in dB (``inf`` when identical).

    ``a`` / ``b``: arrays, tensors, PIL images or lists of them, same shape. ``data_range`` defaults to 1.0 for
    values in [0, 1] (``output_type="np"``) and 255 otherwise (PIL images, uint8 arrays).
    """
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"psnr: shapes differ, {x.shape} vs {y.shape}")
    rng = float(data_range) if data_range is not None else _data_range(x, y)
    mse = float(np.mean((x - y) ** 2)) if x.size else 0.0
    if not math.isfinite(mse):
        return float("nan")
    return float("inf") if mse == 0 else 10.0 * math.log10(rng * rng / mse)


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest ``|a - b|`` (same conventions as :func:`psnr`)."""
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"max_abs_diff: shapes differ, {x.shape} vs {y.shape}")
    return float(np.max(np.abs(x - y))) if x.size else 0.0
