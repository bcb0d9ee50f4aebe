"""The writers of one graph's model files: ONNX (from the ``torch.export`` program) and OpenVINO IR (from the
ONNX file, or from the torch module for big graphs), each with the manifest's dim names written in.

:func:`write_onnx` runs ``torch.onnx.export`` on the exported program (dynamo exporter; the TorchScript exporter as
a per-graph fallback, noted in ``tools``), names the dims in memory, keeps the weights of graphs above
:data:`ONNX_EXTERNAL_DATA_ABOVE_BYTES` in external data and checks the file with ``onnx.checker`` (path based, so
beyond 2 GB works). :func:`write_openvino` converts and saves the IR (``compress_to_fp16`` off unless asked).

When neither ONNX exporter can translate a graph (complex-valued intermediates such as rotary embeddings computed
with ``torch.view_as_complex`` / ``torch.polar``: ONNX has no complex tensors), :func:`write_onnx_or_skip` leaves no
ONNX file, says why in the manifest's ``tools["no_onnx"]``, and the IR is converted from the torch module instead:
the graph degrades to OpenVINO only rather than failing.
"""

from __future__ import annotations

import contextlib
import gc
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from . import dims as dims_mod
from . import onnx_checks
from .._core import diskspace
from .._core.optional import require
from .._core.caches import export_patches, onnx_translations
from .._core.phases import phase
from ..errors import ExportError
from .flat import ExportPlan

__all__ = ["write_onnx", "write_onnx_or_skip", "write_openvino", "versions", "require", "complex_ops",
           "ONNX_EXTERNAL_DATA_ABOVE_BYTES", "OPENVINO_FROM_TORCH_ABOVE_BYTES"]


def versions() -> dict[str, str | None]:
    """Versions of the tools an export depends on (None when not installed)."""
    out: dict[str, str | None] = {}
    for pkg in ("torch", "onnx", "onnxscript", "onnxruntime", "openvino", "diffusers", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out



@phase("rename dims (onnx load+save)")
def _rename_onnx_dims(path: Path, symbols: Mapping[str, str], input_shapes: Mapping[str, list],
                      output_shapes: Mapping[str, list]) -> int:
    """Write our dim names into the ONNX graph's inputs / outputs; returns the opset."""
    onnx = require("onnx", "onnx")
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


@phase("rename dims (in memory)")
def _rename_ir_dims(model: Any, symbols: Mapping[str, str], input_shapes: Mapping[str, list],
                    output_shapes: Mapping[str, list]) -> None:
    """Write our dim names into an in-memory ``onnx_ir`` model (no load / save round trip of the weights)."""
    ir = require("onnx_ir", "onnx")

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


def _lenient_unbacked() -> Any:
    """The ONNX exporter decomposes the program by tracing it again, and there loses track of where a size only
    the data knows (``nonzero``, a boolean mask) was bound: ``PendingUnbackedSymbolNotFound`` for a program
    ``torch.export`` itself traced. Such a binding only places runtime assertions, which ONNX does not carry; torch
    then warns instead (its ``soft_pending_unbacked_not_found_error``), and verify checks the file as always."""
    return torch.fx.experimental._config.patch(soft_pending_unbacked_not_found_error=True)


def _check_translations() -> dict:
    """:mod:`shapetrace._export.onnx_checks`' lowerings (``torch._check_tensor_all``'s op)."""
    require("onnxscript", "onnx")
    return dict(onnx_checks.translations())


def write_onnx(plan: ExportPlan, ep: Any, path: Path, info: dims_mod.DimInfo, opset: int | None) -> dict:
    """The ONNX file of one graph; returns what the manifest's tools note (exporter, translations, fixes).

    Long by design: the exporter chain (dynamo, dynamo with transformers' lowerings, TorchScript) and the file
    fixes after it are one sequence whose every step reads the one before."""
    onnx = require("onnx", "onnx")
    require("onnxscript", "onnx")
    tools: dict[str, Any] = {}
    try:
        if ep is None:  # no torch.export program (tracing.trace): only the TorchScript exporter can do it
            raise ExportError("torch.export could not trace this graph")
        try:
            with _lenient_unbacked(), phase("torch.onnx.export"):
                prog = torch.onnx.export(ep, (), dynamo=True, input_names=list(plan.input_names),
                                         output_names=list(plan.output_names), opset_version=opset, optimize=True,
                                         verbose=False, custom_translation_table=_check_translations())
        except MemoryError:
            raise
        except Exception:  # ops torchlib lowers wrongly or not at all: transformers.exporters' own lowerings
            table = onnx_translations()
            if not table:
                raise
            with _lenient_unbacked(), phase("torch.onnx.export"):
                prog = torch.onnx.export(ep, (), dynamo=True, input_names=list(plan.input_names),
                                         output_names=list(plan.output_names), opset_version=opset, optimize=True,
                                         verbose=False, custom_translation_table={**table, **_check_translations()})
            tools["onnx_translations"] = "transformers.exporters"
        tools["onnx_exporter"] = "torch.onnx.export(dynamo=True)"
    except MemoryError:
        raise
    except Exception as e:  # documented fallback: the TorchScript exporter for this graph
        prog = None
        tools["onnx_exporter"] = "torch.onnx.export(dynamo=False)"
        tools["onnx_dynamo_error"] = _root_cause(e)
        dynamic_axes = {n: {d: s for d, s in enumerate(shape) if isinstance(s, str)}
                        for n, shape in {**info.input_shapes, **info.output_shapes}.items()}
        try:
            with phase("torch.onnx.export"):
                torch.onnx.export(plan.module, plan.args, str(path), dynamo=False, input_names=list(plan.input_names),
                                  output_names=list(plan.output_names), dynamic_axes=dynamic_axes,
                                  opset_version=opset or 17)
        except MemoryError:
            raise
        except Exception as ts:
            raise ExportError(_no_exporter(ep, tools["onnx_dynamo_error"], ts)) from ts
    if prog is not None:
        _rename_ir_dims(prog.model, info.symbols, info.input_shapes, info.output_shapes)
        dropped, assumed = _drop_noop_squeezes(prog.model, {n: int(d["example"]) for n, d in info.dims.items()})
        if dropped:
            tools["onnx_noop_squeezes_removed"] = dropped
        if assumed:  # as in the traced program: these dims are never 1 (graph_export adds the constraints)
            tools["onnx_squeeze_assumes_not_one"] = sorted(assumed)
        if rewritten := _bool_where_as_logic(prog.model):
            tools["onnx_bool_where_rewritten"] = rewritten
        # weights of large graphs go to external data next to the file (<graph>.onnx.data): a single-file proto is
        # serialised and later re-read whole (checker, OpenVINO), which costs its size again in memory
        large = sum(p.numel() * p.element_size() for p in plan.module.parameters()) > ONNX_EXTERNAL_DATA_ABOVE_BYTES
        with phase("ONNXProgram.save"):
            prog.save(str(path), external_data=True if large else None)
        opset_found = prog.model.opset_imports.get("", None)
        del prog
        tools["opset"] = int(opset_found) if opset_found is not None else -1
    else:
        tools["opset"] = _rename_onnx_dims(path, info.symbols, info.input_shapes, info.output_shapes)
    gc.collect()
    with phase("onnx.checker"):
        onnx.checker.check_model(str(path))
    return tools


def _name_ports(model: Any, input_names: Sequence[str], output_names: Sequence[str]) -> Any:
    """The IR (returned: possibly a new model) with its tensors named as the manifest names the graph's inputs and
    outputs. An output that is an input passed through (a multimodal prompt graph returning the features it was
    given) would be the input's own tensor, and one name would replace the other in the file: it gets a copy of its
    own (a same-type Convert) and a fresh Result to carry its name."""
    import openvino as ov

    for port, name in zip(model.inputs, input_names):
        port.get_tensor().set_names({name})
    results, rebuilt = [], False
    for result, name in zip(model.get_results(), output_names):
        source = result.input_value(0)
        if source.get_node().get_type_name() == "Parameter":
            copy = ov.opset13.convert(source, source.get_element_type())
            copy.output(0).get_tensor().set_names({name})
            result, rebuilt = ov.opset13.result(copy), True
        else:
            result.output(0).get_tensor().set_names({name})
        results.append(result)
    if not rebuilt:
        return model
    return ov.Model(results, list(model.get_parameters()), model.get_friendly_name())


def _drop_noop_squeezes(model: Any, examples: Mapping[str, int] | None = None) -> tuple[int, set[str]]:
    """Remove the ``Squeeze`` nodes whose axes are not 1: a fixed size other than 1, or a named dim recorded at
    another size (torch.export traces dynamic dims as never 1, so ``squeeze(dim)`` is a no-op in its program, but
    the exporter writes a Squeeze that ONNX Runtime refuses: "Dimension of input 1 must be 1 instead of 16").
    Returns how many were removed and the dim names assumed not 1 (the caller adds ``name != 1`` constraints)."""
    ir = require("onnx_ir", "onnx")
    dropped, assumed = 0, set()
    for node in list(model.graph):
        if node.op_type != "Squeeze" or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        axes, shape = node.inputs[1].const_value, node.inputs[0].shape
        if axes is None or shape is None:
            continue
        sizes = [shape[int(a) % len(shape)] for a in axes.numpy().reshape(-1)]
        names = {getattr(d, "value", None) for d in sizes if not isinstance(d, int)}
        if not sizes or any(isinstance(d, int) and d == 1 for d in sizes) or \
                any(n is None or (examples or {}).get(n, 1) == 1 for n in names):
            continue  # a dim that is (or was recorded) 1 is really squeezed
        out = node.outputs[0]
        if out in model.graph.outputs:
            continue
        axes_value = node.inputs[1]
        ir.convenience.replace_all_uses_with(out, node.inputs[0])
        model.graph.remove(node, safe=True)
        if not axes_value.uses() and model.graph.initializers.get(axes_value.name) is axes_value:
            del model.graph.initializers[axes_value.name]
        dropped += 1
        assumed |= names
    return dropped, assumed


def _bool_where_as_logic(model: Any) -> int:
    """``Where(c, x, y)`` on bool tensors (``masked_fill`` of a bool mask) as ``Or(And(c, x), And(Not(c), y))``:
    ONNX allows bool there, ONNX Runtime's CPU kernel does not ("Could not find an implementation for Where(16)")
    and refuses to load the file. Same values, ops every runtime has. Returns how many were rewritten."""
    ir = require("onnx_ir", "onnx")
    count = 0
    for node in list(model.graph):
        if node.op_type != "Where" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 3 or \
                any(v is None or v.dtype != ir.DataType.BOOL for v in node.inputs):
            continue
        c, x, y = node.inputs
        keep = ir.Node("", "And", [c, x], name=f"{node.name}_then")
        other = ir.Node("", "Not", [c], name=f"{node.name}_not")
        alt = ir.Node("", "And", [other.outputs[0], y], name=f"{node.name}_else")
        both = ir.Node("", "Or", [keep.outputs[0], alt.outputs[0]], name=f"{node.name}_or")
        out = node.outputs[0]
        new = both.outputs[0]
        new.dtype, new.shape = out.dtype, out.shape
        model.graph.insert_before(node, [keep, other, alt, both])
        is_output = out in model.graph.outputs
        name = out.name
        ir.convenience.replace_all_uses_with(out, new, replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        if is_output:
            new.name = name
        count += 1
    return count


def complex_ops(ep: Any) -> list[str]:
    """The distinct ops of a ``torch.export`` program that produce complex-valued tensors (empty if none), and its
    complex buffers / constants as ``"buffer <name>"``."""
    found: dict[str, None] = {}
    for node in ep.graph.nodes:
        vals = node.meta.get("val")
        if not any(isinstance(v, torch.Tensor) and v.is_complex()
                   for v in (vals if isinstance(vals, (list, tuple)) else [vals])):
            continue
        if node.op == "call_function":
            packet = getattr(node.target, "overloadpacket", None)
            found.setdefault(getattr(packet, "__name__", None) or str(node.target))
        elif node.op == "placeholder":
            found.setdefault(f"buffer {node.name.removeprefix('b_').removeprefix('c_')}")
    return sorted(found, key=lambda k: k.startswith("buffer "))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(text: str, limit: int = 300) -> str:
    line = _ANSI.sub("", str(text)).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _root_cause(e: BaseException) -> str:
    """The exception and, when it wraps another (torch.onnx's ConversionError around the op that failed), the
    innermost cause: the banner alone says only which step failed."""
    inner = e
    while inner.__cause__ is not None and inner.__cause__ is not inner:
        inner = inner.__cause__
    text = f"{type(e).__name__}: {_one_line(str(e), 200)}"
    if inner is not e:
        text += f" <- {type(inner).__name__}: {' '.join(_ANSI.sub('', str(inner)).split())[:400]}"
    return text


def _no_exporter(ep: Any, dynamo_error: str, ts: BaseException) -> str:
    ops = complex_ops(ep) if ep is not None else []
    why = (f"the graph computes complex-valued tensors ({', '.join(ops[:8])}{', ...' if len(ops) > 8 else ''}), "
           f"which ONNX cannot represent" if ops else "neither ONNX exporter could translate the graph")
    return (f"{why}; dynamo exporter: {_one_line(dynamo_error)}; TorchScript exporter: "
            f"{type(ts).__name__}: {_one_line(str(ts))}")


def write_onnx_or_skip(plan: ExportPlan, ep: Any, path: Path, info: dims_mod.DimInfo, opset: int | None,
                       tools: dict[str, Any], can_skip: bool) -> Path | None:
    """:func:`write_onnx` into ``tools``; returns ``path``, or None when the ONNX step failed and ``can_skip``
    (the caller then converts the IR from the torch module): no ONNX file is left and ``tools["no_onnx"]`` says
    why. A missing package, running out of memory or a file-system error still raise."""
    try:
        tools.update(write_onnx(plan, ep, path, info, opset))
        return path
    except (MemoryError, ImportError):
        raise
    except Exception as e:
        diskspace.raise_if_full(e, path.parent, path.name)
        if not can_skip or isinstance(e, OSError):
            raise
        for f in path.parent.glob(f"{path.name}*"):  # a half-written file, its external data
            f.unlink()
        reason = str(e) if isinstance(e, ExportError) else f"{type(e).__name__}: {str(e).strip()[:500]}"
        tools["no_onnx"] = f"ONNX export failed: {reason}"[:1500]
        tools["onnx_exporter"] = None
        return None


#: Graphs with more fp32 weights than this convert to IR from the torch module (weights shared, no copy); smaller
#: ones from the ONNX file just written (a few times faster). See docs/export.md, "Which source for OpenVINO".
OPENVINO_FROM_TORCH_ABOVE_BYTES = 1 << 30


def write_openvino(onnx_path: Path | None, plan: ExportPlan, xml_path: Path, compress_to_fp16: bool,
                   source: str = "auto", weights_bytes: int = 0, ep: Any = None,
                   onnx_on_demand: Callable[[], Path] | None = None) -> dict:
    """Convert one graph to ``xml_path`` from ``source``: ``"onnx"`` (the file just written), ``"torch"`` (the torch
    module, traced by OpenVINO's PyTorch frontend with TorchScript), ``"program"`` (``ep``, the graph's
    ``torch.export`` program: no second trace), ``"torch-patched"`` (the torch module under
    ``transformers.exporters``' OpenVINO patches: a mixture-of-experts router, FFTs and other ops the frontend has
    no rule for, swapped for convertible equivalents while it traces), or ``"auto"``: the preferred one of the first
    two, then the other, then the program, then the patched trace; every source that failed is noted
    (``openvino_from_<source>_error``). Without ``onnx_path``, ``onnx_on_demand`` (IR only:
    :class:`shapetrace._export.onnx_source.OnnxOnDemand`) writes an ONNX file to convert from when ``"onnx"`` is
    tried, which ``"auto"`` does last (a whole second export: no file is written when another source works).
    Returns the tools."""
    ov = require("openvino", "openvino")
    if source == "auto":
        first = "onnx" if onnx_path is not None and weights_bytes <= OPENVINO_FROM_TORCH_ABOVE_BYTES else "torch"
        order = [first, *(x for x in ("onnx", "torch") if x != first and (x != "onnx" or onnx_path is not None)),
                 *(["program"] if ep is not None else []), "torch-patched",
                 *(["onnx"] if onnx_path is None and onnx_on_demand is not None else [])]
        errors: dict[str, str] = {}
        raised: Exception | None = None
        for x in order:
            try:
                return {**write_openvino(onnx_path, plan, xml_path, compress_to_fp16, x, weights_bytes, ep,
                                         onnx_on_demand), **errors}
            except (MemoryError, ImportError, OSError):
                raise
            except Exception as e:
                diskspace.raise_if_full(e, xml_path.parent, f"{xml_path.name} (OpenVINO, from {x})",  # "iostream error"
                                        int(weights_bytes * (0.5 if compress_to_fp16 else 1)))
                errors[f"openvino_from_{x.replace('-', '_')}_error"] = \
                    f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
                raised = e if raised is None or x == "torch" else raised
        assert raised is not None
        raise ExportError(f"OpenVINO could not convert this graph from any source ({', '.join(order)}): "
                          + "; ".join(f"{k.removeprefix('openvino_from_').removesuffix('_error')}: {v[:300]}"
                                      for k, v in errors.items())) from raised
    if source == "onnx" and onnx_path is None:
        if onnx_on_demand is None:
            raise ExportError("openvino_from='onnx' needs the ONNX file: keep 'onnx' in formats")
        onnx_path = onnx_on_demand()
    if source == "onnx":
        # read_model, not convert_model(str): the latter splits a path on commas
        with phase("openvino.Core.read_model"):
            model = ov.Core().read_model(str(onnx_path))
    elif source == "program":
        if ep is None:
            raise ExportError("openvino_from='program' needs the graph's torch.export program")
        with phase("openvino.convert_model"):
            model = ov.convert_model(ep)
        if len(model.inputs) != len(plan.input_names) or len(model.outputs) != len(plan.output_names):
            raise ExportError(f"the IR converted from the exported program has {len(model.inputs)} inputs / "
                              f"{len(model.outputs)} outputs, the graph {len(plan.input_names)} / "
                              f"{len(plan.output_names)}")
        model = _name_ports(model, plan.input_names, plan.output_names)
    else:
        shapes = [(shape, dtype) for _, shape, dtype in plan.openvino_input]
        with export_patches("openvino") if source == "torch-patched" else contextlib.nullcontext(), \
                phase("openvino.convert_model"):
            model = ov.convert_model(plan.module, example_input=plan.args, input=shapes)
        model = _name_ports(model, plan.input_names, plan.output_names)
    with phase("openvino.save_model"):
        ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    del model
    return {"openvino_from": source, "compress_to_fp16": compress_to_fp16}
