"""Same work, two tools: plain Stable Diffusion 1.5 (full-size architecture, random weights) run end to end by
shapetrace's exports and by optimum-intel's ``OVStableDiffusionPipeline``, each against PyTorch eager in the same
process (runs interleaved, so a drifting machine load hits both).

    make bench-optimum-infer       # needs the optimum venv of ``make bench-optimum``
    .venv/bin/python bench/optimum_infer.py --venv-optimum bench/.venv-optimum

1. The ``sd15`` folder of ``bench/optimum_compare.py`` (``save_pretrained``, full-size configs). optimum's venv
   (transformers 5.5.4) reads CLIP text-encoder weights under other keys than transformers 5.24 writes, so it gets
   ``sd15-optimum/``: the same folder with the text encoder's keys renamed (checked: its PyTorch image must equal
   ours).
2. ``--side shapetrace`` (this venv): record ``CALIBRATION_PROMPTS`` (one run each, the workload below), export the
   float IR and each quantized mode with ``export_all(formats=("openvino",), quantize=...)``, then per variant
   ``shapetrace.load`` + timed runs interleaved with PyTorch runs.
3. ``--side optimum`` (optimum's venv): ``optimum-cli``'s export (fp32), then ``OVStableDiffusionPipeline`` f32
   dynamic, bf16 static (``reshape``) and its hybrid quantization (``OVWeightQuantizationConfig(bits=8,
   quant_method="hybrid", dataset=CALIBRATION_PROMPTS)``: optimum collects the UNet's inputs itself, at 512x512 and
   the pipeline's default 50 steps), each timed the same way.
4. Writes ``bench/results/optimum_infer.json``, the "Same work as optimum-intel" section of ``bench/results/RESULTS.md`` and the
   key ``peer_optimum_sd15`` of ``bench/results/results.json``.

Workload (both sides): prompt "chef in the kitchen", 256x256, 4 DDIM steps, guidance 7.5, ``torch.Generator``
seed 0, ``output_type="np"``; medians of ``--runs`` timed runs after one warm-up. PSNR is against this side's
PyTorch image (same seed); the shapetrace side's PyTorch image is the reference for both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from suite.metrics import timed  # numpy only: the optimum venv's child shares it
RESULTS = HERE / "results"
PROMPT = "chef in the kitchen"
WORKLOAD = dict(height=256, width=256, num_inference_steps=4, guidance_scale=7.5)
CALIBRATION_PROMPTS = ["a photo of an astronaut riding a horse", "a red car in the rain", "portrait of an old man",
                       "a bowl of fruit on a table", "mountains at sunset", "a cat sleeping on a sofa",
                       "city street at night", "a lighthouse by the sea"]
#: shapetrace variants: (label, export folder, precision hint, static shapes)
ST_VARIANTS = (("shapetrace f32 dynamic", "float", "f32", False), ("shapetrace bf16 static", "float", "bf16", True),
               ("shapetrace int8 (bf16 rest) static", "int8", "bf16", True),
               ("shapetrace hybrid (bf16 rest) static", "hybrid", "bf16", True),
               ("shapetrace hybrid (f32 rest) static", "hybrid", "f32", True))


# ---------------------------------------------------------------------------------------------- shared helpers
def _psnr(a: Any, b: Any) -> float | None:
    """PSNR over [0, 1] images; its own copy of ``shapetrace.psnr``: the optimum side runs in optimum-intel's venv,
    which has no shapetrace."""
    import numpy as np

    if a is None or b is None:
        return None
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _run(pipe: Any, prompt: str = PROMPT, seed: int = 0) -> Any:
    import torch

    with torch.no_grad():
        return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **WORKLOAD).images[0]


def _rss_peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _variant(pipe_rt: Any, pipe_pt: Any, runs: int, ref: Any) -> dict:
    """Warm-up, then runtime and PyTorch runs alternately; speedup = median over (runtime run, PyTorch run right
    after it) pairs of PyTorch seconds / runtime seconds."""
    t_first, _ = timed(lambda: _run(pipe_rt))
    times, torch_times, image = [], [], None
    for _ in range(runs):
        gc.collect()
        t, image = timed(lambda: _run(pipe_rt))
        times.append(t)
        t, _ = timed(lambda: _run(pipe_pt))
        torch_times.append(t)
    pairs = [p / r for r, p in zip(times, torch_times)]
    return {"first_s": round(t_first, 3), "times_s": times, "median_s": statistics.median(times),
            "torch_times_s": torch_times, "median_pair_speedup": statistics.median(pairs), "psnr_db": _psnr(image, ref),
            "loadavg": os.getloadavg()}


def _load_torch(folder: Path) -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- shapetrace side
def side_shapetrace(folder: Path, work: Path, runs: int, samples: int) -> dict:
    import numpy as np
    import torch

    import shapetrace
    from shapetrace._export.graph_export import PeakRSS

    torch.set_grad_enabled(False)
    pipe = _load_torch(folder)
    _run(pipe)  # warm-up
    ref = _run(pipe)
    np.save(work / "ref_torch.npy", ref)
    res: dict[str, Any] = {"exports": {}, "variants": {}}
    with PeakRSS() as rss:
        t_rec, rec = timed(lambda: _record(shapetrace, pipe, samples))
    res["recording"] = {"prompts": len(CALIBRATION_PROMPTS), "seconds": round(t_rec, 1), "peak_rss": rss.peak,
                        "kept": {g: len(rec.samples.samples(g)) for g in rec.graphs}}
    for name, quantize in (("float", None), ("int8", "int8"), ("hybrid", "hybrid")):
        out = work / f"st-{name}"
        shutil.rmtree(out, ignore_errors=True)
        gc.collect()
        _say(f"shapetrace export {name}")
        with PeakRSS() as rss:
            t, result = timed(lambda: shapetrace.export_all(pipe, out, recording=rec, formats=("openvino",),
                                                             quantize=quantize, verify=False, progress=False))
        size = sum(p.stat().st_size for p in out.rglob("*.bin"))
        res["exports"][name] = {"seconds": round(t, 1), "peak_rss": rss.peak, "ok": result.ok, "ir_bytes": size}
        _say(f"  {t:.0f} s, IR {size / 1e9:.2f} GB, ok {result.ok}")
    for label, export, precision, static in ST_VARIANTS:
        shell = _shell(pipe)
        gc.collect()
        _say(label)
        try:
            with shapetrace.load(shell, work / f"st-{export}", backend="openvino", precision=precision,
                                 static_shapes=static):
                row = _variant(shell, pipe, runs, ref)
        except Exception as e:  # a variant that fails is a row with its reason
            row = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        row["export"] = export
        res["variants"][label] = row
        _say(f"  {row.get('median_s', float('nan')):.2f} s, speedup {row.get('median_pair_speedup')}, "
             f"PSNR {row.get('psnr_db')} {row.get('error', '')}")
    res["torch_peak_rss"] = _rss_peak()
    return res


def _record(shapetrace: Any, pipe: Any, samples: int) -> Any:
    with shapetrace.record(pipe, samples=samples) as rec:
        for i, prompt in enumerate(CALIBRATION_PROMPTS):
            _run(pipe, prompt, seed=100 + i)
    return rec


def _shell(pipe: Any) -> Any:
    """A second pipeline sharing the modules (own scheduler): load() swaps its attributes only."""
    comps = dict(pipe.components)
    comps["scheduler"] = type(comps["scheduler"]).from_config(comps["scheduler"].config)
    p = type(pipe)(**comps, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


# ---------------------------------------------------------------------------------------------- optimum side
def side_optimum(folder: Path, work: Path, runs: int, samples: int) -> dict:
    import numpy as np
    import torch
    from optimum.intel import OVStableDiffusionPipeline, OVWeightQuantizationConfig

    torch.set_grad_enabled(False)
    pipe = _load_torch(folder)
    _run(pipe)
    own_ref = _run(pipe)
    ref = np.load(work / "ref_torch.npy")
    res: dict[str, Any] = {"torch_psnr_vs_shapetrace_side_db": _psnr(own_ref, ref), "exports": {}, "variants": {}}
    f32_dir, hybrid_dir = work / "optimum-f32", work / "optimum-hybrid"
    exports = {"f32": lambda: OVStableDiffusionPipeline.from_pretrained(folder, export=True, compile=False),
               "hybrid": lambda: OVStableDiffusionPipeline.from_pretrained(
                   folder, export=True, compile=False, quantization_config=OVWeightQuantizationConfig(
                       bits=8, quant_method="hybrid", dataset=CALIBRATION_PROMPTS, num_samples=samples))}
    for name, make in exports.items():
        out = f32_dir if name == "f32" else hybrid_dir
        shutil.rmtree(out, ignore_errors=True)
        gc.collect()
        _say(f"optimum export {name}")
        try:
            t, model = timed(make)
            model.save_pretrained(out)
            del model
            size = sum(p.stat().st_size for p in out.rglob("*.bin"))
            res["exports"][name] = {"seconds": round(t, 1), "ir_bytes": size}
            _say(f"  {t:.0f} s, IR {size / 1e9:.2f} GB")
        except Exception as e:
            res["exports"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            _say(f"  ERROR {res['exports'][name]['error']}")
    variants = (("optimum f32 dynamic", f32_dir, "f32", False), ("optimum bf16 static", f32_dir, "bf16", True),
                ("optimum hybrid (bf16 rest) static", hybrid_dir, "bf16", True),
                ("optimum hybrid (f32 rest) static", hybrid_dir, "f32", True))
    for label, out, precision, static in variants:
        gc.collect()
        _say(label)
        try:
            ov = OVStableDiffusionPipeline.from_pretrained(out, compile=False,
                                                           ov_config={"INFERENCE_PRECISION_HINT": precision})
            if static:
                ov.reshape(batch_size=1, height=WORKLOAD["height"], width=WORKLOAD["width"], num_images_per_prompt=1)
            ov.compile()
            ov.set_progress_bar_config(disable=True)
            row = _variant(ov, pipe, runs, ref)
            del ov
        except Exception as e:
            row = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        res["variants"][label] = row
        _say(f"  {row.get('median_s', float('nan')):.2f} s, speedup {row.get('median_pair_speedup')}, "
             f"PSNR {row.get('psnr_db')} {row.get('error', '')}")
    res["torch_peak_rss"] = _rss_peak()
    return res


# ---------------------------------------------------------------------------------------------- driver
def optimum_folder(folder: Path, work: Path) -> Path:
    """``folder`` for transformers 5.5.4: the text encoder's keys get the ``text_model.`` prefix it expects, the
    other components are links."""
    from safetensors.torch import load_file, save_file

    out = work / "sd15-optimum"
    if (out / "model_index.json").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for item in folder.iterdir():
        if item.name != "text_encoder":
            (out / item.name).symlink_to(item)
    te = out / "text_encoder"
    te.mkdir()
    for item in (folder / "text_encoder").iterdir():
        if item.suffix == ".safetensors":
            sd = load_file(item)
            save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in sd.items()}, te / item.name,
                      metadata={"format": "pt"})
        else:
            shutil.copy(item, te / item.name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/shapetrace-optimum", help="folders and exports (~20 GB)")
    ap.add_argument("--venv-optimum", default=str(HERE / ".venv-optimum"))
    ap.add_argument("--runs", type=int, default=3, help="timed runs per variant (default 3)")
    ap.add_argument("--samples", type=int, default=32, help="calibration UNet calls per tool (default 32)")
    ap.add_argument("--side", choices=("shapetrace", "optimum"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    work = Path(a.work)
    if a.side:  # a child: one tool, writes its JSON
        fn = side_shapetrace if a.side == "shapetrace" else side_optimum
        Path(a.json).write_text(json.dumps(fn(Path(a.folder), work, a.runs, a.samples), indent=2, default=str))
        return 0
    sys.path.insert(0, str(HERE))
    import optimum_compare

    work.mkdir(parents=True, exist_ok=True)
    folder = optimum_compare.write_folders(work)["sd15"]
    started = dt.datetime.now().isoformat(timespec="seconds")
    load0 = os.getloadavg()
    data: dict[str, Any] = {"started": started, "loadavg_start": load0, "isa": optimum_compare._isa(),
                            "cores": os.cpu_count(), "workload": {"prompt": PROMPT, **WORKLOAD, "scheduler": "DDIM"},
                            "calibration_prompts": CALIBRATION_PROMPTS, "samples": a.samples, "runs": a.runs,
                            "shapetrace_env": optimum_compare._versions(sys.executable),
                            "optimum_env": optimum_compare._versions(str(Path(a.venv_optimum) / "bin" / "python")),
                            "command": " ".join([".venv/bin/python", "bench/optimum_infer.py", *(argv or sys.argv[1:])])}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    sides = (("shapetrace", sys.executable, folder),
             ("optimum", str(Path(a.venv_optimum) / "bin" / "python"), optimum_folder(folder, work)))
    for side, python, src in sides:
        out = work / f"infer-{side}.json"
        out.unlink(missing_ok=True)
        cmd = [python, str(Path(__file__).resolve()), "--side", side, "--folder", str(src), "--work", str(work),
               "--runs", str(a.runs), "--samples", str(a.samples), "--json", str(out)]
        _say(f"== {side}: {' '.join(cmd)}")
        rc = subprocess.run(cmd, env=env, cwd=HERE.parent).returncode if Path(python).exists() else None
        data[side] = json.loads(out.read_text()) if out.exists() else \
            {"error": f"exit {rc}" if rc is not None else f"{python} not found (make bench-optimum)"}
        (RESULTS / "optimum_infer.json").write_text(json.dumps(data, indent=2, default=str))
    data["loadavg_end"] = os.getloadavg()
    data["summary"] = summary(data)
    (RESULTS / "optimum_infer.json").write_text(json.dumps(data, indent=2, default=str))
    results = RESULTS / "results.json"
    if results.exists():
        r = json.loads(results.read_text())
        r["peer_optimum_sd15"] = data["summary"]
        results.write_text(json.dumps(r, indent=2, default=str))
    subprocess.run([sys.executable, str(HERE / "run.py"), "--render"], cwd=HERE.parent, check=False)
    return 0


def _torch_s(data: dict) -> float | None:
    """The PyTorch seconds of the shapetrace venv (median of all its interleaved runs): one yardstick for both
    tools, whose own venvs run PyTorch eager at different speeds (diffusers 0.42.1 vs 0.39.0)."""
    runs = [t for v in ((data.get("shapetrace") or {}).get("variants") or {}).values() for t in v.get("torch_times_s", [])]
    return statistics.median(runs) if runs else None


def summary(data: dict) -> dict:
    """The best variant of each tool (highest pair speedup among those with image PSNR >= 30 dB vs PyTorch)."""
    best, torch_s = {}, _torch_s(data)
    for side in ("shapetrace", "optimum"):
        rows = {k: v for k, v in (data.get(side, {}).get("variants") or {}).items() if "median_s" in v}
        ok = {k: v for k, v in rows.items() if (v.get("psnr_db") or 0) >= 30}
        if ok:
            k = max(ok, key=lambda k: ok[k]["median_pair_speedup"])
            best[side] = {"variant": k, "speedup_vs_torch": round(ok[k]["median_pair_speedup"], 2),
                          "median_s": round(ok[k]["median_s"], 3), "psnr_db": ok[k]["psnr_db"],
                          "speedup_vs_shapetrace_venv_torch": round(torch_s / ok[k]["median_s"], 2) if torch_s else None}
    return {"best": best, "psnr_bound_db": 30, "torch_s_shapetrace_venv": torch_s, "workload": data.get("workload")}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render(data: dict) -> str:
    """The RESULTS.md section."""
    L = ["## Same work as optimum-intel: plain SD 1.5 end to end", "",
         f"_`{data.get('command')}`, started {data.get('started')}, {data.get('cores')} cores, ISA {data.get('isa')},"
         f" load average {', '.join(f'{x:.1f}' for x in data.get('loadavg_start', []))} at start._", "",
         "Full-size SD 1.5 architecture (random weights), `StableDiffusionPipeline` without ControlNet, "
         f"{data['workload']['height']}x{data['workload']['width']}, {data['workload']['num_inference_steps']} DDIM "
         f"steps, guidance {data['workload']['guidance_scale']}, seed 0. Each tool runs in its own venv against "
         "PyTorch eager in the same process (runs interleaved); speedup = median over (runtime run, next PyTorch run) "
         f"pairs; PSNR of the image vs the PyTorch image at the same seed. Calibration: {len(CALIBRATION_PROMPTS)} "
         f"prompts, up to {data.get('samples')} UNet calls (shapetrace: recorded at the workload's size; optimum: "
         "collected by optimum at 512x512, 50 steps).", "",
         f"- shapetrace venv: {data.get('shapetrace_env')}", f"- optimum venv: {data.get('optimum_env')}", "",
         f"The last speedup column divides one yardstick, the shapetrace venv's PyTorch median "
         f"({_fmt(_torch_s(data))} s), by the variant's median: the two venvs run PyTorch eager at different speeds.",
         "",
         "| tool | variant | median s | PyTorch s (same process) | speedup (pairs) | PSNR vs PyTorch | IR size | "
         "export s | speedup vs one yardstick |",
         "|---|---|---|---|---|---|---|---|---|"]
    torch_s = _torch_s(data)
    for side in ("shapetrace", "optimum"):
        d = data.get(side) or {}
        if "error" in d:
            L.append(f"| {side} | - | - | - | - | - | - | {d['error']} |")
            continue
        for label, v in (d.get("variants") or {}).items():
            export = v.get("export") or ("hybrid" if "hybrid" in label else "f32" if side == "optimum" else "float")
            ex = (d.get("exports") or {}).get(export) or {}
            size = f"{ex['ir_bytes'] / 1e9:.2f} GB" if ex.get("ir_bytes") else "-"
            if "error" in v:
                L.append(f"| {side} | {label} | error: {v['error'].replace('|', '/')} | | | | {size} | "
                         f"{ex.get('seconds', '-')} |")
                continue
            psnr = v["psnr_db"]
            L.append(f"| {side} | {label} | {v['median_s']:.2f} | {statistics.median(v['torch_times_s']):.2f} | "
                     f"{v['median_pair_speedup']:.2f}x | {'inf' if psnr == float('inf') else f'{psnr:.1f}'} dB | "
                     f"{size} | {ex.get('seconds', '-')} | {_fmt(torch_s / v['median_s'] if torch_s else None)}x |")
    best = (data.get("summary") or {}).get("best") or {}
    if best:
        L += ["", "Best of each (PSNR >= 30 dB): " + "; ".join(
            f"{s}: {b['variant']} {b['speedup_vs_torch']}x its venv's PyTorch, "
            f"{b['speedup_vs_shapetrace_venv_torch']}x the yardstick ({b['median_s']} s)" for s, b in best.items()) + "."]
    opt = data.get("optimum") or {}
    if opt.get("torch_psnr_vs_shapetrace_side_db") is not None:
        L += ["", f"optimum's venv runs the same weights: its PyTorch image vs this venv's, "
                  f"{opt['torch_psnr_vs_shapetrace_side_db']:.1f} dB (transformers 5.5.4 reads the text encoder from "
                  "`sd15-optimum/`, the same weights under the key names it expects)."]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
