"""What every section runs in (:class:`Context`): the options, the suite (``quick`` / ``full``), the work folder,
the pipeline and detector (built once, seeded: ``bench/zoo.py``), the results so far, logging and saving.

A section reads the context and returns its frozen result; the runner (bench/run.py) merges the result's JSON
into :attr:`Context.results` and saves. Sections that take long store partial rows with :meth:`Context.checkpoint`
so a cut-short run still leaves what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zoo

from . import environment
from .metrics import jsonable, rss, timed

BENCH = Path(__file__).resolve().parents[1]
RESULTS = BENCH / "results"
PIPE_GRAPHS = ("text_encoder", "controlnet", "unet", "vae.decode")
OPENPOSE_GRAPHS = ("body_estimation.model",)
COMPONENTS = ("unet", "controlnet", "text_encoder", "vae")


class Context:
    """One bench run's shared state (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, render: Callable[[dict], str]) -> None:
        self.a = args
        self.suite = "quick" if args.quick else "full"
        self.work = Path(args.work or f"/tmp/shapetrace-bench-{self.suite}")
        self.work.mkdir(parents=True, exist_ok=True)
        suffix = ".quick" if args.quick else ""
        out = Path(args.output or RESULTS)
        out.mkdir(parents=True, exist_ok=True)
        self.md_path, self.json_path = out / f"RESULTS{suffix}.md", out / f"results{suffix}.json"
        self.runs = args.runs or 3
        self.started = time.time()
        self._render = render
        self.results: dict[str, Any] = {
            "suite": self.suite, "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
            "started": dt.datetime.now().isoformat(timespec="seconds"), "machine": environment.machine(),
            "versions": environment.versions(), "settings": dict(zoo.RUNS[self.suite], runs=self.runs),
            "sections_done": [],
        }
        if args.update and self.json_path.exists():  # re-run some sections into an earlier run's results
            old = json.loads(self.json_path.read_text())
            r = self.results
            old.setdefault("updates", []).append({"command": r["command"], "started": r["started"],
                                                  "loadavg_start": r["machine"]["loadavg_start"],
                                                  "head": r["versions"].get("shapetrace_git")})
            self.results = old
        self.pipe: Any = None
        self.det: Any = None
        self.torch_image: np.ndarray | None = None
        self.calls: dict[str, int] = {}
        self.log(f"suite={self.suite} work={self.work} results={self.md_path}")

    # ------------------------------------------------------------------------------------------ plumbing
    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.started:7.1f}s rss {rss() / 1e9:5.2f} GB] {msg}", flush=True)

    def save(self, section: str | None = None) -> None:
        r = self.results
        if section and section not in r["sections_done"]:
            r["sections_done"].append(section)
        r["elapsed_s"] = round(time.time() - self.started, 1)
        peer = self.md_path.parent / "optimum_infer.json"
        if self.suite == "full" and peer.exists():  # bench/optimum_infer.py's headline, kept across runs
            import optimum_infer

            r["peer_optimum_sd15"] = optimum_infer.summary(json.loads(peer.read_text()))
        self.json_path.write_text(json.dumps(r, indent=1, default=jsonable))
        self.md_path.write_text(self._render(r))
        self.log(f"wrote {self.md_path.name} / {self.json_path.name} ({section or 'partial'})")

    def checkpoint(self, key: str, value: Any) -> None:
        """Store a section's partial results under ``key`` and save (the final result replaces them)."""
        self.results[key] = value
        self.save(None)

    # ------------------------------------------------------------------------------------------ the models
    def build(self) -> None:
        a = self.a
        t, self.pipe = timed(lambda: zoo.build_pipeline(self.suite, a.seed))
        t2, self.det = timed(lambda: zoo.build_openpose(self.suite, a.seed))
        modules = {c: getattr(self.pipe, c) for c in COMPONENTS} | {"body_estimation.model":
                                                                     self.det.body_estimation.model}
        params = {c: sum(p.numel() for p in m.parameters()) for c, m in modules.items()}
        self.results["models"] = {"build_seconds": round(t + t2, 1), "parameters": params,
                                  "fingerprints": {c: zoo.fingerprint(m) for c, m in modules.items()}}
        self.log(f"built pipeline + openpose in {t + t2:.1f}s: "
                 + ", ".join(f"{k} {v / 1e6:.0f}M" for k, v in params.items()))

    def drop_models(self) -> None:
        """Free the pipeline and detector (export children and the last sections need the memory)."""
        import gc

        self.pipe = self.det = None
        gc.collect()

    def run_pipe(self, pipe: Any = None, seed: int | None = None) -> np.ndarray:
        return zoo.run_pipeline(pipe if pipe is not None else self.pipe, self.suite,
                                self.a.seed if seed is None else seed)

    def shell(self) -> Any:
        """A second pipeline object sharing the same modules (own scheduler): load() swaps its attributes only,
        so PyTorch (``self.pipe``) and the runtime can run alternately without a second copy of the weights."""
        comps = dict(self.pipe.components)
        comps["scheduler"] = type(comps["scheduler"]).from_config(comps["scheduler"].config)
        p = type(self.pipe)(**comps, requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        return p

    def export_dir(self, graph: str) -> Path:
        return self.work / "export" / ("openpose" if graph in OPENPOSE_GRAPHS else "pipe")

    def reference_image(self) -> np.ndarray:
        if self.torch_image is None:
            self.torch_image = self.run_pipe()
        return self.torch_image
