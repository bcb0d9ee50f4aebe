"""The recorder behind every recording proxy of one ``record`` block: it turns module calls into graphs.

A call reaches it three ways (:class:`Recorder`): through a proxy (``pipe.unet(...)``, ``pipe.vae.decode(...)``),
through a module's forward hooks (the module called without its proxy: ``self(...)`` inside ``generate``), or from a
watch over a method that is not a graph itself (:class:`_LoopWatch` for a method of the model's own code that turns
out to loop, :class:`_SubmoduleWatch` for a framework method such as ``generate``). Inputs are flattened before the
call runs, outputs after; calls of one graph whose structure differs become variants (``model``, ``model@2``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable

import torch

from .._core import inplace, modstate, tree
from .recording import GraphRecord, TensorSpec
from .samples import SampleStore
from .stats import StatsCounter
from .._core.signature import bind_call, method_info

__all__ = ["Recorder"]


def _spec_of(t: torch.Tensor) -> TensorSpec:
    vr = None
    if (not t.is_floating_point() and not t.is_complex()) and t.numel() > 0:
        vr = (float(t.min()), float(t.max()))
    return TensorSpec(tuple(t.shape), t.dtype, str(t.device), vr)


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy (a channels_last input would otherwise give PyTorch a different kernel
    than every runtime sees, and a reference that differs by ~1e-4)."""
    with torch.inference_mode(False), torch.no_grad():
        return t.detach().to("cpu", copy=True).contiguous()


class _GraphBuilder:
    """Mutable per-graph accumulator; turned into a frozen :class:`GraphRecord` by ``freeze``."""

    __slots__ = ("name", "module_path", "method", "module_class", "calls", "input_tree", "output_tree",
                 "input_specs", "output_specs", "input_shapes", "output_shapes", "consts", "examples", "base", "state",
                 "direct_calls")

    def __init__(self, name: str, module_path: str, method: str, module_class: str) -> None:
        self.name, self.module_path, self.method, self.module_class = name, module_path, method, module_class
        self.calls = 0
        self.input_tree: dict | None = None
        self.output_tree: dict | None = None
        self.input_specs: dict[str, TensorSpec] = {}
        self.output_specs: dict[str, TensorSpec] = {}
        self.input_shapes: dict[str, dict] = {}
        self.output_shapes: dict[str, dict] = {}
        self.consts: dict[str, dict] = {}  # flat name -> {repr: value} of distinct values seen
        self.examples: dict[str, Any] = {}
        self.state: dict = {}
        self.base = name
        self.direct_calls = 0

    def freeze(self, variant_of: str | None = None) -> GraphRecord:
        def specs(first: dict[str, TensorSpec], seen: dict[str, dict]) -> MappingProxyType:
            out = {}
            for n, s in first.items():
                shapes = tuple(seen.get(n, {s.shape: None}))
                varying = tuple(i for i in range(len(s.shape))
                                if len({sh[i] for sh in shapes if len(sh) == len(s.shape)}) > 1)
                out[n] = TensorSpec(s.shape, s.dtype, s.device, s.value_range, shapes, varying)
            return MappingProxyType(out)

        varying_consts = {k: tuple(v.values()) for k, v in self.consts.items() if len(v) > 1}
        return GraphRecord(self.name, self.module_path, self.method, self.module_class, self.calls,
                           specs(self.input_specs, self.input_shapes), specs(self.output_specs, self.output_shapes),
                           self.input_tree or {"t": "args", "params": []}, self.output_tree or {"t": "const",
                                                                                                  "type": "NoneType",
                                                                                                  "value": None},
                           MappingProxyType(varying_consts), MappingProxyType(dict(self.examples)), variant_of,
                           MappingProxyType(self.state), self.direct_calls)


class Recorder:
    """Collects the calls of every proxy of one ``record`` block (thread-safe); with a :class:`SampleStore`, the
    inputs of the calls it chooses are written to disk too (calibration samples)."""

    def __init__(self, samples: SampleStore | None = None) -> None:
        self.samples = samples
        self._graphs: dict[str, _GraphBuilder] = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # per thread: ids of the modules inside a recorded call, hook stacks
        self._variants: dict[str, list[str]] = {}  # graph base name -> call structures seen, in order
        self._descendants: dict[int, dict[int, str]] = {}
        self.stats = StatsCounter()  # what recording cost (rec.stats)

    def snapshot(self) -> MappingProxyType:
        with self._lock:
            multi = {base for base, v in self._variants.items() if len(v) > 1}
            return MappingProxyType({n: b.freeze(b.base if b.base in multi else None)
                                     for n, b in self._graphs.items()})

    # ---- the three ways a call reaches the recorder ---------------------------------------------------------
    def call(self, proxy_path: str, module: torch.nn.Module, method: str, fn: Callable, args: tuple,
             kwargs: dict) -> Any:
        """A call through a proxy (``pipe.unet(...)``, ``pipe.vae.decode(...)``): run it, record it, and count
        the time it took minus the wrapped call's into :attr:`stats` (:mod:`shapetrace._record.stats`)."""
        inner = 0.0

        def timed(*a: Any, **k: Any) -> Any:
            nonlocal inner
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inner += time.perf_counter() - t

        t0 = time.perf_counter()
        try:
            return self._call(proxy_path, module, method, timed, args, kwargs)
        finally:
            self.stats.calls += 1
            self.stats.own_seconds += time.perf_counter() - t0 - inner

    def _call(self, proxy_path: str, module: torch.nn.Module, method: str, fn: Callable, args: tuple,
              kwargs: dict) -> Any:
        """The call itself (see :meth:`call`).

        A method other than ``forward`` that calls the same module (or one of its submodules) more than once is a
        loop (``generate``): its outermost module calls are the graphs, not the method (see :class:`_LoopWatch`).
        """
        key = id(module)
        active = self._active_ids()
        if key in active:  # the module calling its own method again (decode -> forward): not another graph
            return fn(*args, **kwargs)
        pending = self.begin(proxy_path, module, method, args, kwargs)
        active.add(key)
        try:
            if method == "forward" or pending is None:
                output = fn(*args, **kwargs)
            else:
                with _LoopWatch(self, module, proxy_path) as watch:
                    output = fn(*args, **kwargs)
                if watch.looped:
                    return output
        finally:
            active.discard(key)
        if pending is not None:
            self.finish(pending, output)
        return output

    def run_forwarded(self, path: str, module: torch.nn.Module, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """A framework method called through a proxy (``model.generate``): not a graph, but the outermost calls of
        the module's submodules inside it are (an encoder-decoder's encoder, run once by ``generate``); the module's
        own calls are recorded by its hooks."""
        if id(module) in self._active_ids():
            return fn(*args, **kwargs)
        with _SubmoduleWatch(self, module, path):
            return fn(*args, **kwargs)

    def descendants(self, module: torch.nn.Module, path: str) -> dict[int, str]:
        """``{id(submodule): path}`` for every submodule of ``module`` (not itself), computed once per module."""
        with self._lock:
            found = self._descendants.get(id(module))
        if found is None:
            found = {id(m): f"{path}.{n}" for n, m in module.named_modules() if n}
            with self._lock:
                self._descendants[id(module)] = found
        return found

    def hooks(self, path: str, module: torch.nn.Module) -> list:
        """Forward hooks on the module at ``path``: they record the calls that reach it without its proxy (the
        module calling itself from ``generate``, another path to the same module), once each."""
        def before(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            pending = None if id(mod) in self._active_ids() else self.begin(path, mod, "forward", args, kwargs,
                                                                            direct=True)
            self._stack(mod).append(pending)

        def after(mod: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            stack = self._stack(mod)
            pending = stack.pop() if stack else None
            if pending is not None and output is not None:
                self.finish(pending, output)

        return [module.register_forward_pre_hook(before, with_kwargs=True),
                module.register_forward_hook(after, with_kwargs=True, always_call=True)]

    def _active_ids(self) -> set[int]:
        ids = getattr(self._local, "active", None)
        if ids is None:
            ids = self._local.active = set()
        return ids

    def _stack(self, module: torch.nn.Module) -> list:
        stacks = getattr(self._local, "stacks", None)
        if stacks is None:
            stacks = self._local.stacks = {}
        return stacks.setdefault(id(module), [])

    def begin(self, path: str, module: torch.nn.Module, method: str, args: tuple,
              kwargs: dict, direct: bool = False) -> "_Pending | None":
        """Flatten a call's inputs before it runs (a cache the call updates in place is seen as it was passed);
        None when it passes no tensor (``enable_slicing()``): not a graph."""
        info = method_info(type(module), method)
        leaves: dict[str, Any] = {}
        call = bind_call(info.signature, args, kwargs)
        bound = [(n, v) for n, _k, v in call]
        params = [{"name": n, "kind": k, "node": tree.flatten(v, n, leaves)[0]} for n, k, v in call]
        tensors = {n: v for n, v in leaves.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            return None
        base = path if method == "forward" else f"{path}.{method}"
        skeleton = tree.skeleton({"t": "args", "params": params})
        with self._lock:
            first = skeleton not in self._variants.get(base, ())
        examples = {n: (_copy(v) if isinstance(v, torch.Tensor) else v) for n, v in leaves.items()} if first else None
        sample = None
        if self.samples is not None:  # copied before the call runs, like the example (a cache updated in place)
            name, call = self._next_call(base, skeleton)
            if self.samples.wants(name, call):
                sample = examples if examples is not None else {
                    n: (_copy(v) if isinstance(v, torch.Tensor) else v) for n, v in leaves.items()}
        return _Pending(base, path, method, module, info.output_fields, params, leaves, tensors, skeleton, examples,
                        sample, bound, direct=direct)

    def _next_call(self, base: str, skeleton: str) -> tuple[str, int]:
        """The graph (variant) a call of this structure belongs to, and the index it will have there."""
        with self._lock:
            variants = self._variants.get(base, [])
            k = variants.index(skeleton) if skeleton in variants else len(variants)
            name = base if k == 0 else f"{base}@{k + 1}"
            b = self._graphs.get(name)
            return name, (b.calls if b is not None else 0)

    def finish(self, p: "_Pending", output: Any) -> None:
        """Add one finished call to its graph: the variant of ``p.base`` that has the call's structure."""
        out_tree, out_leaves = tree.flatten_output(output, p.output_fields)
        # tensors the call put into its arguments' lists (a conv cache filled in place) are outputs too, and the
        # markers it left there ("Rep"); read when the call returned (settle), a later call may fill them again
        filled, marks = p.settled if p.settled is not None else self.settle(p).settled
        out_leaves.update({inplace.UPDATED + n: t for n, t in filled.items()})
        if marks:
            out_tree = {**out_tree, "updated": marks}
        with self._lock:
            variants = self._variants.setdefault(p.base, [])
            if p.skeleton not in variants:
                variants.append(p.skeleton)
            k = variants.index(p.skeleton)
            name = p.base if k == 0 else f"{p.base}@{k + 1}"
            b = self._graphs.get(name)
            if b is None:
                b = self._graphs[name] = _GraphBuilder(name, p.path, p.method, tree.qualname(type(p.module)))
                b.base = p.base
            if b.calls == 0:
                b.input_tree = {"t": "args", "params": p.params}
                b.output_tree = out_tree
                b.input_specs = {n: _spec_of(t) for n, t in p.tensors.items()}
                b.output_specs = {n: _spec_of(t) for n, t in out_leaves.items() if isinstance(t, torch.Tensor)}
                b.state = modstate.snapshot(p.module)  # as the call saw it (a pipeline may swap processors)
                b.examples = p.examples if p.examples is not None else \
                    {n: (_copy(v) if isinstance(v, torch.Tensor) else v) for n, v in p.leaves.items()}
            call = b.calls
            b.calls += 1
            b.direct_calls += p.direct
            for n, t in p.tensors.items():
                b.input_shapes.setdefault(n, {})[tuple(t.shape)] = None
            for n, t in out_leaves.items():
                if isinstance(t, torch.Tensor):
                    b.output_shapes.setdefault(n, {})[tuple(t.shape)] = None
            for const, node in tree.spec_leaves({"t": "args", "params": p.params}):
                if node["t"] == "const":
                    seen = b.consts.setdefault(const, {})
                    if len(seen) < 16:
                        seen.setdefault(repr(node["value"]), node["value"])
        if self.samples is not None:  # outside the lock: a disk write
            self.samples.add(name, call, p.sample if p.sample is not None else p.leaves)

    @staticmethod
    def settle(p: "_Pending") -> "_Pending":
        """Read what the call left in its arguments' slots, now that it returned (before any later call)."""
        return dataclasses.replace(p, settled=(inplace.updated_in_place(p.bound, p.leaves),
                                               inplace.updated_constants(p.bound, p.params)))

    def calls_of(self, module_path: str) -> int:
        """Calls recorded so far for every graph of the module at ``module_path``."""
        with self._lock:
            return sum(b.calls for b in self._graphs.values() if b.module_path == module_path)


@dataclass(frozen=True)
class _Pending:
    """A call whose inputs were flattened, waiting for its output."""

    base: str
    path: str
    method: str
    module: torch.nn.Module
    output_fields: list[str] | None
    params: list
    leaves: dict
    tensors: dict
    skeleton: str
    examples: dict | None
    sample: dict | None = None  # CPU copies of the inputs, when this call is to be kept as a calibration sample
    bound: list = dataclasses.field(default_factory=list)  # (parameter, value): the containers the call may fill
    settled: tuple | None = None  # (tensors, constants) it left in them, read when it returned
    direct: bool = False  # reached the module without its proxy (its hooks saw it)


class _LoopWatch:
    """Watches one method call of a module (``model.generate``) for the module calls it makes.

    Only the outermost calls of the module itself or of its submodules count (a call inside another is part of
    it). As long as each is called at most once, the method is one graph (``vae.decode`` calls ``decoder`` once):
    the calls seen are dropped. As soon as one is called a second time the method is a loop: ``looped`` turns
    True, and every outermost call -- the first ones, kept until then, and all later ones -- is recorded as a
    ``forward`` graph of its own, named by its path (``model.text_decoder``; ``model`` for the module itself).
    """

    def __init__(self, recorder: Recorder, module: torch.nn.Module, path: str) -> None:
        self.recorder = recorder
        self.modules = [(f"{path}.{n}" if n else path, m) for n, m in module.named_modules()]
        self.thread = threading.get_ident()
        self.depth = 0
        self.counts: dict[str, int] = {}
        self.started: list = []  # the outermost call being run: its inputs, flattened before it ran
        self.pending: list[tuple] = []  # first calls, kept until the method turns out to be a loop
        self.looped = False
        self._handles: list = []

    def __enter__(self) -> "_LoopWatch":
        for path, m in self.modules:
            self._handles.append(m.register_forward_pre_hook(
                lambda mod, args, kwargs, path=path: self._enter_call(path, mod, args, kwargs), with_kwargs=True))
            self._handles.append(m.register_forward_hook(
                lambda mod, args, kwargs, out, path=path: self._leave_call(path, out), with_kwargs=True,
                always_call=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()

    def _enter_call(self, path: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if threading.get_ident() != self.thread:
            return
        self.depth += 1
        if self.depth == 1:
            self.started.append(self.recorder.begin(path, module, "forward", args, kwargs, direct=True))

    def _leave_call(self, path: str, output: Any) -> None:
        if threading.get_ident() != self.thread:
            return
        self.depth -= 1
        if self.depth:
            return
        pending = self.started.pop() if self.started else None
        if pending is None or output is None:
            return
        self.counts[path] = self.counts.get(path, 0) + 1
        if not self.looped and self.counts[path] < 2:
            self.pending.append((self.recorder.settle(pending), output))
            return
        if not self.looped:
            self.looped = True
            for earlier in self.pending:
                self.recorder.finish(*earlier)
            self.pending = []
        self.recorder.finish(pending, output)


class _SubmoduleWatch:
    """Records the outermost submodule calls made inside a forwarded method (``generate`` running the encoder of an
    encoder-decoder once), each as a ``forward`` graph named by its path (``model.model.encoder``).

    Global module hooks (one pair, whatever the module's size) see every module call of this thread; calls of the
    module itself count for the depth only (its own hooks record them). Inputs are read after the call: the
    encoder-like calls met here take their inputs unchanged (a cache updated in place goes through ``self(...)``,
    which the module's own pre-call hook records).
    """

    def __init__(self, recorder: Recorder, module: torch.nn.Module, path: str) -> None:
        self.recorder = recorder
        self.own = id(module)
        self.names = recorder.descendants(module, path)
        self.thread = threading.get_ident()
        self.depth = 0
        self._handles: list = []

    def __enter__(self) -> "_SubmoduleWatch":
        mod = torch.nn.modules.module
        self._handles = [mod.register_module_forward_pre_hook(self._enter_call),
                         mod.register_module_forward_hook(self._leave_call, with_kwargs=True, always_call=True)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()

    def _mine(self, module: torch.nn.Module) -> bool:
        return (id(module) == self.own or id(module) in self.names) and threading.get_ident() == self.thread

    def _enter_call(self, module: torch.nn.Module, args: tuple) -> None:
        if self._mine(module):
            self.depth += 1

    def _leave_call(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self._mine(module):
            return
        self.depth -= 1
        if self.depth == 0 and id(module) != self.own and output is not None:
            pending = self.recorder.begin(self.names[id(module)], module, "forward", args, kwargs, direct=True)
            if pending is not None:
                self.recorder.finish(pending, output)
