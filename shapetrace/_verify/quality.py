"""How close a quantized graph stays to the float one: output SNR (dB) and cosine, pooled over calls, and the bound
a quantized graph is held to instead of float tolerances.

- ``snr_db = 10 log10(sum ref^2 / sum (out - ref)^2)`` over every element of every call measured (``inf`` when
  identical; ``-inf`` / NaN never pass). 20 dB means the error carries 1 % of the reference's energy, 30 dB 0.1 %.
- ``cosine`` of the flattened outputs, pooled the same way.
- :data:`DEFAULT_MIN_SNR_DB` (20 dB) is the default bound: a quantized graph passes when every float output's
  SNR against the float reference is at least the bound (and it holds no NaN). int8 rounding of weights and
  activations is an error of its own kind -- about 1e-2 relative, spread over every element -- that no float
  atol / rtol describes; SNR measures it as the energy it takes from the output, whatever the output's scale.

:class:`QualityMeter` accumulates the sums call by call (nothing but a few floats kept per output).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .compare import OutputComparison
from ..errors import VerifyError
from .._core.isa import CpuIsa
from ..manifest import GraphEntry
from .report import ParityCheck

__all__ = ["DEFAULT_MIN_SNR_DB", "OutputQuality", "QualityMeter", "snr_db", "bound_text", "quantized_bound",
           "judge", "held_out_checks", "isa_notes"]

#: The bound a quantized graph's output SNR vs the float graph must reach (dB); override per export / verify.
DEFAULT_MIN_SNR_DB = 20.0


def _db(signal: float, noise: float) -> float:
    if math.isnan(signal) or math.isnan(noise):
        return float("nan")
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


def snr_db(out: np.ndarray, ref: np.ndarray) -> float:
    """Output SNR of ``out`` against ``ref`` in dB (float64 sums)."""
    o, r = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return _db(float(np.sum(r * r)), float(np.sum((o - r) ** 2)))


@dataclass(frozen=True)
class OutputQuality:
    """One output of a quantized graph against the float graph, pooled over ``calls`` calls."""

    output: str
    snr_db: float
    cosine: float
    max_abs: float
    calls: int

    def passes(self, min_snr_db: float) -> bool:
        return not math.isnan(self.snr_db) and self.snr_db >= min_snr_db

    def to_json(self) -> dict:
        return {"snr_db": _num(self.snr_db), "cosine": _num(self.cosine), "max_abs": _num(self.max_abs),
                "calls": self.calls}

    @classmethod
    def from_json(cls, output: str, d: Mapping[str, Any]) -> "OutputQuality":
        return cls(output, float(d["snr_db"]), float(d["cosine"]), float(d.get("max_abs", "nan")),
                   int(d.get("calls", 0)))


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else repr(float(x))  # JSON has no inf / nan: "inf", "-inf", "nan" (float() reads them)


class QualityMeter:
    """Feed ``add(got, ref)`` per call (output name -> array); ``result()`` gives one :class:`OutputQuality` each."""

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}  # signal, noise, dot, |got|^2, max abs, calls

    def add(self, got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> None:
        for name, r in ref.items():
            r64 = np.asarray(r, dtype=np.float64)
            if not np.issubdtype(np.asarray(r).dtype, np.floating):
                continue  # integer / bool outputs are not quantized
            g64 = np.asarray(got[name], dtype=np.float64)
            s = self._sums.setdefault(name, [0.0, 0.0, 0.0, 0.0, 0.0, 0])
            if g64.shape != r64.shape:
                s[1] = float("nan")
                s[5] += 1
                continue
            diff = g64 - r64
            s[0] += float(np.sum(r64 * r64))
            s[1] += float(np.sum(diff * diff))
            s[2] += float(np.sum(g64 * r64))
            s[3] += float(np.sum(g64 * g64))
            s[4] = max(s[4], float(np.max(np.abs(diff)))) if diff.size else s[4]
            s[5] += 1

    def result(self) -> dict[str, OutputQuality]:
        out = {}
        for name, (sig, noise, dot, got2, mx, calls) in self._sums.items():
            denom = math.sqrt(sig * got2)
            cos = dot / denom if denom > 0 else (1.0 if sig == got2 == 0 else 0.0)
            out[name] = OutputQuality(name, _db(sig, noise), cos, mx, int(calls))
        return out


def bound_text(min_snr_db: float, mode: str) -> str:
    """What a quantized check is held to, and why (printed in verify's report)."""
    return (f"SNR >= {min_snr_db:g} dB vs the float reference: graph quantized ({mode}), not held to float "
            f"tolerances")


# ============================================================================================ verify's side
def quantized_bound(entry: GraphEntry, min_snr_db: float | Mapping[str, float] | None) -> float | None:
    """The SNR bound (dB) ``entry``'s OpenVINO checks are held to, or None when its IR is float (not quantized,
    kept float, or quantization failed). ``min_snr_db``: verify's override (one value, or per graph); default
    the bound the export recorded."""
    q = entry.quantization
    if not q or not q.get("mode") or q.get("kept_float") or q.get("error"):
        return None
    if isinstance(min_snr_db, Mapping):
        min_snr_db = min_snr_db.get(entry.name)
    bound = q.get("min_snr_db", DEFAULT_MIN_SNR_DB) if min_snr_db is None else min_snr_db
    try:
        return float(bound)
    except (TypeError, ValueError):
        raise VerifyError(f"min_snr_db={bound!r} for graph {entry.name!r}: pass a number of dB") from None


#: Why the ``resized`` set of a quantized graph is not held to the SNR bound.
SYNTHETIC = ("resized inputs are synthetic (drawn around the example's statistics, random token ids), outside the "
             "calibration distribution: a quantized graph is checked there for shape and NaN, its SNR shown only")


def judge(result: OutputComparison, got: np.ndarray, ref: np.ndarray, min_snr_db: float, mode: str,
          binding: bool = True) -> tuple[OutputComparison, dict]:
    """``result`` (float metrics, kept for the report) re-judged by the SNR bound: passes when the shapes match,
    nothing is NaN and (``binding``: real recorded inputs) the SNR reaches ``min_snr_db``."""
    same = np.shape(got) == np.shape(ref)
    snr = snr_db(got, ref) if same else float("nan")
    ok = same and not result.nan_count and (not binding or (not math.isnan(snr) and snr >= min_snr_db))
    message = "" if ok else (result.message if not same or result.nan_count else
                             f"output SNR {snr:.1f} dB < {min_snr_db:g} dB (cosine {result.cosine:.6f})")
    bound = {"min_snr_db": min_snr_db, "snr_db": _num(snr), "cosine": _num(result.cosine), "binding": binding,
             "why": bound_text(min_snr_db, mode) if binding else SYNTHETIC}
    return dataclasses.replace(result, passed=ok, message=message), bound


def held_out_checks(entry: GraphEntry, min_snr_db: float) -> list[ParityCheck]:
    """One check per output from the quality measured at export on the held-out calls (quantized vs float IR),
    judged against ``min_snr_db``."""
    q = entry.quantization or {}
    checks = []
    for name, d in (q.get("quality") or {}).items():
        oq = OutputQuality.from_json(name, d)
        ok = oq.passes(min_snr_db)
        mx = oq.max_abs
        result = OutputComparison(ok, mx, float("nan"), float("nan"), oq.cosine, mx, float("inf"), None, 0.0, 0.0,
                                  message="" if ok else f"output SNR {oq.snr_db:.1f} dB < {min_snr_db:g} dB on "
                                                        f"held-out calls {q['held_out']['calls']} (measured at export"
                                                        f" on {_isa_name(q)})")
        calls = q.get("held_out", {}).get("calls", [])
        bound = {"min_snr_db": min_snr_db, "snr_db": _num(oq.snr_db), "cosine": _num(oq.cosine), "calls": calls,
                 "why": bound_text(min_snr_db, str(q.get("mode")))}
        checks.append(ParityCheck(entry.name, "openvino", "float IR", "held-out", name, result, None, {}, bound))
    return checks


def _isa_name(q: Mapping[str, Any]) -> str:
    return str((q.get("calibration_isa") or {}).get("name") or "an unrecorded instruction set")


def isa_notes(entry: GraphEntry, isa: CpuIsa) -> list[str]:
    """What verify says of a quantized graph and the instruction set it ran with here: where each of its SNR
    figures was measured and, when the IR was quantized with full 8-bit weights (no overflow fix) and runs here
    without VNNI, that its int8 kernels saturate and how to re-export."""
    q = entry.quantization or {}
    notes = [f"{entry.name}: quantized ({q.get('mode')}); its example / resized SNR measured here with OpenVINO on "
             f"{isa}, its held-out rows at export on {_isa_name(q)}"]
    fix = (q.get("parameters") or {}).get("overflow_fix")
    if q.get("mode") in ("int8", "hybrid") and fix != "enable" and isa.vnni is False:
        notes.append(f"{entry.name}: quantized with full 8-bit weights (overflow fix {fix or 'first layer only'}) "
                     f"and run here without VNNI, where int8 kernels saturate on them: re-export with "
                     f"QuantizeOptions(overflow_fix='enable') (the default) for an IR that holds on every x86 CPU")
    return notes
