"""Section ``quantize``: INT8 from recorded runs (``export_all(quantize=...)``).

1. Records the pipeline with ``shapetrace.record(pipe, samples=N)`` over several runs (other seeds than the
   benchmark's own run), timing the block and its peak RSS.
2. Per mode (``int8``, ``hybrid``): ``export_all(..., formats=("openvino",), quantize=mode, verify=False)`` in this
   process (calibration time and peak RSS per graph come from the manifest), IR size on disk vs the float IR.
3. Per graph: PyTorch eager vs the quantized IR on the recorded example inputs (OpenVINO, f32 hint: quantized ops
   run int8, the rest f32), speedup, output SNR vs PyTorch, and the held-out quality measured at export.
4. End to end: the pipeline on each quantized export (``shapetrace.load``), interleaved with PyTorch runs like the
   ``e2e`` section, PSNR of the final image vs the float (PyTorch) pipeline's at the same seed.

Keys in results.json: ``quantize`` (everything), ``e2e_speedup_openvino_int8_vs_torch`` (best int8 variant),
``e2e_speedup_openvino_quantized_best`` (best of every mode), ``ir_size_ratio_int8`` (float IR bytes / int8 IR
bytes, pipeline graphs), ``ir_size_ratio_hybrid``.
"""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .context import PIPE_GRAPHS, Context
from .e2e import variant
from .metrics import med, snr_db, timed

MODES = ("int8", "hybrid")
#: e2e variants per mode: (precision hint for what stays float, static shapes)
E2E = (("f32", False), ("f32", True), ("bf16", True))
SAMPLES = {"quick": 8, "full": 32}
RECORD_RUNS = {"quick": 3, "full": 2}


def _label(mode: str, precision: str, static: bool) -> str:
    return f"OpenVINO {mode} ({precision} rest) {'static' if static else 'dynamic'}"


@dataclass(frozen=True)
class QuantizeResult:
    detail: Mapping[str, Any]                # results.json "quantize": recording, per mode, e2e rows
    headline: Mapping[str, Any]              # e2e_speedup_openvino_int8_vs_torch, ..._quantized_best
    ir_size_ratios: Mapping[str, float | None]  # mode -> float IR bytes / quantized IR bytes

    def to_json(self) -> dict:
        return {"quantize": dict(self.detail), **self.headline,
                **{f"ir_size_ratio_{m}": v for m, v in self.ir_size_ratios.items()}}


def run(b: Context, graphs: tuple[str, ...] = PIPE_GRAPHS) -> QuantizeResult:
    """Record with ``samples=``, export each mode, time it per graph and end to end."""
    import shapetrace
    from shapetrace._core.memory import PeakRSS
    from shapetrace.manifest import read as read_manifest

    res: dict[str, Any] = {}
    ratios: dict[str, float | None] = {}
    n_samples, n_runs = SAMPLES[b.suite], RECORD_RUNS[b.suite]
    b.log(f"quantize: record {n_runs} runs keeping up to {n_samples} calls per graph")
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        with shapetrace.record(b.pipe, samples=n_samples) as rec:
            for i in range(n_runs):
                b.run_pipe(seed=b.a.seed + 100 + i)
        t_rec = time.perf_counter() - t0
    res["recording"] = {"runs": n_runs, "samples": n_samples, "seconds": round(t_rec, 2), "peak_rss": rss.peak,
                        "kept": {g: [s.call for s in rec.samples.samples(g)] for g in rec.graphs},
                        "calls": {g: rec.graphs[g].num_calls for g in rec.graphs}}
    ref = b.reference_image()
    rows: dict[str, Any] = {}
    res["e2e"] = rows
    for mode in MODES:
        folder = b.work / f"quant-{mode}"
        shutil.rmtree(folder, ignore_errors=True)
        gc.collect()
        b.log(f"quantize: export {mode}")
        try:
            with PeakRSS() as rss:
                t, result = timed(lambda: shapetrace.export_all(
                    b.pipe, folder, recording=rec, formats=("openvino",), quantize=mode, verify=False,
                    graphs=[g for g in graphs if g in rec.graphs], progress=False))
        except Exception as e:
            res[mode] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
            b.log(f"  {mode}: ERROR {res[mode]['error']}")
            b.checkpoint("quantize", res)
            continue
        m = read_manifest(folder)
        per_graph: dict[str, Any] = {}
        for e in m.graphs:
            q = dict(e.quantization or {})
            per_graph[e.name] = {k: q.get(k) for k in ("calibration", "held_out", "quality", "worst_snr_db",
                                                       "passed", "kept_float", "float_ir_bytes", "ir_bytes",
                                                       "seconds", "peak_rss_bytes", "parameters", "error")}
            per_graph[e.name]["export_seconds"] = e.seconds
            per_graph[e.name].update(_graph_speed(b, folder, e))
            b.log(f"  {mode} {e.name}: held-out SNR {q.get('worst_snr_db')}, IR {q.get('float_ir_bytes')} -> "
                  f"{q.get('ir_bytes')} B, speedup {per_graph[e.name].get('speedup')}")
        float_b = sum(g["float_ir_bytes"] or 0 for g in per_graph.values())
        q_b = sum(g["ir_bytes"] or 0 for g in per_graph.values())
        res[mode] = {"export_s": round(t, 2), "export_peak_rss": rss.peak, "ok": result.ok, "graphs": per_graph,
                     "float_ir_bytes": float_b, "ir_bytes": q_b, "ir_size_ratio": float_b / q_b if q_b else None,
                     "calibration_s": round(sum(g["seconds"] or 0 for g in per_graph.values()), 2),
                     "calibration_peak_rss": max((g["peak_rss_bytes"] or 0 for g in per_graph.values()), default=0)}
        ratios[mode] = res[mode]["ir_size_ratio"]
        b.checkpoint("quantize", res)
        for precision, static in E2E:
            label = _label(mode, precision, static)
            gc.collect()
            b.log(f"e2e: {label} (interleaved with PyTorch runs)")
            try:
                row = variant(b, shapetrace.load, folder, "openvino", precision, static, ref)
                row["speedup_vs_interleaved_torch"] = med(row["torch_times_s"]) / row["median_s"] \
                    if row.get("torch_times_s") else None
            except Exception as e:
                row = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
            row["mode"] = mode
            rows[label] = row
            b.log(f"  {label}: {row.get('median_s', float('nan')):.2f}s, pair speedup "
                  f"{row.get('median_pair_speedup')}, PSNR vs float {row.get('psnr_db')} {row.get('error') or ''}")
            b.checkpoint("quantize", res)
    return QuantizeResult(res, _headline(rows), ratios)


def _graph_speed(b: Context, folder: Any, entry: Any) -> dict:
    """PyTorch eager vs the quantized IR on the recorded example inputs (median of ``b.runs``)."""
    from shapetrace._core.walker import parse_path, resolve
    from shapetrace._export.flat import flat_module
    from shapetrace.backends import open_runner

    with np.load(folder / entry.file("inputs")) as z:
        feed = {k: z[k] for k in z.files}
    with np.load(folder / entry.file("outputs")) as z:
        ref = {k: z[k] for k in z.files}
    _, _, module = resolve(b.pipe, parse_path(entry.module))
    out: dict[str, Any] = {}
    for label, kw in (("torch", {"module": flat_module(module, entry)}), ("openvino", {"precision": "f32"})):
        try:
            with open_runner(label, folder, entry, **kw) as runner:
                runner.infer(feed)
                times, got = [], None
                for _ in range(b.runs):
                    t, got = timed(lambda: runner.infer(feed))
                    times.append(t)
            out[f"{label}_median_s"] = med(times)
            if label == "openvino":
                out["snr_db_vs_torch_example"] = min(snr_db(got[k], ref[k]) for k in ref if k in got)
        except Exception as e:
            out[f"{label}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    if out.get("torch_median_s") and out.get("openvino_median_s"):
        out["speedup"] = out["torch_median_s"] / out["openvino_median_s"]
    return out


def _headline(rows: dict) -> dict[str, Any]:
    r: dict[str, Any] = {}

    def speed(row: dict) -> float | None:
        return row.get("median_pair_speedup") or row.get("speedup_vs_interleaved_torch")

    found = [(speed(row), label, row["mode"]) for label, row in rows.items() if speed(row)]
    int8 = [x for x in found if x[2] == "int8"]
    if int8:
        best = max(int8)
        r["e2e_speedup_openvino_int8_vs_torch"] = round(best[0], 3)
        r["e2e_int8_best_variant"] = best[1]
        r["e2e_int8_psnr_db"] = rows[best[1]].get("psnr_db")
    if found:
        best = max(found)
        r["e2e_speedup_openvino_quantized_best"] = {"speedup": round(best[0], 3), "variant": best[1],
                                                    "psnr_db": rows[best[1]].get("psnr_db")}
    return r


def render(r: dict) -> list[str]:
    """The RESULTS.md lines of the section (empty when it did not run)."""
    q = r.get("quantize")
    if not q:
        return []
    rec = q.get("recording", {})
    L = ["", "## Quantization (INT8 from recorded runs)", "",
         f"Recorded {rec.get('runs')} runs with `record(pipe, samples={rec.get('samples')})` in "
         f"{rec.get('seconds')} s (peak RSS {rec.get('peak_rss', 0) / 1e9:.2f} GB); calls kept per graph: "
         f"{rec.get('kept')}.", ""]
    for mode in MODES:
        m = q.get(mode)
        if not m:
            continue
        if m.get("error"):
            L += [f"**{mode}**: {m['error']}", ""]
            continue
        L += [f"**{mode}**: export {m['export_s']} s (peak RSS {m['export_peak_rss'] / 1e9:.2f} GB), calibration "
              f"{m['calibration_s']} s in all (peak RSS {m['calibration_peak_rss'] / 1e9:.2f} GB), IR "
              f"{m['float_ir_bytes'] / 1e6:.1f} MB -> {m['ir_bytes'] / 1e6:.1f} MB "
              f"({(m['ir_size_ratio'] or 0):.2f}x smaller)", "",
              "| graph | held-out SNR dB | calibration calls | held-out calls | PyTorch ms | OpenVINO ms | speedup | "
              "calibration s |", "|---|---|---|---|---|---|---|---|"]
        for name, g in m["graphs"].items():
            def ms(x: Any) -> str:
                return f"{x * 1e3:.1f}" if x else "-"
            snr = g.get("worst_snr_db")
            L.append(f"| {name} | {float(snr):.1f} | {(g.get('calibration') or {}).get('calls')} | "
                     f"{(g.get('held_out') or {}).get('calls')} | {ms(g.get('torch_median_s'))} | "
                     f"{ms(g.get('openvino_median_s'))} | {g.get('speedup') or 0:.2f}x | {g.get('seconds')} |"
                     if snr is not None else f"| {name} | error: {g.get('error')} | | | | | | |")
        L.append("")
    if q.get("e2e"):
        L += ["| end to end | median s | speedup vs PyTorch (adjacent pairs) | image PSNR vs float dB |",
              "|---|---|---|---|"]
        for label, row in q["e2e"].items():
            if row.get("error"):
                L.append(f"| {label} | error: {row['error'][:120]} | | |")
                continue
            L.append(f"| {label} | {row['median_s']:.2f} | {(row.get('median_pair_speedup') or 0):.2f}x | "
                     f"{row['psnr_db']:.1f} |")
        L.append("")
    for k in ("e2e_speedup_openvino_int8_vs_torch", "ir_size_ratio_int8", "ir_size_ratio_hybrid"):
        if r.get(k) is not None:
            L.append(f"- `{k}`: {r[k]:.3f}")
    return L
