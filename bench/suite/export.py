"""Sections ``export``, ``export-ov-direct`` and ``export-whatif``: one child process per graph
(``bench/export_one.py``) builds only that module, records one call, then measures the export alone (seconds,
VmHWM, per-phase time and memory from the library's phase hook, file sizes). ``export`` merges the per-graph folders
into one export folder per object for the later sections; ``export-ov-direct`` converts the IR straight from torch
(``formats=("openvino",)``); ``export-whatif`` exports with another ``openvino_from`` and verifies the result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import BENCH, OPENPOSE_GRAPHS, PIPE_GRAPHS, Context
from .metrics import gb, timed

#: what-if export runs (section ``export-whatif``): result key -> ``export_all(openvino_from=...)``
WHATIF = {"export-whatif-ov-from-exported-program": "program"}


@dataclass(frozen=True)
class ExportResult:
    key: str                            # "export", "export-ov-direct", "export-whatif-..."
    graphs: Mapping[str, Mapping]       # graph -> the child's result.json, plus the ratios to the weights

    def to_json(self) -> dict:
        return {self.key: {k: dict(v) for k, v in self.graphs.items()}}

    def peak_over_weights(self) -> dict[str, float]:
        return {n: e["peak_over_weights"] for n, e in self.graphs.items() if e.get("peak_over_weights")}


def run(ctx: Context) -> ExportResult:
    # the children need the memory: drop the pipeline (~6 GB at full size); run.py builds it again afterwards
    ctx.drop_models()
    return export(ctx)


def run_ov_direct(ctx: Context) -> ExportResult:
    ctx.drop_models()
    res = export(ctx, formats="openvino", key="export-ov-direct", keep=False)
    shutil.rmtree(ctx.work / "export-ov-direct", ignore_errors=True)
    return res


def run_whatif(ctx: Context) -> tuple[ExportResult, ...]:
    ctx.drop_models()
    graphs = tuple(ctx.a.whatif_graphs.split(","))
    out = []
    for key, source in WHATIF.items():
        ctx.log(f"{key}: export_all(openvino_from={source!r})")
        out.append(export(ctx, graphs=graphs, key=key, keep=False, openvino_from=source, verify=True))
        shutil.rmtree(ctx.work / key, ignore_errors=True)
    return tuple(out)


def export(ctx: Context, graphs: tuple[str, ...] | None = None, formats: str = "onnx,openvino", key: str = "export",
           keep: bool = True, openvino_from: str | None = None, verify: bool = False,
           store: bool = True) -> ExportResult:
    """One child per graph into ``ctx.work / key``; ``keep`` merges them into one folder per object; ``store``
    checkpoints each graph's row under ``key`` in the results (the ``deploy`` section, making its folder, does
    not)."""
    graphs = graphs or (PIPE_GRAPHS + OPENPOSE_GRAPHS)
    out_root = ctx.work / key
    shutil.rmtree(out_root, ignore_errors=True)
    out_root.mkdir(parents=True)
    results: dict[str, Any] = {}
    for name in graphs:
        results[name] = _one(ctx, name, out_root, formats, openvino_from, verify)
        if store:
            ctx.checkpoint(key, results)
    if keep:
        merge(ctx.work, out_root, graphs)
    return ExportResult(key, results)


def _one(ctx: Context, name: str, out_root: Path, formats: str, openvino_from: str | None, verify: bool) -> dict:
    sig = ctx.work / "signatures" / ("openpose" if name in OPENPOSE_GRAPHS else "pipe")
    out = out_root / name
    res_file = out_root / f"{name}.result.json"
    cmd = [sys.executable, str(BENCH / "export_one.py"), "--suite", ctx.suite, "--graph", name, "--signatures",
           str(sig), "--out", str(out), "--formats", formats, "--seed", str(ctx.a.seed), "--result", str(res_file)]
    if name in (ctx.a.profile_export or []):
        cmd += ["--profile", str(out_root / f"{name}.profile.txt")]
    if openvino_from:
        cmd += ["--openvino-from", openvino_from]
    ctx.log(f"export {name} ({formats}) in a child process")
    log = out_root / f"{name}.log"
    with open(log, "w") as f:
        t, proc = timed(lambda: subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=ctx.a.export_timeout,
                                               check=False))
    if proc.returncode != 0 or not res_file.exists():
        ctx.log(f"  FAILED ({proc.returncode}); see {log}")
        return {"error": f"child exited {proc.returncode}", "log_tail": log.read_text()[-2000:]}
    res = json.loads(res_file.read_text())
    res["child_wall_seconds"] = round(t, 1)
    marks = res["rss_marks"]
    w = res["weights_bytes"] or 1
    peak = res["vm_hwm_bytes"] or res["peak_rss_bytes"]
    res["peak_over_weights"] = peak / w
    res["peak_minus_build_over_weights"] = (peak - marks["after_build"]) / w
    res["peak_minus_before_export_over_weights"] = (peak - marks["before_export"]) / w
    expected = ctx.results.get("models", {}).get("fingerprints", {}).get(
        name if name in OPENPOSE_GRAPHS else name.split(".")[0])
    res["same_weights_as_pipeline"] = expected is None or abs(expected - res["fingerprint"]) < 1e-6 * max(
        1.0, abs(expected))
    if verify and not res.get("error"):
        res["verify"] = _verify(out)
    ctx.log(f"  {name}: {res['seconds']}s, peak {gb(peak)} (sampled {gb(res['peak_rss_bytes'])}), weights {gb(w)}, "
            f"ratio {res['peak_over_weights']:.2f}, error={res['error']}")
    return res


def _verify(out: Path) -> dict:
    """shapetrace.verify from the folder alone: recorded PyTorch outputs vs ONNX Runtime and OpenVINO (f32)."""
    import shapetrace

    try:
        t, report = timed(lambda: shapetrace.verify(out, write=False))
        return {"passed": bool(report), "seconds": t, "report": str(report)[-1500:]}
    except Exception as e:
        return {"passed": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}


def merge(work: Path, out_root: Path, graphs: tuple[str, ...]) -> None:
    """One export folder per object (pipeline, detector) from the per-graph folders the children wrote.

    A child's skeleton describes its one-module holder, not the object, so it is left out (folder and manifest
    key): the ``deploy`` section writes the pipeline's own (:func:`.deploy.write_skeleton`)."""
    from shapetrace._record.recording import read_json
    from shapetrace._skeleton.describe import SKELETON_DIR

    for obj_key, names in (("pipe", PIPE_GRAPHS), ("openpose", OPENPOSE_GRAPHS)):
        names = tuple(n for n in names if n in graphs and (out_root / n / "manifest.json").exists())
        if not names:
            continue
        dest = out_root / obj_key
        dest.mkdir(exist_ok=True)
        manifest = None
        entries = []
        for n in names:
            m = json.loads((out_root / n / "manifest.json").read_text())
            for f in (out_root / n).iterdir():
                if f.name == SKELETON_DIR:
                    shutil.rmtree(f)
                elif f.name != "manifest.json":
                    os.replace(f, dest / f.name)
            entries.extend(m["graphs"])
            manifest = manifest or m
        assert manifest is not None
        manifest["graphs"] = entries
        manifest.pop("skeleton", None)
        sig = read_json(work / "signatures" / obj_key / "signatures.json", "signatures file")
        manifest["object_class"] = sig["object_class"]
        (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
