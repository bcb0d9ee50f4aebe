"""Re-judgments of a failed float check against PyTorch where the values at those inputs cannot tell a right export
from a wrong one (docs/verify.md): positions a padding mask marks (:func:`padding_only`) and PyTorch's own
sensitivity to ~1e-6 input noise (:func:`within_sensitivity`). Each passing re-judgment adds a note; the third, a
selection among tied scores, is :mod:`shapetrace._verify.selection`."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from .compare import OutputComparison, Tolerance, compare_arrays

__all__ = ["padding_only", "within_sensitivity"]


def padding_only(result: OutputComparison, output: str, got: np.ndarray, ref: np.ndarray,
                  feed: Mapping[str, np.ndarray], tol: Tolerance, graph: str, backend: str, set_name: str,
                  notes: list[str]) -> OutputComparison:
    """A failed comparison re-judged without the positions an attention mask input marks as padding: a 0/1 integer
    input with zeros whose shape lines up with the output's leading dims (batch, then the first later dim of the
    mask's sequence size). A left-padded token attends to nothing: its output is undefined, PyTorch and each
    runtime fill it differently (transformers' docs: outputs at padded positions are not meaningful)."""
    for mask_name, m in feed.items():
        if m.dtype.kind not in "biu" or m.ndim != 2 or not m.size or m.all() or not np.isin(m, (0, 1)).all():
            continue
        if got.shape != ref.shape or ref.ndim < 2 or ref.shape[0] != m.shape[0]:
            continue
        seq = next((ax for ax in range(1, ref.ndim) if ref.shape[ax] == m.shape[1]), None)
        if seq is None:
            continue
        keep = np.moveaxis(np.broadcast_to(np.expand_dims(m.astype(bool), tuple(range(2, ref.ndim))),
                                           (m.shape[0], m.shape[1], *[ref.shape[a] for a in range(1, ref.ndim)
                                                                     if a != seq])), 1, seq)
        inside = compare_arrays(got[keep], ref[keep], atol=tol.atol, rtol=tol.rtol)
        if inside.passed:
            notes.append(f"{graph}: output {output!r} on {backend} ({set_name} inputs) differs from PyTorch "
                         f"(max {result.max_abs:.3g}) only at positions input {mask_name!r} marks 0 (padding: a "
                         f"padded token's output is undefined); everywhere else it matches (max {inside.max_abs:.3g})")
            return dataclasses.replace(result, passed=True, message="")
    return result


def within_sensitivity(result: OutputComparison, output: str, probe: Mapping[str, np.ndarray] | None,
                        got: np.ndarray, ref: np.ndarray, graph: str, backend: str, set_name: str,
                        notes: list[str]) -> OutputComparison:
    """A failed float comparison re-judged by PyTorch's own sensitivity at these inputs: it passes when the
    runtime's largest difference is no larger than how far PyTorch's output moves when its float inputs get
    ~1e-6 noise (``inputs.perturbed``), and nothing is NaN. Said in a note: such inputs (an exactly constant
    image through a normalisation) cannot tell a right export from a wrong one by their values."""
    if probe is None or output not in probe or np.shape(probe[output]) != np.shape(ref) or result.nan_count:
        return result
    moved = float(np.max(np.abs(probe[output].astype(np.float32) - ref.astype(np.float32)), initial=0.0))
    if not (result.max_abs <= moved) or not np.isfinite(moved):
        return result
    notes.append(f"{graph}: output {output!r} on {backend} ({set_name} inputs) differs from PyTorch by "
                 f"{result.max_abs:.3g}, within how far PyTorch's own output moves ({moved:.3g}) when its float "
                 f"inputs get ~1e-6 noise: float32 does not determine the output better at these inputs (e.g. a "
                 f"normalisation of a constant input); passed on that bound, the values prove little here")
    return dataclasses.replace(result, passed=True, message="", atol=max(result.atol, moved))
