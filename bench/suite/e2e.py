"""Section ``e2e``: the whole pipeline on the exported graphs (``shapetrace.load``), per runtime variant, each of its
timed runs followed by a PyTorch run (adjacent pairs: robust to a drifting machine load), PSNR of the final image
against PyTorch's. :func:`variant` is shared with the ``quantize`` section."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .context import Context
from .graphs import VARIANTS
from .metrics import fmt_db, med, psnr, rss, timed
from .targets import E2E_MIN_PSNR_DB


@dataclass(frozen=True)
class E2EResult:
    rows: Mapping[str, Mapping]           # variant label -> row (times, pair speedups, PSNR, runtime stats)
    best_speedup: float | None            # best OpenVINO variant with PSNR >= E2E_MIN_PSNR_DB (pair speedup)
    best_variant: str | None
    any_psnr_best: Mapping[str, Any] | None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"e2e": {k: dict(v) for k, v in self.rows.items()}}
        if self.best_speedup is not None:
            out.update(e2e_speedup_openvino_vs_torch=round(self.best_speedup, 3), e2e_best_variant=self.best_variant,
                       e2e_speedup_definition="median over adjacent (runtime run, PyTorch run) pairs of PyTorch "
                       f"seconds / runtime seconds, best OpenVINO variant with PSNR >= {E2E_MIN_PSNR_DB} dB")
        if self.any_psnr_best is not None:
            out["e2e_speedup_openvino_any_psnr"] = dict(self.any_psnr_best)
        return out


def run(ctx: Context) -> E2EResult:
    import shapetrace

    folder = ctx.work / "export" / "pipe"
    ref = ctx.reference_image()
    plain = list(ctx.results.get("record_overhead", {}).get("plain_s", []))
    rows: dict[str, Any] = {"torch eager": {"times_s": plain, "psnr_db": 0.0 if not plain else float("inf"),
                                            "from_overhead_section_s": plain}}
    if plain:
        rows["torch eager"]["median_s"] = med(plain)
    for label, backend, precision, static in VARIANTS[1:]:
        gc.collect()
        ctx.log(f"e2e: {label} (interleaved with PyTorch runs)")
        try:
            row = variant(ctx, shapetrace.load, folder, backend, precision, static, ref)
        except Exception as e:
            row = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
        rows[label] = row
        if row.get("torch_times_s"):
            pt = rows["torch eager"]
            pt["times_s"] += row["torch_times_s"]
            pt["torch_cpu_s"] = pt.get("torch_cpu_s", []) + row["torch_cpu_s"]
            pt["median_s"] = med(pt["times_s"])
            pt["psnr_db"] = row["torch_psnr_db"]
            row["speedup_vs_interleaved_torch"] = med(row["torch_times_s"]) / row["median_s"]
        ctx.log(f"  {label}: {row.get('median_s', float('nan')):.2f}s (PyTorch alongside "
                f"{med(row.get('torch_times_s', [])):.2f}s) PSNR {fmt_db(row.get('psnr_db'))} {row.get('error') or ''}")
        ctx.checkpoint("e2e", rows)
    return summarize(rows)


def summarize(rows: dict[str, Any]) -> E2EResult:
    """Speedups against the PyTorch median, and the headline: the best OpenVINO variant whose image keeps
    PSNR >= :data:`E2E_MIN_PSNR_DB`, by its adjacent-pair speedup."""
    base = rows["torch eager"].get("median_s")
    if not base:
        return E2EResult(rows, None, None, None)
    rows["torch eager"]["speedup"] = 1.0
    for k, row in rows.items():
        if row.get("median_s") and k != "torch eager":
            row["speedup"] = base / row["median_s"]

    def headline(row: dict) -> float | None:
        return row.get("median_pair_speedup") or row.get("speedup")

    ok = [(headline(r), k) for k, r in rows.items() if k.startswith("OpenVINO") and headline(r)
          and (r.get("psnr_db") or 0) >= E2E_MIN_PSNR_DB]
    best = max(ok) if ok else (None, None)
    anyov = [(r["speedup"], k) for k, r in rows.items() if k.startswith("OpenVINO") and r.get("speedup")]
    return E2EResult(rows, best[0], best[1], dict(zip(("speedup", "variant"), max(anyov))) if anyov else None)


def variant(ctx: Context, load: Any, folder: Path, backend: str, precision: str, static: bool,
            ref: np.ndarray) -> dict:
    """One runtime variant end to end on a shell pipeline, its runs interleaved with PyTorch's
    (rt pt rt pt ... then the remaining rt)."""
    shell = ctx.shell()
    t_load, runtime = timed(lambda: load(shell, folder, backend=backend, precision=precision, static_shapes=static))
    rss_loaded = rss()
    try:
        t_first, _ = timed(lambda: ctx.run_pipe(shell))
        times, torch_times, image, torch_image = [], [], None, None
        cpu_rt, cpu_pt = [], []
        k = ctx.a.e2e_torch_runs if ctx.a.e2e_torch_runs is not None else ctx.runs
        for kind in [kind for i in range(ctx.runs) for kind in (("rt", "pt") if i < k else ("rt",))]:
            gc.collect()
            c0 = time.process_time()
            if kind == "rt":
                t, image = timed(lambda: ctx.run_pipe(shell))
                times.append(t)
                cpu_rt.append(time.process_time() - c0)
            else:
                t, torch_image = timed(ctx.run_pipe)
                torch_times.append(t)
                cpu_pt.append(time.process_time() - c0)
        stats = [{"graph": st.graph, "ran_on": st.ran_on, "calls": st.calls, "seconds": st.seconds}
                 for st in runtime.stats()]
    finally:
        runtime.close()
        runtime = shell = None
        gc.collect()
    pairs = [p / r for r, p in zip(times, torch_times)]  # each runtime run and the PyTorch run right after it
    return {"load_s": t_load, "first_s": t_first, "times_s": times, "median_s": med(times),
            "pair_speedups": pairs, "median_pair_speedup": med(pairs) if pairs else None,
            "cpu_s": cpu_rt, "torch_cpu_s": cpu_pt, "torch_times_s": torch_times, "psnr_db": psnr(image, ref),
            "torch_psnr_db": psnr(torch_image, ref), "rss_loaded": rss_loaded, "loadavg": os.getloadavg(),
            "runtime_stats": stats}
