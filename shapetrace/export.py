"""Export every recorded graph: a flat wrapper module per graph, then ONNX and OpenVINO IR with dynamic axes.

``export_all(obj, out_dir)`` works graph by graph, one at a time:

1. :func:`prepare` builds a :class:`ExportPlan`: the flat wrapper (:class:`FlatModule`: tensor leaves in, output
   tensor leaves out, under their flat names; non-tensor arguments frozen to their recorded values), the example
   args, a ``dynamic_shapes`` spec (``torch.export.Dim.AUTO`` per dynamic dim) and the ``input=`` list for
   ``openvino.convert_model``. Other tools can take the plan as is.
2. ``torch.export.export`` with those dynamic shapes; its symbols become shared dim names, its ranges and guards
   become the manifest's ``dims`` and ``constraints``; dims it specialised are reported, never silently made static.
3. ``torch.onnx.export`` of the exported program (dynamo exporter; the TorchScript exporter as a per-graph fallback,
   noted in ``tools``), dim names written into the ONNX file, checked with ``onnx.checker`` (path based, so
   external data beyond 2 GB works).
4. ``openvino.convert_model`` of the ONNX file + ``openvino.save_model`` (``compress_to_fp16`` off unless asked).
5. PyTorch's outputs on the example inputs saved as ``<graph>.outputs.npz`` (the parity reference).

Every file is written into a staging folder and moved to its final name only when the whole export finished, so a
failure leaves no half-written file and an earlier export intact. One graph failing does not stop the others.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import os
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from . import dims as dims_mod
from . import tree
from .errors import ExportError, FlattenError, RecordingError, ShapetraceError
from .recording import FORMAT_VERSION, GraphRecord, Recording, dtype_name, file_stem, to_numpy
from .walker import parse_path, resolve

__all__ = ["FlatModule", "ExportPlan", "prepare", "export_all", "ExportResult", "GraphExport", "flat_module",
           "MANIFEST"]

MANIFEST = "manifest.json"


# ------------------------------------------------------------------------------------------------ flat wrapper
def _split_call(input_tree: Mapping[str, Any], leaves: Mapping[str, Any]) -> tuple[list, dict]:
    args: list = []
    kwargs: dict[str, Any] = {}
    for param in input_tree["params"]:
        value = tree.unflatten(param["node"], leaves)
        if param["kind"] == "VAR_POSITIONAL":
            args.extend(value)
        elif param["kind"] == "POSITIONAL_ONLY":
            args.append(value)
        else:
            kwargs[param["name"]] = value
    return args, kwargs


class FlatModule(torch.nn.Module):
    """``forward(*tensors)`` in ``input_names`` order -> tuple of output tensors in ``output_names`` order.

    Rebuilds the original args / kwargs (constants and opaque values frozen to the recorded ones), calls the
    recorded method of ``module`` and flattens its output.
    """

    def __init__(self, module: torch.nn.Module, method: str, input_tree: Mapping[str, Any],
                 input_names: Sequence[str], output_names: Sequence[str], output_fields: Sequence[str] | None,
                 frozen: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.module = module
        self.method = method
        self.input_tree = dict(input_tree)
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.output_fields = list(output_fields) if output_fields else None
        self._frozen = dict(frozen or {})

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaves = dict(self._frozen)
        leaves.update(zip(self.input_names, tensors))
        args, kwargs = _split_call(self.input_tree, leaves)
        fn = self.module if self.method == "forward" else getattr(self.module, self.method)
        output = fn(*args, **kwargs)
        _, flat = tree.flatten_output(output, self.output_fields)
        missing = [n for n in self.output_names if n not in flat]
        if missing:
            raise ExportError(f"output {missing[0]!r} is missing from this call's output (got {', '.join(flat)})")
        return tuple(flat[n] for n in self.output_names)


def _np_dtype(dtype: torch.dtype) -> Any:
    return {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.float32,
            torch.float64: np.float64, torch.int64: np.int64, torch.int32: np.int32, torch.int8: np.int8,
            torch.uint8: np.uint8, torch.bool: np.bool_}.get(dtype, np.float32)


@dataclass(frozen=True)
class ExportPlan:
    """Everything needed to export one graph with any tool (see the README's "other tools" section).

    ``torch.export.export(plan.module, plan.args, dynamic_shapes=plan.dynamic_shapes)`` and
    ``torch.onnx.export(plan.module, plan.args, dynamic_shapes=plan.dynamic_shapes,
    input_names=plan.input_names, output_names=plan.output_names)`` work as is;
    ``openvino.convert_model(plan.module, example_input=plan.args, input=plan.openvino_input)`` too.
    """

    graph: str
    module: FlatModule
    args: tuple
    dynamic_shapes: tuple
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    candidates: Mapping[str, Mapping[int, Any]]
    example_inputs: Mapping[str, torch.Tensor]  # the recorded (untiled) inputs
    promoted: tuple[str, ...] = ()  # scalar arguments that varied across calls, exported as 0-d inputs
    output_keys: tuple[str, ...] = ()  # flat output names in the output tree (== output_names unless renamed)

    @property
    def openvino_input(self) -> list[tuple[str, list[int], Any]]:
        """``input=`` for ``openvino.convert_model``: (name, shape with -1 for dynamic dims, numpy dtype)."""
        out = []
        for name, arg in zip(self.input_names, self.args):
            dyn = self.candidates.get(name, {})
            out.append((name, [-1 if d in dyn else int(s) for d, s in enumerate(arg.shape)], _np_dtype(arg.dtype)))
        return out


def _module_for(obj: Any, g: GraphRecord) -> torch.nn.Module:
    try:
        _, _, module = resolve(obj, parse_path(g.module_path))
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise ExportError(f"graph {g.name!r}: no module at {g.module_path!r} in this {type(obj).__name__} any more "
                          f"({e}); record the object again") from e
    if type(module).__name__ == "RecordingProxy" or hasattr(type(module), "_st_wrapped"):
        raise ExportError(f"graph {g.name!r}: export_all() was called inside the record() block; call it after")
    if tree.qualname(type(module)) != g.module_class:
        raise ExportError(f"graph {g.name!r}: the module at {g.module_path!r} is now a "
                          f"{type(module).__name__}, but a {g.module_class.rsplit(':', 1)[-1]} was recorded; "
                          f"record the object again")
    return module


def prepare(obj: Any, graph: str | GraphRecord, recording: Recording | None = None,
            dynamic: Any = "auto") -> ExportPlan:
    """The :class:`ExportPlan` of one recorded graph of ``obj`` (the live object the recording was made on)."""
    if not isinstance(graph, GraphRecord):
        rec = recording if recording is not None else _recording_for(obj)
        graph = rec[graph]
    g = graph
    module = _module_for(obj, g)
    opaque_outputs = tree.has_opaque_tensors(dict(g.output_tree))
    if opaque_outputs:
        typ = opaque_outputs[0]
        raise FlattenError(
            f"graph {g.name!r} returns a {typ}, which holds tensors shapetrace cannot flatten; register a "
            f"flattener: shapetrace.register_flattener({typ.rsplit('.', 1)[-1]}, lambda obj: ({{'field': obj.field}}, "
            f"None), lambda cls, fields, ctx: cls(**fields)) and record again")
    opaque_inputs = tree.has_opaque_tensors(dict(g.input_tree))
    if opaque_inputs:
        raise FlattenError(f"graph {g.name!r} takes a {opaque_inputs[0]} holding tensors, which cannot be an "
                           f"exported input; register a flattener for it (shapetrace.register_flattener)")
    input_tree = json.loads(json.dumps(dict(g.input_tree)))
    examples = {n: t for n, t in g.examples.items() if isinstance(t, torch.Tensor)}
    frozen = {n: v for n, v in g.examples.items() if not isinstance(v, torch.Tensor)}
    promoted = _promote_varying_scalars(input_tree, g, examples)
    input_names = tree.tensor_names(input_tree)
    missing = [n for n in input_names if n not in examples]
    if missing:
        raise ExportError(f"graph {g.name!r} has no example value for input {missing[0]!r}; record it again")
    specs = dict(g.inputs)
    for n in promoted:
        from .recording import TensorSpec

        specs[n] = TensorSpec(tuple(examples[n].shape), examples[n].dtype)
    candidates = dims_mod.candidate_dims({n: specs[n] for n in input_names}, dynamic)
    args = []
    for n in input_names:
        t = examples[n]
        for d in candidates.get(n, {}):
            if t.shape[d] == 1:  # torch.export specialises size-1 dims: trace with 2, the graph stays general
                t = torch.cat([t, t], dim=d)
        args.append(t)
    output_keys = list(g.outputs)
    # ONNX needs unique value names: an output called like an input (unet: sample -> sample) is "output.sample"
    taken = set(input_names)
    output_names = [f"output.{k}" if k in taken else k for k in output_keys]
    fields = dict(g.output_tree).get("fields")
    flat = FlatModule(module, g.method, input_tree, input_names, output_keys, fields, frozen)
    # forward(*tensors) has one (var-positional) parameter: its dynamic_shapes entry is the tuple of per-input specs
    dyn = (tuple({d: torch.export.Dim.AUTO for d in candidates.get(n, {})} or None for n in input_names),)
    return ExportPlan(g.name, flat, tuple(args), dyn, tuple(input_names), tuple(output_names),
                      MappingProxyType(candidates), MappingProxyType({n: examples[n] for n in input_names}),
                      tuple(promoted), tuple(output_keys))


def flat_module(module: torch.nn.Module, entry: Mapping[str, Any]) -> FlatModule:
    """The flat wrapper for a manifest graph entry around a live ``module`` (used by verify / load)."""
    names = [i["name"] for i in entry["inputs"]]
    # opaque arguments (a torch.Generator) were recorded by type only: they are passed as None
    frozen = {k: None for k, v in tree.constants_of(entry["input_tree"]).items()
              if isinstance(v, str) and v.startswith("<")}
    return FlatModule(module, entry["method"], entry["input_tree"], names,
                      [o.get("key", o["name"]) for o in entry["outputs"]],
                      entry["output_tree"].get("fields"), frozen)


def _promote_varying_scalars(input_tree: dict, g: GraphRecord, examples: dict) -> list[str]:
    """Scalar arguments whose value changed across calls become 0-d tensor inputs instead of frozen constants."""
    promoted: list[str] = []

    def walk(node: dict, name: str) -> None:
        if node["t"] == "const" and name in g.varying_constants and node["type"] in ("int", "float"):
            value = node["value"]
            examples[name] = torch.tensor(value, dtype=torch.float32 if node["type"] == "float" else torch.int64)
            node.clear()
            node.update({"t": "tensor", "name": name})
            promoted.append(name)
            return
        for i, child in enumerate(node.get("items", ())):
            keys = node.get("keys") or node.get("fields") or list(range(len(node["items"])))
            walk(child, f"{name}.{keys[i]}")

    for p in input_tree["params"]:
        walk(p["node"], p["name"])
    return promoted


def _recording_for(obj: Any) -> Recording:
    from .proxy import recording_for

    try:
        return recording_for(obj)
    except RecordingError as e:
        raise ExportError(str(e)) from None


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class GraphExport:
    """The outcome for one graph (``error`` is None when it exported)."""

    name: str
    files: Mapping[str, str | None]
    entry: Mapping[str, Any]
    error: str | None = None

    def __bool__(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ExportResult:
    """``ok`` is False if any graph failed; ``graphs[name].error`` says why."""

    out_dir: Path
    graphs: Mapping[str, GraphExport]
    manifest: Mapping[str, Any]
    parity: Any = None

    @property
    def ok(self) -> bool:
        return all(self.graphs.values()) and (self.parity is None or bool(self.parity))

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = [f"export to {self.out_dir}: {'ok' if self.ok else 'FAILED'}"]
        for g in self.graphs.values():
            e = g.entry
            if g.error:
                lines.append(f"  {g.name:<24} ERROR {g.error}")
            else:
                lines.append(f"  {g.name:<24} {e.get('seconds', 0):6.1f}s  dims: "
                             f"{', '.join(e.get('dims', {})) or 'static'}")
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


# ------------------------------------------------------------------------------------------------ writers
def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for pkg in ("torch", "onnx", "onnxscript", "onnxruntime", "openvino", "diffusers", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is not installed: pip install 'shapetrace[{extra}]'") from None


def _rename_onnx_dims(path: Path, symbols: Mapping[str, str], input_shapes: Mapping[str, list],
                      output_shapes: Mapping[str, list]) -> int:
    """Write our dim names into the ONNX graph's inputs / outputs; returns the opset."""
    onnx = _require("onnx", "onnx")
    model = onnx.load(str(path), load_external_data=False)
    shapes = {**input_shapes, **output_shapes}
    for vi in list(model.graph.input) + list(model.graph.output):
        want = shapes.get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if want is not None and i < len(want) and isinstance(want[i], str):
                d.dim_param = want[i]
            elif d.dim_param:
                d.dim_param = dims_mod.symbol_map_rename(d.dim_param, symbols)
    for vi in model.graph.value_info:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = dims_mod.symbol_map_rename(d.dim_param, symbols)
    onnx.save(model, str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return int(opset) if opset is not None else -1


def _rename_ir_dims(model: Any, symbols: Mapping[str, str], input_shapes: Mapping[str, list],
                    output_shapes: Mapping[str, list]) -> None:
    """Write our dim names into an in-memory ``onnx_ir`` model (no load / save round trip of the weights)."""
    import onnx_ir as ir

    shapes = {**input_shapes, **output_shapes}

    def renamed(value: Any, want: list | None) -> None:
        shape = value.shape
        if shape is None:
            return
        dims = []
        for i, d in enumerate(shape):
            if want is not None and i < len(want) and isinstance(want[i], str):
                dims.append(want[i])
            elif isinstance(d, ir.SymbolicDim) and d.value is not None:
                dims.append(dims_mod.symbol_map_rename(str(d.value), symbols))
            else:
                dims.append(d)
        value.shape = ir.Shape(dims)

    for v in list(model.graph.inputs) + list(model.graph.outputs):
        renamed(v, shapes.get(v.name))
    for node in model.graph:
        for v in node.outputs:
            if v not in model.graph.outputs:
                renamed(v, None)


#: Graphs with more weights than this keep them in ``<graph>.onnx.data`` (beyond 2 GB ONNX requires it anyway).
ONNX_EXTERNAL_DATA_ABOVE_BYTES = 256 << 20


def _write_onnx(plan: ExportPlan, ep: Any, path: Path, info: dims_mod.DimInfo, opset: int | None) -> dict:
    onnx = _require("onnx", "onnx")
    _require("onnxscript", "onnx")
    tools: dict[str, Any] = {}
    try:
        prog = torch.onnx.export(ep, (), dynamo=True, input_names=list(plan.input_names),
                                 output_names=list(plan.output_names), opset_version=opset, optimize=True,
                                 verbose=False)
        tools["onnx_exporter"] = "torch.onnx.export(dynamo=True)"
    except Exception as e:  # documented fallback: the TorchScript exporter for this graph
        prog = None
        tools["onnx_exporter"] = "torch.onnx.export(dynamo=False)"
        tools["onnx_dynamo_error"] = f"{type(e).__name__}: {str(e)[:500]}"
        dynamic_axes = {n: {d: s for d, s in enumerate(shape) if isinstance(s, str)}
                        for n, shape in {**info.input_shapes, **info.output_shapes}.items()}
        torch.onnx.export(plan.module, plan.args, str(path), dynamo=False, input_names=list(plan.input_names),
                          output_names=list(plan.output_names), dynamic_axes=dynamic_axes,
                          opset_version=opset or 17)
    if prog is not None:
        _rename_ir_dims(prog.model, info.symbols, info.input_shapes, info.output_shapes)
        # weights of large graphs go to external data next to the file (<graph>.onnx.data): a single-file proto is
        # serialised and later re-read whole (checker, OpenVINO), which costs its size again in memory
        large = sum(p.numel() * p.element_size() for p in plan.module.parameters()) > ONNX_EXTERNAL_DATA_ABOVE_BYTES
        prog.save(str(path), external_data=True if large else None)
        opset_found = prog.model.opset_imports.get("", None)
        del prog
        tools["opset"] = int(opset_found) if opset_found is not None else -1
    else:
        tools["opset"] = _rename_onnx_dims(path, info.symbols, info.input_shapes, info.output_shapes)
    gc.collect()
    onnx.checker.check_model(str(path))
    return tools


#: Graphs with more fp32 weights than this convert to IR from the torch module (weights shared, no copy); smaller
#: ones from the ONNX file just written (a few times faster). See the README, "Which source for OpenVINO".
OPENVINO_FROM_TORCH_ABOVE_BYTES = 1 << 30


def _write_openvino(onnx_path: Path | None, plan: ExportPlan, xml_path: Path, compress_to_fp16: bool,
                    source: str = "auto", weights_bytes: int = 0) -> dict:
    ov = _require("openvino", "openvino")
    if source == "auto":
        source = "onnx" if onnx_path is not None and weights_bytes <= OPENVINO_FROM_TORCH_ABOVE_BYTES else "torch"
    if source == "onnx" and onnx_path is None:
        raise ExportError("openvino_from='onnx' needs the ONNX file: keep 'onnx' in formats")
    if source == "onnx":
        # read_model, not convert_model(str): the latter splits a path on commas
        model = ov.Core().read_model(str(onnx_path))
        source = "onnx"
    else:
        shapes = [(shape, dtype) for _, shape, dtype in plan.openvino_input]
        model = ov.convert_model(plan.module, example_input=plan.args, input=shapes)
        source = "torch"
        for port, name in zip(model.inputs, plan.input_names):
            port.get_tensor().set_names({name})
        for port, name in zip(model.outputs, plan.output_names):
            port.get_tensor().set_names({name})
    ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    del model
    return {"openvino_from": source, "compress_to_fp16": compress_to_fp16}


def _json_value(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


def _export_graph(obj: Any, g: GraphRecord, stage: Path, formats: Sequence[str], dynamic: Any, opset: int | None,
                  compress_to_fp16: bool, openvino_from: str = "auto") -> dict:
    stem = file_stem(g.name)
    entry: dict[str, Any] = {"name": g.name, "module": g.module_path, "method": g.method, "class": g.module_class,
                             "files": {"onnx": None, "openvino": None, "inputs": None, "outputs": None},
                             "inputs": [], "outputs": [], "constants": {k: _json_value(v)
                                                                        for k, v in g.constants.items()},
                             "input_tree": dict(g.input_tree), "output_tree": dict(g.output_tree),
                             "dims": {}, "constraints": [], "specialized": [], "promoted": [], "tools": {},
                             "timings": {}, "seconds": None, "peak_rss_bytes": None, "weights_bytes": None,
                             "sizes": {}, "error": None}
    t0 = time.perf_counter()
    with _PeakRSS() as rss:
        try:
            plan = prepare(obj, g, dynamic=dynamic)
            entry["input_tree"] = plan.module.input_tree
            entry["promoted"] = list(plan.promoted)
            entry["constants"] = {k: v for k, v in entry["constants"].items() if k not in plan.promoted}
            entry["weights_bytes"] = int(sum(p.numel() * p.element_size() for p in plan.module.parameters())
                                         + sum(b.numel() * b.element_size() for b in plan.module.buffers()))
            # reference outputs on the recorded inputs
            with torch.no_grad():
                ref = plan.module(*(plan.example_inputs[n] for n in plan.input_names))
            np.savez(stage / f"{stem}.inputs.npz", **{n: to_numpy(plan.example_inputs[n]) for n in plan.input_names})
            np.savez(stage / f"{stem}.outputs.npz", **{n: to_numpy(t) for n, t in zip(plan.output_names, ref)})
            entry["files"].update(inputs=f"{stem}.inputs.npz", outputs=f"{stem}.outputs.npz")
            # torch.export: dims, names, constraints
            t = time.perf_counter()
            with torch.no_grad():
                try:
                    ep = torch.export.export(plan.module, plan.args, dynamic_shapes=plan.dynamic_shapes)
                except Exception as e:
                    if not any(plan.candidates.values()):
                        raise
                    entry["tools"]["dynamic_error"] = f"{type(e).__name__}: {str(e)[:500]}"
                    ep = torch.export.export(plan.module, plan.args)  # every dim static: reported below
            entry["timings"]["torch_export"] = round(time.perf_counter() - t, 3)
            example_shapes = {n: tuple(plan.example_inputs[n].shape) for n in plan.input_names}
            arg_shapes = {n: tuple(a.shape) for n, a in zip(plan.input_names, plan.args)}
            info = dims_mod.describe_program(ep, plan.input_names, plan.output_names, plan.candidates, arg_shapes)
            entry["dims"] = {k: dict(v, example=_example_of(v, example_shapes)) for k, v in info.dims.items()}
            entry["constraints"] = list(info.constraints)
            entry["specialized"] = list(info.specialized)
            entry["inputs"] = [{"name": n, "dtype": dtype_name(plan.example_inputs[n].dtype),
                                "shape": info.input_shapes[n], "example_shape": list(example_shapes[n]),
                                "value_range": _value_range(plan.example_inputs[n])} for n in plan.input_names]
            entry["outputs"] = [{"name": n, "key": k, "dtype": dtype_name(r.dtype),
                                 "shape": info.output_shapes.get(n, []), "example_shape": list(r.shape)}
                                for n, k, r in zip(plan.output_names, plan.output_keys, ref)]
            del ref
            onnx_path = None
            if "onnx" in formats:
                t = time.perf_counter()
                onnx_path = stage / f"{stem}.onnx"
                entry["tools"].update(_write_onnx(plan, ep, onnx_path, info, opset))
                entry["files"]["onnx"] = onnx_path.name
                data = [p.name for p in stage.iterdir() if p.name.startswith(f"{stem}.onnx") and p != onnx_path]
                if data:
                    entry["files"]["onnx_data"] = sorted(data)
                entry["timings"]["onnx"] = round(time.perf_counter() - t, 3)
                entry["sizes"]["onnx"] = sum((stage / f).stat().st_size for f in [onnx_path.name, *data])
            del ep
            gc.collect()
            if "openvino" in formats:
                t = time.perf_counter()
                xml = stage / f"{stem}.xml"
                entry["tools"].update(_write_openvino(onnx_path, plan, xml, compress_to_fp16, openvino_from,
                                                      entry["weights_bytes"] or 0))
                entry["files"]["openvino"] = xml.name
                entry["timings"]["openvino"] = round(time.perf_counter() - t, 3)
                entry["sizes"]["openvino"] = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        except (KeyboardInterrupt, MemoryError, OSError) as e:
            if isinstance(e, OSError) and not _is_disk_error(e):
                _record_error(entry, e)
            else:
                raise
        except Exception as e:  # one graph failing never stops the others
            _record_error(entry, e)
        finally:
            plan = None  # noqa: F841 - free the graph before the next one
            gc.collect()
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    entry["peak_rss_bytes"] = rss.peak
    if entry["error"] is not None:
        for f in stage.iterdir():
            if f.name.startswith(f"{stem}."):
                f.unlink()
        entry["files"] = {"onnx": None, "openvino": None, "inputs": None, "outputs": None}
    return entry


def _example_of(info: Mapping[str, Any], example_shapes: Mapping[str, tuple]) -> int:
    inp, d = info["sources"][0].rsplit(".", 1)
    return int(example_shapes[inp][int(d)])


def _value_range(t: torch.Tensor) -> list | None:
    if t.is_floating_point() or t.is_complex() or t.numel() == 0:
        return None
    return [int(t.min()), int(t.max())]


def _is_disk_error(e: OSError) -> bool:
    import errno

    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def _record_error(entry: dict, e: BaseException) -> None:
    hint = ""
    if isinstance(e, ShapetraceError):
        hint = ""
    elif "Cannot" in str(e) or "unsupported" in str(e).lower():
        hint = " (try dynamic='static' for this graph, or exclude it with graphs=[...])"
    entry["error"] = {"type": type(e).__name__, "message": f"{str(e)[:2000]}{hint}",
                      "where": "".join(traceback.format_exception_only(type(e), e)).strip()[:300]}


# ------------------------------------------------------------------------------------------------ export_all
def export_all(obj: Any, out_dir: str | os.PathLike, *, recording: Recording | None = None,
               formats: Iterable[str] = ("onnx", "openvino"), graphs: Iterable[str] | None = None,
               dynamic: Any = "auto", overwrite: bool = False, opset: int | None = None,
               compress_to_fp16: bool = False, openvino_from: str = "auto", verify: bool = True,
               progress: bool = True, **verify_kwargs: Any) -> ExportResult:
    """Export every recorded graph of ``obj`` into ``out_dir`` (see the module docstring and the README).

    ``dynamic``: ``"auto"`` (default), ``"static"``, or ``{graph: {input: [dims]}}`` / ``{input: [dims]}``.
    ``openvino_from``: ``"auto"`` (default: from the torch module for graphs above 1 GiB of weights, which shares
    the weights instead of copying them; from the ONNX file otherwise, which is faster), ``"torch"`` or ``"onnx"``.
    ``verify=True`` runs :func:`shapetrace.verify` on the result and writes the parity into the manifest.
    """
    if openvino_from not in ("auto", "torch", "onnx"):
        raise ExportError(f"openvino_from={openvino_from!r}: choose 'auto', 'torch' or 'onnx'")
    rec = recording if recording is not None else _recording_for(obj)
    formats = tuple(formats)
    bad = [f for f in formats if f not in ("onnx", "openvino")]
    if bad or not formats:
        raise ExportError(f"formats={formats!r}: choose from ('onnx', 'openvino')")
    if not rec.graphs:
        raise ExportError("the recording holds no graph: run the pipeline inside the record() block first")
    names = list(rec.graphs)
    if graphs is not None:
        graphs = [graphs] if isinstance(graphs, str) else list(graphs)
        unknown = [n for n in graphs if n not in rec.graphs]
        if unknown:
            raise ExportError(f"graphs={unknown!r} not recorded; recorded graphs: {', '.join(names)}")
        names = graphs
    for n in names:  # fail fast, before writing anything, if the object changed since recording
        _module_for(obj, rec.graphs[n])
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
            entry = _export_graph(obj, g, stage, formats, per_graph, opset, compress_to_fp16, openvino_from)
            entries.append(entry)
            if hasattr(bar, "write"):
                size = sum(entry["sizes"].values())
                status = "error: " + entry["error"]["message"][:120] if entry["error"] else f"{size / 1e6:.1f} MB"
                bar.write(f"  {name}: {entry['seconds']:.1f}s, {status}")
        manifest = {"format_version": FORMAT_VERSION, "shapetrace_version": _version(),
                    "object_class": rec.object_class,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "tools": _versions(), "graphs": entries, "parity": None}
        _write_json(stage / MANIFEST, manifest)
        _commit(stage, out)
        committed = True
    finally:
        if not committed:
            shutil.rmtree(stage, ignore_errors=True)
    result = ExportResult(out, MappingProxyType({e["name"]: GraphExport(e["name"], MappingProxyType(e["files"]), e,
                                                                        _error_text(e)) for e in entries}),
                          manifest)
    if verify and any(e["error"] is None for e in entries):
        from .verify import verify as run_verify

        report = run_verify(out, obj, **verify_kwargs)
        manifest = json.loads((out / MANIFEST).read_text())
        result = ExportResult(out, result.graphs, manifest, report)
    return result


def _error_text(entry: Mapping[str, Any]) -> str | None:
    err = entry.get("error")
    return None if err is None else f"{err['type']}: {err['message']}"


def _version() -> str:
    from . import __version__

    return __version__


def _progress(names: Sequence[str], enabled: bool) -> Any:
    if not enabled:
        return names
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return names
    return tqdm(names, unit="graph", leave=True, bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}]")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, default=_json_value)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _commit(stage: Path, out: Path) -> None:
    """Move the staged files to their final names; files of an earlier export go first, the manifest last."""
    old_manifest = out / MANIFEST
    old_files: set[str] = set()
    if old_manifest.exists():
        try:
            for e in json.loads(old_manifest.read_text()).get("graphs", []):
                for v in (e.get("files") or {}).values():
                    for f in (v if isinstance(v, list) else [v]):
                        if isinstance(f, str):
                            old_files.add(f)
                            if f.endswith(".xml"):
                                old_files.add(f[:-4] + ".bin")
        except (OSError, ValueError):
            pass
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
