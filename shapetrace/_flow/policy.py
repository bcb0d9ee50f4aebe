"""What ``export_all`` does with verify's report: a graph whose ONNX file ONNX Runtime refuses as inconsistent goes
on without it (:func:`drop_onnx`), and a graph a dynamic dim broke is exported again, from the other OpenVINO
source first, then static, and spliced in where that passes every check (:func:`degrade`). :func:`verified` runs
the whole loop on the staged export, before ``export_all`` commits it (so a re-export lands with the rest, in
one commit, under the folder's lock; :func:`relocated` then names the final folder in the report). It sits above both stages: it exports (through the ``export``
function it is given) and verifies."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

from .. import manifest as manifest_mod
from .._record.recording import Recording
from .._verify.verify import ParityReport
from .._verify.verify import verify as run_verify
from ..manifest import GraphEntry, Manifest

__all__ = ["INCONSISTENT_ONNX", "relocated", "verified"]


def verified(obj: Any, rec: Recording, out: Path, manifest: Manifest, export: Callable[..., Any], dynamic: Any,
             export_kwargs: Mapping[str, Any], verify_kwargs: Mapping[str, Any]) -> tuple[Manifest, ParityReport]:
    """Verify the export in ``out``; drop ONNX files ONNX Runtime refuses, re-export what a dynamic dim broke
    (``export(obj, folder, recording=..., graphs=..., **kwargs)`` makes the new files), verify again after each
    change. Returns the manifest and the report that stand."""
    report = run_verify(out, obj, **verify_kwargs)
    unloadable = _unloadable_onnx(manifest, report)
    if unloadable:  # ONNX Runtime refuses a file the exporter wrote and checked: the graph goes on without it
        manifest = _drop_onnx(out, unloadable)
        report = run_verify(out, obj, **verify_kwargs)
    redo = _dynamic_failures(manifest, report, dynamic)
    if redo:  # a dynamic dim broke parity: those graphs again, static, spliced in if that passes
        _degrade(obj, rec, out, redo, report, export, export_kwargs)
        report = run_verify(out, obj, **verify_kwargs)
    return manifest_mod.read(out), report


def relocated(report: ParityReport, stage: Path, out: Path) -> ParityReport:
    """``report``, made on the staged export, as of its final folder: the staging path in its messages and notes
    is ``out``; the manifest's ``parity`` in ``stage`` is rewritten so."""
    text = json.dumps(report.to_json())
    moved = text.replace(json.dumps(str(stage))[1:-1], json.dumps(str(out))[1:-1])
    if moved != text and (stage / manifest_mod.MANIFEST).exists():
        manifest_mod.store_parity(stage, json.loads(moved))
    return ParityReport.from_json(json.loads(moved), str(out))


#: What ONNX Runtime says when the file itself is inconsistent (its type and shape inference, graph validation), as
#: opposed to a kernel it lacks (NOT_IMPLEMENTED): such a file is not shipped.
INCONSISTENT_ONNX = ("Type Error", "ShapeInferenceError", "INVALID_GRAPH")


def _unloadable_onnx(manifest: Manifest, report: ParityReport) -> dict[str, str]:
    """Graphs whose ONNX file ONNX Runtime refused as inconsistent (its own type and shape inference rejects what
    the exporter wrote and ``onnx.checker`` passed: a ``Div`` of float by int64, an ``Add`` of dims it finds
    incompatible) while every other check of the graph passed: graph -> ONNX Runtime's reason."""
    bad: dict[str, str] = {}
    for e in manifest.graphs:
        checks = [c for c in report.checks if c.graph == e.name]
        refused = [c for c in checks if c.backend == "onnxruntime" and c.input_set == "-" and c.error
                   and any(k in str(c.error) for k in INCONSISTENT_ONNX)]
        if e.file("onnx") and refused and all(c for c in checks if c not in refused):
            bad[e.name] = str(refused[0].error)
    return bad


def _rewrite_entries(out: Path, change: Mapping[str, Callable[[GraphEntry], GraphEntry]]) -> Manifest:
    """The manifest in ``out`` with each graph named in ``change`` replaced by what its function makes of it
    (which also moves that graph's files), written back; the other graphs as they were."""
    current = manifest_mod.read(out)
    entries = tuple(change[e.name](e) if e.name in change else e for e in current.graphs)
    manifest = dataclasses.replace(current, graphs=entries)
    manifest_mod.write(out, manifest)
    return manifest


def _unlink(out: Path, names: Iterable[str]) -> None:
    for f in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out / f)


def _drop_onnx(out: Path, unloadable: Mapping[str, str]) -> Manifest:
    """Remove the ONNX files of ``unloadable`` from ``out`` and their manifest entries (``no_onnx`` says why;
    the IR, converted from the file or not, stays): verify then checks those graphs on OpenVINO, with a note."""
    def without_onnx(e: GraphEntry) -> GraphEntry:
        _unlink(out, (e.file(kind) for kind in ("onnx", "onnx_data") if e.file(kind)))
        files = {k: v for k, v in e.files.items() if k not in ("onnx", "onnx_data")}
        return dataclasses.replace(e, files=MappingProxyType(files),
                                   no_onnx=f"ONNX Runtime cannot load the exported file: {unloadable[e.name]}"[:1500])

    return _rewrite_entries(out, {n: without_onnx for n in unloadable})


def _dynamic_failures(manifest: Manifest, report: ParityReport, dynamic: Any) -> list[str]:
    """Graphs with dynamic dims whose outputs did not match, that PyTorch itself cannot run at other sizes, or that
    a runtime could not run; unless the caller chose their dims. The static export replaces the dynamic one only
    where all its checks pass."""
    if dynamic != "auto":
        return []
    wrong = {c.graph for c in report.checks if c.error is None and c.result is not None and not c.result.passed
             and c.bound is None}  # a quantized graph's SNR bound is not a dynamic-dim problem
    # the live model itself refuses every other size tried (a limit it checks in eager code only): not checkable
    wrong |= {c.graph for c in report.checks if c.backend == "torch" and c.input_set == "resized" and c.error}
    # a runtime that cannot load or run the dynamic graph ("invalid expand shape", a Squeeze its shape inference
    # refuses: a size traced at 2 baked in)
    wrong |= {c.graph for c in report.checks if c.backend not in ("torch", "-") and c.error and c.bound is None}
    return [e.name for e in manifest.graphs if e.name in wrong and e.ok and e.dims and not e.quantization]


def _degrade(obj: Any, rec: Recording, out: Path, names: Sequence[str], report: ParityReport,
             export: Callable[..., Any], export_kwargs: Mapping[str, Any]) -> None:
    """Export ``names`` again beside ``out`` and splice each one whose new export passes every check into ``out``.
    A graph only OpenVINO failed (an IR the CPU plugin cannot compile or run) first gets its IR from the other
    source, its dims kept (``tools.openvino_source_fallback``); what still fails is exported with every dim static
    (``tools.static_fallback``). Without ONNX in the formats the other source of an IR from the torch module is an
    ONNX file written only for it (:mod:`shapetrace._export.onnx_source`), so IR-only exports degrade alike."""
    common = {k: v for k, v in export_kwargs.items() if k not in ("dynamic", "openvino_from")}
    openvino_from = export_kwargs.get("openvino_from", "auto")
    current = {e.name: e for e in manifest_mod.read(out).graphs}
    other = {}
    for n in names:
        failed = [c for c in report.checks if c.graph == n and not c]
        source = current[n].tools.get("openvino_from")
        if failed and all(c.backend.startswith("openvino") for c in failed) and source in ("onnx", "torch"):
            other[n] = "torch" if source == "onnx" else "onnx"
    done: set[str] = set()
    for alt in ("torch", "onnx"):
        batch = [n for n, a in other.items() if a == alt]
        if batch:
            done |= _splice(obj, rec, out, batch, report, export, "openvino_source_fallback",
                            dict(common, dynamic="auto", openvino_from=alt), {"to": alt})
    rest = [n for n in names if n not in done]
    if rest:
        _splice(obj, rec, out, rest, report, export, "static_fallback",
                dict(common, dynamic="static", openvino_from=openvino_from), None)


def _splice(obj: Any, rec: Recording, out: Path, names: Sequence[str], report: ParityReport,
            export: Callable[..., Any], key: str, export_kwargs: dict, extra: dict | None) -> set[str]:
    """Export ``names`` with ``export_kwargs`` beside ``out``; the graphs whose new export passes every check
    replace theirs in ``out`` (files and manifest entry, ``tools[key]`` saying what changed and why)."""
    tmp = Path(tempfile.mkdtemp(prefix=".shapetrace-redo-", dir=out))
    try:
        export(obj, tmp / "x", recording=rec, graphs=list(names), verify=False, progress=False, skeleton=False,
               **export_kwargs)
        again = run_verify(tmp / "x", obj, write=False)
        redone = manifest_mod.read(tmp / "x")
        passed = {n for n in names if redone.graph(n).ok and all(c for c in again.checks if c.graph == n)}
        def spliced(e: GraphEntry) -> GraphEntry:
            why = next(c for c in report.checks if c.graph == e.name and not c)
            new = redone.graph(e.name)
            _unlink(out, e.file_names())
            for f in new.file_names():
                os.replace(tmp / "x" / f, out / f)
            note = {"given_up": sorted(e.dims)} if extra is None else {"from": e.tools.get("openvino_from"), **extra}
            note["because"] = f"{why.where}: {why.message}"[:500]
            return dataclasses.replace(new, tools=MappingProxyType({**new.tools, key: note}))

        _rewrite_entries(out, {n: spliced for n in passed})
        return passed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
