"""Run an object on its exported graphs: ``load()`` swaps each exported module for a runtime-backed stand-in.

::

    with shapetrace.load(pipe, "out/", backend="openvino") as runtime:
        image = pipe("chef in the kitchen", pose).images[0]   # text encoder, controlnet, unet, vae.decode on OV
    print(runtime.summary())                                  # what ran where, how often, how long

    runtime = shapetrace.load(pipe, "out/")                   # or without a with-block ...
    ...
    runtime.close()                                           # ... and put the modules back yourself

A :class:`RuntimeProxy` (a :class:`~shapetrace._core.standin.StandIn`, like the recording proxy) stands where the
module was (``pipe.unet``): ``isinstance(pipe.unet, UNet2DConditionModel)`` holds, every attribute read or write
goes to the original module (``.config``, ``.dtype``, ``.device``, ``.to()``). A call of an exported method
(``forward`` through ``__call__``, ``vae.decode``) is answered by its :class:`~shapetrace._serve.serve.ServedGraph`:
bound and checked against the manifest (:mod:`shapetrace._serve.matching`, :mod:`shapetrace.constraints`) -- a call the
export cannot answer raises :class:`~shapetrace.RuntimeMismatchError` instead of returning wrong numbers -- run on
the runtime, and rebuilt into the original output structure (``UNet2DConditionOutput``, tuples,
``AutoencoderKLOutput`` holding a ``DiagonalGaussianDistribution``...), honouring ``return_dict``.

A method that was not exported (``vae.encode`` of a text-to-image export, ``vae.forward``), and any module of the
object with no exported graph at all (it gets a stand-in too), runs on the original module in PyTorch and says so
once per (path, method) with a :class:`PyTorchFallbackWarning`; :meth:`Runtime.summary` lists every graph with
where it ran, how often and how long.
"""


from __future__ import annotations

import inspect
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

import torch

from .. import backends as be
from .. import manifest as manifest_mod
from .._core import table, tree
from ..backends.base import Runner
from ..backends.openvino_backend import PRECISIONS
from ..errors import RunnerError, RuntimeMismatchError
from .fit import BACKENDS, LoadPlan, plan_load
from ..manifest import GraphEntry
from .._verify.images import max_abs_diff, psnr
from .serve import ServedGraph, ServedMethod
from ..backends.openvino_stateful import STATEFUL_FILE, cache_pairs
from .stateful import StatefulMethod
from . import weightless
from .._core.standin import StandIn
from .._core.walker import format_path, replace, resolve

__all__ = ["load", "Runtime", "RuntimeProxy", "GraphStats", "PyTorchFallbackWarning", "psnr", "max_abs_diff",
           "BACKENDS"]

_NOTHING = object()


class PyTorchFallbackWarning(UserWarning):
    """A method with no exported graph ran on the original module in PyTorch (warned once per path and method)."""


@dataclass(frozen=True)
class GraphStats:
    """What one graph (or one fall-through method) did during a :class:`Runtime`'s life."""

    graph: str
    ran_on: str  # "openvino:CPU", "onnxruntime:CPU" or "torch"
    calls: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.graph}: {self.ran_on}, {self.calls} calls, {self.seconds:.3f}s"


class RuntimeProxy(StandIn):
    """Stands in for a module while a :class:`Runtime` is open: exported methods run on the runtime, the others
    (and everything else: attributes, ``config``, ``to()``, ``isinstance``) on the original module."""

    __slots__ = ("_st_runtime", "_st_served")
    _st_kind = "runtime"

    def __init__(self, wrapped: torch.nn.Module, path: str, runtime: "Runtime",
                 served: Mapping[str, ServedMethod]) -> None:
        super().__init__(wrapped, path)
        object.__setattr__(self, "_st_runtime", runtime)
        object.__setattr__(self, "_st_served", dict(served))

    def _st_call(self, method: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        wrapped = object.__getattribute__(self, "_st_wrapped")
        served = object.__getattribute__(self, "_st_served").get(method)
        if served is not None:
            return served(wrapped, args, kwargs)
        return object.__getattribute__(self, "_st_runtime")._fall_through(
            object.__getattribute__(self, "_st_path"), wrapped, method, fn, args, kwargs)

    def _st_describe(self) -> str:
        methods = ", ".join(object.__getattribute__(self, "_st_served")) or "nothing"
        return f"{methods} on {object.__getattribute__(self, '_st_runtime').backend}"

    def _st_refusal(self, verb: str) -> RuntimeMismatchError:
        backend = object.__getattribute__(self, "_st_runtime").backend
        return RuntimeMismatchError(f"cannot {verb} {self!r} while it runs on {backend}; {verb} the object before "
                                    f"load() or after close()")


class Runtime:
    """The graphs of one export serving one object; a context manager. Made by :func:`load`.

    ``served`` maps each exported graph to where it runs; :meth:`stats` / :meth:`summary` add what ran in
    PyTorch (methods that were not exported) and how often / how long. :meth:`close` (or leaving the
    ``with`` block) puts the original modules back and frees the runtimes.
    """

    def __init__(self, obj: Any, out_dir: Path, backend: str, device: str, plan: LoadPlan,
                 make_runner: Callable[[GraphEntry], Runner], static_shapes: bool = False,
                 stateful: Mapping[str, Any] | None = None) -> None:
        self._obj = obj
        self.out_dir = out_dir
        self.backend_name = backend
        self.device = device
        self.backend = f"{backend}:{device}"
        self._graphs: dict[str, ServedGraph] = {}
        self._installed: list[tuple[tuple, torch.nn.Module, RuntimeProxy]] = []
        self._overrides: list[tuple[torch.nn.Module, Any, Callable]] = []
        self._dressed: list[torch.nn.Module] = []  # weightless modules answering device="cpu" while served
        self._runners: list[Runner] = []
        self._torch: dict[str, list] = {}  # fall-through "path.method" -> [calls, seconds]
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._stateful = stateful  # the OpenVINO compile properties when serving decoder steps statefully
        try:
            self._start(plan, make_runner, static_shapes)
        except BaseException:
            self.close()
            raise

    def _start(self, plan: LoadPlan, make_runner: Callable[[GraphEntry], Runner], static_shapes: bool) -> None:
        """Compile every graph, then swap every module of the object for a stand-in."""
        groups: dict[str, dict[str, list[GraphEntry]]] = {}
        for e in plan.entries:
            groups.setdefault(e.module, {}).setdefault(e.method, []).append(e)
        swaps = []
        for path, methods in groups.items():
            module = plan.modules[path][1]
            served = {m: self._method(module, entries, make_runner, static_shapes) for m, entries in methods.items()}
            if weightless.dress(module):
                self._dressed.append(module)
            direct = any(e.calls_without_proxy for e in methods.get("forward", ()))
            swaps.append((plan.modules[path][0], module, served, direct))
        swaps += [(steps, module, {}, False) for steps, module in plan.others]
        for steps, module, methods, direct in swaps:
            proxy = RuntimeProxy(module, format_path(steps), self, methods)
            for where in [steps, *plan.aliases.get(id(module), ())]:  # served at every path that reaches it
                replace(self._obj, where, proxy)
                self._installed.append((where, module, proxy))
            # calls that reach the module itself (self(...) inside generate) too, where the recording saw such calls:
            # the override is on the module, so whatever else holds it is served too while loaded
            if "forward" in methods and direct:
                self._override_forward(module, methods["forward"])

    def _method(self, module: torch.nn.Module, entries: list[GraphEntry], make_runner: Callable[[GraphEntry], Runner],
                static_shapes: bool) -> Any:
        """What answers one method: its variants by call structure, each on its runner, or (``stateful``) the
        stateful model of its cache-taking variant for every call (the other variants are then not compiled)."""
        stateful = [e for e in entries if e.file(STATEFUL_FILE)] if self._stateful is not None else []
        if stateful:
            e = stateful[0]
            method = StatefulMethod(e, module, self.out_dir / (e.file(STATEFUL_FILE) or ""), self.device,
                                    self._stateful, self.backend)
            first = next((v for v in entries if not cache_pairs(v)), None)
            if method.fixed and first is None:
                raise RuntimeMismatchError(
                    f"graph {e.name!r} (stateful) reads cache parts it never writes ({', '.join(method.fixed[:2])}"
                    f"...) and the export has no first step without a cache to fill them: serve it with "
                    f"stateful=False, or record a run whose first call passes no cache")
            # a new sequence starts on the cache-less variant, run explicitly, when the step cannot take it: a cache
            # part the steps only read (cross-attention), or a dim the step holds static that the first call moves
            # (its new tokens: one per step, the whole prompt at first)
            if first is not None and (method.fixed or _narrower(e, first)):
                method.prefill = self._served(module, first, make_runner, static_shapes)
            self._graphs[f"{e.name} (stateful)"] = method  # type: ignore[assignment]
            return method
        return ServedMethod([self._served(module, e, make_runner, static_shapes) for e in entries])

    def _served(self, module: torch.nn.Module, e: GraphEntry, make_runner: Callable[[GraphEntry], Runner],
                static_shapes: bool) -> ServedGraph:
        runner = make_runner(e)
        try:
            runner.__enter__()
        except RunnerError as err:
            raise RuntimeMismatchError(f"graph {e.name!r} cannot be served from {self.out_dir}: {err}") from err
        self._runners.append(runner)
        self._graphs[e.name] = ServedGraph(e, module, runner, self.backend, static_shapes)
        return self._graphs[e.name]

    def _override_forward(self, module: torch.nn.Module, served: Any) -> None:
        def forward(*args: Any, **kwargs: Any) -> Any:
            return served(module, args, kwargs)

        try:  # callers that read forward's signature (generate does) see the real one
            forward.__signature__ = inspect.signature(module.forward)  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            pass
        own = module.__dict__
        self._overrides.append((module, own.get("forward", _NOTHING), forward))
        own["forward"] = forward  # found before the class's forward: Module.__call__ runs it

    # ---- what ran where --------------------------------------------------------------------------------
    @property
    def served(self) -> Mapping[str, str]:
        """Graph name -> where it runs: ``"openvino:CPU"`` for exported graphs, ``"torch"`` for the methods that
        fell through to PyTorch so far."""
        out = {name: self.backend for name in self._graphs}
        out.update({name: "torch" for name in self._torch})
        return MappingProxyType(out)

    def runner(self, graph: str) -> Runner:
        """The runner serving ``graph`` (its runtime objects: ``OpenVINORunner.compiled``, ...), for inspection."""
        served = self._graphs.get(graph)
        if served is None or getattr(served, "runner", None) is None:
            raise KeyError(f"graph {graph!r} is not served by a runner here; served: {', '.join(self._graphs)}")
        return served.runner

    def stats(self) -> tuple[GraphStats, ...]:
        rows = [GraphStats(n, self.backend, g.calls, round(g.seconds, 4)) for n, g in self._graphs.items()]
        with self._lock:
            rows += [GraphStats(n, "torch", c, round(s, 4)) for n, (c, s) in self._torch.items()]
        return tuple(rows)

    def summary(self) -> str:
        """A table: graph, where it ran, calls, seconds."""
        rows = [("graph", "ran on", "calls", "seconds")]
        rows += [(s.graph, s.ran_on, str(s.calls), f"{s.seconds:.3f}") for s in self.stats()]
        return "\n".join(table.render(rows, right={2, 3}, right_header=True))

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<Runtime {self.backend} for {type(self._obj).__name__}: {len(self._graphs)} graphs from "
                f"{self.out_dir}, {state}>")

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Put every original module back and free the runtimes (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            for path, module, proxy in reversed(self._installed):
                try:
                    _, _, current = resolve(self._obj, path)
                except (AttributeError, KeyError, IndexError, TypeError):
                    continue
                if current is proxy:  # the user may have put something else there meanwhile: keep theirs
                    replace(self._obj, path, module)
            for module, before, ours in reversed(self._overrides):
                own = module.__dict__
                if own.get("forward") is ours:
                    if before is _NOTHING:
                        del own["forward"]
                    else:
                        own["forward"] = before
            for module in self._dressed:
                weightless.undress(module)
        finally:
            self._installed = []
            self._overrides = []
            self._dressed = []
            for r in reversed(self._runners):
                try:
                    r.__exit__(None, None, None)
                except Exception as e:  # noqa: BLE001 -- freeing a runtime never hides the restore; it says why
                    warnings.warn(f"closing the {getattr(r, 'name', type(r).__name__)} runner failed: "
                                  f"{type(e).__name__}: {e}", ResourceWarning, stacklevel=2)
            self._runners = []

    # ---- fall-through ----------------------------------------------------------------------------------
    def _fall_through(self, path: str, module: torch.nn.Module, method: str, fn: Any, args: tuple,
                      kwargs: dict) -> Any:
        has_tensor = any(isinstance(v, torch.Tensor) for v in tree.flatten((args, kwargs))[1].values())
        if not has_tensor:  # enable_slicing() and friends: not a graph
            return fn(*args, **kwargs)
        name = path if method == "forward" else f"{path}.{method}"
        key = (path, method)
        with self._lock:
            first = key not in self._warned
            self._warned.add(key)
        if first:
            warnings.warn(f"{name} was not exported: running it in PyTorch (export a run that calls it to serve "
                          f"it on {self.backend_name})", PyTorchFallbackWarning, stacklevel=3)
        t0 = time.perf_counter()
        try:
            if not weightless.is_weightless(module):
                return fn(*args, **kwargs)
            return weightless.checked(name, path, module, fn, args, kwargs)  # a loop around served graphs is fine
        finally:
            with self._lock:
                row = self._torch.setdefault(name, [0, 0.0])
                row[0] += 1
                row[1] += time.perf_counter() - t0



# ================================================================================================ load()
def load(obj: Any, out_dir: str | Path, *, backend: str = "openvino", device: str = "CPU", precision: str = "f32",
         static_shapes: bool = False, threads: int | None = None, streams: int | str | None = None,
         config: Mapping[str, Any] | None = None, graphs: Iterable[str] | None = None,
         strict: bool = True, stateful: bool = False, cache_dir: str | Path | None = None) -> Runtime:
    """Serve ``obj``'s exported modules from ``out_dir`` (a folder written by :func:`shapetrace.export_all`).

    Args:
        obj: the object the export was made from (same class, same module paths and classes).
        out_dir: the export folder (``manifest.json`` + model files).
        backend: ``"openvino"`` (default) or ``"onnxruntime"``.
        device: the runtime's device: OpenVINO ``"CPU"`` / ``"GPU"`` / ``"AUTO"``..., ONNX Runtime ``"CPU"`` /
            ``"CUDA"``.
        precision: ``"f32"`` (default, parity) or ``"bf16"`` / ``"f16"`` (OpenVINO's inference precision hint).
        static_shapes: compile every graph for its recorded example shapes (faster when sizes are fixed); a call at
            another size then raises :class:`~shapetrace.RuntimeMismatchError`.
        threads: CPU threads per graph (default: the runtime's own choice, ONNX Runtime at most 8).
        streams: OpenVINO ``NUM_STREAMS`` (default: one, latency).
        config: extra OpenVINO ``compile_model`` properties, applied last (``{"CPU_DENORMALS_OPTIMIZATION": True}``).
        graphs: serve only these graphs (default: every exported graph); the others run in PyTorch.
        strict: a graph whose export failed raises (default); with ``strict=False`` it runs in PyTorch.
        stateful: serve a decoder step from its stateful IR (``export_all(..., stateful=True)``): the KV cache stays
            in the compiled OpenVINO model, every call of the method goes to it (OpenVINO only). At ``precision="f32"``
            the cache is kept in f32 too (OpenVINO's CPU default is u8, which changes tokens); other precisions keep
            OpenVINO's default (``config={"KV_CACHE_PRECISION": ...}`` overrides).
        cache_dir: OpenVINO's model cache (``CACHE_DIR``): the first start writes each compiled graph there, later
            starts (any process) read it instead of compiling again (OpenVINO only).

    Everything is checked before anything is swapped: a manifest that is missing or corrupt raises
    :class:`~shapetrace.SignatureFileError`; an export made for another object (another class, a missing path, a
    module of another class) or holding failed graphs raises :class:`~shapetrace.RuntimeMismatchError`, leaving
    ``obj`` untouched. Each graph is compiled once here; calls reuse its infer request.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose from {', '.join(BACKENDS)}")
    extra: dict[str, Any] = dict(config or {})
    if streams is not None:
        extra.setdefault("NUM_STREAMS", str(streams))
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        extra.setdefault("CACHE_DIR", str(cache_dir))
    if extra and backend != "openvino":
        raise ValueError(f"streams= / config= / cache_dir= are OpenVINO compile properties; backend={backend!r} takes "
                         f"threads= only")
    out = Path(out_dir)
    plan = plan_load(obj, out, manifest_mod.read(out), backend, graphs, strict)

    def make_runner(entry: GraphEntry) -> Runner:
        return be.open_runner(backend, out, entry, device=device, precision=precision, threads=threads,
                              static_shapes=static_shapes, config=extra or None)

    if stateful and backend != "openvino":
        raise ValueError(f"stateful=True is OpenVINO's form (the cache kept in the compiled model); backend={backend!r}")
    if stateful and not any(e.file(STATEFUL_FILE) for e in plan.entries):
        raise RuntimeMismatchError(f"the export in {out} has no stateful graph: export it with "
                                   f"export_all(..., stateful=True) (a decoder step that takes a KV cache)")
    props = None
    if stateful:
        props = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY",
                 **({"KV_CACHE_PRECISION": "f32"} if precision == "f32" else {}), **extra}
        if threads:
            props["INFERENCE_NUM_THREADS"] = int(threads)
    return Runtime(obj, out, backend, device, plan, make_runner, static_shapes, props)


def _narrower(step: GraphEntry, first: GraphEntry) -> bool:
    """Whether an input both variants take is static in the step at a size the first variant's calls differ from
    (the first variant dynamic there, or static at another size)."""
    shapes = {i.name: i.shape for i in first.inputs}
    for i in step.inputs:
        other = shapes.get(i.name)
        if other is None or len(other) != len(i.shape):
            continue
        if any(isinstance(d, int) and d != o for d, o in zip(i.shape, other)):
            return True
    return False
