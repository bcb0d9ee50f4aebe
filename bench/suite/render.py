"""RESULTS.md from results.json: the header, the targets table (:mod:`bench.suite.targets`), each section's
renderer in registry order, then the sections other bench scripts keep in the full suite's file (generation,
optimum-intel) and the hand-written analysis (``bench/results/analysis.md``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from . import targets
from .metrics import gb


def header(r: dict) -> list[str]:
    """Title, commands, machine, versions, workload, models."""
    L: list[str] = []
    m, v, s = r["machine"], r["versions"], r["settings"]
    runs = [{"command": r["command"], "started": r["started"], "loadavg_start": m.get("loadavg_start", []),
             "head": r.get("head", v.get("shapetrace_git"))}]
    runs += r.get("updates", [])
    L += [f"# shapetrace benchmark ({r['suite']})", "",
          "Command" + ("s (later ones re-ran some sections with `--update`, replacing those sections only)"
                       if len(runs) > 1 else "") + ":", ""]
    L += [f"- `{x['command']}` (started {x['started']}, shapetrace at {x.get('head') or '?'}, load average "
          f"{', '.join(f'{v:.1f}' for v in x.get('loadavg_start', []))})" for x in runs]
    L += ["", f"Sections in this file: {', '.join(r['sections_done']) or 'none'}.", ""]
    heads = sorted({f"{e['export_py']['head']} (export.py sha1 {e['export_py']['export_py_sha1']})"
                    for e in (r.get("export") or {}).values() if isinstance(e, dict) and e.get("export_py")})
    if heads:
        L += [f"Section 2 measured shapetrace at {', '.join(heads)}.", ""]
    L += [
          f"Machine: {m.get('cpu')}, {m.get('usable_cpus', m.get('logical_cpus'))} usable CPUs "
          f"(ISA: {', '.join(m.get('isa', []))}), {gb(m.get('MemTotal'))} RAM, swap {gb(m.get('SwapTotal'))}; "
          f"torch threads {m.get('torch_threads')}. The machine is shared with other jobs (load averages "
          f"above): speed ratios are only taken between runs interleaved in time.", "",
          "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val and k != "shapetrace_git") + ".",
          "",
          f"Workload: `StableDiffusionControlNetPipeline`, random weights, {s['height']}x{s['width']}, "
          f"{s['steps']} steps, guidance_scale {s['guidance_scale']} (one prompt, so the UNet and ControlNet see "
          f"batch 2), DDIM; medians of {s['runs']} runs after one warm-up run.", ""]
    if "models" in r:
        p = r["models"]["parameters"]
        L += ["Models: " + ", ".join(f"{k} {n / 1e6:.1f}M params" for k, n in p.items())
              + f" (built in {r['models']['build_seconds']} s).", ""]
    return L


def other_sections(folder: Path, suite: str) -> str:
    """Sections other bench scripts keep in RESULTS.md (bench/generation.py: ``generation.json``,
    bench/optimum_infer.py: ``optimum_infer.json``, bench/genai_llm.py: ``genai_llm.json``), re-appended so that re-rendering this file keeps them."""
    gen, peer = folder / "generation.json", folder / "optimum_infer.json"
    if suite != "full":
        return ""
    text = ""
    if gen.exists():
        import generation

        data = json.loads(gen.read_text())
        text += "\n" + generation.render(data) + generation.CAVEAT_IF_LOADED(data)
    if peer.exists():
        import optimum_infer

        text += "\n" + optimum_infer.render(json.loads(peer.read_text()))
    if (folder / "genai_llm.json").exists():
        import genai_llm

        text += "\n" + genai_llm.render(json.loads((folder / "genai_llm.json").read_text()))
    return text


def document(r: dict, renderers: Sequence[Callable[[dict], list[str]]], folder: Path) -> str:
    L = header(r) + targets.render(r)
    for render in renderers:
        L += render(r)
    notes = folder / "analysis.md"
    if r["suite"] == "full" and notes.exists():
        L += ["## 5. Analysis: where the time / memory goes, and what would reach the targets", "",
              "_Written by hand from the run recorded in this file (`bench/results/analysis.md`, embedded by "
              "run.py); a new run regenerates the tables above but not this text._", "", notes.read_text().strip(),
              ""]
    return "\n".join(L) + "\n" + other_sections(folder, r["suite"])
