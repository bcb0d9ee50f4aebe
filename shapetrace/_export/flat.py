"""The flat view of one recorded graph, which every exporter and runtime works with.

A graph's real call takes nested args / kwargs and returns nested outputs (``UNet2DConditionOutput``, tuples of
residuals). :class:`FlatModule` wraps the module so that ``forward(*tensors)`` takes the tensor leaves in order and
returns the output tensor leaves in order, under their flat names; non-tensor arguments are frozen to their
recorded values. :func:`prepare` turns a recorded graph into an :class:`ExportPlan` (the flat module, example
args, ``dynamic_shapes`` for ``torch.export``, ``input=`` for ``openvino.convert_model``); :func:`flat_module`
wraps a live module for a manifest :class:`~shapetrace.manifest.GraphEntry` (verify's and load's PyTorch side).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import dims as dims_mod
from .._core import inplace, tree
from .._core.phases import phase
from ..errors import ExportError, FlattenError, RecordingError
from ..manifest import GraphEntry
from .._record.proxy import recording_for
from .._record.recording import GraphRecord, Recording, TensorSpec, dtype_name
from .._core.standin import StandIn
from .jittrace import traced_as_run
from .portable import portable_ops
from .._core.walker import parse_path, resolve

__all__ = ["FlatModule", "ExportPlan", "MissingOutputsError", "prepare", "flat_module", "module_for", "recording_of",
           "weights_dtype", "without_outputs"]


class MissingOutputsError(ExportError):
    """The wrapped call returned without some recorded outputs (``names``): under TorchScript tracing, some
    transformers models build no KV cache (``use_cache and not torch.jit.is_tracing()``)."""

    def __init__(self, names: Sequence[str], got: Sequence[str]) -> None:
        super().__init__(f"output {names[0]!r} is missing from this call's output (got {', '.join(got)})")
        self.names = tuple(names)


class FlatModule(torch.nn.Module):
    """``forward(*tensors)`` in ``input_names`` order -> tuple of output tensors in ``output_names`` order.

    Rebuilds the original args / kwargs (constants and opaque values frozen to the recorded ones), calls the
    recorded method of ``module`` and flattens its output.
    """

    def __init__(self, module: torch.nn.Module, method: str, input_tree: Mapping[str, Any],
                 input_names: Sequence[str], output_names: Sequence[str], output_fields: Sequence[str] | None,
                 frozen: Mapping[str, Any] | None = None, complex_inputs: Sequence[str] = ()) -> None:
        super().__init__()
        self.module = module
        self.training = module.training  # exporters restore the wrapper's mode (recursively) after an eval() pass
        self.method = method
        self.input_tree = dict(input_tree)
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.output_fields = list(output_fields) if output_fields else None
        self._frozen = dict(frozen or {})
        self.complex_inputs = frozenset(complex_inputs)  # taken in their view_as_real form (runtimes lack complex)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaves = dict(self._frozen)
        leaves.update(zip(self.input_names, tensors))
        for n in self.complex_inputs:
            leaves[n] = torch.view_as_complex(leaves[n].contiguous())
        values = tree.call_values(self.input_tree, leaves)
        args, kwargs = tree.split_call(self.input_tree, leaves, values)
        fn = self.module if self.method == "forward" else getattr(self.module, self.method)
        with traced_as_run(), portable_ops():
            output = fn(*args, **kwargs)
        _, flat = tree.flatten_output(output, self.output_fields)
        slots = [n[len(inplace.UPDATED):] for n in self.output_names if n.startswith(inplace.UPDATED)]
        if slots:  # what the call left in its arguments' slots (filled in place; possibly the input itself)
            now = inplace.slot_values([(n, v) for n, _k, v in values], slots)
            flat.update({inplace.UPDATED + n: t for n, t in now.items() if isinstance(t, torch.Tensor)})
        missing = [n for n in self.output_names if n not in flat]
        if missing:
            raise MissingOutputsError(missing, list(flat))
        return tuple(flat[n] for n in self.output_names)


def _np_dtype(dtype: torch.dtype) -> Any:
    return {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.float32,
            torch.float64: np.float64, torch.int64: np.int64, torch.int32: np.int32, torch.int8: np.int8,
            torch.uint8: np.uint8, torch.bool: np.bool_}.get(dtype, np.float32)


@dataclass(frozen=True)
class ExportPlan:
    """Everything needed to export one graph with any tool (see docs/export.md, "For other tools").

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
    complex_inputs: tuple[str, ...] = ()  # complex inputs, taken (and listed in ``args``) as their view_as_real

    @property
    def openvino_input(self) -> list[tuple[str, list[int], Any]]:
        """``input=`` for ``openvino.convert_model``: (name, shape with -1 for dynamic dims, numpy dtype)."""
        out = []
        for name, arg in zip(self.input_names, self.args):
            dyn = self.candidates.get(name, {})
            out.append((name, [-1 if d in dyn else int(s) for d, s in enumerate(arg.shape)], _np_dtype(arg.dtype)))
        return out


def module_for(obj: Any, g: GraphRecord) -> torch.nn.Module:
    try:
        _, _, module = resolve(obj, parse_path(g.module_path))
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise ExportError(f"graph {g.name!r}: no module at {g.module_path!r} in this {type(obj).__name__} any more "
                          f"({e}); record the object again") from e
    if issubclass(type(module), StandIn):
        raise ExportError(f"graph {g.name!r}: export_all() was called inside the record() block; call it after")
    if tree.qualname(type(module)) != g.module_class:
        raise ExportError(f"graph {g.name!r}: the module at {g.module_path!r} is now a "
                          f"{type(module).__name__}, but a {g.module_class.rsplit(':', 1)[-1]} was recorded; "
                          f"record the object again")
    return module


@phase("prepare")
def prepare(obj: Any, graph: str | GraphRecord, recording: Recording | None = None,
            dynamic: Any = "auto", keep_static: Mapping[str, Any] | None = None,
            grow: Mapping[str, Any] | None = None) -> ExportPlan:
    """The :class:`ExportPlan` of one recorded graph of ``obj`` (the live object the recording was made on).

    ``grow``: ``{input: {dim: n}}`` traced n longer (their last slice repeated), beside the size-1 dims traced at 2.
    ``keep_static``: ``{input: dims}`` left static whatever ``dynamic`` asks (export uses it for a size-1 dim that
    only broadcasts, which tracing at 2 would tie to a real dim).

    Long by design: the plan's fields are built in one pass, each from the ones before it (inputs, dims, grown
    examples, dynamic shapes, OpenVINO's input list)."""
    if not isinstance(graph, GraphRecord):
        rec = recording if recording is not None else recording_of(obj)
        graph = rec[graph]
    g = graph
    module = module_for(obj, g)
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
        specs[n] = TensorSpec(tuple(examples[n].shape), examples[n].dtype)
    complex_inputs = [n for n in input_names if examples[n].is_complex()]
    for n in complex_inputs:  # ONNX and OpenVINO have no complex inputs: (..., 2) real, the last dim static
        examples[n] = torch.view_as_real(examples[n].resolve_conj()).contiguous()
        s = specs[n]
        specs[n] = TensorSpec((*s.shape, 2), examples[n].dtype, s.device, None,
                              tuple((*sh, 2) for sh in s.shapes_seen), s.varying_dims)
    candidates = dims_mod.candidate_dims({n: specs[n] for n in input_names}, dynamic,
                                         tree.cache_tensor_names(input_tree))
    for n, dims in (keep_static or {}).items():
        for d in dims:
            candidates.get(n, {}).pop(d, None)
    _follow_dims(input_tree, candidates, examples, specs)
    args = []
    for n in input_names:
        t = examples[n]
        for d in candidates.get(n, {}):
            if t.shape[d] == 1:  # torch.export specialises size-1 dims: trace with 2, the graph stays general
                t = torch.cat([t, t], dim=d)
            elif (more := (grow or {}).get(n, {}).get(d, 0)) > 0:  # a dim that follows size-1 ones (a mask
                t = torch.cat([t, t.narrow(d, t.shape[d] - 1, 1).expand(  # as long as cache + tokens): longer
                    *t.shape[:d], more, *t.shape[d + 1:])], dim=d)
        args.append(t)
    output_keys = list(g.outputs)
    # ONNX needs unique value names: an output called like an input (unet: sample -> sample) is "output.sample"
    taken = set(input_names)
    output_names = [f"output.{k}" if k in taken else k for k in output_keys]
    fields = dict(g.output_tree).get("fields")
    flat = FlatModule(module, g.method, input_tree, input_names, output_keys, fields, frozen, complex_inputs)
    # forward(*tensors) has one (var-positional) parameter: its dynamic_shapes entry is the tuple of per-input specs
    dyn = (tuple({d: torch.export.Dim.AUTO for d in candidates.get(n, {})} or None for n in input_names),)
    return ExportPlan(g.name, flat, tuple(args), dyn, tuple(input_names), tuple(output_names),
                      MappingProxyType(candidates), MappingProxyType({n: examples[n] for n in input_names}),
                      tuple(promoted), tuple(output_keys), tuple(complex_inputs))


def flat_module(module: torch.nn.Module, entry: GraphEntry) -> FlatModule:
    """The flat wrapper for a manifest graph entry around a live ``module`` (used by verify / load)."""
    # opaque arguments (a torch.Generator) were recorded by type only: they are passed as None
    frozen = {k: None for k, v in tree.constants_of(entry.input_tree).items()
              if isinstance(v, str) and v.startswith("<")}
    return FlatModule(module, entry.method, entry.input_tree, entry.input_names, [o.key for o in entry.outputs],
                      entry.output_tree.get("fields"), frozen, entry.complex_inputs)


def without_outputs(plan: ExportPlan, output_tree: Mapping[str, Any], names: set[str]) -> tuple[ExportPlan, dict]:
    """``plan`` and ``output_tree`` without the outputs ``names``: each cache object (a node flagged ``cache``)
    whose tensors are all among them becomes the constant None in the tree, and its tensors leave the plan.
    Returns the plan unchanged when ``names`` are not whole cache objects."""
    dropped: set[str] = set()

    def walk(node: dict) -> dict:
        leaves = tree.tensor_names(node) if node.get("cache") else []
        if leaves and set(leaves) <= names:
            dropped.update(leaves)
            return {"t": "const", "type": "NoneType", "value": None, "dropped": True}
        out = dict(node)
        if "items" in node:
            out["items"] = [walk(c) for c in node["items"]]
        return out

    spec = walk(json.loads(json.dumps(dict(output_tree))))
    if dropped != names:
        return plan, dict(output_tree)
    keep = [i for i, k in enumerate(plan.output_keys) if k not in dropped]
    m = plan.module
    module = FlatModule(m.module, m.method, m.input_tree, m.input_names, [m.output_names[i] for i in keep],
                        m.output_fields, m._frozen, m.complex_inputs)
    return dataclasses.replace(plan, module=module, output_names=tuple(plan.output_names[i] for i in keep),
                               output_keys=tuple(plan.output_keys[i] for i in keep)), spec


def _promote_varying_scalars(input_tree: dict, g: GraphRecord, examples: dict) -> list[str]:
    """Scalar arguments whose value changed across calls become 0-d tensor inputs instead of frozen constants."""
    promoted: list[str] = []
    for name, node in list(tree.spec_leaves(input_tree)):
        if node["t"] == "const" and name in g.varying_constants and node["type"] in ("int", "float"):
            examples[name] = torch.tensor(node["value"], dtype=torch.float32 if node["type"] == "float" else torch.int64)
            node.clear()
            node.update({"t": "tensor", "name": name})
            promoted.append(name)
    return promoted


def _follow_dims(input_tree: dict, candidates: Mapping[str, Mapping[int, str | None]],
                 examples: Mapping[str, torch.Tensor], specs: Mapping[str, Any]) -> None:
    """An int passed as an argument itself (2 or more) equal to dynamic dims of one role only (the prompt's ``sequence``: a decoder's
    ``next_sequence_length=7`` beside ``input_ids[2, 7]``) is exported as that dim's size instead of the frozen
    number (``"follows": "input_ids.1"`` on its node): a later call whose number follows the dim is served, one
    whose number does not is refused (``shapetrace._serve.matching``). A dim that varied across the recorded calls while
    the number stayed (it would have become an input otherwise) proves the number does not follow it."""
    for name, node in tree.spec_leaves(input_tree):
        value = node.get("value")
        if node["t"] != "const" or node["type"] != "int" or not isinstance(value, int) or value < 2 or "." in name:
            continue  # a number held in an object (a cache's counter) comes back from an earlier output: frozen
        found = [(n, d, wanted or dims_mod.role_name(examples[n].dim(), d))
                 for n, dims in candidates.items() for d, wanted in dims.items()
                 if examples[n].shape[d] == value and d not in (getattr(specs.get(n), "varying_dims", None) or ())]
        if found and len({role for _n, _d, role in found}) == 1:
            node["follows"] = f"{found[0][0]}.{found[0][1]}"


def recording_of(obj: Any) -> Recording:
    """The last recording of ``obj``, as an :class:`ExportError` when there is none."""
    try:
        return recording_for(obj)
    except RecordingError as e:
        raise ExportError(str(e)) from None


def weights_dtype(module: torch.nn.Module) -> str | None:
    """The dtype of a module's first floating-point parameter (``float32``), None when it has none."""
    for p in module.parameters():
        if p.is_floating_point():
            return dtype_name(p.dtype)
    return None
