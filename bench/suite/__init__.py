"""bench/ as a suite: a registry of sections, each ``run(ctx) -> frozen result`` (``to_json()`` merges it into
results.json), its targets as data (:mod:`.targets`) and one renderer per section (:mod:`.tables`,
:func:`.quantize.render`). bench/run.py is the short runner over :data:`SECTIONS`.

=====================  ==========================================================================================
``overhead``           :mod:`.overhead`  wall time with / without ``record``, shapetrace's own time (``rec.stats``)
``export``             :mod:`.export`    one child per graph (bench/export_one.py): seconds, VmHWM, phases
``graphs``             :mod:`.graphs`    per graph: PyTorch vs OpenVINO / ONNX Runtime, parity; e2e estimate
``breakdown``          :mod:`.breakdown` where a PyTorch run spends its time
``e2e``                :mod:`.e2e`       the pipeline on ``shapetrace.load``, interleaved with PyTorch runs
``quantize``           :mod:`.quantize`  INT8 / hybrid from recorded runs: size, per graph and e2e speed, quality
``export-ov-direct``   :mod:`.export`    IR straight from torch (``formats=("openvino",)``)
``export-whatif``      :mod:`.export`    the export with another ``openvino_from``, verified (not by default)
``deploy``             :mod:`.deploy`    a fresh process to the first image: eager, ``load``, ``load_pipeline``
                                         (cold / cache), optimum-intel on plain SD 1.5; peak RSS
=====================  ==========================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import breakdown, deploy, e2e, export, graphs, overhead, quantize, tables


@dataclass(frozen=True)
class Section:
    name: str
    run: Callable[[Any], Any]      # (Context) -> a frozen result with to_json(), or a tuple of them
    needs_models: bool = True      # runs on the pipeline / detector (rebuilt after a section that dropped them)
    drops_models: bool = False     # frees them first (its children need the memory)
    default: bool = True           # in the default --sections


SECTIONS: tuple[Section, ...] = (
    Section("overhead", overhead.run),
    Section("export", export.run, needs_models=False, drops_models=True),
    Section("graphs", graphs.run),
    Section("breakdown", breakdown.run),
    Section("e2e", e2e.run),
    Section("quantize", quantize.run),
    Section("export-ov-direct", export.run_ov_direct, needs_models=False, drops_models=True),
    Section("export-whatif", export.run_whatif, needs_models=False, drops_models=True, default=False),
    Section("deploy", deploy.run, drops_models=True),
)
REGISTRY = {s.name: s for s in SECTIONS}
#: RESULTS.md's order of the section renderers (the other export runs sit right after section 2)
RENDERERS: tuple[Callable[[dict], list[str]], ...] = (
    tables.overhead, tables.export, tables.export_other, tables.graphs, tables.breakdown, tables.e2e,
    quantize.render, deploy.render)
