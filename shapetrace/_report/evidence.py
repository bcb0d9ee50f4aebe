"""What the HTML report shows beyond a check's metrics: the distribution of ``|got - ref|`` over every element of one
compared output, and its worst elements. :func:`summarize` makes one :class:`ErrorEvidence` from two arrays;
:class:`EvidenceLog` is the ``on_check`` hook of :func:`shapetrace.verify` that keeps one per check (a few hundred
numbers each, never the arrays).

The histogram has fixed log10 bins (:data:`EDGES`, 1e-12 .. 1e3, four per decade) so that the runtimes of one output
plot on one axis; exactly equal elements are counted apart (``exact``), NaN / inf pairs too (``nonfinite``).
The worst elements are ranked like :func:`shapetrace._verify.compare.compare_arrays` ranks ``worst_index``: NaN first,
then by how far each is beyond ``rtol * |ref|`` (the atol it alone would need).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._verify.report import ParityCheck

__all__ = ["EDGES", "ErrorSample", "ErrorEvidence", "summarize", "EvidenceLog"]

#: log10 bin edges of ``|got - ref|`` (values outside land in the first / last bin)
EDGES: tuple[float, ...] = tuple(float(x) for x in np.arange(-12.0, 3.0 + 1e-9, 0.25))


@dataclass(frozen=True)
class ErrorSample:
    """One element: its index, the runtime's value, the reference's, ``|got - ref|``."""

    index: tuple[int, ...]
    got: float
    ref: float
    abs_err: float


@dataclass(frozen=True)
class ErrorEvidence:
    """The error distribution of one check (``check`` names graph, backend, reference, input set and output)."""

    check: ParityCheck
    numel: int
    exact: int  # elements equal to the reference
    nonfinite: int  # elements where the difference is NaN or inf
    counts: tuple[int, ...]  # per bin of EDGES (len(EDGES) - 1), differences > 0 and finite
    worst: tuple[ErrorSample, ...]

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        c = self.check
        return (c.graph, c.backend, c.reference, c.input_set, c.output)


def _f64(a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.float64)
    try:
        return a.astype(np.float64)
    except (TypeError, ValueError):  # bf16 stored as a void dtype: the caller passes float32 already
        return np.asarray(a, dtype=np.float32).astype(np.float64)


def summarize(check: ParityCheck, got: Any, ref: Any, *, worst: int = 5) -> ErrorEvidence | None:
    """The :class:`ErrorEvidence` of ``got`` against ``ref`` (None when the shapes differ: nothing to bin)."""
    g, r = _f64(got), _f64(ref)
    if g.shape != r.shape:
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        both_inf = np.isinf(g) & np.isinf(r) & (np.sign(g) == np.sign(r))
        diff = np.where(both_inf, 0.0, np.abs(g - r))
    flat = diff.reshape(-1)
    finite = np.isfinite(flat)
    positive = flat[finite & (flat > 0)]
    logs = np.clip(np.log10(positive), EDGES[0], EDGES[-1] - 1e-9) if positive.size else positive
    counts, _ = np.histogram(logs, bins=np.asarray(EDGES))
    rtol = check.result.rtol if check.result is not None else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        excess = np.where(finite, flat - rtol * np.abs(r.reshape(-1)), np.inf)
    k = min(worst, flat.size)
    picked: list[int] = []
    if k:
        top = np.argpartition(-excess, k - 1)[:k] if flat.size > k else np.arange(flat.size)
        picked = sorted(top.tolist(), key=lambda i: (-excess[i], i))
        picked = [i for i in picked if flat[i] != 0 or not finite[i]]
    samples = tuple(ErrorSample(tuple(int(x) for x in np.unravel_index(i, g.shape)), float(g.reshape(-1)[i]),
                                float(r.reshape(-1)[i]), float(flat[i])) for i in picked)
    return ErrorEvidence(check, int(flat.size), int(np.count_nonzero(finite & (flat == 0))),
                         int(np.count_nonzero(~finite)), tuple(int(c) for c in counts), samples)


class EvidenceLog:
    """``verify(..., on_check=log)``: keeps one :class:`ErrorEvidence` per compared output, in check order."""

    def __init__(self, worst: int = 5) -> None:
        self.worst = worst
        self.items: list[ErrorEvidence] = []

    def __call__(self, check: ParityCheck, got: Any, ref: Any) -> None:
        ev = summarize(check, got, ref, worst=self.worst)
        if ev is not None:
            self.items.append(ev)

    def by_key(self) -> dict[tuple[str, str, str, str, str], ErrorEvidence]:
        return {e.key: e for e in self.items}
