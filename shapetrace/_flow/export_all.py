"""Export every recorded graph: a flat wrapper module per graph, then ONNX and OpenVINO IR with dynamic axes.

``export_all(obj, out_dir)`` works graph by graph, one at a time, and builds one manifest
:class:`~shapetrace.manifest.GraphEntry` per graph:

1. :func:`shapetrace._export.flat.prepare` builds an :class:`ExportPlan`: the flat wrapper (tensor leaves in, output tensor
   leaves out, non-tensor arguments frozen), the example args, a ``dynamic_shapes`` spec and the ``input=`` list for
   ``openvino.convert_model``. PyTorch's outputs on the example inputs are saved as ``<graph>.outputs.npz`` (the
   parity reference), the inputs as ``<graph>.inputs.npz``.
2. ``torch.export.export`` with those dynamic shapes; its symbols become shared dim names
   (:mod:`shapetrace._export.dims`), its guards the manifest's ``guards``, pruned to the ``constraints`` a user must
   respect (:func:`shapetrace.constraints.prune`); dims it specialised are reported, never silently made static.
3. ONNX and OpenVINO IR files (:mod:`shapetrace._export.writers`).
4. With ``verify=True``, :func:`shapetrace.verify` on the folder, its report stored as the manifest's ``parity``.

Every file is written into a staging folder and moved to its final name only when the whole export finished, so a
failure leaves no half-written file and an earlier export intact. One graph failing does not stop the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from .. import manifest as manifest_mod
from .._core import modstate
from . import quantize as quantize_mod
from .._export import writers
from ..errors import ExportError, ShapetraceError
from .._export.flat import ExportPlan, FlatModule, flat_module, module_for, prepare, recording_of
from .._export.graph_export import PeakRSS as _PeakRSS
from .._export.graph_export import export_graph
from ..manifest import MANIFEST, GraphEntry, Manifest
from .._record.recording import Recording
from .._verify.verify import ParityReport, verify as run_verify

__all__ = ["export_all", "ExportResult", "GraphExport", "FlatModule", "ExportPlan", "prepare", "flat_module",
           "MANIFEST"]


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class GraphExport:
    """The outcome for one graph (``error`` is None when it exported); ``entry`` is its manifest record."""

    name: str
    entry: GraphEntry

    @property
    def files(self) -> Mapping[str, Any]:
        return self.entry.files

    @property
    def error(self) -> str | None:
        return None if self.entry.error is None else str(self.entry.error)

    def __bool__(self) -> bool:
        return self.entry.ok


@dataclass(frozen=True)
class ExportResult:
    """``ok`` is False if any graph failed; ``graphs[name].error`` says why. ``manifest`` is what was written
    (with the parity when ``verify=True``)."""

    out_dir: Path
    graphs: Mapping[str, GraphExport]
    manifest: Manifest
    parity: ParityReport | None = None

    @property
    def ok(self) -> bool:
        return all(self.graphs.values()) and (self.parity is None or bool(self.parity))

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = [f"export to {self.out_dir}: {'ok' if self.ok else 'FAILED'}"]
        for g in self.graphs.values():
            if g.error:
                lines.append(f"  {g.name:<24} ERROR {g.error}")
            else:
                lines.append(f"  {g.name:<24} {g.entry.seconds or 0:6.1f}s  dims: "
                             f"{', '.join(g.entry.dims) or 'static'}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ export_all
def export_all(obj: Any, out_dir: str | os.PathLike, *, recording: Recording | None = None,
               formats: Iterable[str] = ("onnx", "openvino"), graphs: Iterable[str] | None = None,
               dynamic: Any = "auto", overwrite: bool = False, opset: int | None = None,
               compress_to_fp16: bool = False, openvino_from: str = "auto", verify: bool = True,
               progress: bool = True, stateful: bool = False, quantize: Any = None,
               quantize_options: quantize_mod.QuantizeOptions | None = None, **verify_kwargs: Any) -> ExportResult:
    """Export every recorded graph of ``obj`` into ``out_dir`` (see the module docstring and the README).

    ``dynamic``: ``"auto"`` (default), ``"static"``, or ``{graph: {input: [dims]}}`` / ``{input: [dims]}``.
    ``openvino_from``: ``"auto"`` (default: from the torch module for graphs above 1 GiB of weights, which shares
    the weights instead of copying them; from the ONNX file otherwise, which is faster), ``"torch"`` or ``"onnx"``.
    ``verify=True`` runs :func:`shapetrace.verify` on the result and writes the parity into the manifest.
    ``stateful=True`` also writes, for a graph variant that takes a KV cache and returns it updated (a decoder
    step), OpenVINO's stateful form (``<graph>.stateful.xml``, ``files["openvino_stateful"]``: the cache kept in
    the compiled model), served by ``load(..., stateful=True)``.
    ``quantize``: ``"int8"``, ``"hybrid"``, ``"int8-weights"``, ``"int4-weights"`` for every graph, or
    ``{graph: mode or None}``; the IR is quantized with NNCF on the recorded calls (:mod:`shapetrace._flow.quantize`;
    ``quantize_options``: held-out fraction, SNR bound, keep float below it). The ONNX file stays float.
    """
    if openvino_from not in ("auto", "torch", "onnx"):
        raise ExportError(f"openvino_from={openvino_from!r}: choose 'auto', 'torch' or 'onnx'")
    rec = recording if recording is not None else recording_of(obj)
    formats = tuple(formats)
    bad = [f for f in formats if f not in ("onnx", "openvino")]
    if bad or not formats:
        raise ExportError(f"formats={formats!r}: choose from ('onnx', 'openvino')")
    if not rec.graphs:
        raise ExportError("the recording holds no graph: run the pipeline inside the record() block first")
    names, unknown = manifest_mod.pick(list(rec.graphs), graphs)
    if unknown:
        raise ExportError(f"graphs={unknown!r} not recorded; recorded graphs: {', '.join(rec.graphs)}")
    for n in names:  # fail fast, before writing anything, if the object changed since recording
        module_for(obj, rec.graphs[n])
    modes = quantize_mod.plan_modes(quantize, names, formats)
    if stateful and any(modes.values()):
        raise ExportError("quantize= with stateful=True is not supported: export the stateful form float")
    # put the modules back as the recorded calls saw them (a pipeline that swaps processors for one call)
    with _recorded_states(obj, rec, names) as changed:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ExportError(f"{out} is a file; pass a directory path for the export")
        if (out / MANIFEST).exists() and not overwrite:
            raise ExportError(f"{out} already holds an export ({MANIFEST}); pass overwrite=True to replace it, "
                              f"or choose another folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".shapetrace-staging-", dir=out))
        except OSError as e:
            raise ExportError(f"cannot write to {out}: {e.strerror or e}; choose a writable folder") from e
        committed = False
        try:
            entries = []
            bar = _progress(names, progress)
            for name in bar:
                if hasattr(bar, "set_description_str"):
                    bar.set_description_str(f"export {name}")
                g = rec.graphs[name]
                per_graph = dynamic.get(name, "auto") if isinstance(dynamic, Mapping) and name in dynamic else dynamic
                if isinstance(dynamic, Mapping) and name not in dynamic and any(k in rec.graphs for k in dynamic):
                    per_graph = "auto"
                entry = export_graph(obj, g, stage, formats, per_graph, opset, compress_to_fp16, openvino_from,
                                      stateful and "openvino" in formats)
                if changed.get(name):  # said in the manifest: the export is of the module as the call saw it
                    entry = dataclasses.replace(entry, tools=MappingProxyType(
                        {**entry.tools, "recorded_state": {"restored": len(changed[name]),
                                                           "first": changed[name][:8]}}))
                entries.append(entry)
                if hasattr(bar, "write"):
                    status = f"error: {entry.error.message[:120]}" if entry.error else \
                        f"{sum(entry.sizes.values()) / 1e6:.1f} MB"
                    bar.write(f"  {name}: {entry.seconds:.1f}s, {status}")
            if any(modes.values()):
                entries = quantize_mod.quantize_entries(stage, entries, rec, modes, quantize_options,
                                                        getattr(bar, "write", None))
            manifest = Manifest(tuple(entries), rec.object_class,
                                _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                MappingProxyType(writers.versions()))
            manifest_mod.write(stage, manifest)
            _commit(stage, out)
            committed = True
        finally:
            if not committed:
                shutil.rmtree(stage, ignore_errors=True)
        graphs_out = MappingProxyType({e.name: GraphExport(e.name, e) for e in entries})
        if not (verify and manifest.exported):
            return ExportResult(out, graphs_out, manifest)
        report = run_verify(out, obj, **verify_kwargs)
        unloadable = _unloadable_onnx(manifest, report)
        if unloadable:  # ONNX Runtime refuses a file the exporter wrote and checked: the graph goes on without it
            manifest = _drop_onnx(out, unloadable)
            report = run_verify(out, obj, **verify_kwargs)
            graphs_out = MappingProxyType({e.name: GraphExport(e.name, e) for e in manifest.graphs})
        redo = _dynamic_failures(manifest, report, dynamic)
        if redo:  # a dynamic dim broke parity: those graphs again, static, spliced in if that passes
            _degrade(obj, rec, out, redo, report, formats, opset, compress_to_fp16, openvino_from, stateful)
            report = run_verify(out, obj, **verify_kwargs)
            graphs_out = MappingProxyType({e.name: GraphExport(e.name, e) for e in manifest_mod.read(out).graphs})
        return ExportResult(out, graphs_out, manifest_mod.read(out), report)



@contextlib.contextmanager
def _recorded_states(obj: Any, rec: Recording, names: Sequence[str]) -> Any:
    """Every exported graph's module with the plain attributes its first recorded call saw (each module once);
    yields ``{graph: [attributes put back]}``."""
    changed: dict[str, list[str]] = {}
    seen: set[int] = set()
    with contextlib.ExitStack() as stack:
        for n in names:
            g = rec.graphs[n]
            module = module_for(obj, g)
            if id(module) in seen or not g.state:
                continue
            seen.add(id(module))
            changed[n] = stack.enter_context(modstate.recorded_state(module, g.state))
        yield changed


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


def _drop_onnx(out: Path, unloadable: Mapping[str, str]) -> Manifest:
    """Remove the ONNX files of ``unloadable`` from ``out`` and their manifest entries (``tools.no_onnx`` says
    why; the IR, converted from the file or not, stays): verify then checks those graphs on OpenVINO, with a note."""
    current = manifest_mod.read(out)
    entries = []
    for e in current.graphs:
        if e.name not in unloadable:
            entries.append(e)
            continue
        for kind in ("onnx", "onnx_data"):
            if e.file(kind):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(out / e.file(kind))
        files = {k: v for k, v in e.files.items() if k not in ("onnx", "onnx_data")}
        entries.append(dataclasses.replace(e, files=MappingProxyType(files),
                                           no_onnx=f"ONNX Runtime cannot load the exported file: {unloadable[e.name]}"[:1500]))
    manifest = dataclasses.replace(current, graphs=tuple(entries))
    manifest_mod.write(out, manifest)
    return manifest


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


def _degrade(obj: Any, rec: Recording, out: Path, names: Sequence[str], report: ParityReport, formats: Any,
             opset: int | None, compress_to_fp16: bool, openvino_from: str, stateful: bool) -> None:
    """Export ``names`` again beside ``out`` and splice each one whose new export passes every check into ``out``.
    A graph only OpenVINO failed (an IR the CPU plugin cannot compile or run) first gets its IR from the other
    source, its dims kept (``tools.openvino_source_fallback``); what still fails is exported with every dim static
    (``tools.static_fallback``)."""
    common = dict(formats=formats, opset=opset, compress_to_fp16=compress_to_fp16, stateful=stateful)
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
            done |= _splice(obj, rec, out, batch, report, "openvino_source_fallback",
                            dict(common, dynamic="auto", openvino_from=alt), {"to": alt})
    rest = [n for n in names if n not in done]
    if rest:
        _splice(obj, rec, out, rest, report, "static_fallback",
                dict(common, dynamic="static", openvino_from=openvino_from), None)


def _splice(obj: Any, rec: Recording, out: Path, names: Sequence[str], report: ParityReport, key: str,
            export_kwargs: dict, extra: dict | None) -> set[str]:
    """Export ``names`` with ``export_kwargs`` beside ``out``; the graphs whose new export passes every check
    replace theirs in ``out`` (files and manifest entry, ``tools[key]`` saying what changed and why)."""
    tmp = Path(tempfile.mkdtemp(prefix=".shapetrace-redo-", dir=out))
    try:
        export_all(obj, tmp / "x", recording=rec, graphs=list(names), verify=False, progress=False, **export_kwargs)
        again = run_verify(tmp / "x", obj, write=False)
        redone = manifest_mod.read(tmp / "x")
        passed = {n for n in names if redone.graph(n).ok and all(c for c in again.checks if c.graph == n)}
        current = manifest_mod.read(out)
        entries = []
        for e in current.graphs:
            if e.name not in passed:
                entries.append(e)
                continue
            why = next(c for c in report.checks if c.graph == e.name and not c)
            new = redone.graph(e.name)
            for f in e.file_names():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(out / f)
            for f in new.file_names():
                os.replace(tmp / "x" / f, out / f)
            note = {"given_up": sorted(e.dims)} if extra is None else \
                {"from": e.tools.get("openvino_from"), **extra}
            note["because"] = f"{why.where}: {why.message}"[:500]
            entries.append(dataclasses.replace(new, tools=MappingProxyType({**new.tools, key: note})))
        manifest_mod.write(out, dataclasses.replace(current, graphs=tuple(entries)))
        return passed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _progress(names: Sequence[str], enabled: bool) -> Any:
    if not enabled:
        return names
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return names
    return tqdm(names, unit="graph", leave=True, bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}]")


def _commit(stage: Path, out: Path) -> None:
    """Move the staged files to their final names; files of an earlier export go first, the manifest last."""
    old_manifest = out / MANIFEST
    old_files: set[str] = set()
    if old_manifest.exists():
        with contextlib.suppress(ShapetraceError):  # an unreadable old manifest owns no files we know of
            old_files = {f for g in manifest_mod.read(out).graphs for f in g.file_names()}
    trash = Path(tempfile.mkdtemp(prefix=".shapetrace-old-", dir=out))
    try:
        with contextlib.suppress(FileNotFoundError):
            os.replace(old_manifest, trash / MANIFEST)  # no manifest: the folder is not a complete export meanwhile
        for f in old_files:
            if (out / f).exists() and "/" not in f:
                os.replace(out / f, trash / f)
        for f in sorted(stage.iterdir()):
            if f.name != MANIFEST:
                os.replace(f, out / f.name)
        os.replace(stage / MANIFEST, out / MANIFEST)
    finally:
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
