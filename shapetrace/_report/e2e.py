"""End to end: run the whole pipeline again on each runtime (:func:`shapetrace.load`) and compare its final images
with PyTorch's. :func:`images_of` finds the images in a pipeline's output; :func:`compare_runtimes` runs and
measures; the HTML report shows the result side by side with an amplified difference map.

Images are found in diffusers outputs (``.images``; ``.frames`` for video pipelines: each frame is an image), PIL
images, lists of them, and arrays / tensors shaped ``HxWxC`` / ``NxHxWxC`` (C in 1, 3, 4) or ``NxCxHxW``; as
float arrays in ``0..1`` (uint8 / 0..255 values are scaled down). At most :data:`MAX_IMAGES` per output.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._verify.images import max_abs_diff, psnr
from .._record.recording import to_numpy
from .._serve.runtime import load
from .._sources.sources import describe_error

__all__ = ["MAX_IMAGES", "RuntimeImages", "images_of", "compare_runtimes"]

MAX_IMAGES = 4


@dataclass(frozen=True)
class RuntimeImages:
    """One run of the pipeline: ``name`` is ``torch`` (the reference) or a backend; ``images`` float HxWxC in 0..1.

    ``psnr`` / ``max_abs`` are against the reference (None for the reference itself, or when the run failed:
    ``error`` says why).
    """

    name: str
    images: tuple[np.ndarray, ...]
    psnr: float | None = None
    max_abs: float | None = None
    error: str | None = None


def _image_array(a: np.ndarray) -> list[np.ndarray]:
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4) and min(a.shape[:2]) >= 8:
        a = a.astype(np.float64)
        if a.max(initial=0.0) > 1.0 + 1e-6:
            a = a / 255.0
        return [a]
    if a.ndim >= 4:
        return [img for frame in a[:MAX_IMAGES] for img in _image_array(frame)]
    return []


def images_of(output: Any, depth: int = 0) -> list[np.ndarray]:
    """The images in a pipeline's output, as float HxWxC arrays in 0..1 (empty when there is none)."""
    if depth > 3 or output is None:
        return []
    if hasattr(output, "size") and hasattr(output, "mode") and hasattr(output, "convert"):  # PIL
        return _image_array(np.asarray(output.convert("RGB")))
    if isinstance(output, torch.Tensor):
        return _image_array(to_numpy(output.detach().float().cpu()))
    if isinstance(output, np.ndarray):
        return _image_array(output) if output.dtype.kind in "fiub" else []
    for attr in ("images", "frames", "image"):
        if not isinstance(output, (list, tuple)) and hasattr(output, attr):
            return images_of(getattr(output, attr), depth + 1)
    if isinstance(output, (list, tuple)):
        found: list[np.ndarray] = []
        for item in output:
            found.extend(images_of(item, depth + 1))
            if len(found) >= MAX_IMAGES:
                break
        return found[:MAX_IMAGES]
    return []


def _measure(name: str, images: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> RuntimeImages:
    if len(images) != len(ref) or any(a.shape != b.shape for a, b in zip(images, ref)):
        return RuntimeImages(name, tuple(images), error=f"{len(images)} images of shapes "
                             f"{[a.shape for a in images]}, the reference has {[b.shape for b in ref]}")
    db = psnr(np.stack(images), np.stack(ref), data_range=1.0)
    return RuntimeImages(name, tuple(images), db if not math.isnan(db) else None,
                         max_abs_diff(np.stack(images), np.stack(ref)))


def compare_runtimes(obj: Any, out_dir: str | Path, run: Callable[[], Any], reference_output: Any,
                     backends: Sequence[str]) -> list[RuntimeImages]:
    """PyTorch's images (from ``reference_output``), then each backend's: ``run()`` again inside
    ``load(obj, out_dir, backend=b)``, its images and their PSNR against PyTorch's. Empty when the output holds no
    image. A backend that fails is listed with its ``error``, never raised."""
    ref = images_of(reference_output)
    if not ref:
        return []
    results = [RuntimeImages("torch", tuple(ref))]
    for backend in backends:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with load(obj, out_dir, backend=backend, strict=False):
                    output = run()
            results.append(_measure(backend, images_of(output), ref))
        except Exception as e:  # the report shows it; the parity checks already decide the exit status
            results.append(RuntimeImages(backend, (), error=describe_error(e)))
    return results
