"""Prove that the exported graphs compute what PyTorch computes: comparison rules, :class:`ParityReport`, verify().

``verify(out_dir)`` runs every exported graph of an export folder on ONNX Runtime and OpenVINO (f32) and compares
each output with a reference, on two input sets per graph:

``example``
    the recorded example inputs (``<graph>.inputs.npz``).
``resized``
    new inputs that change every dynamic dim to another valid size (ranges and constraints respected:
    :func:`alternative_sizes`). Float inputs are drawn from a normal distribution with the example's mean and
    std; integer inputs (token ids, timesteps) uniformly within the recorded ``value_range``; constant inputs stay
    constant; masks (0/1 inputs named ``*mask*``) are ones followed by zeros, like padding. Seeded: the same
    folder always gives the same inputs.

The reference is PyTorch when the live object is passed (``verify(out_dir, pipe)``: the module is run through the
graph's flat wrapper on both sets, and also checked against the recorded outputs). From the folder alone, the
recorded ``<graph>.outputs.npz`` is the reference on ``example``, and on ``resized`` the first backend is the
reference of the others (with a single backend, ``resized`` only proves that the graph runs without NaN).

Comparison rules (:func:`compare_arrays`), per output:

- an element passes when ``|out - ref| <= atol + rtol * |ref|`` (numpy ``isclose``); the output passes when all do.
- fp16 / bf16 / f32 are cast up to float64 before subtracting.
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

import ast
import contextlib
import json
import math
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import SignatureFileError, VerifyError

__all__ = ["DEFAULT_TOLERANCES", "Tolerance", "OutputComparison", "ParityCheck", "ParityReport", "compare_arrays",
           "resolve_tolerance", "load_manifest", "resized_inputs", "alternative_sizes", "verify", "render_report"]

MANIFEST = "manifest.json"


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


def _check_tolerance_keys(tolerances: Mapping[str, Any] | None, graphs: Mapping[str, Sequence[str]]) -> None:
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


def compare_arrays(out: Any, ref: Any, *, atol: float = 1e-4, rtol: float = 1e-3,
                   exact: bool | None = None) -> OutputComparison:
    """Compare ``out`` with the reference ``ref`` by the rules in the module docstring.

    ``exact`` defaults to whether ``ref`` is bool / integer; exact comparisons ignore ``atol`` / ``rtol``.
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
    a = out.astype(np.float64)
    b = ref.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        nan_mask = np.isnan(a) | np.isnan(b)
        same = (a == b) if not exact else (out == ref)  # equal infs of the same sign land here too
        diff = np.where(same, 0.0, np.abs(a - b))  # an inf against anything else stays inf
        diff[nan_mask] = 0.0  # NaN elements are reported by count, the metrics cover the rest
        absref = np.abs(b)
        safe_ref = np.where((absref > 0) & np.isfinite(absref), absref, 1.0)
        inf_diff = np.isinf(diff)
        rel = np.where(diff == 0, 0.0, np.where((absref > 0) & ~inf_diff, diff / safe_ref, np.inf))
        rel[nan_mask] = 0.0
        valid = ~nan_mask
        n_valid = int(valid.sum())
        excess_atol = np.where(same, 0.0, diff - rtol * np.where(np.isinf(absref), 0.0, absref))
        excess_atol[nan_mask] = 0.0
        over_rtol = np.where(diff <= atol, 0.0, np.where((absref > 0) & ~inf_diff, (diff - atol) / safe_ref, np.inf))
        over_rtol[nan_mask | same] = 0.0
    nan_count = int(nan_mask.sum())
    max_abs = float(diff.max()) if n_valid else nan
    max_rel = float(rel.max()) if n_valid else nan
    mean_abs = float(diff[valid].mean()) if n_valid else nan
    needed_atol = max(0.0, float(excess_atol.max()))
    needed_rtol = float(over_rtol.max())
    cosine = _cosine(a[valid], b[valid]) if n_valid else nan
    if exact:
        passed = nan_count == 0 and bool(same[valid].all())
    else:
        passed = nan_count == 0 and needed_atol <= atol
    if nan_count:
        worst = tuple(int(i) for i in np.argwhere(nan_mask)[0])
    else:
        score = excess_atol if not exact else diff
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(score)), score.shape))
    message = ""
    if not passed:
        if nan_count:
            message = (f"{nan_count} NaN ({int(np.isnan(a).sum())} in output, {int(np.isnan(b).sum())} in "
                       f"reference), first at {list(worst)}")
        elif exact:
            message = (f"{int((~same).sum())} of {out.size} elements differ (exact comparison); first at "
                       f"{list(worst)}: {_item(out[worst])} vs {_item(ref[worst])}")
        else:
            message = (f"max abs error {max_abs:.3g} at {list(worst)} ({_item(out[worst])} vs "
                       f"{_item(ref[worst])}) exceeds atol {atol:g} + rtol {rtol:g} * |ref|; would need atol "
                       f"{needed_atol:.3g} or rtol {needed_rtol:.3g}")
    return OutputComparison(passed, max_abs, max_rel, mean_abs, cosine, needed_atol, needed_rtol, worst, atol, rtol,
                            exact, out.shape, ref.shape, nan_count, message)


def _item(x: Any) -> str:
    v = np.asarray(x).item()
    return format(v, ".6g") if isinstance(v, float) else repr(v)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    if np.array_equal(a, b):
        return 1.0 if a.size and np.any(a) else 1.0
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)))
    if scale == 0.0:
        return 1.0  # both all zero: the same direction by convention
    a, b = a / scale, b / scale
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


# =============================================================================================== records
@dataclass(frozen=True)
class ParityCheck:
    """One compared output: ``graph`` run on ``backend`` vs ``reference`` for one ``input_set``.

    ``result`` is None when the check could not run (the graph was not exported, the backend raised); ``error``
    then says why. ``sizes`` are the dim sizes of the input set. Truthy when it passed.
    """

    graph: str
    backend: str
    reference: str
    input_set: str
    output: str
    result: OutputComparison | None = None
    error: str | None = None
    sizes: Mapping[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None and self.result is not None and self.result.passed

    @property
    def verdict(self) -> str:
        if self.error is not None or self.result is None:
            return "ERROR"
        return "pass" if self.result.passed else "FAIL"

    def __bool__(self) -> bool:
        return self.passed

    @property
    def message(self) -> str:
        return self.error or (self.result.message if self.result is not None else "")

    @property
    def where(self) -> str:
        """``graph 'unet' output 'sample' on onnxruntime vs torch (resized inputs)``."""
        out = f" output {self.output!r}" if self.output not in ("", "-", "*") else ""
        on = f" on {self.backend} vs {self.reference}" if self.backend != "-" else ""
        inputs = f" ({self.input_set} inputs)" if self.input_set != "-" else ""
        return f"graph {self.graph!r}{out}{on}{inputs}"

    def to_json(self) -> dict:
        return {"graph": self.graph, "backend": self.backend, "reference": self.reference,
                "input_set": self.input_set, "output": self.output, "verdict": self.verdict,
                "sizes": dict(self.sizes), "error": self.error,
                "metrics": self.result.to_json() if self.result is not None else None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ParityCheck":
        m = d.get("metrics")
        return cls(d["graph"], d["backend"], d["reference"], d["input_set"], d["output"],
                   OutputComparison.from_json(m) if m else None, d.get("error"), dict(d.get("sizes") or {}))


@dataclass(frozen=True)
class ParityReport:
    """Every check of one verify() run. Truthy only if there was at least one check and every check passed.

    ``str(report)`` is an aligned table (:func:`render_report`); ``to_json()`` is what verify() writes into the
    manifest's ``"parity"``.
    """

    checks: tuple[ParityCheck, ...]
    out_dir: str = ""
    backends: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.checks) and all(self.checks)

    @property
    def passed(self) -> bool:
        return bool(self)

    @property
    def failures(self) -> tuple[ParityCheck, ...]:
        """The checks that failed or could not run, in report order."""
        return tuple(c for c in self.checks if not c)

    def worst(self) -> ParityCheck | None:
        """The failing check to name first: checks that could not run, then NaN / inf, then the float output
        furthest outside its tolerance (needed atol / atol), then exact (bool / int) mismatches, which usually
        follow from a float error upstream."""
        def badness(c: ParityCheck) -> tuple[int, float]:
            r = c.result
            if c.error is not None or r is None:
                return (4, 0.0)
            if r.nan_count or not math.isfinite(r.needed_atol):
                return (3, 0.0)
            if not r.exact:
                return (2, r.needed_atol / r.atol if r.atol > 0 else r.needed_atol)
            return (1, r.mean_abs)

        fails = self.failures
        return max(fails, key=badness) if fails else None

    def summary(self) -> str:
        """One line: ``parity ok: 24 checks passed`` or ``parity FAILED: ... worst: graph ... : message``."""
        if not self.checks:
            return "parity FAILED: nothing was compared"
        if self:
            return f"parity ok: {len(self.checks)} checks passed"
        w = self.worst()
        assert w is not None
        return (f"parity FAILED: {len(self.failures)} of {len(self.checks)} checks; worst: {w.where}: "
                f"{w.message}")

    def __str__(self) -> str:
        return render_report(self)

    def to_json(self) -> dict:
        return {"passed": bool(self), "backends": list(self.backends), "num_checks": len(self.checks),
                "num_failures": len(self.failures), "summary": self.summary(), "notes": list(self.notes),
                "checks": [c.to_json() for c in self.checks]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], out_dir: str = "") -> "ParityReport":
        return cls(tuple(ParityCheck.from_json(c) for c in d.get("checks", ())), out_dir,
                   tuple(d.get("backends", ())), tuple(d.get("notes", ())))


# =============================================================================================== rendering
def _num(x: float | None, fmt: str = ".2e") -> str:
    if x is None:
        return "-"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return format(x, fmt)


def render_report(report: ParityReport) -> str:
    """The aligned table (graph, backend, reference, inputs, output, errors, cosine, needed atol, verdict), the dim
    sizes of each input set, the message of every failing check, then notes and the summary line."""
    head = ("graph", "backend", "vs", "inputs", "output", "max abs", "max rel", "cos", "need atol", "verdict")
    rows = [head]
    for c in report.checks:
        r = c.result
        if r is None:
            metrics = ("-", "-", "-", "-")
        else:
            metrics = (_num(r.max_abs), _num(r.max_rel), _num(r.cosine, ".6f"), _num(r.needed_atol))
        rows.append((c.graph, c.backend, c.reference, c.input_set, c.output) + metrics + (c.verdict,))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    numeric = {5, 6, 7, 8}

    def fmt(row: Sequence[str]) -> str:
        cells = [v.rjust(w) if i in numeric and row is not head else v.ljust(w)
                 for i, (v, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    previous = None
    for c, row in zip(report.checks, rows[1:]):
        if previous is not None and c.graph != previous:
            lines.append("")
        previous = c.graph
        lines.append(fmt(row))
    sizes: dict[tuple[str, str], Mapping[str, int]] = {}
    for c in report.checks:
        if c.sizes and c.input_set != "-":
            sizes.setdefault((c.graph, c.input_set), c.sizes)
    if sizes:
        lines.append("")
        lines.append("dim sizes:")
        width = max(len(f"{g} {s}") for g, s in sizes)
        lines.extend(f"  {f'{g} {s}'.ljust(width)}  " + ", ".join(f"{k}={v}" for k, v in dims.items())
                     for (g, s), dims in sizes.items())
    failures = report.failures
    if failures:
        lines.append("")
        lines.extend(f"{c.verdict}: {c.where}: {c.message}" for c in failures)
    if report.notes:
        lines.append("")
        lines.extend(f"note: {n}" for n in report.notes)
    lines.append("")
    lines.append(report.summary())
    return "\n".join(lines)


# =============================================================================================== manifest
def load_manifest(out_dir: str | os.PathLike) -> dict:
    """Read and check ``out_dir/manifest.json`` (:class:`SignatureFileError` when missing, corrupt or too new)."""
    from .recording import read_json

    path = Path(out_dir) / MANIFEST
    if Path(out_dir).is_dir() is False and not path.exists():
        raise SignatureFileError(f"{out_dir} is not a folder: pass the folder export_all() wrote")
    data = read_json(path, what="export manifest")
    graphs = data.get("graphs")
    if not isinstance(graphs, list):
        raise SignatureFileError(f"{path} has no 'graphs' list; re-create it with export_all")
    for i, g in enumerate(graphs):
        if not isinstance(g, dict) or not isinstance(g.get("name"), str):
            raise SignatureFileError(f"{path}: graph entry #{i} has no name; re-create it with export_all")
        if g.get("error") is None:
            missing = [k for k in ("files", "inputs", "outputs") if not isinstance(g.get(k), (dict, list))]
            if missing:
                raise SignatureFileError(f"{path}: graph {g['name']!r} lacks {', '.join(missing)}; re-create it "
                                         f"with export_all")
    return data


def _write_parity(out_dir: Path, report: ParityReport) -> None:
    """Rewrite the manifest with ``parity`` set: temp file beside it + os.replace."""
    path = out_dir / MANIFEST
    data = json.loads(path.read_text())
    data["parity"] = report.to_json()
    text = json.dumps(data, indent=2)
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load_npz(out_dir: Path, entry: Mapping[str, Any], kind: str) -> dict[str, np.ndarray]:
    rel = (entry.get("files") or {}).get(kind)
    if not rel:
        raise VerifyError(f"graph {entry['name']!r} names no {kind} file in the manifest; re-run export_all")
    path = out_dir / rel
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise VerifyError(f"{path} not found (the example {kind} of graph {entry['name']!r}); the export folder is "
                          f"incomplete: re-run export_all") from None
    except (OSError, ValueError, zlib.error) as e:
        raise VerifyError(f"{path} is not a readable .npz ({e}); re-run export_all") from e


# =============================================================================================== input sets
_FLOAT_NP = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32, "float64": np.float64}


def resized_inputs(entry: Mapping[str, Any], example: Mapping[str, np.ndarray], sizes: Mapping[str, int],
                   seed: int = 0) -> dict[str, np.ndarray]:
    """A new input set for ``entry`` with dynamic dims set to ``sizes`` (rules in the module docstring)."""
    rng = np.random.default_rng([seed, zlib.crc32(str(entry["name"]).encode())])
    feed: dict[str, np.ndarray] = {}
    for spec in entry["inputs"]:
        name, dtype = spec["name"], spec["dtype"]
        ex = np.asarray(example[name]) if name in example else None
        shape = []
        for d, s in enumerate(spec["shape"]):
            if isinstance(s, int):
                shape.append(s)
            elif s in sizes:
                shape.append(int(sizes[s]))
            else:  # an unnamed / expression dim: keep the example's size
                shape.append(int(spec["example_shape"][d]))
        feed[name] = _draw(rng, name, dtype, tuple(shape), ex, spec.get("value_range"))
    return feed


def _draw(rng: np.random.Generator, name: str, dtype: str, shape: tuple[int, ...], ex: np.ndarray | None,
          value_range: Sequence[float] | None) -> np.ndarray:
    if dtype in _FLOAT_NP:
        np_dtype = _FLOAT_NP[dtype]
        if ex is None or ex.size == 0:
            return rng.standard_normal(shape).astype(np_dtype)
        exf = ex.astype(np.float64)
        if np.all(exf == exf.flat[0]):
            return np.full(shape, exf.flat[0], dtype=np_dtype)
        if _is_mask(name, exf):
            return _mask(rng, shape).astype(np_dtype)
        mean, std = float(np.nanmean(exf)), float(np.nanstd(exf))
        return rng.normal(mean, std if math.isfinite(std) and std > 0 else 1.0, shape).astype(np_dtype)
    if dtype == "bool":
        if ex is not None and ex.size and np.all(ex == ex.flat[0]):
            return np.full(shape, bool(ex.flat[0]))
        return _mask(rng, shape) if "mask" in name.lower() else rng.integers(0, 2, shape).astype(bool)
    np_dtype = np.dtype(dtype) if dtype.startswith(("int", "uint")) else np.int64
    if value_range is not None:
        lo, hi = int(value_range[0]), int(value_range[1])
    elif ex is not None and ex.size:
        lo, hi = int(ex.min()), int(ex.max())
    else:
        lo, hi = 0, 1
    if lo == hi:
        return np.full(shape, lo, dtype=np_dtype)
    if ex is not None and _is_mask(name, ex.astype(np.float64)):
        return _mask(rng, shape).astype(np_dtype)
    return rng.integers(lo, hi + 1, shape).astype(np_dtype)


def _is_mask(name: str, ex: np.ndarray) -> bool:
    return "mask" in name.lower() and bool(np.isin(ex, (0.0, 1.0)).all())


def _mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Ones then zeros along the last axis (at least one 1 per row), like a padded attention mask."""
    if not shape:
        return np.ones((), dtype=bool)
    n = shape[-1]
    lengths = rng.integers(max(1, n // 2), n + 1, shape[:-1]) if n else np.zeros(shape[:-1], dtype=np.int64)
    return np.arange(n) < np.asarray(lengths)[..., None]


# The resized input set needs another valid size for every dynamic dim. Dims tied by an equality
# (``height == 1 + (-1 + controlnet_cond_height) // 8``) are derived from the others instead of searched; the free
# dims are searched depth first, nearest candidates first, each constraint checked as soon as its dims are known.
_SAFE_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Name, ast.Load, ast.Constant,
               ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not, ast.And,
               ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


@dataclass(frozen=True)
class _Expr:
    text: str
    names: frozenset[str]
    code: Any

    def __call__(self, values: Mapping[str, int]) -> Any:
        return eval(self.code, {"__builtins__": {}, "_max": max, "_min": min}, dict(values))  # noqa: S307 - whitelisted


_MINMAX = {"max": "_max", "Max": "_max", "sym_max": "_max", "min": "_min", "Min": "_min", "sym_min": "_min"}


class _MinMax(ast.NodeTransformer):
    """``torch.sym_max(a, b)`` / ``Max(a, b)`` / ``max(a, b)`` -> ``_max(a, b)`` (same for min)."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "torch" \
            else f.id if isinstance(f, ast.Name) else None
        if name in _MINMAX and node.args and not node.keywords:
            return ast.Call(ast.Name(_MINMAX[name], ast.Load()), node.args, [])
        return node


def _compile_expr(text: str, node: ast.AST | None = None) -> _Expr | None:
    """Compile an arithmetic / comparison expression over dim names; None if it holds anything else."""
    try:
        tree = ast.Expression(node) if node is not None else ast.parse(text, mode="eval")
    except SyntaxError:
        return None
    tree = _MinMax().visit(tree)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    if any(not (isinstance(c.func, ast.Name) and c.func.id in ("_max", "_min")) for c in calls):
        return None
    if not all(isinstance(n, _SAFE_NODES + (ast.Call,)) for n in ast.walk(tree)):
        return None
    if any(isinstance(n, ast.Constant) and not isinstance(n.value, int) for n in ast.walk(tree)):
        return None
    names = frozenset(n.id for n in ast.walk(tree) if isinstance(n, ast.Name)) - {"_max", "_min"}
    return _Expr(text, names, compile(ast.fix_missing_locations(tree), "<constraint>", "eval"))


def _holds(expr: _Expr, values: Mapping[str, int]) -> bool:
    try:
        return bool(expr(values))
    except (ZeroDivisionError, ArithmeticError, NameError):
        return False


def _candidates(info: Mapping[str, Any]) -> list[int]:
    ex = int(info["example"])
    lo = max(1, int(info.get("min") or 1))
    hi = info.get("max")
    near = [ex + 1, ex - 1, ex + 2, ex - 2, ex + 3, ex - 3, ex + 4, ex - 4, ex + 8, ex - 8, ex * 2, ex // 2,
            ex + 16, ex * 3 // 2, ex * 4, ex // 4, ex * 8, ex // 8]
    out: list[int] = []
    for v in near:
        if v != ex and v >= lo and (hi is None or v <= int(hi)) and v not in out:
            out.append(v)
    return out


def alternative_sizes(entry: Mapping[str, Any], budget: int = 200_000) -> dict[str, int] | None:
    """Another valid size for every dynamic dim of a manifest graph entry (ranges and constraints respected).

    Every dim changes where the constraints allow it; a dim that cannot change keeps its example size. Returns
    None when the graph has no dynamic dim or no dim can change.
    """
    dims = {n: info for n, info in (entry.get("dims") or {}).items() if isinstance(info, Mapping)}
    if not dims:
        return None
    constraints = []
    for text in entry.get("constraints") or ():
        e = _compile_expr(text)
        if e is not None and e.names <= set(dims):
            constraints.append(e)
    # equalities "name == expr" make `name` a function of other dims
    derived: dict[str, _Expr] = {}
    for e in constraints:
        node = ast.parse(e.text, mode="eval").body
        if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
            continue
        for lhs, rhs in ((node.left, node.comparators[0]), (node.comparators[0], node.left)):
            if isinstance(lhs, ast.Name) and lhs.id not in derived:
                f = _compile_expr(ast.unparse(rhs), rhs)
                if f is not None and lhs.id not in f.names and f.names and not (f.names & set(derived)) \
                        and not any(lhs.id in g.names for g in derived.values()):
                    derived[lhs.id] = f
                    break
    free = [n for n in dims if n not in derived]
    cands = {n: _candidates(dims[n]) for n in free}
    examples = {n: int(info["example"]) for n, info in dims.items()}
    steps = [0]

    def complete(values: dict[str, int], allow_same: bool) -> dict[str, int] | None:
        for name, f in derived.items():
            if name not in values and f.names <= values.keys():
                try:
                    values[name] = int(f(values))
                except (ZeroDivisionError, ArithmeticError):
                    return None
                info = dims[name]
                if values[name] < max(1, int(info.get("min") or 1)) or (
                        info.get("max") is not None and values[name] > int(info["max"])):
                    return None
                if not allow_same and values[name] == examples[name]:
                    return None
        return values

    def search(i: int, values: dict[str, int], allow_same: bool) -> dict[str, int] | None:
        steps[0] += 1
        if steps[0] > budget:
            return None
        if i == len(free):
            return dict(values)
        name = free[i]
        options = cands[name] + ([examples[name]] if allow_same else [])
        for v in options or [examples[name]]:
            trial = complete({**values, name: v}, allow_same)
            if trial is None:
                continue
            new = trial.keys() - values.keys()
            if any(e.names & new and e.names <= trial.keys() and not _holds(e, trial) for e in constraints):
                continue
            found = search(i + 1, trial, allow_same)
            if found is not None:
                return found
        return None

    result = search(0, {}, allow_same=False)
    if result is None:
        steps[0] = 0
        result = search(0, {}, allow_same=True)
    if result is None or all(result[n] == examples[n] for n in dims):
        return None
    return {n: result[n] for n in dims}


def _input_sizes(entry: Mapping[str, Any], feed: Mapping[str, np.ndarray]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for spec in entry["inputs"]:
        arr = feed.get(spec["name"])
        if arr is None:
            continue
        for d, s in enumerate(spec["shape"]):
            if isinstance(s, str) and d < arr.ndim:
                sizes.setdefault(s, int(arr.shape[d]))
    return sizes


# =============================================================================================== verify
def _live_module(obj: Any, entry: Mapping[str, Any]) -> Any:
    """The graph's flat wrapper around the live module of ``obj`` (forward(*inputs) -> tuple of outputs)."""
    from .export import flat_module
    from .walker import parse_path, resolve

    try:
        _, _, module = resolve(obj, parse_path(entry["module"]))
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise VerifyError(f"graph {entry['name']!r}: no module at {entry['module']!r} in this "
                          f"{type(obj).__name__} ({e}); pass the object the export was made from") from e
    cls = entry.get("class")
    if cls:
        from .tree import qualname

        if qualname(type(module)) != cls:
            raise VerifyError(f"graph {entry['name']!r}: the module at {entry['module']!r} is a "
                              f"{type(module).__name__}, the export was made from a {cls.rsplit(':', 1)[-1]}; "
                              f"pass the object the export was made from")
    return flat_module(module, entry)


def _error_line(e: BaseException) -> str:
    from .backends.base import short_error

    return short_error(e)


def _module_device(module: Any) -> str:
    for t in list(module.parameters())[:1] + list(module.buffers())[:1]:
        return str(t.device)
    return "cpu"


def verify(out_dir: str | os.PathLike, obj: Any = None, *, backends: Iterable[str] = ("onnxruntime", "openvino"),
           atol: float | None = None, rtol: float | None = None,
           tolerances: Mapping[str, Mapping[str, float]] | None = None, graphs: Iterable[str] | None = None,
           device: str = "CPU", threads: int | None = None, seed: int = 0, write: bool = True) -> ParityReport:
    """Run every exported graph in ``out_dir`` on ``backends`` and compare with a reference (module docstring).

    Args:
        out_dir: a folder written by :func:`shapetrace.export_all`.
        obj: the live object the export was made from; makes PyTorch the reference on both input sets.
        backends: any of ``"onnxruntime"``, ``"openvino"`` (OpenVINO runs with ``INFERENCE_PRECISION_HINT=f32``).
            A backend for which the export holds no file at all is left out, with a note.
        atol, rtol: override the float defaults of :data:`DEFAULT_TOLERANCES` for every float output.
        tolerances: per graph / per output overrides, applied after ``atol`` / ``rtol``; keys are a graph name or
            ``"graph:output"``, values ``{"atol": ..., "rtol": ...}`` (either key optional)::

                verify(out, tolerances={"unet": {"atol": 1e-3}, "vae.decode:sample": {"rtol": 1e-2}})

        graphs: check only these graphs (default: all).
        device, threads: passed to the runners (``"CPU"``; threads default to the usable cores, at most 8).
        seed: seeds the ``resized`` input set.
        write: store the report as the manifest's ``"parity"`` (atomic rewrite).

    Returns the :class:`ParityReport` (truthy when every check passed). Raises :class:`SignatureFileError` for a
    missing / corrupt / newer manifest, :class:`VerifyError` for missing or corrupt model and data files or bad
    arguments, ``ImportError`` naming the extra to install when a backend's runtime is missing.
    """
    from . import backends as be

    out = Path(out_dir)
    manifest = load_manifest(out)
    entries = list(manifest["graphs"])
    _check_tolerance_keys(tolerances, {e["name"]: [o["name"] for o in e.get("outputs") or ()] for e in entries})
    if graphs is not None:
        wanted = [graphs] if isinstance(graphs, str) else list(graphs)
        unknown = [g for g in wanted if g not in {e["name"] for e in entries}]
        if unknown:
            raise VerifyError(f"graphs={unknown!r} are not in this export; it holds "
                              f"{', '.join(e['name'] for e in entries)}")
        entries = [e for e in entries if e["name"] in wanted]
    backends = tuple(backends)
    bad = [b for b in backends if b not in be.BACKENDS]
    if bad or not backends:
        raise VerifyError(f"backends={backends!r}: choose from {', '.join(be.BACKENDS)}")
    notes: list[str] = []
    usable = []
    for b in backends:
        kind = be.FILE_KIND[b]
        if any((e.get("files") or {}).get(kind) for e in entries):
            usable.append(b)
        elif any(e.get("error") is None for e in entries):
            notes.append(f"{b}: the export holds no {kind} files; not checked")
    for b in usable:  # fail early, before any work, when a runtime is missing
        (be.onnxruntime_backend.import_onnxruntime if b == "onnxruntime" else be.openvino_backend.import_openvino)()
    if not usable and any(e.get("error") is None for e in entries):
        raise VerifyError(f"nothing to compare in {out}: no graph has a file for {', '.join(backends)}")

    checks: list[ParityCheck] = []
    for entry in entries:
        checks.extend(_verify_graph(out, entry, obj, usable, atol, rtol, tolerances, device, threads, seed, notes))
    report = ParityReport(tuple(checks), str(out), tuple(usable), tuple(notes))
    if write:
        _write_parity(out, report)
    return report


def _verify_graph(out: Path, entry: Mapping[str, Any], obj: Any, backends: Sequence[str], atol: float | None,
                  rtol: float | None, tolerances: Mapping[str, Any] | None, device: str, threads: int | None,
                  seed: int, notes: list[str]) -> list[ParityCheck]:
    from . import backends as be

    name = entry["name"]
    err = entry.get("error")
    if err is not None:
        text = f"not exported: {err.get('type', 'error')}: {err.get('message', '')}" if isinstance(err, Mapping) \
            else f"not exported: {err}"
        return [ParityCheck(name, "-", "-", "-", "-", None, text)]
    output_names = [o["name"] for o in entry["outputs"]]
    dtypes = {o["name"]: o.get("dtype", "float32") for o in entry["outputs"]}
    example = _load_npz(out, entry, "inputs")
    missing = [i["name"] for i in entry["inputs"] if i["name"] not in example]
    if missing:
        raise VerifyError(f"{out / entry['files']['inputs']} lacks input(s) {', '.join(map(repr, missing))} of "
                          f"graph {name!r}; re-run export_all")
    sets: list[tuple[str, dict[str, np.ndarray]]] = [("example", example)]
    sizes = alternative_sizes(entry)
    if sizes:
        sets.append(("resized", resized_inputs(entry, example, sizes, seed)))
    else:
        notes.append(f"{name}: no dynamic dim can change; checked on the example inputs only")
    recorded = _load_npz(out, entry, "outputs")
    torch_runner = None
    if obj is not None:
        module = _live_module(obj, entry)
        torch_runner = be.open_runner("torch", out, entry, device=_module_device(module), module=module)
    runners = [be.open_runner(b, out, entry, device=device, threads=threads)
               for b in backends if (entry.get("files") or {}).get(be.FILE_KIND[b])]
    ran = {r.name for r in runners}
    checks: list[ParityCheck] = []
    for b in backends:
        if b not in ran:
            checks.append(ParityCheck(name, b, "-", "-", "*", None,
                                      f"no {be.FILE_KIND[b]} file for this graph in the manifest"))

    def compare(backend: str, reference: str, set_name: str, got: Mapping[str, np.ndarray],
                ref: Mapping[str, np.ndarray], set_sizes: Mapping[str, int]) -> None:
        for o in output_names:
            tol = resolve_tolerance(name, o, dtypes[o], atol=atol, rtol=rtol, tolerances=tolerances)
            if o not in ref:
                checks.append(ParityCheck(name, backend, reference, set_name, o, None,
                                          f"the reference has no output {o!r}", set_sizes))
                continue
            result = compare_arrays(got[o], ref[o], atol=tol.atol, rtol=tol.rtol, exact=tol.exact)
            checks.append(ParityCheck(name, backend, reference, set_name, o, result, None, set_sizes))

    stack = contextlib.ExitStack()
    with stack:
        if torch_runner is not None:
            stack.enter_context(torch_runner)
        for r in runners:
            stack.enter_context(r)  # a missing / corrupt file raises VerifyError here: the folder is unusable
        for set_name, feed in sets:
            set_sizes = _input_sizes(entry, feed)
            reference_name, reference = None, None
            if torch_runner is not None:
                try:
                    reference_name, reference = "torch", torch_runner.infer(feed)
                except Exception as e:  # the live module cannot run the flat call: say so, fall back
                    checks.append(ParityCheck(name, "torch", "-", set_name, "*", None, _error_line(e), set_sizes))
                    reference_name, reference = None, None
                if reference is not None and set_name == "example":  # the live module still computes the export
                    compare("torch", "recorded", set_name, reference, recorded, set_sizes)
            if reference is None and set_name == "example":
                reference_name, reference = "recorded", recorded
            results: list[tuple[str, dict[str, np.ndarray]]] = []
            for r in runners:
                try:
                    got = r.infer(feed)
                except Exception as e:  # a runtime rejecting the inputs (static shapes, ...) is a failed check
                    checks.append(ParityCheck(name, r.name, reference_name or "-", set_name, "*", None,
                                              _error_line(e), set_sizes))
                    continue
                results.append((r.name, got))
            if reference is None and results:  # resized without torch: the first backend is the reference
                reference_name, reference = results[0]
                if len(results) == 1:
                    compare(reference_name, "self", set_name, reference, reference, set_sizes)
                    notes.append(f"{name}: resized inputs ran on {reference_name} only; checked for NaN, not values")
                results = results[1:]
            for backend, got in results:
                compare(backend, reference_name or "-", set_name, got, reference, set_sizes)
    return checks
