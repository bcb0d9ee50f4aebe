"""Section ``deploy``: a deployment's start, each variant in a fresh process (``bench/deploy_one.py``): peak RSS
(VmHWM of the child) and the time from the child's own start to its first image, PSNR of that image against the
PyTorch child's.

ControlNet pipeline (the bench's SD 1.5 + OpenPose ControlNet, export folder ``<work>/export/pipe`` of the
``export`` section, made here by the same children when missing): (a) PyTorch eager; (b) ``shapetrace.load(pipe,
out)`` on the pipeline built with its weights; (c) ``shapetrace.load_pipeline(out)`` from the folder alone, no
cache; (c') with ``cache_dir=``: once filling an empty cache, then a fresh process on the warm cache.

Plain SD 1.5 (d), the work optimum-intel can do too: the same components saved with ``save_pretrained``
(``<work>/deploy/sd15``), exported by shapetrace (``export_all(formats=("openvino",))``, one recorded run) and by
optimum-intel in its own venv (``OVStableDiffusionPipeline.from_pretrained(export=True)``, as
``bench/optimum_infer.py``); both served at f32, each tool filling its cache, then warm.

The merged export folder has no skeleton of the pipeline (each export child describes its one-module holder), so
:func:`write_skeleton` writes it with the library's own describer, from the pipeline built on the meta device: the
skeleton holds no weight, and every module of the pipeline has a graph.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .context import BENCH, PIPE_GRAPHS, Context
from .metrics import fmt_db, gb, psnr

#: what the process holds besides the graphs' weights: interpreter, torch, diffusers, OpenVINO (the RSS target)
LIBRARIES_BYTES = 1.5e9
CHILD = BENCH / "deploy_one.py"


@dataclass(frozen=True)
class Variant:
    key: str           # the row's key in results.json
    label: str
    kind: str          # bench/deploy_one.py --variant
    workload: str      # "controlnet" | "sd15"
    cache: str = ""    # "": none; "fill": an emptied cache folder the child fills; "warm": the folder "fill" left
    tool: str = "shapetrace"  # "optimum": in optimum-intel's venv, on its export (full suite only)


VARIANTS: tuple[Variant, ...] = (
    Variant("eager", "(a) PyTorch eager (build with random weights)", "eager", "controlnet"),
    Variant("load", "(b) build + `shapetrace.load(pipe, out)`", "load", "controlnet"),
    Variant("load_pipeline", "(c) `shapetrace.load_pipeline(out)`, no cache", "load_pipeline", "controlnet"),
    Variant("load_pipeline_cache_fill", "(c') `load_pipeline(out, cache_dir=)`, filling the cache", "load_pipeline",
            "controlnet", "fill"),
    Variant("load_pipeline_cache_warm", "(c') `load_pipeline(out, cache_dir=)`, warm cache", "load_pipeline",
            "controlnet", "warm"),
    Variant("sd15_eager", "(d) PyTorch eager (`from_pretrained`)", "eager", "sd15"),
    Variant("sd15_shapetrace_fill", "(d) shapetrace `load_pipeline(out, cache_dir=)`, filling the cache",
            "load_pipeline", "sd15", "fill"),
    Variant("sd15_shapetrace_warm", "(d) shapetrace `load_pipeline(out, cache_dir=)`, warm cache", "load_pipeline",
            "sd15", "warm"),
    Variant("sd15_optimum", "(d) optimum-intel `OVStableDiffusionPipeline`, no cache (its CPU default)", "optimum",
            "sd15", tool="optimum"),
    Variant("sd15_optimum_fill", "(d) optimum-intel, `CACHE_DIR` filling", "optimum", "sd15", "fill",
            tool="optimum"),
    Variant("sd15_optimum_warm", "(d) optimum-intel, `CACHE_DIR` warm", "optimum", "sd15", "warm", tool="optimum"),
)


@dataclass(frozen=True)
class DeployResult:
    rows: Mapping[str, Mapping]        # variant key -> the child's result, the parent's view, PSNR
    folders: Mapping[str, Mapping]     # "controlnet" / "sd15-shapetrace" / "sd15-optimum" -> path, IR bytes, export

    def to_json(self) -> dict:
        return {"deploy": {"rows": {k: dict(v) for k, v in self.rows.items()},
                           "folders": {k: dict(v) for k, v in self.folders.items()},
                           "libraries_bytes": LIBRARIES_BYTES,
                           "labels": {v.key: v.label for v in VARIANTS}}}


def run(ctx: Context) -> DeployResult:
    import optimum_compare

    work = ctx.work / "deploy"
    work.mkdir(parents=True, exist_ok=True)
    # the plain SD 1.5 folder is saved from the pipeline's weights, before the children need the memory
    saved = optimum_compare.write_folders(work, ctx.a.seed, ("sd15",), ctx.pipe, ctx.suite)["sd15"]
    ctx.drop_models()
    folders: dict[str, dict] = {"controlnet": {"path": str(ctx.work / "export" / "pipe")}}
    cn = Path(folders["controlnet"]["path"])
    if not (cn / "manifest.json").exists():
        from .export import export

        ctx.log(f"deploy: no export folder {cn}: exporting {', '.join(PIPE_GRAPHS)} (one child each)")
        export(ctx, graphs=PIPE_GRAPHS, store=False)
    folders["controlnet"]["skeleton"] = write_skeleton(ctx, cn)
    folders["sd15-shapetrace"] = _export_sd15(ctx, "export", saved, work / "st-sd15", sys.executable)
    optimum_python = Path(ctx.a.venv_optimum) / "bin" / "python"
    if ctx.suite == "full" and optimum_python.exists():
        import optimum_infer

        renamed = optimum_infer.optimum_folder(saved, work)  # the text encoder's keys as transformers 5.5.4 reads them
        folders["sd15-optimum"] = _export_sd15(ctx, "optimum-export", renamed, work / "optimum-sd15",
                                               str(optimum_python))
    for f in folders.values():
        f["ir_bytes"] = ir_bytes(Path(f["path"]))
    paths = {("controlnet", "shapetrace"): cn, ("sd15", "shapetrace"): work / "st-sd15",
             ("sd15", "optimum"): work / "optimum-sd15", ("sd15", "eager"): saved}
    chosen = ctx.a.deploy_variants.split(",") if ctx.a.deploy_variants else [v.key for v in VARIANTS]
    unknown = set(chosen) - {v.key for v in VARIANTS}
    if unknown:
        raise SystemExit(f"--deploy-variants: unknown {', '.join(sorted(unknown))}; choose from "
                         f"{', '.join(v.key for v in VARIANTS)}")
    # a run of some variants keeps the other rows of the results it updates
    rows: dict[str, Any] = dict((ctx.results.get("deploy") or {}).get("rows") or {}) if ctx.a.deploy_variants else {}
    runs: dict[str, list[dict]] = {}
    for _ in range(ctx.a.deploy_rounds):  # rounds of every chosen variant: a drifting load spreads over all of them
        for v in VARIANTS:
            if v.key not in chosen:
                continue
            if v.tool == "optimum" and "sd15-optimum" not in folders:
                rows[v.key] = {"skipped": "full suite only" if ctx.suite != "full" else
                               f"no optimum venv at {ctx.a.venv_optimum} (make bench/.venv-optimum/.installed)"}
                continue
            folder = paths[(v.workload, "eager" if v.kind == "eager" and v.workload == "sd15" else v.tool)]
            python = str(optimum_python) if v.tool == "optimum" else sys.executable
            runs.setdefault(v.key, []).append(_child(ctx, v, folder, work, python))
            rows[v.key] = fastest(runs[v.key])
            ctx.checkpoint("deploy", DeployResult(_with_psnr(rows, work), folders).to_json()["deploy"])
    return DeployResult(_with_psnr(rows, work), folders)


def fastest(runs: list[dict]) -> dict:
    """One row from a variant's runs: the fastest start (a shared machine's load only ever slows a run), every
    run's time beside it, and the highest peak RSS of them."""
    ok = [r for r in runs if "seconds_to_first_image" in r]
    if not ok:
        return runs[-1]
    best = min(ok, key=lambda r: r["seconds_to_first_image"])
    return {**best, "times_s": [r["seconds_to_first_image"] for r in ok], "vmhwm": max(r["vmhwm"] for r in ok),
            "failed_runs": len(runs) - len(ok)}


def _child(ctx: Context, v: Variant, folder: Path, work: Path, python: str) -> dict:
    from optimum_compare import measure

    res, image = work / f"{v.key}.result.json", work / f"{v.key}.npy"
    res.unlink(missing_ok=True)
    image.unlink(missing_ok=True)
    cmd = [python, str(CHILD), "--variant", v.kind, "--workload", v.workload, "--suite", ctx.suite, "--seed",
           str(ctx.a.seed), "--folder", str(folder), "--result", str(res), "--image", str(image)]
    if v.cache:
        cache = work / f"cache-{v.workload}-{v.tool}"
        if v.cache == "fill":
            shutil.rmtree(cache, ignore_errors=True)
        cmd += ["--cache-dir", str(cache)]
    ctx.log(f"deploy: {v.key} in a fresh process")
    parent = measure(cmd, work / f"{v.key}.log", _env())
    row: dict[str, Any] = {"child_wall_s": parent["seconds"], "ru_maxrss": parent["peak_rss_bytes"],
                           "returncode": parent["returncode"], "cmd": parent["cmd"]}
    if res.exists():
        row.update(json.loads(res.read_text()))
    else:
        row["error"] = f"exit {parent['returncode']}: {(work / f'{v.key}.log').read_text()[-1500:]}"
    if v.cache:
        row["cache_bytes"] = _du(work / f"cache-{v.workload}-{v.tool}")
    ctx.log(f"  {v.key}: first image at {row.get('seconds_to_first_image', float('nan')):.1f} s, peak "
            f"{gb(row.get('vmhwm'))} {row.get('error', '')[-300:]}")
    return row


def _with_psnr(rows: dict[str, Any], work: Path) -> dict[str, Any]:
    """PSNR of each row's image against its workload's PyTorch image (the shapetrace venv's)."""
    refs = {"controlnet": work / "eager.npy", "sd15": work / "sd15_eager.npy"}
    for v in VARIANTS:
        row = rows.get(v.key)
        img, ref = work / f"{v.key}.npy", refs[v.workload]
        if row is not None and img != ref and "seconds_to_first_image" in row and img.exists() and ref.exists():
            row["psnr_db"] = psnr(np.load(img), np.load(ref))
    return rows


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join(p for p in (str(BENCH.parent), os.environ.get("PYTHONPATH")) if p))


def _export_sd15(ctx: Context, kind: str, folder: Path, out: Path, python: str) -> dict:
    """Export the saved SD 1.5 folder in a child (``kind``: shapetrace's ``export`` or ``optimum-export``), once."""
    from optimum_compare import measure

    done = out / ("manifest.json" if kind == "export" else "model_index.json")
    info: dict[str, Any] = {"path": str(out)}
    if done.exists():
        return info | {"export": "reused"}
    shutil.rmtree(out, ignore_errors=True)
    res = out.parent / f"{out.name}.result.json"
    ctx.log(f"deploy: {kind} of {folder} -> {out}")
    cmd = [python, str(CHILD), "--variant", kind, "--workload", "sd15", "--suite", ctx.suite, "--folder",
           str(folder), "--out", str(out), "--result", str(res)]
    parent = measure(cmd, out.parent / f"{out.name}.log", _env())
    info["export"] = json.loads(res.read_text()) if res.exists() and parent["returncode"] == 0 else {
        "error": f"exit {parent['returncode']}: {Path(parent['log']).read_text()[-1500:]}"}
    info["export"]["child_wall_s"] = parent["seconds"]
    ctx.log(f"  {parent['seconds']:.0f} s, exit {parent['returncode']}")
    return info


def write_skeleton(ctx: Context, folder: Path) -> str:
    """The pipeline's skeleton in the merged export ``folder`` (once): :func:`shapetrace._skeleton.describe.describe`
    of the pipeline built on the meta device (configs, tokenizer and scheduler files; no weight, since every module
    has a graph). Returns "present" / "written"."""
    import torch
    import zoo

    from shapetrace._skeleton.describe import describe
    from shapetrace._skeleton.weights import unserved

    manifest = json.loads((folder / "manifest.json").read_text())
    sk = manifest.get("skeleton") or {}
    cls = manifest["object_class"].rpartition(".")[2]
    if "root" in sk and str(sk["root"].get("cls", "")).endswith(cls):
        return "present"
    with torch.device("meta"):
        pipe = zoo.build_pipeline(ctx.suite, ctx.a.seed)
    served = [g["module"] for g in manifest["graphs"] if g.get("error") is None]
    missing = unserved(pipe, served)
    if missing:
        raise RuntimeError(f"{folder}: modules without a graph would need their weights in the skeleton "
                           f"({len(missing)}); re-run the export section")
    shutil.rmtree(folder / "skeleton", ignore_errors=True)
    manifest["skeleton"] = describe(pipe, folder)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    ctx.log(f"deploy: wrote the {cls} skeleton into {folder}")
    return "written"


def ir_bytes(folder: Path) -> int:
    """The OpenVINO IR files of an export folder (``.xml`` + ``.bin``)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in (".xml", ".bin") and "cache" not in p.parts
               and "skeleton" not in p.parts)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def render(r: dict) -> list[str]:
    """RESULTS.md's part: one row per variant, the folders' IR sizes."""
    d = r.get("deploy")
    if not d:
        return []
    labels = d.get("labels", {})
    f = d.get("folders", {})
    L = ["## Deployment: a fresh process from start to first image", "",
         "Each row is its own child process (`bench/deploy_one.py`), one after the other. **Time to first image** "
         "counts from the child's own start (`/proc/self/stat`), interpreter and imports included; `ready` = "
         "imports + build / rebuild + compile done. **Peak RSS** = the child's VmHWM right after its first image "
         "(RSS anonymous / file-backed at that moment beside it). Load average = the machine's 1-minute load at "
         "the child's first image (2 cores, shared). With several rounds (`--deploy-rounds`), a row is its fastest "
         "run, all runs' times in brackets, and the highest peak RSS of them. PSNR of the image "
         "against the same workload's PyTorch child. ControlNet rows: the bench's pipeline and workload; (d) rows: "
         "plain SD 1.5 with the same "
         "weights, `bench/optimum_infer.py`'s workload (256x256, 4 DDIM steps, one prompt); OpenVINO at f32 for "
         "both tools.", ""]
    for k, x in f.items():
        ex = x.get("export")
        extra = "" if not isinstance(ex, dict) else (f", export {ex.get('seconds', '-')} s" if "error" not in ex
                                                     else f", export FAILED: {ex['error'][-200:]}")
        L.append(f"- `{k}`: `{x['path']}`, IR {gb(x.get('ir_bytes'))}"
                 + (f", skeleton {x['skeleton']}" if x.get("skeleton") else "") + extra)
    L += ["", "| variant | workload | time to first image | ready at | first run | peak RSS (VmHWM) | "
          "anonymous / file RSS at the end | PSNR vs PyTorch | cache | load average |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in d.get("rows", {}).items():
        wl = "SD 1.5" if key.startswith("sd15") else "SD 1.5 + ControlNet"
        label = labels.get(key, key)
        if row.get("skipped"):
            L.append(f"| {label} | {wl} | skipped: {row['skipped']} |" + " |" * 7)
            continue
        if "seconds_to_first_image" not in row:
            L.append(f"| {label} | {wl} | FAILED: {str(row.get('error'))[-300:].replace('|', '/')} |"
                     .replace("\n", " ") + " |" * 7)
            continue
        m = row.get("marks") or {}
        load = f"{row['loadavg'][0]:.1f}" if row.get("loadavg") else "-"
        ready = f"{m['ready']:.1f} s | {m['first_image'] - m['ready']:.1f} s" if "ready" in m else "- | -"
        times = row.get("times_s") or []
        spread = f" (min of {', '.join(f'{t:.1f}' for t in times)})" if len(times) > 1 else ""
        L.append(f"| {label} | {wl} | **{row['seconds_to_first_image']:.1f} s**{spread} | {ready} | "
                 f"**{gb(row.get('vmhwm'))}** | {gb(row.get('rssanon'))} / "
                 f"{gb(row.get('rssfile'))} | {fmt_db(row.get('psnr_db')) if row.get('psnr_db') is not None else '-'}"
                 f" | {gb(row['cache_bytes']) if row.get('cache_bytes') else '-'} | "
                 f"{load} |")
    L.append("")
    c, ir = d.get("rows", {}).get("load_pipeline") or {}, f.get("controlnet", {}).get("ir_bytes")
    if c.get("rssanon") and ir:
        L += [f"(c)'s resident set at its first image: {gb(c['rssanon'])} anonymous ({c['rssanon'] / ir:.2f}x the "
              f"{gb(ir)} of IR: OpenVINO's compiled copies of the weights, the libraries' heaps) and "
              f"{gb(c['rssfile'])} file-backed ({c['rssfile'] / ir:.2f}x the IR: the mapped `.bin` pages OpenVINO "
              "read the weights from, and the shared libraries); with PyTorch's weights, (a) holds "
              f"{gb((d['rows'].get('eager') or {}).get('rssanon'))} anonymous.", ""]
    return L
