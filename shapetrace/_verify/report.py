"""The records of a parity run and how they print: :class:`ParityCheck` (one output, one backend, one input set),
:class:`ParityReport` (all of them; what ``verify`` returns and stores as the manifest's ``parity``) and
:func:`render_report` (the aligned table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .._core import table
from .compare import OutputComparison

__all__ = ["ParityCheck", "ParityReport", "render_report"]


# =============================================================================================== records
@dataclass(frozen=True)
class ParityCheck:
    """One compared output: ``graph`` run on ``backend`` vs ``reference`` for one ``input_set``.

    ``result`` is None when the check could not run (the graph was not exported, the backend raised); ``error``
    then says why. ``sizes`` are the dim sizes of the input set. Truthy when it passed. ``bound`` is set for a
    quantized graph, which is held to an output SNR instead of the float tolerances: ``{"min_snr_db", "snr_db",
    "cosine", "why"}`` (``result.passed`` then says whether the SNR reached the bound).
    """

    graph: str
    backend: str
    reference: str
    input_set: str
    output: str
    result: OutputComparison | None = None
    error: str | None = None
    sizes: Mapping[str, int] = field(default_factory=dict)
    bound: Mapping[str, Any] | None = None

    #: ``backend`` / ``reference`` / ``input_set`` of a check that is about no particular one; ``output`` of a check
    #: about every output of the graph.
    NONE, EVERY = "-", "*"

    @classmethod
    def could_not_run(cls, graph: str, error: str, *, backend: str = "-", reference: str = "-", input_set: str = "-",
                      output: str = "*", sizes: Mapping[str, int] | None = None) -> "ParityCheck":
        """A check that could not run (``result`` None), and why: about every output unless ``output`` is named."""
        return cls(graph, backend, reference, input_set, output, None, error, dict(sizes or {}))

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
                "metrics": self.result.to_json() if self.result is not None else None,
                "bound": None if self.bound is None else dict(self.bound)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ParityCheck":
        m = d.get("metrics")
        return cls(d["graph"], d["backend"], d["reference"], d["input_set"], d["output"],
                   OutputComparison.from_json(m) if m else None, d.get("error"), dict(d.get("sizes") or {}),
                   d.get("bound"))


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
    #: The instruction set OpenVINO ran with (:func:`shapetrace._core.isa.cpu_isa`), "" when OpenVINO did not run.
    isa: str = ""

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
                "isa": self.isa, "checks": [c.to_json() for c in self.checks]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], out_dir: str = "") -> "ParityReport":
        return cls(tuple(ParityCheck.from_json(c) for c in d.get("checks", ())), out_dir,
                   tuple(d.get("backends", ())), tuple(d.get("notes", ())), str(d.get("isa") or ""))


# =============================================================================================== rendering
def _num(x: float | str | None, fmt: str = ".2e") -> str:
    if x is None:
        return "-"
    x = float(x)  # a figure read back from JSON may be "inf"
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
    checks = report.checks
    lines = table.render(rows, right={5, 6, 7, 8},
                         breaks={k for k in range(1, len(checks)) if checks[k].graph != checks[k - 1].graph})
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
    bounded = [c for c in report.checks if c.bound is not None]
    if bounded:
        lines.append("")
        lines.append("quantized graphs (held to an output SNR, not to float tolerances):")
        rows2 = [("graph", "backend", "vs", "inputs", "output", "SNR dB", "cos", "bound", "verdict")]
        rows2 += [(c.graph, c.backend, c.reference, c.input_set, c.output, _num(c.bound.get("snr_db"), ".1f"),
                   _num(c.bound.get("cosine"), ".6f"),
                   f">= {c.bound.get('min_snr_db'):g} dB" if c.bound.get("binding", True) else "shown only", c.verdict)
                  for c in bounded if c.bound is not None]
        lines.extend(table.render(rows2, rule=False, indent="  "))
        lines.extend(f"  {why}" for why in dict.fromkeys(str(c.bound.get("why")) for c in bounded
                                                          if c.bound is not None))
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
