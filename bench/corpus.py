"""Coverage benchmark: diffusers' own test pipelines (the corpus in ../shared/corpus) through record -> export_all
with verify -> load(openvino) -> output PSNR >= 40 dB, and a table of how far each got: bench/results/CORPUS.md.

    DIFFUSERS_MIRROR=<git dir> .venv/bin/python bench/corpus.py [--budget SECONDS] [--filter S ...]
    .venv/bin/python bench/corpus.py --render-only          # the table again from bench/results/corpus.jsonl

The sweep appends to ``--out`` (JSON lines, one per case, as ``diffusers_corpus.py`` writes them) and skips cases
already in it, so a sweep cut short by ``--budget`` goes on where it stopped; delete the file to start over (after a
change to shapetrace, for instance). The corpus README says how to set it up (the mirror, the test-only packages).
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
STAGES = ("record", "export", "verify", "load", "parity")


def _isa() -> list[str]:
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]


def _check(rec: dict) -> dict:
    c = rec.get("check") or {}
    if isinstance(c, str):
        try:
            c = ast.literal_eval(c)
        except (ValueError, SyntaxError):
            c = {"error": c}
    return c


def _stage(rec: dict) -> str:
    """The stage a case failed at (or ``passed``), from its check record."""
    if rec.get("check_status") == "ok":
        return "passed"
    c = _check(rec)
    text = str(c.get("error") or "")
    for stage in STAGES:
        if f"stage {stage}" in text:
            return stage
    return "timeout" if rec.get("check_status") == "timeout" else (rec.get("check_status") or "?")


def render(records: list[dict], meta: dict) -> str:
    ran = [r for r in records if r.get("status") == "ok"]
    not_run = collections.Counter(r.get("status") for r in records if r.get("status") != "ok")
    stages = collections.Counter(_stage(r) for r in ran)
    passed = stages.get("passed", 0)
    pct = 100.0 * passed / len(ran) if ran else 0.0
    lines = ["# Corpus coverage: diffusers' own test pipelines through shapetrace", "",
             f"`{meta['command']}` — {meta['date']}, shapetrace {meta['commit']}, {meta['cpu']} "
             f"({', '.join(meta['isa'])}), {meta['cpus']} CPUs.", "",
             "Each case: diffusers' tiny random-weight pipeline from its own fast test, run offline; then `record` → "
             "`export_all` (ONNX + IR, verify on ONNX Runtime and OpenVINO) → `load(backend=\"openvino\")` → final "
             "output PSNR ≥ 40 dB against PyTorch. Development families only (the held-out third is measured by the "
             "maintainers).", "", *([meta["note"], ""] if meta.get("note") else []),
             f"**{passed} of {len(ran)} cases that run offline pass ({pct:.1f} %)**; {len(records)} cases listed, "
             + (", ".join(f"{k}: {v}" for k, v in sorted(not_run.items())) or "all run offline") + ".", "",
             "| stage | cases |", "|---|---|"]
    for s in ("passed", *STAGES, "timeout"):
        if stages.get(s):
            lines.append(f"| {'passed' if s == 'passed' else 'failed at ' + s} | {stages[s]} |")
    for s, k in stages.items():
        if s not in ("passed", *STAGES, "timeout"):
            lines.append(f"| {s} | {k} |")
    fam: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in ran:
        fam[r["family"]][_stage(r) == "passed"] += 1
    lines += ["", "## By family", "", "| family | pass | of |", "|---|---|---|"]
    lines += [f"| {f} | {c[True]} | {c[True] + c[False]} |" for f, c in sorted(fam.items())]
    lines += ["", "## Cases", "", "| case | stage | graphs | PSNR dB | export s | reason |", "|---|---|---|---|---|---|"]
    for r in sorted(ran, key=lambda r: r["id"]):
        c = _check(r)
        reason = "" if _stage(r) == "passed" else " ".join(str(c.get("error") or r.get("check_status")).split())
        reason = reason.replace("|", "\\|")[:220]
        graphs = c.get("graphs")
        lines.append(f"| {r['id'].split('::')[-1]} | {_stage(r)} | {len(graphs) if graphs else ''} | "
                     f"{c.get('psnr', '')} | {c.get('export_s', '')} | {reason} |")
    if not_run:
        lines += ["", "## Not run offline", "", "| case | status | reason |", "|---|---|---|"]
        for r in sorted((r for r in records if r.get("status") != "ok"), key=lambda r: r["id"]):
            lines.append(f"| {r['id'].split('::')[-1]} | {r['status']} | "
                         f"{' '.join(str(r.get('reason') or '').split())[:120].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus"), help="the corpus folder")
    ap.add_argument("--out", default=str(RESULTS / "corpus.jsonl"))
    ap.add_argument("--markdown", default=str(RESULTS / "CORPUS.md"))
    ap.add_argument("--budget", type=float, default=0, help="stop starting new cases after this many seconds")
    ap.add_argument("--filter", action="append", default=[])
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--note", default="", help="a paragraph printed under the header (how the records were made)")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    command = " ".join(["python", "bench/corpus.py", *sys.argv[1:]])
    if not args.render_only:
        if not os.environ.get("DIFFUSERS_MIRROR"):
            sys.exit("set DIFFUSERS_MIRROR to the diffusers git mirror (see ../shared/corpus/README.md)")
        cmd = [sys.executable, str(corpus / "diffusers_corpus.py"), "--check",
               f"{corpus / 'corpus_check.py'}:check", "--check-timeout", "600", "--jobs", "1", "--resume",
               "--out", args.out]
        if args.budget:
            cmd += ["--budget", str(args.budget)]
        for f in args.filter:
            cmd += ["--filter", f]
        subprocess.run(cmd, check=True, cwd=ROOT)
    records = [json.loads(line) for line in open(args.out) if line.strip()]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    meta = {"command": command, "date": dt.date.today().isoformat(), "commit": commit, "cpu": cpu, "isa": _isa(),
            "cpus": len(os.sched_getaffinity(0)), "note": args.note}
    Path(args.markdown).write_text(render(records, meta))
    print(Path(args.markdown).read_text().split("\n## By family")[0])


if __name__ == "__main__":
    main()
