"""The same SD 1.5 (+ OpenPose ControlNet) folder exported by ``shapetrace export`` and by ``optimum-cli export
openvino``: wall time, peak memory, graphs produced, whether the ControlNet is exported.

    make bench-optimum          # = the two steps below
    .venv/bin/python bench/optimum_compare.py --venv-optimum bench/.venv-optimum

1. writes the folders with ``save_pretrained`` from the full-size configs in ``bench/configs`` (random weights, the
   tiny CLIP tokenizer; ``bench/zoo.py``): ``sd15-controlnet/`` (``StableDiffusionControlNetPipeline``) and
   ``sd15/`` (the same components without the ControlNet, ``StableDiffusionPipeline``);
2. runs each tool in a child process on each folder, OpenVINO IR fp32 for both; shapetrace a second time with its
   defaults (ONNX + IR + parity checks), which optimum-cli does not do. Each child's wall time and peak RSS
   (``wait4`` ru_maxrss: the largest resident set of the child or a descendant);
3. writes ``bench/results/RESULTS.optimum.md`` and ``bench/results/results.optimum.json``.

optimum-cli lives in its own venv (``--venv-optimum``; ``make bench-optimum`` creates it) because optimum-intel 2.2.0
pins ``huggingface-hub<1.22`` while diffusers 0.42.1 needs ``>=1.32``: that venv resolves to diffusers 0.39.0 and
transformers 5.5.4 (torch 2.14.1 and openvino 2026.4.1 as here). Nothing is downloaded: ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))


def write_folders(work: Path, seed: int = 0, names: tuple[str, ...] = ("sd15-controlnet", "sd15"),
                  pipe: object = None, suite: str = "full") -> dict[str, Path]:
    """Save the pipelines ``names`` (skipped when already there) from ``pipe`` (default: ``zoo`` builds the
    ``suite``'s pipeline)."""
    import zoo
    from diffusers import StableDiffusionPipeline

    folders = {n: work / n for n in names}
    if all((f / "model_index.json").exists() for f in folders.values()):
        return folders
    pipe = pipe if pipe is not None else zoo.build_pipeline(suite, seed)
    if "sd15-controlnet" in folders:
        pipe.save_pretrained(folders["sd15-controlnet"])
    if "sd15" in folders:
        parts = {k: getattr(pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
        StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(folders["sd15"])
    return folders


def measure(cmd: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run ``cmd``; wall seconds, peak RSS (bytes) of the child or a descendant, exit status."""
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    return {"cmd": " ".join(cmd), "seconds": round(seconds, 1), "peak_rss_bytes": usage.ru_maxrss * 1024,
            "returncode": os.waitstatus_to_exitcode(status), "log": str(log),
            "load_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def shapetrace_graphs(out: Path) -> dict:
    manifest = out / "manifest.json"
    if not manifest.exists():
        return {"graphs": [], "files": 0}
    data = json.loads(manifest.read_text())
    return {"graphs": [g["name"] for g in data["graphs"] if g.get("error") is None],
            "failed": [g["name"] for g in data["graphs"] if g.get("error") is not None],
            "parity": (data.get("parity") or {}).get("summary"), "bytes": _du(out)}


def optimum_graphs(out: Path) -> dict:
    found = sorted(str(p.parent.relative_to(out)) for p in out.rglob("openvino_model.xml")) if out.exists() else []
    return {"graphs": found, "failed": [], "parity": None, "bytes": _du(out)}


def _tail(log: Path, n: int = 3) -> str:
    lines = [l for l in Path(log).read_text(errors="replace").splitlines() if l.strip()]
    errors = [l for l in lines if re.search(r"(Error|error:|Exception)", l)]
    return " | ".join((errors or lines)[-n:])[:600]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/shapetrace-optimum", help="folders and exports (several GB)")
    ap.add_argument("--venv-optimum", default=str(HERE / ".venv-optimum"))
    ap.add_argument("--size", type=int, default=256, help="the size of shapetrace's recorded call (default 256)")
    ap.add_argument("--only", default=None, help="comma separated run names to (re-)run, the other rows of "
                    "results.optimum.json are kept (default: all, from scratch)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    folders = write_folders(work)
    folder_seconds = round(time.perf_counter() - t0, 1)
    py, optimum = sys.executable, str(Path(args.venv_optimum) / "bin" / "optimum-cli")
    size = ["--height", str(args.size), "--width", str(args.size), "--steps", "1"]
    runs = []
    for name, folder in folders.items():
        runs += [
            (f"shapetrace IR only / {name}", "shapetrace", folder,
             [py, "-m", "shapetrace", "export", str(folder), str(work / f"st-ir-{name}"), "--formats", "openvino",
              "--no-verify", "--overwrite", *size]),
            (f"optimum-cli / {name}", "optimum", folder,
             [optimum, "export", "openvino", "--model", str(folder), "--task", "text-to-image", "--weight-format",
              "fp32", str(work / f"optimum-{name}")]),
        ]
    runs.append(("shapetrace defaults (ONNX + IR + verify) / sd15-controlnet", "shapetrace",
                 folders["sd15-controlnet"], [py, "-m", "shapetrace", "export", str(folders["sd15-controlnet"]),
                                              str(work / "st-full-sd15-controlnet"), "--overwrite", *size]))
    only = set(args.only.split(",")) if args.only else None
    results = []
    previous = RESULTS / "results.optimum.json"
    if only and previous.exists():  # re-run some rows, keep the others
        results = [r for r in json.loads(previous.read_text())["results"] if r["run"] not in only]
    for label, tool, folder, cmd in runs:
        if only and label not in only:
            continue
        out = Path(cmd[-1] if tool == "optimum" else cmd[5])
        if tool == "optimum":
            shutil.rmtree(out, ignore_errors=True)
            if not Path(optimum).exists():
                results.append({"run": label, "tool": tool, "error": f"{optimum} not found (make bench-optimum)"})
                continue
        print(f"== {label}", flush=True)
        m = measure(cmd, work / f"{re.sub(r'[^A-Za-z0-9]+', '-', label)}.log", env)
        produced = optimum_graphs(out) if tool == "optimum" else shapetrace_graphs(out)
        row = {"run": label, "tool": tool, "folder": folder.name, **m, **produced,
               "controlnet_exported": any("controlnet" in g for g in produced["graphs"])}
        if m["returncode"] != 0:
            row["error"] = _tail(Path(m["log"]))
        print(f"   {m['seconds']} s, peak {m['peak_rss_bytes'] / 1e9:.2f} GB, rc {m['returncode']}, graphs "
              f"{produced['graphs']}", flush=True)
        results.append(row)
        (RESULTS / "results.optimum.json").write_text(json.dumps(_env(folders, folder_seconds, results), indent=2))
    _write_md(_env(folders, folder_seconds, results))
    return 0


def _versions(python: str) -> str:
    code = ("import importlib.metadata as m\nfor p in ('torch','diffusers','transformers','openvino','optimum-intel',"
            "'optimum','huggingface-hub','onnx','onnxruntime'):\n  try: print(p, m.version(p))\n  except Exception: pass")
    try:
        return ", ".join(subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
                         .stdout.strip().splitlines())
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"


def _isa() -> str:
    try:
        flags = set(re.search(r"^flags\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    except (OSError, AttributeError):
        return "unknown"
    return " ".join(sorted(f for f in flags if f.startswith(("avx512", "avx2", "amx", "avx_vnni"))))


def _env(folders: dict, folder_seconds: float, results: list) -> dict:
    venv = Path(sys.argv[sys.argv.index("--venv-optimum") + 1]) if "--venv-optimum" in sys.argv else \
        HERE / ".venv-optimum"
    return {"date": dt.datetime.now().isoformat(timespec="minutes"), "cpu": platform.processor() or "?",
            "cores": os.cpu_count(), "isa": _isa(), "folders": {k: str(v) for k, v in folders.items()},
            "folder_bytes": {k: _du(v) for k, v in folders.items()}, "write_folders_seconds": folder_seconds,
            "shapetrace_env": _versions(sys.executable), "optimum_env": _versions(str(venv / "bin" / "python")),
            "results": results}


def _write_md(data: dict) -> None:
    gb = 1e9
    lines = ["# shapetrace export vs optimum-cli export openvino", "",
             f"_{data['date']}, {data['cores']} cores, ISA flags: {data['isa']}; written by "
             f"`bench/optimum_compare.py`._", "",
             "Folders (full-size SD 1.5 configs + OpenPose ControlNet, random weights, saved with save_pretrained): "
             + ", ".join(f"`{k}` {v / gb:.2f} GB" for k, v in data["folder_bytes"].items()) + ".", "",
             f"- shapetrace venv: {data['shapetrace_env']}", f"- optimum venv: {data['optimum_env']}", "",
             "| run | exit | wall s | peak RSS | graphs produced | ControlNet exported | output size | load avg before/after | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = sorted(data["results"], key=lambda r: (r.get("folder") != "sd15-controlnet", "defaults" in r["run"],
                                                  r.get("tool") != "shapetrace"))
    for r in rows:
        graphs = ", ".join(r.get("graphs", [])) or "-"
        note = r.get("error") or r.get("parity") or ""
        lines.append(f"| {r['run']} | {r.get('returncode', '-')} | {r.get('seconds', '-')} | "
                     f"{r.get('peak_rss_bytes', 0) / gb:.2f} GB | {graphs} | "
                     f"{'yes' if r.get('controlnet_exported') else 'no'} | {r.get('bytes', 0) / gb:.2f} GB | "
                     f"{' / '.join(map(str, r.get('load_before_after', [])))} | {note.replace('|', '/')} |")
    lines += ["", "Commands:", ""] + [f"- `{r['cmd']}`" for r in rows if "cmd" in r]
    lines += ["", "Notes:", "",
              "- optimum-cli exits 0 on the ControlNet folder and exports no ControlNet; its UNet has the inputs "
              "`sample`, `timestep`, `encoder_hidden_states` only (no ControlNet residuals).",
              "- optimum's venv (transformers 5.5.4) does not read the CLIP text encoder keys written by "
              "transformers 5.24 (`encoder.layers.*` vs `text_model.encoder.layers.*`) and re-initialises the text "
              "encoder before exporting it (its log's LOAD REPORT lists the weights as MISSING).",
              "- Wall times move with the machine's load (2 shared cores): compare rows whose load averages are "
              "alike. Exports and logs are under the `--work` folder."]
    (RESULTS / "RESULTS.optimum.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
