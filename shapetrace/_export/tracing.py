"""``torch.export`` of one recorded graph, giving up as few dynamic dims as it can.

:func:`trace` asks for every candidate dim (``dims.candidate_dims``) dynamic. When that export fails, it tries again
with one group of dims static at a time (a group: the dims of one role, such as every ``sequence`` dim), keeping
the first that exports -- but first with the size-1 dims kept at 1 (traced at 2, they can break a relation the
code holds: a decoder step's mask one longer than its cache); only when no single group helps is every dim static.
Then two corrections, each a second trace with some size-1 dims kept at their recorded size 1 instead of being
traced at 2 (the trick against torch.export's 0/1 specialisation): dims that tracing at 2 tied to a dim of another recorded size (they broadcast),
dims the program made static anyway (a branch on ``batch == 2``), which would otherwise be fixed at 2, and dims
named in a guard that the recorded call's own sizes break (a dim that follows the doubled one was not doubled).

Everything given up is written into ``tools``: ``dynamic_error`` (why the full export failed),
``dynamic_given_up`` (the groups made static), ``broadcast_static``, ``size1_static``,
``size1_static_broken_guard`` (size-1 dims named in a guard the recorded call broke when traced at 2),
``size1_static_failed_at_two`` (size-1 dims kept at 1 because the export failed with them traced at 2),
``size1_grown_with`` (kept at 1 they made another dim static, a mask one longer than a cache of 1: traced at 2
again with that dim one or two longer, what was tried before under ``instead_of``),
``torch_export_error``, ``dropped_outputs``, ``widened_loops`` and ``widened_loops_skipped`` (positions left out of
a widened loop because their body raises: a class no expert stands for), ``branches_as_recorded`` (``if`` tests on
tensor data answered as the recorded call answered them, :mod:`shapetrace._export.branches`).

When no export works and the module loops over the result of a ``nonzero()`` (a mixture-of-experts dispatch: one
iteration per expert some token chose, a length known only from the data), the whole sequence above is tried once
more with that loop visiting every position (:mod:`shapetrace._export.loops`), provided the module returns exactly the same
so on the recorded inputs; ``tools.widened_loops`` says so.

A dynamic ``torch.export`` has :data:`DYNAMIC_EXPORT_BUDGET_S` seconds: its symbolic shape reasoning can run for
many minutes on some code (windowed attention's padding arithmetic over a dynamic height and width). Past it, the
graph is exported with every dim static at once (``tools.dynamic_error`` says so); the full-size SD 1.5 UNet's
dynamic export takes 13 s. The budget needs the main thread and a free ``SIGALRM`` (no other timer set); without
them the export runs unbounded, as before.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import torch

from . import branches
from .. import constraints
from . import dims as dims_mod
from . import loops
from .._core import tree
from .._core.caches import export_patches
from .._core.phases import phase
from ..constraints.expr import names as constraint_names
from ..errors import ExportError
from .flat import ExportPlan, MissingOutputsError, prepare, without_outputs
from .._record.recording import GraphRecord

__all__ = ["trace", "export_program", "describe"]


def trace(obj: Any, g: GraphRecord, dynamic: Any, tools: dict[str, Any],
          timings: dict[str, float]) -> tuple[ExportPlan, Any, dims_mod.DimInfo]:
    """The plan, exported program and dim description of graph ``g`` of ``obj`` (see the module docstring).

    When ``torch.export`` cannot trace the module even with every dim static (an op it cannot follow, such as a
    tensor built with numpy in ``forward``), the program is None, every dim is static and ``tools`` says why
    (``torch_export_error``): the files then come from the exporters that trace the module by running it."""
    widen: Any = contextlib.nullcontext
    try:
        plan, ep = _degrading(obj, g, dynamic, {}, tools, timings)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        widened = _widened(obj, g, dynamic, tools, timings, e)
        decided = None if widened is not None else _branches_as_recorded(obj, g, dynamic, tools, timings, e)
        if widened is not None:
            plan, ep, skip = widened
            widen = functools.partial(loops.every_position, skip)
        elif decided is not None:
            plan, ep, answers = decided
            widen = functools.partial(branches.as_recorded, answers)
        else:
            tools["torch_export_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
            plan = _traceable_outputs(prepare(obj, g, dynamic="static"), g, tools)
            shapes = {n: list(a.shape) for n, a in zip(plan.input_names, plan.args)}
            return plan, None, dims_mod.DimInfo(shapes, {}, {}, (), ())
    info = describe(plan, ep)
    broadcast, pinned = _broadcast_ties(info, plan), _pinned_at_two(info, plan)
    broken = _broken_at_recorded(info, plan)
    if broken:  # a guard drawn at 2 refuses the recorded call itself (a mask no longer cache + tokens long)
        tools["size1_static_broken_guard"] = [{"input": n, "dims": sorted(dims)} for n, dims in broken.items()]
        pinned = {n: pinned.get(n, set()) | broken.get(n, set()) for n in {*pinned, *broken}}
    if broadcast:  # a size-1 dim traced at 2 got tied to a real dim it only broadcasts against: keep it at 1
        tools["broadcast_static"] = [{"input": n, "dims": sorted(dims)} for n, dims in broadcast.items()]
    if pinned:  # a size-1 dim traced at 2 came out static: at 2 it would refuse the recorded call; keep it at 1
        tools["size1_static"] = [{"input": n, "dims": sorted(dims)} for n, dims in pinned.items()]
    if broadcast or pinned:
        keep = {n: broadcast.get(n, set()) | pinned.get(n, set()) for n in {*broadcast, *pinned}}
        with widen():
            plan, ep = _degrading(obj, g, dynamic, keep, tools, timings)
        info = describe(plan, ep)
    with widen():
        grown = _grown_with_size1(obj, g, dynamic, plan, info, broadcast, tools, timings)
    return grown if grown is not None else (plan, ep, info)


_PINNED_KEYS = ("size1_static_broken_guard", "size1_static_failed_at_two", "size1_static")


def _grown_with_size1(obj: Any, g: GraphRecord, dynamic: Any, plan: ExportPlan, info: dims_mod.DimInfo,
                      broadcast: Mapping[str, set[int]], tools: dict[str, Any],
                      timings: dict[str, float]) -> tuple[ExportPlan, Any, dims_mod.DimInfo] | None:
    """Size-1 dims kept at 1 made another dim static (an encoder-decoder's first step: a cache of 1, a mask of 2
    that torch.export then fixed at 2): trace the size-1 dims at 2 again with those dims longer, as they follow
    them (one longer, else two: a cache of 1 and 1 token). Kept when the program specialises nothing and its guards
    hold at the recorded sizes; else None."""
    pinned = [x for k in _PINNED_KEYS for x in tools.get(k, ())]
    followers: dict[str, set[int]] = {}
    for s in info.specialized:
        if int(plan.example_inputs[s["input"]].shape[s["dim"]]) != 1:
            followers.setdefault(s["input"], set()).add(int(s["dim"]))
    if not pinned or not followers:
        return None
    for more in (1, 2):  # one size-1 dim doubled (a cache of 1), or two (a cache of 1 and 1 token)
        try:
            grown = prepare(obj, g, dynamic=dynamic, keep_static=broadcast,
                            grow={n: dict.fromkeys(dims, more) for n, dims in followers.items()})
            ep = export_program(grown, timings)
            grown_info = describe(grown, ep)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception:
            continue
        if grown_info.specialized or _broken_at_recorded(grown_info, grown) or _pinned_at_two(grown_info, grown):
            continue
        tools["size1_grown_with"] = {
            "grown": [{"input": n, "dims": sorted(d), "by": more} for n, d in sorted(followers.items())],
            "instead_of": {k: tools.pop(k) for k in _PINNED_KEYS if k in tools}}
        return grown, ep, grown_info
    return None


def _eager_call(obj: Any, g: GraphRecord) -> Callable[[], Any]:
    """One eager call of the module on (fresh copies of) the recorded inputs, as the static plan lays them out."""
    static = prepare(obj, g, dynamic="static")
    return lambda: static.module(*(static.example_inputs[n].clone() for n in static.input_names))


def _widened(obj: Any, g: GraphRecord, dynamic: Any, tools: dict[str, Any], timings: dict[str, float],
             error: Exception) -> tuple[ExportPlan, Any, frozenset[loops.Skip]] | None:
    """The export of a module that loops over a ``nonzero()`` result, with that loop visiting every position
    (:mod:`shapetrace._export.loops`; and the positions it leaves out), when the module returns exactly the same with it so
    on the recorded inputs; else None."""
    run = _eager_call(obj, g)
    try:
        if not loops.iterates_selection(run) or (skip := loops.positions_to_skip(run)) is None:
            return None
        tried: dict[str, Any] = {}
        with loops.every_position(skip):
            plan, ep = _degrading(obj, g, dynamic, {}, tried, timings)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception:
        return None
    tools.pop("dynamic_error", None)
    tools.update(tried)
    tools["widened_loops"] = (f"a loop over a nonzero() result is exported over every position (the module returns "
                              f"exactly the same on the recorded inputs so); as written: {type(error).__name__}: "
                              f"{' '.join(str(error).split())[:200]}")
    if skip:  # positions whose body raised IndexError: never selected by a call the module answers
        tools["widened_loops_skipped"] = [{"line": site, "shape": list(shape), "position": list(at)}
                                          for site, shape, at in sorted(skip)]
    return plan, ep, skip


def _branches_as_recorded(obj: Any, g: GraphRecord, dynamic: Any, tools: dict[str, Any],
                          timings: dict[str, float], error: Exception
                          ) -> tuple[ExportPlan, Any, dict[str, bool]] | None:
    """The export with the tensor truth tests ``torch.export`` cannot decide answered as an eager run answers
    them (:mod:`shapetrace._export.branches`), when the export failed on one; else None."""
    if "DataDependent" not in type(error).__name__:
        return None
    try:
        answers = branches.recorded_answers(_eager_call(obj, g))
        if not any(a is not None for a in answers.values()):
            return None
        tried: dict[str, Any] = {}
        used: set[str] = set()
        with branches.as_recorded(answers, used):
            plan, ep = _degrading(obj, g, dynamic, {}, tried, timings)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 -- the static trace follows; this says why not this way
        notes = "; ".join(getattr(e, "__notes__", ()))
        tools["branches_as_recorded_error"] = (f"{type(e).__name__}{' (' + notes + ')' if notes else ''}: "
                                               f"{' '.join(str(e).split())[:300]}")
        return None
    tools.pop("dynamic_error", None)
    tools.update(tried)
    tools["branches_as_recorded"] = branches.written(answers, used)
    return plan, ep, {site: bool(answers[site]) for site in used}


def _traceable_outputs(plan: ExportPlan, g: GraphRecord, tools: dict[str, Any]) -> ExportPlan:
    """The plan for the exporters that trace the module by running it (TorchScript): some transformers models
    build no KV cache under ``torch.jit.trace`` (``use_cache and not torch.jit.is_tracing()``), so a cache object
    the eager call returned is not in the trace. One probe trace finds out; such outputs leave the graph and the
    output tree holds None there (``tools.dropped_outputs``: load gives None where the recorded call gave the
    cache; a pipeline that reads it fails there, which the end-to-end check shows)."""
    caches = tree.cache_tensor_names(dict(g.output_tree)) & set(plan.output_keys)
    if not caches:
        return plan
    try:
        with torch.no_grad():
            torch.jit.trace(plan.module, plan.args, check_trace=False, strict=False)
        return plan
    except MissingOutputsError as e:
        missing = set(e.names)
    except Exception:  # any other trace failure: the exporters report it
        return plan
    if not missing <= caches:
        return plan
    smaller, _ = without_outputs(plan, g.output_tree, missing)
    if smaller is not plan:
        tools["dropped_outputs"] = {
            "outputs": sorted(missing),
            "why": "the module returns no cache object under TorchScript tracing (torch.export could not trace it: "
                   "torch_export_error); load gives None in its place"}
    return smaller


#: Seconds a dynamic ``torch.export`` may take before the graph is exported static instead (module docstring).
DYNAMIC_EXPORT_BUDGET_S = 180.0


class DynamicExportTimeout(ExportError):
    """A dynamic ``torch.export`` ran past :data:`DYNAMIC_EXPORT_BUDGET_S`."""


@contextlib.contextmanager
def _budget(seconds: float) -> Iterator[None]:
    """Raise :class:`DynamicExportTimeout` in the block after ``seconds`` (SIGALRM), where that is ours to use."""
    free = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM") and \
        signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None) and \
        signal.getitimer(signal.ITIMER_REAL)[0] == 0
    if not free or seconds <= 0:
        yield
        return

    fired: list[bool] = []
    message = (f"torch.export of the dynamic dims ran past {seconds:g} s (its symbolic shape reasoning); exported "
               f"with every dim static instead")

    def expire(signum: int, frame: Any) -> None:
        fired.append(True)
        raise DynamicExportTimeout(message)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if fired:  # raised where torch caught it (a broad except in its dispatch): the export still ran past the budget
        raise DynamicExportTimeout(message)


def export_program(plan: ExportPlan, timings: dict[str, float], dynamic: bool = True) -> Any:
    """``torch.export`` of ``plan`` (its dynamic shapes unless ``dynamic=False``; those within
    :data:`DYNAMIC_EXPORT_BUDGET_S`), timed into ``timings``, under ``transformers.exporters``' tracing patches
    (:func:`shapetrace._core.caches.export_patches`)."""
    t = time.perf_counter()
    bounded = dynamic and any(plan.candidates.values())
    try:
        with _budget(DYNAMIC_EXPORT_BUDGET_S if bounded else 0), torch.no_grad(), export_patches("dynamo"), \
                phase("torch.export"):
            return torch.export.export(plan.module, plan.args,
                                       dynamic_shapes=plan.dynamic_shapes if dynamic else None)
    finally:
        timings["torch_export"] = round(timings.get("torch_export", 0.0) + time.perf_counter() - t, 3)


def _degrading(obj: Any, g: GraphRecord, dynamic: Any, keep: Mapping[str, set[int]], tools: dict[str, Any],
               timings: dict[str, float]) -> tuple[ExportPlan, Any]:
    plan = prepare(obj, g, dynamic=dynamic, keep_static=keep)
    try:
        return plan, export_program(plan, timings)
    except Exception as e:
        if not any(plan.candidates.values()):
            raise
        tools["dynamic_error"] = f"{type(e).__name__}: {str(e)[:500]}"
        slow = isinstance(e, DynamicExportTimeout)
    groups = _groups(plan)
    if slow:  # each narrower dynamic export would reason as long: every dim static at once
        static = prepare(obj, g, dynamic="static")
        ep = export_program(static, timings, dynamic=False)
        tools["dynamic_given_up"] = [_given_up(role, dims) for role, dims in groups.items()]
        return static, ep
    ones = {n: {d for d in dims if plan.example_inputs[n].shape[d] == 1} for n, dims in plan.candidates.items()}
    ones = {n: dims for n, dims in ones.items() if dims and not dims <= set(keep.get(n, ()))}
    if ones:  # a size-1 dim traced at 2 broke a relation the code holds (a step's mask one longer than its cache)
        at_one = prepare(obj, g, dynamic=dynamic, keep_static=_merged(keep, ones))
        try:
            ep = export_program(at_one, timings)
            tools["size1_static_failed_at_two"] = [{"input": n, "dims": sorted(d)} for n, d in sorted(ones.items())]
            return at_one, ep
        except Exception as e:  # noqa: BLE001 -- the narrower exports below follow; this says why not this one
            tools["size1_static_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    for role, dims in groups.items() if len(groups) > 1 else ():
        fewer = prepare(obj, g, dynamic=dynamic, keep_static=_merged(keep, dims))
        try:
            ep = export_program(fewer, timings)
        except Exception:
            continue
        tools["dynamic_given_up"] = [_given_up(role, dims)]
        return fewer, ep
    static = prepare(obj, g, dynamic="static")
    ep = export_program(static, timings, dynamic=False)  # raises when even a static export fails
    tools["dynamic_given_up"] = [_given_up(role, dims) for role, dims in groups.items()]
    return static, ep


def _groups(plan: ExportPlan) -> dict[str, dict[str, set[int]]]:
    """The candidate dims by role (the requested name, else the role of its position), batch last: a group that
    must be static is more often a sequence or spatial dim than the batch."""
    out: dict[str, dict[str, set[int]]] = {}
    for name, dims in plan.candidates.items():
        rank = plan.example_inputs[name].dim()
        for d, wanted in dims.items():
            out.setdefault(wanted or dims_mod.role_name(rank, d), {}).setdefault(name, set()).add(d)
    return dict(sorted(out.items(), key=lambda kv: kv[0] == "batch"))


def _merged(keep: Mapping[str, set[int]], more: Mapping[str, set[int]]) -> dict[str, set[int]]:
    return {n: set(keep.get(n, ())) | set(more.get(n, ())) for n in {*keep, *more}}


def _given_up(role: str, dims: Mapping[str, set[int]]) -> dict[str, Any]:
    return {"dim": role, "inputs": {n: sorted(d) for n, d in sorted(dims.items())}}


def describe(plan: ExportPlan, ep: Any) -> dims_mod.DimInfo:
    """What ``ep`` (exported from ``plan``) says of the graph's dims."""
    arg_shapes = {n: tuple(a.shape) for n, a in zip(plan.input_names, plan.args)}
    info = dims_mod.describe_program(ep, plan.input_names, plan.output_names, plan.candidates, arg_shapes)
    for dim in info.dims.values():  # the recorded call is served (verify runs it): a lower bound torch.export drew
        recorded = [int(plan.example_inputs[inp].shape[int(d)])  # from sizes traced longer (2 for a size-1 dim,
                    for inp, d in (s.rsplit(".", 1) for s in dim["sources"])  # a mask one longer than that)
                    if inp in plan.example_inputs]  # never goes above it
        if recorded and dim.get("min") is not None and dim["min"] > min(recorded):
            dim["min"] = min(recorded)
    return info


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


def _broken_at_recorded(info: dims_mod.DimInfo, plan: ExportPlan) -> dict[str, set[int]]:
    """Size-1 dims traced at 2 named in a guard that the recorded call's own sizes break. Doubling one dim leaves
    the dims that follow it unchanged: a decoder step's attention mask, recorded one longer than its cache (past +
    1 token), is traced next to 2 tokens, and the guard torch.export draws there (``sequence + past_sequence -
    attention_mask_sequence > 0``) refuses the recorded call and every later one. Those dims stay at 1."""
    values: dict[str, int] = {}
    for name, dim in info.dims.items():
        sizes = set()
        for src in dim.get("sources", ()):
            inp, k = src.rsplit(".", 1)
            if inp in plan.example_inputs and k.isdigit():
                sizes.add(int(plan.example_inputs[inp].shape[int(k)]))
        if len(sizes) == 1:
            values[name] = sizes.pop()
    out: dict[str, set[int]] = {}
    for c in info.constraints:
        names = constraint_names(c)
        if not names or not names <= values.keys() or not constraints.check([c], values):
            continue
        for name in names:
            for src in info.dims[name].get("sources", ()):
                inp, k = src.rsplit(".", 1)
                if inp in plan.example_inputs and k.isdigit() and int(k) in plan.candidates.get(inp, {}) \
                        and int(plan.example_inputs[inp].shape[int(k)]) == 1:
                    out.setdefault(inp, set()).add(int(k))
    return out


def _pinned_at_two(info: dims_mod.DimInfo, plan: ExportPlan) -> dict[str, set[int]]:
    """Size-1 dims traced at 2 (against torch.export's 0/1 specialisation) that the program made static anyway:
    exported as is they would be fixed at 2, a size no call has."""
    out: dict[str, set[int]] = {}
    for s in info.specialized:
        if int(plan.example_inputs[s["input"]].shape[s["dim"]]) == 1 and int(s["value"]) != 1:
            out.setdefault(s["input"], set()).add(int(s["dim"]))
    return out
