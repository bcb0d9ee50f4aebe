"""shapetrace benchmark: recording overhead, export cost (time, peak memory), inference speed and parity.

    .venv/bin/python bench/run.py            # full-size SD 1.5 + OpenPose ControlNet (random weights), 256x256
    .venv/bin/python bench/run.py --quick    # the tiny offline pipelines of shapetrace.testing, a few minutes

A short runner over the sections of ``bench/suite`` (the table in ``bench/suite/__init__.py``); each section
returns a frozen result that is merged into ``results.json``, and RESULTS.md is written again after every section,
so a cut-short run still leaves what it measured. Targets are data (``bench/suite/targets.py``).

Output: ``bench/results/RESULTS.md`` + ``results.json`` (full), ``RESULTS.quick.md`` + ``results.quick.json``
(``--quick``), or under ``--output``. Exports go to ``--work`` (default ``/tmp/shapetrace-bench-<suite>``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from suite import REGISTRY, RENDERERS, SECTIONS
from suite.context import RESULTS, Context
from suite.render import document


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny offline pipelines, a few minutes")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per measurement (median; default 3)")
    ap.add_argument("--overhead-runs", type=int, default=None, help="interleaved plain/record pairs (default 5)")
    ap.add_argument("--per-call-n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="export folders etc. (default /tmp/shapetrace-bench-<suite>)")
    ap.add_argument("--output", default=None, help="where RESULTS.md / results.json go (default bench/results/)")
    ap.add_argument("--sections", default=",".join(s.name for s in SECTIONS if s.default),
                    help="comma list of " + ", ".join(REGISTRY))
    ap.add_argument("--profile-export", action="append", default=None, help="cProfile this graph's export child")
    ap.add_argument("--export-timeout", type=int, default=3600)
    ap.add_argument("--whatif-graphs", default="text_encoder,controlnet,unet")
    ap.add_argument("--venv-optimum", default=str(Path(__file__).resolve().parent / ".venv-optimum"),
                    help="optimum-intel's venv for the deploy section's (d) rows (make bench/.venv-optimum/.installed)")
    ap.add_argument("--deploy-rounds", type=int, default=1, help="fresh processes per deploy variant (fastest kept)")
    ap.add_argument("--deploy-variants", default=None,
                    help="comma list of deploy rows to run (bench/suite/deploy.py VARIANTS); the others keep the "
                         "results' earlier values")
    ap.add_argument("--update", action="store_true",
                    help="start from the existing results.json and replace only the sections run now")
    ap.add_argument("--render", action="store_true", help="only re-render RESULTS.md from results.json")
    ap.add_argument("--e2e-torch-runs", type=int, default=None,
                    help="PyTorch runs interleaved with each e2e variant (default: --runs; the full default is 1, "
                         "the plain runs of the overhead section count too)")
    a = ap.parse_args()
    unknown = set(a.sections.split(",")) - set(REGISTRY)
    if unknown:
        ap.error(f"unknown sections {', '.join(sorted(unknown))}; choose from {', '.join(REGISTRY)}")
    if not a.quick:
        a.overhead_runs = a.overhead_runs or 3
        a.e2e_torch_runs = a.runs or 3 if a.e2e_torch_runs is None else a.e2e_torch_runs
    return a


def render(r: dict, folder: Path) -> str:
    return document(r, RENDERERS, folder)


def _signatures(ctx: Context) -> None:
    """Without the ``overhead`` section: the calls per run and the PyTorch image from an earlier run's work folder."""
    import numpy as np

    from shapetrace._record.recording import Recording

    ctx.calls = {g.name: g.num_calls for key in ("pipe", "openpose")
                 for g in Recording.load(ctx.work / "signatures" / key)}
    ctx.results.setdefault("record_overhead", {})["calls_per_run"] = ctx.calls
    image = ctx.work / "torch_image.npy"
    ctx.torch_image = np.load(image) if image.exists() else None


def main() -> None:
    a = _args()
    torch.set_grad_enabled(False)
    out = Path(a.output or RESULTS)
    if a.render:
        suffix = ".quick" if a.quick else ""
        (out / f"RESULTS{suffix}.md").write_text(render(json.loads((out / f"results{suffix}.json").read_text()), out))
        return
    ctx = Context(a, lambda r: render(r, out))
    ctx.build()
    fingerprints = ctx.results["models"]["fingerprints"]
    ctx.save(None)
    chosen = a.sections.split(",")
    if "overhead" not in chosen and (ctx.work / "signatures" / "pipe").exists():
        _signatures(ctx)
    elif "overhead" not in chosen:
        chosen.insert(0, "overhead")  # the later sections need its signatures
    for section in SECTIONS:
        if section.name not in chosen:
            continue
        if section.needs_models and ctx.pipe is None:
            ctx.build()
            if ctx.results["models"]["fingerprints"] != fingerprints:
                raise SystemExit("rebuilt pipeline has other weights than the first build")
        result = section.run(ctx)
        for part in result if isinstance(result, tuple) else (result,):
            ctx.results.update(part.to_json())
        ctx.save(section.name)
    ctx.log("done")


if __name__ == "__main__":
    main()
