"""One graph's export, start to end: the trace (:mod:`shapetrace._export.tracing`: torch.export, giving up as few dynamic
dims as it can), the reference outputs, the ONNX / OpenVINO / stateful files, and the manifest :class:`GraphEntry`
-- with the error, when something failed, and no file left behind. :func:`export_graph` is what ``export_all`` runs
per graph; it measures the graph's time and peak memory (:class:`PeakRSS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import shutil
import time
import traceback
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import torch

from .. import constraints
from . import dims as dims_mod
from . import stateful as stateful_mod
from . import branches, datachecks, decomplex, loops, onnx_source, tracing, writers
from ..errors import ShapetraceError
from .._core import diskspace
from .._core.files import json_value, save_npz
from .._core.memory import PeakRSS
from .._core.phases import phase
from .flat import ExportPlan, module_for, weights_dtype, without_outputs
from ..manifest import Dim, GraphEntry, GraphError, InputSpec, OutputSpec
from .._record.recording import GraphRecord, dtype_name, file_stem, to_numpy

__all__ = ["export_graph", "PeakRSS"]


class _Draft:
    """The parts of one graph's :class:`GraphEntry`, filled as the export goes (what a failure leaves is kept)."""

    def __init__(self, g: GraphRecord) -> None:
        self.g = g
        self.input_tree: Mapping[str, Any] = dict(g.input_tree)
        self.output_tree: Mapping[str, Any] = dict(g.output_tree)
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
        self.created: set[str] = set()  # the files this attempt wrote to the stage

    def entry(self, seconds: float, peak: int) -> GraphEntry:
        g = self.g
        return GraphEntry(g.name, g.module_path, g.method, g.module_class, MappingProxyType(self.files), self.inputs,
                          self.outputs, MappingProxyType(self.constants), self.input_tree, dict(self.output_tree),
                          MappingProxyType(self.dims), self.constraints, self.guards, self.specialized,
                          self.promoted, MappingProxyType(self.tools), MappingProxyType(self.timings), seconds, peak,
                          self.weights_bytes, MappingProxyType(self.sizes), self.error, g.variant_of,
                          self.weights_dtype)


_NO_FILES = {"onnx": None, "openvino": None, "inputs": None, "outputs": None}


def export_graph(obj: Any, g: GraphRecord, stage: Path, formats: Sequence[str], dynamic: Any, opset: int | None,
                  compress_to_fp16: bool, openvino_from: str = "auto", stateful: bool = False) -> GraphEntry:
    """Export one graph. A graph that failed, or lost its ONNX file, is tried once more with the model code's
    data-dependent assertions off (:mod:`shapetrace._export.datachecks`); the better of the two is kept and the manifest
    says which (``tools["data_checks"]``). What failed leaves no file behind."""
    args = (obj, g, stage, formats, dynamic, opset, compress_to_fp16, openvino_from, stateful)
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        d = _attempt(*args)
        if _lost(d, formats) and datachecks.can_turn_off(_module_or_none(obj, g)):
            d = _with_checks_off(d, args, formats)
    return d.entry(round(time.perf_counter() - t0, 3), rss.peak)


def _lost(d: _Draft, formats: Sequence[str]) -> int:
    """How much of what was asked a draft lacks: 2 for a failed graph, 1 for one without its ONNX file."""
    return 2 if d.error is not None else int("onnx" in formats and d.files.get("onnx") is None)


def _with_checks_off(first: _Draft, args: tuple, formats: Sequence[str]) -> _Draft:
    """The graph exported again, with the checks off, in a folder of its own; the better attempt's files stay."""
    stage: Path = args[2]
    retry_dir = stage / ".checks-off"
    retry_dir.mkdir()
    try:
        with datachecks.off():
            second = _attempt(*args[:2], retry_dir, *args[3:])
        if _lost(second, formats) >= _lost(first, formats):
            first.tools["data_checks_off_error"] = _why(second)
            return first
        for name in first.created:
            (stage / name).unlink()
        for f in retry_dir.iterdir():
            f.rename(stage / f.name)
        second.tools["data_checks"] = "off"
        second.tools["data_checks_on_error"] = _why(first)
        return second
    finally:
        shutil.rmtree(retry_dir, ignore_errors=True)


def _why(d: _Draft) -> str:
    if d.error is not None:
        return f"{d.error.type}: {' '.join(d.error.message.split())[:300]}"
    return str(d.tools.get("no_onnx", "no ONNX file"))[:300]


def _attempt(obj: Any, g: GraphRecord, stage: Path, formats: Sequence[str], dynamic: Any, opset: int | None,
             compress_to_fp16: bool, openvino_from: str, stateful: bool) -> _Draft:
    stem = file_stem(g.name)
    d = _Draft(g)
    modes = _training_modes(obj, g)
    before = set(stage.iterdir())  # graphs are staged one after another: what appears is this graph's
    try:
        with contextlib.ExitStack() as scope:
            _export_files(obj, g, d, stage, stem, formats, dynamic, opset, compress_to_fp16, openvino_from,
                          stateful, scope)
    except (KeyboardInterrupt, MemoryError, OSError) as e:
        if isinstance(e, OSError) and not _is_disk_error(e):
            d.error = _graph_error(e)
        else:  # a full disk: typed, naming the graph (staging says how much space the export needed)
            if isinstance(e, OSError):
                diskspace.raise_if_full(e, stage, f"graph {g.name!r}")
            raise
    except Exception as e:  # one graph failing never stops the others; a full disk stops the export
        diskspace.raise_if_full(e, stage, f"graph {g.name!r}", d.weights_bytes or 0)
        d.error = _graph_error(e)
    finally:
        for m, training in modes:  # exporters switch modes (eval() and back): leave every module as it was
            m.training = training
        gc.collect()  # free the graph before the next one
    d.created = {f.name for f in set(stage.iterdir()) - before}
    if d.error is not None:  # only this graph's files: "model." also begins "model.model.vision_tower.inputs.npz"
        for name in d.created:
            (stage / name).unlink()
        d.created = set()
        d.files = dict(_NO_FILES)
    return d


#: Seconds for pruning one graph's guards to its constraints (:func:`shapetrace.constraints.prune`); past it the
#: guards not yet examined are kept, which is sound (``tools.constraints_unpruned`` counts them).
PRUNE_BUDGET_S = 30.0


def _export_files(obj: Any, g: GraphRecord, d: _Draft, stage: Path, stem: str, formats: Sequence[str],
                  dynamic: Any, opset: int | None, compress_to_fp16: bool, openvino_from: str,
                  stateful: bool = False, scope: contextlib.ExitStack | None = None) -> None:
    """The files of one graph into ``d`` (trace, reference outputs, dims and constraints, ONNX, IR, stateful IR).

    Long by design: one straight sequence of the steps in the order the files depend on each other, each step a
    call with its degrade branch next to it (what failed and what replaced it lands in ``d.tools``)."""
    plan, ep, info = tracing.trace(obj, g, dynamic, d.tools, d.timings)
    if "widened_loops" in d.tools and scope is not None:  # the exporters that trace by running the module too
        scope.enter_context(loops.every_position(loops.skipped(d.tools.get("widened_loops_skipped", ()))))
    if "branches_as_recorded" in d.tools and scope is not None:
        scope.enter_context(branches.as_recorded(branches.read(d.tools["branches_as_recorded"])))
    ir_plan = plan  # what the exporters convert: a real-valued rewrite when the graph computes complex values
    if ep is not None and (ops := writers.complex_ops(ep)):
        try:
            real = dataclasses.replace(plan, module=decomplex.rewrite(ep.module()))
            real_ep = tracing.export_program(real, d.timings)
            ir_plan, ep, info = real, real_ep, tracing.describe(real, real_ep)
            d.tools["complex_rewritten"] = ops
        except Exception as e:  # left complex: ONNX is then skipped, the IR comes from the torch module
            d.tools["complex_rewrite_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    d.input_tree = plan.module.input_tree
    if dropped := d.tools.get("dropped_outputs"):  # cache objects the trace does not return: None in the tree
        _, d.output_tree = without_outputs(plan, g.output_tree, set(dropped["outputs"]))
    if ep is not None and (bounds := dims_mod.index_bounds(ep, plan.input_names)):
        d.tools["index_bounds"] = bounds  # load refuses an index past a table (some runtimes read another row)
    d.promoted = tuple(plan.promoted)
    if g.direct_calls:  # the module calls itself (generate): load serves its own forward too
        d.tools["calls_without_proxy"] = g.direct_calls
    if plan.complex_inputs:  # taken as view_as_real: load converts a complex argument the same way
        d.tools["complex_inputs"] = list(plan.complex_inputs)
    d.constants = {k: v for k, v in d.constants.items() if k not in plan.promoted}
    d.weights_bytes = int(sum(p.numel() * p.element_size() for p in plan.module.parameters())
                          + sum(b.numel() * b.element_size() for b in plan.module.buffers()))
    d.weights_dtype = weights_dtype(plan.module.module)
    # the inputs as recorded, before anything runs the module: a call that updates its cache in place (a
    # convolution or recurrent state) would otherwise leave the state after the call in the inputs file
    save_npz(stage / f"{stem}.inputs.npz", {n: to_numpy(plan.example_inputs[n]) for n in plan.input_names})
    with torch.no_grad():  # reference outputs on the recorded inputs (copies: the call may update them in place)
        ref = plan.module(*(plan.example_inputs[n].clone() for n in plan.input_names))
    if ep is None:  # no program to read the outputs' shapes from: all static, as run
        info = dataclasses.replace(info, output_shapes={n: list(r.shape) for n, r in zip(plan.output_names, ref)})
    save_npz(stage / f"{stem}.outputs.npz", {n: to_numpy(t) for n, t in zip(plan.output_names, ref)})
    d.files.update(inputs=f"{stem}.inputs.npz", outputs=f"{stem}.outputs.npz")
    example_shapes = {n: tuple(plan.example_inputs[n].shape) for n in plan.input_names}
    d.dims = {k: Dim(k, v["min"], v["max"], _example_of(v, example_shapes), tuple(v["sources"]))
              for k, v in info.dims.items()}
    d.guards = tuple(info.constraints)
    d.constraints, unexamined = constraints.prune_within(d.guards, d.dims, PRUNE_BUDGET_S)
    if unexamined:
        d.tools["constraints_unpruned"] = unexamined  # guards kept unexamined: the prover's budget ran out
    d.specialized = tuple(MappingProxyType(s) for s in info.specialized)
    d.inputs = tuple(InputSpec(n, dtype_name(plan.example_inputs[n].dtype), tuple(info.input_shapes[n]),
                               example_shapes[n], _value_range(plan.example_inputs[n])) for n in plan.input_names)
    d.outputs = tuple(OutputSpec(n, k, dtype_name(r.dtype), tuple(info.output_shapes.get(n, [])), tuple(r.shape))
                      for n, k, r in zip(plan.output_names, plan.output_keys, ref))
    del ref
    onnx_path = None
    if "onnx" in formats:  # a graph ONNX cannot hold (complex tensors) degrades to IR from the torch module
        t = time.perf_counter()
        with phase("onnx (total)"):
            onnx_path = writers.write_onnx_or_skip(ir_plan, ep, stage / f"{stem}.onnx", info, opset, d.tools,
                                                   can_skip="openvino" in formats and openvino_from != "onnx")
        d.timings["onnx"] = round(time.perf_counter() - t, 3)
        d.constraints += tuple(f"{n} != 1" for n in d.tools.get("onnx_squeeze_assumes_not_one", ())
                               if f"{n} != 1" not in d.constraints)
    if onnx_path is not None:
        d.files["onnx"] = onnx_path.name
        data = sorted(p.name for p in stage.iterdir() if p.name.startswith(f"{stem}.onnx") and p != onnx_path)
        if data:
            d.files["onnx_data"] = data
        d.sizes["onnx"] = sum((stage / f).stat().st_size for f in [onnx_path.name, *data])
    gc.collect()
    if "openvino" in formats:
        t = time.perf_counter()
        xml = stage / f"{stem}.xml"
        with phase("openvino (total)"), _onnx_on_demand(formats, ir_plan, ep, info, opset, stage, stem) as onnx:
            d.tools.update(writers.write_openvino(onnx_path, ir_plan, xml, compress_to_fp16, openvino_from,
                                                  d.weights_bytes or 0, ep, onnx_on_demand=onnx))
            if onnx is not None and d.tools.get("openvino_from") == "onnx":  # IR only: converted from a file not kept
                d.tools["openvino_via_onnx"] = {**onnx.tools, "kept": False}
                d.constraints += tuple(f"{n} != 1" for n in onnx.tools.get("onnx_squeeze_assumes_not_one", ())
                                       if f"{n} != 1" not in d.constraints)
        ep = None  # the program is a source of last resort; free it before the stateful conversion
        d.files["openvino"] = xml.name
        d.timings["openvino"] = round(time.perf_counter() - t, 3)
        d.sizes["openvino"] = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        if stateful and stateful_mod.cache_pairs(d.entry(0.0, 0)):  # the decoder step: its cache kept inside
            t = time.perf_counter()
            d.tools.update(_write_stateful(plan, d.entry(0.0, 0), xml, stage / f"{stem}.stateful.xml",
                                           compress_to_fp16, d.tools.get("openvino_from")))
            d.files[stateful_mod.STATEFUL_FILE] = f"{stem}.stateful.xml"
            d.timings["openvino_stateful"] = round(time.perf_counter() - t, 3)


def _onnx_on_demand(formats: Sequence[str], plan: ExportPlan, ep: Any, info: Any, opset: int | None, stage: Path,
                    stem: str) -> contextlib.AbstractContextManager[onnx_source.OnnxOnDemand | None]:
    """IR only: the ONNX file as one more source for the IR, written only if a conversion asks for it and removed
    after (:mod:`shapetrace._export.onnx_source`); with ONNX in ``formats`` the file written there is the source."""
    if "onnx" in formats:
        return contextlib.nullcontext()
    return onnx_source.OnnxOnDemand(plan, ep, info, opset, stage, f"{stem}.onnx")


def _write_stateful(plan: ExportPlan, entry: GraphEntry, xml: Path, out_xml: Path, compress_to_fp16: bool,
                    ir_from: str | None) -> dict[str, Any]:
    """The stateful IR of a decoder step, made from an IR converted from the torch module when the graph's own IR
    came from ONNX: OpenVINO's PyTorch frontend keeps attention as one op, which the CPU plugin then fuses with the
    cache variables (no copy of the cache per step). If that conversion fails, from the graph's own IR (noted)."""
    if ir_from == "torch":
        return {**stateful_mod.make_stateful(xml, out_xml, entry), "stateful_openvino_from": "torch"}
    tmp = out_xml.with_name(out_xml.name.replace(".stateful.xml", ".stateful-src.xml"))
    try:
        writers.write_openvino(None, plan, tmp, compress_to_fp16, "torch")
        return {**stateful_mod.make_stateful(tmp, out_xml, entry), "stateful_openvino_from": "torch"}
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # the ONNX-derived IR still makes a correct (slower) stateful model
        note = {"stateful_torch_error": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"}
        return {**stateful_mod.make_stateful(xml, out_xml, entry), "stateful_openvino_from": ir_from, **note}
    finally:
        for f in (tmp, tmp.with_suffix(".bin")):
            f.unlink(missing_ok=True)


def _module_or_none(obj: Any, g: GraphRecord) -> Any:
    try:
        return module_for(obj, g)
    except Exception:  # the export itself reports a missing module
        return None


def _training_modes(obj: Any, g: GraphRecord) -> list[tuple[torch.nn.Module, bool]]:
    module = _module_or_none(obj, g)
    return [(m, m.training) for m in module.modules()] if module is not None else []


def _example_of(info: Mapping[str, Any], example_shapes: Mapping[str, tuple]) -> int:
    if not info["sources"]:  # a dim only seen plus a constant (dims.describe_program): its example as read there
        return int(info["example"])
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
