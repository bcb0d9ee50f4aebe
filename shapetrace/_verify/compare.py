"""How one output is compared with its reference: tolerances by dtype, :func:`compare_arrays`, and the
:class:`OutputComparison` record it returns.

Comparison rules (:func:`compare_arrays`), per output:

- an element passes when ``|out - ref| <= atol + rtol * |ref|`` (numpy ``isclose``); the output passes when all do.
- fp16 / bf16 / f32 are cast up to float64 before subtracting, one chunk of :data:`CHUNK` elements at a time: the
  extra memory of a comparison is a few MiB whatever the outputs' size.
- bool and integer outputs are compared exactly (``atol = rtol = 0``).
- NaN never passes, not even against NaN. Metrics are computed over the other elements.
- ``inf`` equals ``inf`` of the same sign (difference 0); any other pairing with an inf fails (difference inf).
- relative error is ``|out - ref| / |ref|``; where ``ref == 0`` it is 0 if ``out == 0`` too, else inf.
- a shape mismatch is a failure with a message, never an exception.
- the result carries max abs / max rel / mean abs error, cosine similarity, the index of the worst element, and the
  ``needed_atol`` (at the rtol used) and ``needed_rtol`` (at the atol used) that would have made it pass.

Default tolerances (:data:`DEFAULT_TOLERANCES`, by the output's dtype): float32 ``atol=1e-4, rtol=1e-3``,
float16 ``atol=1e-2, rtol=1e-2``, bfloat16 ``atol=5e-2, rtol=5e-2``, float64 ``atol=1e-7, rtol=1e-6``. Measured on
every graph of :data:`shapetrace.testing.EXAMPLES` (CPU, f32): ONNX Runtime and OpenVINO differ from PyTorch by at
most 9e-6 absolute (needed atol at rtol 1e-3: 1.4e-6); against the recorded outputs the worst is img2img's
``vae.encode`` at 1.0e-4 absolute (needed atol 4.2e-5), which a rerun of the same PyTorch module misses by as much.
1% Gaussian noise on one UNet conv weight gives 1.9e-3 (cosine still 0.999998) and fails clearly.

Per-graph / per-output overrides: ``verify(..., tolerances={"unet": {"atol": 1e-3}, "unet:sample": {"rtol": 1e-2}})``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import VerifyError

__all__ = ["DEFAULT_TOLERANCES", "Tolerance", "OutputComparison", "compare_arrays", "resolve_tolerance",
           "check_tolerance_keys", "CHUNK"]


# =============================================================================================== tolerances
@dataclass(frozen=True)
class Tolerance:
    """``atol`` / ``rtol`` for one output; ``exact`` for bool / integer outputs."""

    atol: float
    rtol: float
    exact: bool = False


#: Defaults by reference output dtype (manifest dtype names). Integer and bool outputs are always exact.
DEFAULT_TOLERANCES: Mapping[str, Tolerance] = {
    "float32": Tolerance(1e-4, 1e-3),
    "float16": Tolerance(1e-2, 1e-2),
    "bfloat16": Tolerance(5e-2, 5e-2),
    "float64": Tolerance(1e-7, 1e-6),
}
_EXACT = Tolerance(0.0, 0.0, exact=True)


def _is_exact_dtype(dtype_name: str) -> bool:
    return dtype_name == "bool" or dtype_name.startswith(("int", "uint"))


def resolve_tolerance(graph: str, output: str, dtype_name: str, *, atol: float | None = None,
                      rtol: float | None = None, tolerances: Mapping[str, Mapping[str, float]] | None = None
                      ) -> Tolerance:
    """The tolerance of one output: the dtype default, then ``atol`` / ``rtol``, then ``tolerances[graph]``,
    then ``tolerances["graph:output"]`` (later wins). Integer / bool outputs are always exact."""
    if _is_exact_dtype(dtype_name):
        return _EXACT
    tol = DEFAULT_TOLERANCES.get(dtype_name, DEFAULT_TOLERANCES["float32"])
    a = tol.atol if atol is None else float(atol)
    r = tol.rtol if rtol is None else float(rtol)
    for key in (graph, f"{graph}:{output}"):
        over = (tolerances or {}).get(key)
        if over:
            a = float(over.get("atol", a))
            r = float(over.get("rtol", r))
    return Tolerance(a, r)


def check_tolerance_keys(tolerances: Mapping[str, Any] | None, graphs: Mapping[str, Sequence[str]]) -> None:
    for key, value in (tolerances or {}).items():
        graph, _, output = key.partition(":")
        if graph not in graphs or (output and output not in graphs[graph]):
            known = ", ".join(sorted(graphs)) or "(none)"
            raise VerifyError(f"tolerances key {key!r} names no graph{' output' if output else ''} of this export; "
                              f"use 'graph' or 'graph:output' (graphs: {known})")
        if not isinstance(value, Mapping) or set(value) - {"atol", "rtol"}:
            raise VerifyError(f"tolerances[{key!r}] = {value!r}: expected a dict with 'atol' and/or 'rtol'")


# =============================================================================================== comparison
@dataclass(frozen=True)
class OutputComparison:
    """How one output compares with its reference; truthy when it passes.

    ``needed_atol`` is the atol that would have passed at the ``rtol`` used, ``needed_rtol`` the rtol that would
    have passed at the ``atol`` used (inf when none would). ``worst_index`` is the element furthest beyond the
    tolerance (a NaN first, if any). ``message`` says why it failed.
    """

    passed: bool
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    needed_atol: float
    needed_rtol: float
    worst_index: tuple[int, ...] | None
    atol: float
    rtol: float
    exact: bool = False
    shape: tuple[int, ...] = ()
    ref_shape: tuple[int, ...] = ()
    nan_count: int = 0
    message: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ("passed", "max_abs", "max_rel", "mean_abs", "cosine", "needed_atol",
                                            "needed_rtol", "atol", "rtol", "exact", "nan_count", "message")}
        d = {k: _json_float(v) for k, v in d.items()}
        d.update(worst_index=list(self.worst_index) if self.worst_index is not None else None,
                 shape=list(self.shape), ref_shape=list(self.ref_shape))
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "OutputComparison":
        f = {k: _from_json_float(d[k]) for k in ("max_abs", "max_rel", "mean_abs", "cosine", "needed_atol",
                                                 "needed_rtol", "atol", "rtol")}
        wi = d.get("worst_index")
        return cls(passed=bool(d["passed"]), worst_index=tuple(wi) if wi is not None else None,
                   exact=bool(d.get("exact")), shape=tuple(d.get("shape", ())), ref_shape=tuple(d.get("ref_shape", ())),
                   nan_count=int(d.get("nan_count", 0)), message=d.get("message", ""), **f)


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _from_json_float(v: Any) -> float:
    return float(v)  # float("inf") / float("nan") read the strings back


#: Elements compared per step. The float64 temporaries of one step take about 1 MiB each, so comparing two outputs
#: costs a few MiB whatever their size (never a float64 copy of a whole output).
CHUNK = 1 << 17


def compare_arrays(out: Any, ref: Any, *, atol: float = 1e-4, rtol: float = 1e-3,
                   exact: bool | None = None, chunk: int | None = None) -> OutputComparison:
    """Compare ``out`` with the reference ``ref`` by the rules in the module docstring.

    ``exact`` defaults to whether ``ref`` is bool / integer; exact comparisons ignore ``atol`` / ``rtol``. The
    arrays are read ``chunk`` elements at a time (default :data:`CHUNK`), cast up to float64 one chunk at a time:
    the result is the one-shot result (maxima, needed tolerances, worst index and counts exactly; the mean and the
    cosine up to float64 rounding), the extra memory is bounded by the chunk, not by the arrays.
    """
    out = np.asarray(out)
    ref = np.asarray(ref)
    if exact is None:
        exact = ref.dtype.kind in "biu"
    if exact:
        atol = rtol = 0.0
    nan = float("nan")
    if out.shape != ref.shape:
        return OutputComparison(False, nan, nan, nan, nan, float("inf"), float("inf"), None, atol, rtol, exact,
                                out.shape, ref.shape, 0,
                                f"shape {_shape(out.shape)} != reference shape {_shape(ref.shape)}")
    if out.size == 0:
        return OutputComparison(True, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, None, atol, rtol, exact, out.shape, ref.shape)
    t = _Totals(exact)
    step = max(1, int(chunk or CHUNK))
    for start in range(0, out.size, step):
        t.add(start, _flat_slice(out, start, step), _flat_slice(ref, start, step), atol, rtol)
    n_valid = t.n_valid
    max_abs = t.max_abs if n_valid else nan
    max_rel = t.max_rel if n_valid else nan
    mean_abs = t.sum_abs / n_valid if n_valid else nan
    needed_atol = max(0.0, t.max_excess)
    needed_rtol = t.max_over_rtol
    cosine = t.cosine() if n_valid else nan
    nan_count = t.nan_count
    if exact:
        passed = nan_count == 0 and t.differ_valid == 0
    else:
        passed = nan_count == 0 and needed_atol <= atol
    flat = t.first_nan if nan_count else t.worst_flat
    worst = tuple(int(i) for i in np.unravel_index(flat, out.shape))
    message = ""
    if not passed:
        if nan_count:
            message = (f"{nan_count} NaN ({t.nan_out} in output, {t.nan_ref} in reference), first at {list(worst)}")
        elif exact:
            message = (f"{t.differ} of {out.size} elements differ (exact comparison); first at "
                       f"{list(worst)}: {_item(out[worst])} vs {_item(ref[worst])}")
        else:
            message = (f"max abs error {max_abs:.3g} at {list(worst)} ({_item(out[worst])} vs "
                       f"{_item(ref[worst])}) exceeds atol {atol:g} + rtol {rtol:g} * |ref|; would need atol "
                       f"{needed_atol:.3g} or rtol {needed_rtol:.3g}")
    return OutputComparison(passed, max_abs, max_rel, mean_abs, cosine, needed_atol, needed_rtol, worst, atol, rtol,
                            exact, out.shape, ref.shape, nan_count, message)


def _flat_slice(x: np.ndarray, start: int, step: int) -> np.ndarray:
    """Elements ``start:start+step`` of ``x`` in C order: a view when ``x`` is C-contiguous, else a chunk copy."""
    if x.flags.c_contiguous:
        return x.reshape(-1)[start:start + step]
    return np.asarray(x.flat[start:start + step])


class _Totals:
    """What :func:`compare_arrays` keeps across chunks: counts, maxima, the worst element, the cosine's sums."""

    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.nan_count = self.nan_out = self.nan_ref = self.n_valid = self.differ = self.differ_valid = 0
        self.first_nan = 0
        self.max_abs = self.max_rel = self.sum_abs = self.max_over_rtol = 0.0
        self.max_excess = -math.inf
        self.worst_flat, self.worst_score = 0, -math.inf
        # cosine: sums of the finite elements divided by the running scale (the largest |value| so far)
        self.all_equal = True
        self.scale = self.saa = self.sbb = self.sab = 0.0

    def add(self, start: int, o: np.ndarray, r: np.ndarray, atol: float, rtol: float) -> None:
        a = o.astype(np.float64)
        b = r.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            nan_a, nan_b = np.isnan(a), np.isnan(b)
            nan_mask = nan_a | nan_b
            same = (a == b) if not self.exact else (o == r)  # equal infs of the same sign land here too
            diff = np.where(same, 0.0, np.abs(a - b))  # an inf against anything else stays inf
            diff[nan_mask] = 0.0  # NaN elements are reported by count, the metrics cover the rest
            absref = np.abs(b)
            nonzero = absref > 0
            safe_ref = np.where(nonzero & np.isfinite(absref), absref, 1.0)
            finite_diff = ~np.isinf(diff)
            rel = np.where(diff == 0, 0.0, np.where(nonzero & finite_diff, diff / safe_ref, np.inf))
            rel[nan_mask] = 0.0
            excess = np.where(same, 0.0, diff - rtol * np.where(np.isinf(absref), 0.0, absref))
            excess[nan_mask] = 0.0
            over_rtol = np.where(diff <= atol, 0.0, np.where(nonzero & finite_diff, (diff - atol) / safe_ref, np.inf))
            over_rtol[nan_mask | same] = 0.0
        n_nan = int(nan_mask.sum())
        if n_nan and not self.nan_count:
            self.first_nan = start + int(np.argmax(nan_mask))
        self.nan_count += n_nan
        self.nan_out += int(nan_a.sum())
        self.nan_ref += int(nan_b.sum())
        self.n_valid += a.size - n_nan
        not_same = ~same
        self.differ += int(not_same.sum())
        self.differ_valid += int((not_same & ~nan_mask).sum()) if n_nan else int(not_same.sum())
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.max_rel = max(self.max_rel, float(rel.max()))
        self.sum_abs += float((diff[~nan_mask] if n_nan else diff).sum())
        self.max_excess = max(self.max_excess, float(excess.max()))
        self.max_over_rtol = max(self.max_over_rtol, float(over_rtol.max()))
        score = excess if not self.exact else diff
        i = int(np.argmax(score))
        if float(score[i]) > self.worst_score:  # strictly: the first element of the largest score wins
            self.worst_flat, self.worst_score = start + i, float(score[i])
        del diff, rel, excess, over_rtol, safe_ref, absref, score
        finite = np.isfinite(a) & np.isfinite(b)
        self._add_cosine(a[finite], b[finite])

    def _add_cosine(self, a: np.ndarray, b: np.ndarray) -> None:
        if self.all_equal and not np.array_equal(a, b):
            self.all_equal = False
        m = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)))
        if m > self.scale:
            if self.scale > 0:
                f = (self.scale / m) ** 2
                self.saa, self.sbb, self.sab = self.saa * f, self.sbb * f, self.sab * f
            self.scale = m
        if self.scale == 0.0:
            return
        a, b = a / self.scale, b / self.scale
        self.saa += float(a.dot(a))
        self.sbb += float(b.dot(b))
        self.sab += float(a.dot(b))

    def cosine(self) -> float:
        if self.all_equal or self.scale == 0.0:
            return 1.0  # identical, or both all zero: the same direction by convention
        na, nb = math.sqrt(self.saa), math.sqrt(self.sbb)
        if na == 0.0 or nb == 0.0:
            return 0.0
        return float(np.clip(self.sab / (na * nb), -1.0, 1.0))


def _item(x: Any) -> str:
    v = np.asarray(x).item()
    return format(v, ".6g") if isinstance(v, float) else repr(v)


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"
