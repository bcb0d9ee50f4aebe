"""Section ``graphs``: per graph, on its recorded inputs, PyTorch eager vs OpenVINO (dynamic / static shapes,
f32 / bf16) vs ONNX Runtime through shapetrace's own runners; parity (SNR, max abs error) against PyTorch's recorded
outputs; and the end-to-end time each variant would give, estimated from the per-graph medians."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .context import OPENPOSE_GRAPHS, PIPE_GRAPHS, Context
from .metrics import fmt_db, med, rss, snr_db, timed

#: (label, backend, precision, static_shapes); torch first: it is the baseline of every ratio
VARIANTS = (
    ("torch eager", "torch", "f32", False),
    ("OpenVINO f32 dynamic", "openvino", "f32", False),
    ("OpenVINO bf16 dynamic", "openvino", "bf16", False),
    ("OpenVINO f32 static", "openvino", "f32", True),
    ("OpenVINO bf16 static", "openvino", "bf16", True),
    ("ONNX Runtime f32", "onnxruntime", "f32", False),
)


@dataclass(frozen=True)
class GraphsResult:
    graphs: Mapping[str, Mapping]          # graph -> {calls_per_run, loadavg, shapes, variants: label -> row}
    estimated: Mapping[str, Any] | None    # e2e estimated from the medians (None without every pipeline graph)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"graphs": {k: dict(v) for k, v in self.graphs.items()}}
        if self.estimated is not None:
            out["e2e_estimated"] = dict(self.estimated)
        return out


def run(ctx: Context) -> GraphsResult:
    out: dict[str, Any] = {}
    for name in PIPE_GRAPHS + OPENPOSE_GRAPHS:
        folder = ctx.export_dir(name)
        if not (folder / "manifest.json").exists():
            continue
        entry = next((e for e in json.loads((folder / "manifest.json").read_text())["graphs"]
                      if e["name"] == name and not e.get("error")), None)
        if entry is None:
            continue
        rows = _variants(ctx, name, folder, entry)
        out[name] = {"calls_per_run": ctx.calls.get(name), "loadavg": os.getloadavg(),
                     "shapes": {i["name"]: i["example_shape"] for i in entry["inputs"]}, "variants": rows}
        ctx.checkpoint("graphs", out)
    return GraphsResult(out, estimate_e2e(out, ctx.calls, ctx.results.get("e2e_torch_s")))


def _variants(ctx: Context, name: str, folder: Any, entry: dict) -> dict[str, Any]:
    from shapetrace._core.walker import parse_path, resolve
    from shapetrace._export.flat import flat_module
    from shapetrace.backends import open_runner
    from shapetrace.manifest import GraphEntry

    with np.load(folder / entry["files"]["inputs"]) as z:
        feed = {k: z[k] for k in z.files}
    with np.load(folder / entry["files"]["outputs"]) as z:
        ref = {k: z[k] for k in z.files}
    obj = ctx.det if name in OPENPOSE_GRAPHS else ctx.pipe
    _, _, module = resolve(obj, parse_path(entry["module"]))
    rows: dict[str, Any] = {}
    torch_times: list[float] = []
    for label, backend, precision, static in VARIANTS + (VARIANTS[0],):  # torch again last: drift check
        gc.collect()
        kw: dict[str, Any] = {"precision": precision, "static_shapes": static}
        if backend == "torch":
            kw = {"module": flat_module(module, GraphEntry.from_json(entry))}
        try:
            runner = open_runner(backend, folder, GraphEntry.from_json(entry), **kw)
            t_open, _ = timed(runner.__enter__)
            try:
                t_first, _ = timed(lambda r=runner: r.infer(feed))
                times = []
                result = None
                for _ in range(ctx.runs):
                    t, result = timed(lambda r=runner: r.infer(feed))
                    times.append(t)
                rss_in = rss()
            finally:
                runner.__exit__(None, None, None)
            runner = None
        except Exception as e:  # one variant failing never stops the others
            rows[label] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            ctx.log(f"  {name} / {label}: ERROR {rows[label]['error']}")
            continue
        if backend == "torch" and label in rows:  # the second torch pass: pool both passes
            torch_times += times
            rows[label].update(times_s=torch_times, median_s=med(torch_times), times_s_after=times)
            ctx.log(f"  {name} / torch eager again: {med(times) * 1e3:.1f} ms")
            continue
        if backend == "torch":
            torch_times += times
        snrs = [snr_db(result[k], ref[k]) for k in ref if k in result]
        errs = [float(np.max(np.abs(result[k].astype(np.float64) - ref[k]))) for k in ref if k in result]
        rows[label] = {"backend": backend, "precision": precision, "static_shapes": static, "open_s": t_open,
                       "first_s": t_first, "times_s": times, "median_s": med(times),
                       "snr_db": min(snrs) if snrs else None, "max_abs_err": max(errs) if errs else None,
                       "rss_while_open": rss_in}
        ctx.log(f"  {name} / {label}: {med(times) * 1e3:.1f} ms (open {t_open:.1f}s), "
                f"SNR {fmt_db(rows[label]['snr_db'])}")
    base = rows.get("torch eager", {}).get("median_s")
    for row in rows.values():
        if base and row.get("median_s"):
            row["speedup"] = base / row["median_s"]
    return rows


def estimate_e2e(g: Mapping[str, Any], calls: Mapping[str, int], torch_e2e: float | None) -> dict | None:
    """e2e per variant ~ sum(calls x graph median) + what is not a graph (scheduler, tokenizer, image I/O)."""
    if not torch_e2e or not all(n in g for n in PIPE_GRAPHS):
        return None
    torch_graphs = sum(calls.get(n, 1) * g[n]["variants"]["torch eager"]["median_s"] for n in PIPE_GRAPHS)
    rest = max(0.0, torch_e2e - torch_graphs)
    est = {}
    for label, *_ in VARIANTS:
        try:
            t = rest + sum(calls.get(n, 1) * g[n]["variants"][label]["median_s"] for n in PIPE_GRAPHS)
        except KeyError:
            continue
        est[label] = {"seconds": t, "speedup": torch_e2e / t}
    return {"not_in_graphs_s": rest, "torch_graph_sum_s": torch_graphs, "variants": est}
