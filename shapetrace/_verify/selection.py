"""Parity where a graph selects among tied scores (``topk`` / ``argmax`` / ``argmin``).

A detector's query selection (``scores.topk(k).indices``, then boxes gathered at them) is not determined by its
inputs when scores tie: random weights give many candidates one exact score, and PyTorch, ONNX Runtime and OpenVINO
each break the tie their own way (ONNX: lower index first; PyTorch's CPU kernel: no promise). Everything gathered at
the selected indices then differs, though every runtime computed the same numbers.

The rule (see docs/verify.md): an output that fails against PyTorch is re-judged only when

1. PyTorch's own run of the graph split exact ties in some selection (a ``topk`` whose k-th score also occurs among
   the candidates left out, or whose selected scores repeat; a ``sort`` / ``argsort`` of repeated scores, which
   ONNX writes as a ``TopK`` of every candidate; an ``argmax`` / ``argmin`` whose extreme occurs twice):
   :func:`recorded_selections` records every such call (a ``TorchFunctionMode``), and
2. the graph's ONNX file, run on ONNX Runtime with each selection node's indices (and values) **replaced by
   PyTorch's** (:func:`forced_outputs`), gives every output within tolerance of PyTorch: with the same choice, the
   graph computes what PyTorch computes, before and after the selection;
3. and the backend's own output equals ONNX Runtime's unforced run of the same file (same inputs, ties broken the
   ONNX way): the backend computes what that file computes.

Then the check passes and a note says how many ties each selection split. A real mismatch anywhere (scores, the
gather, what follows) fails step 2 or 3. Without an ONNX file, or when the graph's selection nodes do not line up
with PyTorch's calls (count and kind, in order), the check stays failed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ..backends.base import by_name_or_position, cast_feed
from .compare import OutputComparison, Tolerance, compare_arrays

__all__ = ["Selection", "TiedRuns", "recorded_selections", "ties", "forced_outputs", "forced_openvino", "tied_runs",
           "rejudged", "SELECTION_OPS"]

#: ONNX op type -> the torch call it comes from
SELECTION_OPS = {"TopK": "topk", "ArgMax": "argmax", "ArgMin": "argmin"}
_TORCH = {torch.topk: "topk", torch.Tensor.topk: "topk", torch.argmax: "argmax", torch.Tensor.argmax: "argmax",
          torch.argmin: "argmin", torch.Tensor.argmin: "argmin",
          # a sort is a TopK of every candidate in ONNX (and so a selection node to line up with)
          torch.sort: "sort", torch.Tensor.sort: "sort", torch.argsort: "argsort", torch.Tensor.argsort: "argsort"}


@dataclasses.dataclass(frozen=True)
class Selection:
    """One selection PyTorch made: its kind, the scores it ranked, what it chose, and how many ties it split."""

    kind: str  # "topk" / "argmax" / "argmin"
    scores: np.ndarray
    indices: np.ndarray
    values: np.ndarray | None  # topk's selected scores
    ties: int


class _Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Selection] = []

    def __torch_function__(self, func: Callable, types: Any, args: Sequence = (), kwargs: Mapping | None = None):
        kwargs = dict(kwargs or {})
        out = func(*args, **kwargs)
        kind = _TORCH.get(func)
        if kind is not None and isinstance(args[0], torch.Tensor):
            self.calls.append(_selection(kind, args, kwargs, out))
        return out


def _selection(kind: str, args: Sequence, kwargs: Mapping, out: Any) -> Selection:
    scores = args[0].detach().float().cpu().numpy()
    if kind in ("sort", "argsort"):  # recorded as the TopK of all candidates it is in ONNX
        dim = int(args[1] if len(args) > 1 and not isinstance(args[1], bool) else kwargs.get("dim", -1))
        indices = (out[1] if kind == "sort" else out).cpu().numpy()
        values = np.take_along_axis(scores, indices, axis=dim)
        return Selection("topk", scores, indices, values, _topk_ties(scores, values, scores.shape[dim], dim))
    if kind == "topk":
        k = int(args[1] if len(args) > 1 else kwargs["k"])
        dim = int(args[2] if len(args) > 2 else kwargs.get("dim", -1))
        values, indices = out[0].detach().float().cpu().numpy(), out[1].cpu().numpy()
        return Selection(kind, scores, indices, values, _topk_ties(scores, values, k, dim))
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    indices = out.cpu().numpy()
    return Selection(kind, scores, indices, None, _extreme_ties(scores, kind, dim))


def _topk_ties(scores: np.ndarray, values: np.ndarray, k: int, dim: int) -> int:
    """Rows whose choice is a tie-break: the k-th score occurs among the candidates left out, or a selected score
    repeats (its order is then arbitrary)."""
    s, v = np.moveaxis(scores, dim, -1).reshape(-1, scores.shape[dim]), np.moveaxis(values, dim, -1).reshape(-1, k)
    count = 0
    for row, chosen in zip(s, v):
        if not k or not len(row):
            continue
        kth = chosen[-1] if chosen[0] >= chosen[-1] else chosen[0]
        split = np.count_nonzero(row == kth) > np.count_nonzero(chosen == kth)
        count += int(split or len(np.unique(chosen)) < k)
    return count


def _extreme_ties(scores: np.ndarray, kind: str, dim: Any) -> int:
    s = scores.reshape(1, -1) if dim is None else np.moveaxis(scores, int(dim), -1).reshape(-1, scores.shape[int(dim)])
    best = s.max(axis=-1, keepdims=True) if kind == "argmax" else s.min(axis=-1, keepdims=True)
    return int(np.count_nonzero(np.count_nonzero(s == best, axis=-1) > 1))


def recorded_selections(run: Callable[[], Any]) -> tuple[Any, list[Selection]]:
    """``run()``'s result and every selection PyTorch made while it ran, in call order."""
    recorder = _Recorder()
    with recorder:
        result = run()
    return result, recorder.calls


def ties(selections: Sequence[Selection]) -> int:
    return sum(s.ties for s in selections)


def forced_outputs(onnx_path: str | Path, feed: Mapping[str, np.ndarray], output_names: Sequence[str],
                   selections: Sequence[Selection]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """ONNX Runtime's outputs of the file at ``onnx_path`` on ``feed``: (unforced, forced), where forced has each
    selection node's outputs replaced by PyTorch's choice (``selections``, matched to the file's selection nodes in
    order and kind). None when they do not line up."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    nodes = [n for n in model.graph.node if n.op_type in SELECTION_OPS and n.domain in ("", "ai.onnx")]
    if [SELECTION_OPS[n.op_type] for n in nodes] != [s.kind for s in selections]:
        return None
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    unforced = dict(zip(names, session.run(None, dict(feed))))
    forced_feed = dict(feed)
    for i, (node, sel) in enumerate(zip(nodes, selections)):
        given = [sel.values, sel.indices] if node.op_type == "TopK" else [sel.indices]
        for j, (out, value) in enumerate(zip(node.output, given)):
            if not out or value is None:
                continue
            name = f"__selection_{i}_{j}"
            dtype = np.int64 if j == len(given) - 1 else _elem_dtype(model, out, value)
            forced_feed[name] = np.ascontiguousarray(value.astype(dtype))
            model.graph.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(forced_feed[name].dtype), list(value.shape)))
            for other in model.graph.node:
                other.input[:] = [name if x == out else x for x in other.input]
            if any(g_out.name == out for g_out in model.graph.output):  # a selection's own output is an output
                model.graph.node.append(onnx.helper.make_node("Identity", [name], [out]))
        model.graph.node.remove(node)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    forced = dict(zip([o.name for o in session.get_outputs()], session.run(None, forced_feed)))
    return ({n: unforced[n] for n in output_names if n in unforced}, {n: forced[n] for n in output_names if n in forced})


def _elem_dtype(model: Any, name: str, value: np.ndarray) -> Any:
    import onnx

    for vi in [*model.graph.value_info, *model.graph.output]:
        if vi.name == name and vi.type.tensor_type.elem_type:
            return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    return value.dtype


def forced_openvino(xml_path: str | Path, feed: Mapping[str, np.ndarray], output_names: Sequence[str],
                    selections: Sequence[Selection]) -> dict[str, np.ndarray] | None:
    """OpenVINO's outputs (f32) of the IR at ``xml_path`` on ``feed`` with each ``TopK`` node's outputs replaced by
    PyTorch's ``topk`` choice (matched in order). None unless every selection is a ``topk`` and the IR has as many
    ``TopK`` nodes (an ``argmax`` becomes a ``TopK`` of one plus a squeeze there: not forced)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml_path))
    tops = [op for op in model.get_ordered_ops() if op.get_type_name() == "TopK"]
    if len(tops) != len(selections) or any(s.kind != "topk" for s in selections):
        return None
    out_index = by_name_or_position(output_names, [set(p.get_names()) for p in model.outputs], "output", str(xml_path))
    params, forced_feed = [], {}
    for p in model.inputs:
        name = next((n for n in p.get_names() if n in feed), None)
        if name is None:
            return None
        forced_feed[p.get_any_name()] = cast_feed(feed[name], np.dtype(p.get_element_type().to_dtype()))
    for i, (op, sel) in enumerate(zip(tops, selections)):
        for j, value in enumerate((sel.values, sel.indices)):
            port = op.output(j)
            name = f"__selection_{i}_{j}"
            param = ov.opset13.parameter(list(value.shape), port.get_element_type(), name=name)
            port.replace(param.output(0))
            param.output(0).get_tensor().set_names({name})  # after replace, which hands the port's names over
            params.append(param)
            forced_feed[name] = np.ascontiguousarray(value.astype(port.get_element_type().to_dtype()))
    forced = ov.Model(model.get_results(), [*model.get_parameters(), *params], "forced")
    compiled = core.compile_model(forced, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled({p.get_any_name(): forced_feed[p.get_any_name()] for p in compiled.inputs})
    return {n: np.asarray(result[compiled.outputs[i]]) for n, i in zip(output_names, out_index) if i >= 0}


@dataclasses.dataclass(frozen=True)
class TiedRuns:
    """PyTorch's outputs on one input set, the selections it made, and each backend's forced run (``runs``:
    ``"onnxruntime"``, ``"onnxruntime-unforced"``, ``"openvino"``, where the file could be forced)."""

    reference: Mapping[str, np.ndarray]
    made: Sequence[Selection]
    runs: Mapping[str, Mapping[str, np.ndarray]]
    #: Backends whose file could not be forced, and why (the check then stays as it was judged).
    errors: Mapping[str, str] = dataclasses.field(default_factory=dict)


def tied_runs(run_torch: Callable[[], Mapping[str, np.ndarray]], out: Path, entry: Any,
              feed: Mapping[str, np.ndarray]) -> TiedRuns | None:
    """PyTorch run once more (``run_torch``) with its selections recorded; where one split exact ties, the graph's
    files run with PyTorch's choice forced in. None without ties (or when PyTorch cannot run): nothing to re-judge."""
    try:
        reference, made = recorded_selections(run_torch)
    except Exception:  # a refinement: without it the check stays failed
        return None
    if not ties(made):
        return None
    runs: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if entry.file("onnx"):
        try:
            both = forced_outputs(out / entry.file("onnx"), feed, entry.output_names, made)
            if both is not None:
                runs.update({"onnxruntime-unforced": both[0], "onnxruntime": both[1]})
        except Exception as e:  # noqa: BLE001 -- a refinement: unforced, the check stays as judged
            errors["onnxruntime"] = f"{type(e).__name__}: {e}"
    if entry.file("openvino"):
        try:
            forced = forced_openvino(out / entry.file("openvino"), feed, entry.output_names, made)
            if forced is not None:
                runs["openvino"] = forced
        except Exception as e:  # noqa: BLE001 -- as above
            errors["openvino"] = f"{type(e).__name__}: {e}"
    return TiedRuns(reference, made, runs, errors)


def rejudged(result: OutputComparison, output: str, tied: TiedRuns | None, got: np.ndarray, tol: Tolerance,
             graph: str, backend: str, set_name: str, notes: list[str]) -> OutputComparison:
    """A failed comparison re-judged by the rule (module docstring): this backend's file with PyTorch's choice
    forced in matches PyTorch on every output; or, where OpenVINO's IR cannot be forced, the ONNX file forced in
    does and OpenVINO matches the ONNX file's own choice. Passing adds a note; otherwise ``result`` as it was."""
    if tied is None:
        return result
    forced, unforced = tied.runs.get(backend), None
    if forced is None and backend == "openvino" and tied.runs.get("onnxruntime") is not None:
        forced, unforced = tied.runs["onnxruntime"], tied.runs.get("onnxruntime-unforced")
        if unforced is None or output not in unforced or \
                not compare_arrays(got, unforced[output], atol=tol.atol, rtol=tol.rtol).passed:
            return result
    if forced is None:
        return result
    for name, want in tied.reference.items():
        if name not in forced or not compare_arrays(forced[name], want, atol=tol.atol, rtol=tol.rtol).passed:
            return result
    split = ", ".join(f"{s.kind} {i}: {s.ties} row(s)" for i, s in enumerate(tied.made) if s.ties)
    how = (f"the ONNX file with PyTorch's choice forced in matches PyTorch on every output, and {backend} matches "
           f"that file's own choice" if unforced is not None else
           f"{backend} with PyTorch's choice forced in matches PyTorch on every output")
    notes.append(f"{graph}: output {output!r} on {backend} ({set_name} inputs) differs from PyTorch (max "
                 f"{result.max_abs:.3g}) only through a selection among tied scores ({split} where PyTorch broke "
                 f"exact ties): {how}; passed by the selection rule")
    return dataclasses.replace(result, passed=True, message="")
