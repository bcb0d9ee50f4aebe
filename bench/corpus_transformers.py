"""Coverage benchmark: transformers' own model tests (the corpus in ../shared/corpus) through record -> export_all
with verify -> load(openvino) -> outputs / greedy tokens compared with PyTorch: bench/results/CORPUS-transformers.md.

    TRANSFORMERS_MIRROR=<git dir> .venv/bin/python bench/corpus_transformers.py [--budget S] [--kind generate]
    .venv/bin/python bench/corpus_transformers.py --render-only     # the table again from the records

The sweep appends to ``--out`` (JSON lines, one per case, as ``transformers_corpus.py`` writes them) and skips cases
already there, so a sweep cut short by ``--budget`` goes on where it stopped. Every record this script adds is
stamped with the commit and date it ran at (``"shapetrace_commit"``), and the table says which commit each row
comes from; delete the file (or ``--filter`` the cases again into a fresh ``--out``) after a change to shapetrace.
The corpus README says how to set it up (the mirror, the sdist overlay, the test-only packages).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from corpus import STAGES, _check, _isa, _stage  # noqa: E402  (the diffusers sweep's record readers)

KINDS = ("forward", "generate")


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip()


def _outcome(r: dict) -> str:
    """Worst PSNR (forward) or whether the greedy tokens matched (generate), as far as the case got."""
    c = _check(r)
    if r.get("kind") == "generate":
        same = c.get("tokens_identical")
        return "" if same is None else ("tokens identical" if same else "tokens differ")
    worst = c.get("worst_psnr")
    return "" if worst is None else f"{worst} dB"


def render(records: list[dict], meta: dict) -> str:
    ran = [r for r in records if r.get("status") == "ok"]
    not_run = collections.Counter(r.get("status") for r in records if r.get("status") != "ok")
    lines = ["# Corpus coverage: transformers' own model tests through shapetrace", "",
             f"`{meta['command']}` — rendered {meta['date']} at shapetrace {meta['commit']}, {meta['cpu']} "
             f"({', '.join(meta['isa'])}), {meta['cpus']} CPUs.", "",
             "Each case: the tiny random-weight model of one transformers model test, built offline and held by a "
             "plain object; `record` → `export_all` (ONNX + IR, verify) → `load(backend=\"openvino\")`. forward: "
             "every float output at PSNR ≥ 40 dB (or max rel ≤ 1e-4) against PyTorch; generate: greedy tokens on a "
             "longer prompt with more new tokens identical to PyTorch's, every model call on OpenVINO. Development "
             "families only (the held-out third is measured by the maintainers).", "",
             *([meta["note"], ""] if meta.get("note") else [])]
    for kind in KINDS:
        mine = [r for r in ran if r.get("kind") == kind]
        if not mine:
            continue
        passed = sum(_stage(r) == "passed" for r in mine)
        lines.append(f"- **{kind}: {passed} of {len(mine)} cases that ran offline pass "
                     f"({100.0 * passed / len(mine):.1f} %)**")
    lines += ["", f"{len(records)} cases in the records; not run offline: "
              + (", ".join(f"{k}: {v}" for k, v in sorted(not_run.items())) or "none") + ".", ""]
    export_s = [float(_check(r)["export_s"]) for r in ran if _check(r).get("export_s") is not None]
    if export_s:
        lines += [f"Export time per case (`export_all` with verify, tiny models): median "
                  f"{statistics.median(export_s):.1f} s over {len(export_s)} cases.", ""]
    commits = collections.Counter(r.get("shapetrace_commit", "?") for r in ran)
    lines += ["Records by commit: " + ", ".join(f"{c}: {n}" for c, n in sorted(commits.items())) + ".", ""]
    lines += ["| stage | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    by = {k: collections.Counter(_stage(r) for r in ran if r.get("kind") == k) for k in KINDS}
    extra = sorted({s for c in by.values() for s in c} - {"passed", *STAGES, "timeout"})
    for s in ("passed", *STAGES, "timeout", *extra):
        if any(by[k].get(s) for k in KINDS):
            label = s if s == "passed" or s in extra else f"failed at {s}"
            lines.append(f"| {label} | " + " | ".join(str(by[k].get(s, 0)) for k in KINDS) + " |")
    lines += ["", "## Cases", "", "| case | kind | stage | graphs | outcome | export s | commit | reason |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sorted(ran, key=lambda r: r["id"]):
        c = _check(r)
        reason = "" if _stage(r) == "passed" else " ".join(str(c.get("error") or r.get("check_status")).split())
        reason = reason.replace("|", "\\|")[:220]
        graphs = c.get("graphs")
        case = r["id"].split("/")[0] + "::" + r["id"].split("::")[1]
        lines.append(f"| {case} | {r.get('kind')} | {_stage(r)} | {len(graphs) if graphs else ''} | {_outcome(r)} "
                     f"| {c.get('export_s', '')} | {r.get('shapetrace_commit', '?')} | {reason} |")
    if not_run:
        lines += ["", "## Not run offline", "", "| case | status | reason |", "|---|---|---|"]
        for r in sorted((r for r in records if r.get("status") != "ok"), key=lambda r: r["id"]):
            lines.append(f"| {r['id']} | {r['status']} | "
                         f"{' '.join(str(r.get('reason') or '').split())[:120].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _stamp(path: Path, before: set[str], commit: str) -> None:
    """Stamp the records added since ``before`` with the commit and date they ran at (atomic rewrite)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    today = dt.date.today().isoformat()
    for r in records:
        if r["id"] not in before and "shapetrace_commit" not in r:
            r["shapetrace_commit"], r["date"] = commit, today
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus"), help="the corpus folder")
    ap.add_argument("--out", default=str(RESULTS / "corpus-transformers.jsonl"))
    ap.add_argument("--markdown", default=str(RESULTS / "CORPUS-transformers.md"))
    ap.add_argument("--budget", type=float, default=0, help="stop starting new cases after this many seconds")
    ap.add_argument("--kind", choices=("all", *KINDS), default="all")
    ap.add_argument("--filter", action="append", default=[])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--overlay", help="the transformers sdist, on the first run (see the corpus README)")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--note", default="", help="a paragraph printed under the header (how the records were made)")
    args = ap.parse_args()
    corpus, out = Path(args.corpus), Path(args.out)
    command = " ".join(["python", "bench/corpus_transformers.py", *sys.argv[1:]])
    if not args.render_only:
        if not os.environ.get("TRANSFORMERS_MIRROR"):
            sys.exit("set TRANSFORMERS_MIRROR to the transformers git mirror (see ../shared/corpus/README.md)")
        before = {json.loads(line)["id"] for line in out.read_text().splitlines() if line.strip()} \
            if out.exists() else set()
        commit = _commit()  # the code the cases run with (a commit made during the sweep is not theirs)
        if subprocess.run(["git", "status", "--porcelain", "shapetrace"], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip():
            commit += "+dirty"
        cmd = [sys.executable, str(corpus / "transformers_corpus.py"), "--check",
               f"{corpus / 'tf_corpus_check.py'}:check", "--check-timeout", "600", "--jobs", str(args.jobs),
               "--resume", "--out", str(out), "--kind", args.kind]
        if args.budget:
            cmd += ["--budget", str(args.budget)]
        if args.overlay:
            cmd += ["--overlay", args.overlay]
        for f in args.filter:
            cmd += ["--filter", f]
        try:
            subprocess.run(cmd, check=True, cwd=ROOT)
        finally:
            if out.exists():
                _stamp(out, before, commit)
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    meta = {"command": command, "date": dt.date.today().isoformat(), "commit": _commit(), "cpu": cpu,
            "isa": _isa(), "cpus": len(os.sched_getaffinity(0)), "note": args.note}
    Path(args.markdown).write_text(render(records, meta))
    print(Path(args.markdown).read_text().split("\n## Cases")[0])


if __name__ == "__main__":
    main()
