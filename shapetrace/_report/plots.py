"""The pictures of the HTML report, as PNG bytes: :func:`histogram_png` (the error distribution of each runtime of
one output, with the tolerance applied and the one needed), :func:`image_png` and :func:`difference_png` (an
amplified ``|a - b|`` map). Matplotlib (the ``report`` extra) draws them, off screen (Agg), imported on first use.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np

from .._core.optional import require
from .evidence import EDGES, ErrorEvidence

__all__ = ["histogram_png", "image_png", "difference_png"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "report", "the HTML report")
    matplotlib.use("Agg", force=True)
    return require("matplotlib.pyplot", "report", "the HTML report")


def _png(fig: Any, plt: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def histogram_png(evidence: Sequence[ErrorEvidence], title: str = "") -> bytes:
    """One axis, one step line per check (``backend vs reference, input set``): how many elements differ by how
    much (log10 of ``|got - ref|``); dashed: the atol applied, dotted: the atol that would have been needed.
    Elements that are exactly equal are counted in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 2.6))
    centers = (np.asarray(EDGES[:-1]) + np.asarray(EDGES[1:])) / 2
    lo, hi = len(EDGES), 0
    for i, ev in enumerate(evidence):
        c = ev.check
        color = _COLORS[i % len(_COLORS)]
        counts = np.asarray(ev.counts)
        nz = np.nonzero(counts)[0]
        if nz.size:
            lo, hi = min(lo, int(nz[0])), max(hi, int(nz[-1]) + 1)
        label = f"{c.backend} vs {c.reference}, {c.input_set}: {ev.exact}/{ev.numel} exact"
        if ev.nonfinite:
            label += f", {ev.nonfinite} nan/inf"
        ax.step(centers, counts, where="mid", color=color, label=label, linewidth=1.4)
        r = c.result
        if r is not None and not r.exact:
            if r.atol > 0:
                ax.axvline(math.log10(r.atol), color=color, linestyle="--", linewidth=0.9)
            if r.needed_atol > 0 and math.isfinite(r.needed_atol):
                ax.axvline(math.log10(r.needed_atol), color=color, linestyle=":", linewidth=1.2)
    if hi > lo:
        ax.set_xlim(EDGES[max(lo - 2, 0)], EDGES[min(hi + 2, len(EDGES) - 1)])
        tol = [math.log10(e.check.result.atol) for e in evidence if e.check.result and e.check.result.atol > 0]
        if tol:
            ax.set_xlim(min(ax.get_xlim()[0], min(tol) - 0.5), max(ax.get_xlim()[1], max(tol) + 0.5))
    else:
        ax.set_xlim(-8, -2)
    ax.set_xlabel("log10 |runtime - reference|   (dashed: atol applied, dotted: atol needed)")
    ax.set_ylabel("elements")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    return _png(fig, plt)


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a[..., :3] if a.ndim == 3 else a


def image_png(image: np.ndarray) -> bytes:
    """An HxWxC float image in 0..1 as PNG."""
    plt = _pyplot()
    buf = io.BytesIO()
    plt.imsave(buf, _rgb(image), format="png")
    return buf.getvalue()


def difference_png(image: np.ndarray, reference: np.ndarray) -> tuple[bytes, float]:
    """``(png, factor)``: the largest channel difference per pixel, multiplied by ``factor`` so that the worst pixel
    is at full scale (``factor`` 1 when the images are equal), in the ``magma`` colour map."""
    plt = _pyplot()
    d = np.abs(_rgb(image) - _rgb(reference))
    d = d.max(axis=-1) if d.ndim == 3 else d
    top = float(d.max(initial=0.0))
    factor = 1.0 / top if top > 0 else 1.0
    buf = io.BytesIO()
    plt.imsave(buf, np.clip(d * factor, 0.0, 1.0), format="png", cmap="magma", vmin=0.0, vmax=1.0)
    return buf.getvalue(), factor
