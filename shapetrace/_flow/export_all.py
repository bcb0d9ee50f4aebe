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
4. With ``verify=True``, :func:`shapetrace.verify` on the folder, its report stored as the manifest's ``parity``,
   and what the report calls for (:mod:`shapetrace._flow.policy`: an ONNX file dropped, a graph re-exported static).

Every file is written into a staging folder and moved to its final name only when the whole export finished
(:mod:`shapetrace._flow.staging`), so a failure leaves no half-written file and an earlier export intact. One graph
failing does not stop the others; a full disk stops the export with a :class:`~shapetrace.errors.DiskFullError`
that says how much space it needed (:mod:`shapetrace._flow.space`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from .. import manifest as manifest_mod
from .._core import modstate
from .._core.dedupe import link_identical
from .._export import genai as genai_mod
from .._export import writers
from .._export.flat import ExportPlan, FlatModule, flat_module, module_for, prepare, recording_of
from .._export.graph_export import export_graph
from .._record.recording import Recording
from .._verify.report import ParityReport
from ..errors import ExportError
from ..manifest import MANIFEST, GraphEntry, Manifest
from . import policy
from . import quantize as quantize_mod
from . import space
from .staging import progress as progress_bar
from .staging import staged
from .._skeleton.describe import describe_or_why
from .._skeleton.weights import unserved

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
        genai = self.manifest.genai
        if genai is not None:
            lines.append(f"  genai: no folder: {genai['error']}" if "error" in genai else
                         f"  {genai['dir'] + '/':<24} {genai.get('seconds', 0):6.1f}s  {genai['pipeline']} "
                         f"(from graph {genai['graph']}, inputs: {', '.join(genai['inputs'])})")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ export_all
def export_all(obj: Any, out_dir: str | os.PathLike, *, recording: Recording | None = None,
               formats: Iterable[str] = ("onnx", "openvino"), graphs: Iterable[str] | None = None,
               dynamic: Any = "auto", overwrite: bool = False, opset: int | None = None,
               compress_to_fp16: bool = False, openvino_from: str = "auto", verify: bool = True,
               progress: bool = True, stateful: bool = False, quantize: Any = None,
               quantize_options: quantize_mod.QuantizeOptions | None = None, skeleton: bool = True,
               genai: bool = False, **verify_kwargs: Any) -> ExportResult:
    """Export every recorded graph of ``obj`` into ``out_dir`` (see the module docstring and docs/export.md).

    ``dynamic``: ``"auto"`` (default), ``"static"``, or ``{graph: {input: [dims]}}`` / ``{input: [dims]}``.
    ``openvino_from``: ``"auto"`` (default: from the torch module for graphs above 1 GiB of weights, which shares
    the weights instead of copying them; from the ONNX file otherwise, which is faster), ``"torch"`` or ``"onnx"``.
    With ``formats=("openvino",)`` the ONNX file is still a source for the IR (``"onnx"``, and ``"auto"``'s last):
    written in a temporary folder, converted, removed (:mod:`shapetrace._export.onnx_source`).
    ``verify=True`` runs :func:`shapetrace.verify` on the result and writes the parity into the manifest.
    ``stateful=True`` also writes, for a graph variant that takes a KV cache and returns it updated (a decoder
    step), OpenVINO's stateful form (``<graph>.stateful.xml``, ``files["openvino_stateful"]``: the cache kept in
    the compiled model), served by ``load(..., stateful=True)``.
    ``quantize``: ``"int8"``, ``"hybrid"``, ``"int8-weights"``, ``"int4-weights"`` for every graph, or
    ``{graph: mode or None}``; the IR is quantized with NNCF on the recorded calls (:mod:`shapetrace._flow.quantize`;
    ``quantize_options``: held-out fraction, SNR bound, keep float below it). The ONNX file stays float.
    ``skeleton=True`` (default) also writes what :func:`shapetrace.load_pipeline` rebuilds the object from, without
    its weights (the manifest's ``skeleton``, files under ``skeleton/``); an object it cannot describe exports as
    before, the manifest saying why (docs/deploy.md).
    ``genai=True`` also writes ``out_dir/genai/``, the folder OpenVINO GenAI opens as it is: ``LLMPipeline`` (and
    ``ContinuousBatchingPipeline``) when the recording holds a decoder-only language model's ``generate``,
    ``WhisperPipeline`` when it holds a speech-recognition encoder-decoder's, ``Text2ImagePipeline`` for a diffusers
    text-to-image pipeline (:mod:`shapetrace._export.genai`; the manifest's ``genai``). For any other object it warns in one
    line, says why in the manifest (``{"error": ...}``), and the rest of the export goes on (docs/generation.md).
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
    # fail fast, before writing anything, if the object changed since recording
    needed = space.estimate([module_for(obj, rec.graphs[n]) for n in names], formats, compress_to_fp16)
    modes = quantize_mod.plan_modes(quantize, names, formats)
    if stateful and any(modes.values()):
        raise ExportError("quantize= with stateful=True is not supported: export the stateful form float")
    out = Path(out_dir)
    # put the modules back as the recorded calls saw them (a pipeline that swaps processors for one call)
    with _recorded_states(obj, rec, names) as changed:
        with staged(out, overwrite, needed) as stage:
            entries = []
            bar = progress_bar(names, progress)
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
            genai_note = genai_mod.write_genai(obj, rec, stage, entries) if genai else None
            if genai_note is not None and "error" in genai_note:
                warnings.warn(f"genai=True: no {genai_mod.GENAI_DIR}/ folder: {genai_note['error']}", stacklevel=2)
            manifest = Manifest(tuple(entries), rec.object_class,
                                _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                MappingProxyType(writers.versions()),
                                skeleton=describe_or_why(obj, stage, unserved(obj, [e.module for e in entries if e.ok]))
                                if skeleton else None, genai=genai_note)
            manifest_mod.write(stage, manifest)
            report, failure = None, None
            if verify and manifest.exported:  # in the stage: what a static re-export changes lands in one commit
                export_kwargs = dict(formats=formats, opset=opset, compress_to_fp16=compress_to_fp16,
                                     openvino_from=openvino_from, stateful=stateful)
                try:
                    manifest, report = policy.verified(obj, rec, stage, manifest, export_all, dynamic, export_kwargs,
                                                       verify_kwargs)
                    report = policy.relocated(report, stage, out)
                except Exception as e:  # noqa: BLE001 -- the export is kept, as without verify; raised after
                    if isinstance(e, OSError) and space.is_full_disk(e):
                        raise  # staged() says how much space the export needed; the earlier export stays
                    failure = e
            link_identical(stage)  # a decoder's prompt and step variants: one copy of the same weights on disk
        if failure is not None:
            raise failure
        return ExportResult(out, _by_name(manifest), manifest, report)


def _by_name(manifest: Manifest) -> Mapping[str, GraphExport]:
    return MappingProxyType({e.name: GraphExport(e.name, e) for e in manifest.graphs})





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
