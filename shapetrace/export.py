"""Export every recorded graph: a flat wrapper module per graph, then ONNX and OpenVINO IR with dynamic axes.

``export_all(obj, out_dir)`` works graph by graph, one at a time, and builds one manifest
:class:`~shapetrace.manifest.GraphEntry` per graph:

1. :func:`shapetrace.flat.prepare` builds an :class:`ExportPlan`: the flat wrapper (tensor leaves in, output tensor
   leaves out, non-tensor arguments frozen), the example args, a ``dynamic_shapes`` spec and the ``input=`` list for
   ``openvino.convert_model``. PyTorch's outputs on the example inputs are saved as ``<graph>.outputs.npz`` (the
   parity reference), the inputs as ``<graph>.inputs.npz``.
2. ``torch.export.export`` with those dynamic shapes; its symbols become shared dim names
   (:mod:`shapetrace.dims`), its guards the manifest's ``guards``, pruned to the ``constraints`` a user must
   respect (:func:`shapetrace.constraints.prune`); dims it specialised are reported, never silently made static.
3. ONNX and OpenVINO IR files (:mod:`shapetrace.writers`).
4. With ``verify=True``, :func:`shapetrace.verify` on the folder, its report stored as the manifest's ``parity``.

Every file is written into a staging folder and moved to its final name only when the whole export finished, so a
failure leaves no half-written file and an earlier export intact. One graph failing does not stop the others.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import gc
import os
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

import torch

from . import constraints
from . import stateful as stateful_mod
from . import dims as dims_mod
from . import manifest as manifest_mod
from . import writers
from ._version import __version__
from .errors import ExportError, ShapetraceError
from .files import json_value, save_npz
from .flat import ExportPlan, FlatModule, flat_module, module_for, prepare, recording_of, weights_dtype
from .manifest import MANIFEST, Dim, GraphEntry, GraphError, InputSpec, Manifest, OutputSpec
from .recording import GraphRecord, Recording, dtype_name, file_stem, to_numpy
from .verify import ParityReport, verify as run_verify

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


# ------------------------------------------------------------------------------------------------ memory
class _PeakRSS:
    """Samples this process's resident memory in a thread; ``peak`` is the high-water mark in bytes."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.interval)

    def __enter__(self) -> "_PeakRSS":
        self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


class _Draft:
    """The parts of one graph's :class:`GraphEntry`, filled as the export goes (what a failure leaves is kept)."""

    def __init__(self, g: GraphRecord) -> None:
        self.g = g
        self.input_tree: Mapping[str, Any] = dict(g.input_tree)
        self.constants = {k: json_value(v) for k, v in g.constants.items()}
        self.files: dict[str, Any] = dict(_NO_FILES)
        self.inputs: tuple[InputSpec, ...] = ()
        self.outputs: tuple[OutputSpec, ...] = ()
        self.dims: dict[str, Dim] = {}
        self.guards: tuple[str, ...] = ()
        self.constraints: tuple[str, ...] = ()
        self.specialized: tuple[Mapping[str, Any], ...] = ()
        self.promoted: tuple[str, ...] = ()
        self.tools: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.sizes: dict[str, int] = {}
        self.weights_bytes: int | None = None
        self.weights_dtype: str | None = None
        self.error: GraphError | None = None

    def entry(self, seconds: float, peak: int) -> GraphEntry:
        g = self.g
        return GraphEntry(g.name, g.module_path, g.method, g.module_class, MappingProxyType(self.files), self.inputs,
                          self.outputs, MappingProxyType(self.constants), self.input_tree, dict(g.output_tree),
                          MappingProxyType(self.dims), self.constraints, self.guards, self.specialized,
                          self.promoted, MappingProxyType(self.tools), MappingProxyType(self.timings), seconds, peak,
                          self.weights_bytes, MappingProxyType(self.sizes), self.error, g.variant_of,
                          self.weights_dtype)


_NO_FILES = {"onnx": None, "openvino": None, "inputs": None, "outputs": None}


def _export_graph(obj: Any, g: GraphRecord, stage: Path, formats: Sequence[str], dynamic: Any, opset: int | None,
                  compress_to_fp16: bool, openvino_from: str = "auto", stateful: bool = False) -> GraphEntry:
    stem = file_stem(g.name)
    d = _Draft(g)
    t0 = time.perf_counter()
    with _PeakRSS() as rss:
        try:
            _export_files(obj, g, d, stage, stem, formats, dynamic, opset, compress_to_fp16, openvino_from,
                          stateful)
        except (KeyboardInterrupt, MemoryError, OSError) as e:
            if isinstance(e, OSError) and not _is_disk_error(e):
                d.error = _graph_error(e)
            else:
                raise
        except Exception as e:  # one graph failing never stops the others
            d.error = _graph_error(e)
        finally:
            gc.collect()  # free the graph before the next one
    if d.error is not None:
        for f in stage.iterdir():
            if f.name.startswith(f"{stem}."):
                f.unlink()
        d.files = dict(_NO_FILES)
    return d.entry(round(time.perf_counter() - t0, 3), rss.peak)


def _export_files(obj: Any, g: GraphRecord, d: _Draft, stage: Path, stem: str, formats: Sequence[str],
                  dynamic: Any, opset: int | None, compress_to_fp16: bool, openvino_from: str,
                  stateful: bool = False) -> None:
    plan = prepare(obj, g, dynamic=dynamic)
    ep, info = _trace(plan, d)
    broadcast = _broadcast_ties(info, plan)
    if broadcast:  # a size-1 dim traced at 2 got tied to a real dim it only broadcasts against: keep it at 1
        d.tools["broadcast_static"] = [{"input": n, "dims": sorted(dims)} for n, dims in broadcast.items()]
        plan = prepare(obj, g, dynamic=dynamic, keep_static=broadcast)
        ep, info = _trace(plan, d)
    d.input_tree = plan.module.input_tree
    d.promoted = tuple(plan.promoted)
    d.constants = {k: v for k, v in d.constants.items() if k not in plan.promoted}
    d.weights_bytes = int(sum(p.numel() * p.element_size() for p in plan.module.parameters())
                          + sum(b.numel() * b.element_size() for b in plan.module.buffers()))
    d.weights_dtype = weights_dtype(plan.module.module)
    with torch.no_grad():  # reference outputs on the recorded inputs
        ref = plan.module(*(plan.example_inputs[n] for n in plan.input_names))
    save_npz(stage / f"{stem}.inputs.npz", {n: to_numpy(plan.example_inputs[n]) for n in plan.input_names})
    save_npz(stage / f"{stem}.outputs.npz", {n: to_numpy(t) for n, t in zip(plan.output_names, ref)})
    d.files.update(inputs=f"{stem}.inputs.npz", outputs=f"{stem}.outputs.npz")
    example_shapes = {n: tuple(plan.example_inputs[n].shape) for n in plan.input_names}
    d.dims = {k: Dim(k, v["min"], v["max"], _example_of(v, example_shapes), tuple(v["sources"]))
              for k, v in info.dims.items()}
    d.guards = tuple(info.constraints)
    d.constraints = constraints.prune(d.guards, d.dims)
    d.specialized = tuple(MappingProxyType(s) for s in info.specialized)
    d.inputs = tuple(InputSpec(n, dtype_name(plan.example_inputs[n].dtype), tuple(info.input_shapes[n]),
                               example_shapes[n], _value_range(plan.example_inputs[n])) for n in plan.input_names)
    d.outputs = tuple(OutputSpec(n, k, dtype_name(r.dtype), tuple(info.output_shapes.get(n, [])), tuple(r.shape))
                      for n, k, r in zip(plan.output_names, plan.output_keys, ref))
    del ref
    onnx_path = None
    if "onnx" in formats:  # a graph ONNX cannot hold (complex tensors) degrades to IR from the torch module
        t = time.perf_counter()
        onnx_path = writers.write_onnx_or_skip(plan, ep, stage / f"{stem}.onnx", info, opset, d.tools,
                                               can_skip="openvino" in formats and openvino_from != "onnx")
        d.timings["onnx"] = round(time.perf_counter() - t, 3)
    if onnx_path is not None:
        d.files["onnx"] = onnx_path.name
        data = sorted(p.name for p in stage.iterdir() if p.name.startswith(f"{stem}.onnx") and p != onnx_path)
        if data:
            d.files["onnx_data"] = data
        d.sizes["onnx"] = sum((stage / f).stat().st_size for f in [onnx_path.name, *data])
    del ep
    gc.collect()
    if "openvino" in formats:
        t = time.perf_counter()
        xml = stage / f"{stem}.xml"
        d.tools.update(writers.write_openvino(onnx_path, plan, xml, compress_to_fp16, openvino_from,
                                              d.weights_bytes or 0))
        d.files["openvino"] = xml.name
        d.timings["openvino"] = round(time.perf_counter() - t, 3)
        d.sizes["openvino"] = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        if stateful and stateful_mod.cache_pairs(d.entry(0.0, 0)):  # the decoder step: its cache kept inside
            t = time.perf_counter()
            out_xml = stage / f"{stem}.stateful.xml"
            d.tools.update(stateful_mod.make_stateful(xml, out_xml, d.entry(0.0, 0)))
            d.files[stateful_mod.STATEFUL_FILE] = out_xml.name
            d.timings["openvino_stateful"] = round(time.perf_counter() - t, 3)


def _trace(plan: ExportPlan, d: _Draft) -> tuple[Any, dims_mod.DimInfo]:
    """torch.export with the plan's dynamic shapes (every dim static if that fails: reported), read off."""
    t = time.perf_counter()
    with torch.no_grad():
        try:
            ep = torch.export.export(plan.module, plan.args, dynamic_shapes=plan.dynamic_shapes)
        except Exception as e:
            if not any(plan.candidates.values()):
                raise
            d.tools["dynamic_error"] = f"{type(e).__name__}: {str(e)[:500]}"
            ep = torch.export.export(plan.module, plan.args)  # every dim static: reported below
    d.timings["torch_export"] = round(time.perf_counter() - t, 3)
    arg_shapes = {n: tuple(a.shape) for n, a in zip(plan.input_names, plan.args)}
    return ep, dims_mod.describe_program(ep, plan.input_names, plan.output_names, plan.candidates, arg_shapes)


def _broadcast_ties(info: dims_mod.DimInfo, plan: ExportPlan) -> dict[str, set[int]]:
    """Size-1 dims that share a dim name with a dim of another size in the recorded call: traced at 2 they looked
    like it, but the recorded call proves they are not the same dim (one broadcasts against the other)."""
    out: dict[str, set[int]] = {}
    for dim in info.dims.values():
        places = [src.rsplit(".", 1) for src in dim["sources"]]
        sizes = {(inp, int(k)): int(plan.example_inputs[inp].shape[int(k)]) for inp, k in places}
        if len(set(sizes.values())) > 1:
            for (inp, k), size in sizes.items():
                if size == 1:
                    out.setdefault(inp, set()).add(k)
    return out


def _example_of(info: Mapping[str, Any], example_shapes: Mapping[str, tuple]) -> int:
    inp, d = info["sources"][0].rsplit(".", 1)
    return int(example_shapes[inp][int(d)])


def _value_range(t: torch.Tensor) -> tuple[int, int] | None:
    if t.is_floating_point() or t.is_complex() or t.numel() == 0:
        return None
    return (int(t.min()), int(t.max()))


def _is_disk_error(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def _graph_error(e: BaseException) -> GraphError:
    hint = ""
    if not isinstance(e, ShapetraceError) and ("Cannot" in str(e) or "unsupported" in str(e).lower()):
        hint = " (try dynamic='static' for this graph, or exclude it with graphs=[...])"
    return GraphError(type(e).__name__, f"{str(e)[:2000]}{hint}",
                      "".join(traceback.format_exception_only(type(e), e)).strip()[:300])


# ------------------------------------------------------------------------------------------------ export_all
def export_all(obj: Any, out_dir: str | os.PathLike, *, recording: Recording | None = None,
               formats: Iterable[str] = ("onnx", "openvino"), graphs: Iterable[str] | None = None,
               dynamic: Any = "auto", overwrite: bool = False, opset: int | None = None,
               compress_to_fp16: bool = False, openvino_from: str = "auto", verify: bool = True,
               progress: bool = True, stateful: bool = False, **verify_kwargs: Any) -> ExportResult:
    """Export every recorded graph of ``obj`` into ``out_dir`` (see the module docstring and the README).

    ``dynamic``: ``"auto"`` (default), ``"static"``, or ``{graph: {input: [dims]}}`` / ``{input: [dims]}``.
    ``openvino_from``: ``"auto"`` (default: from the torch module for graphs above 1 GiB of weights, which shares
    the weights instead of copying them; from the ONNX file otherwise, which is faster), ``"torch"`` or ``"onnx"``.
    ``verify=True`` runs :func:`shapetrace.verify` on the result and writes the parity into the manifest.
    ``stateful=True`` also writes, for a graph variant that takes a KV cache and returns it updated (a decoder
    step), OpenVINO's stateful form (``<graph>.stateful.xml``, ``files["openvino_stateful"]``: the cache kept in
    the compiled model), served by ``load(..., stateful=True)``.
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
            entry = _export_graph(obj, g, stage, formats, per_graph, opset, compress_to_fp16, openvino_from,
                                  stateful and "openvino" in formats)
            entries.append(entry)
            if hasattr(bar, "write"):
                status = f"error: {entry.error.message[:120]}" if entry.error else \
                    f"{sum(entry.sizes.values()) / 1e6:.1f} MB"
                bar.write(f"  {name}: {entry.seconds:.1f}s, {status}")
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
    return ExportResult(out, graphs_out, manifest_mod.read(out), report)


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
