"""Run an object on its exported graphs: ``load()`` swaps each exported module for a runtime-backed stand-in.

::

    with shapetrace.load(pipe, "out/", backend="openvino") as runtime:
        image = pipe("chef in the kitchen", pose).images[0]   # text encoder, controlnet, unet, vae.decode on OV
    print(runtime.summary())                                  # what ran where, how often, how long

    runtime = shapetrace.load(pipe, "out/")                   # or without a with-block ...
    ...
    runtime.close()                                           # ... and put the modules back yourself

A :class:`RuntimeProxy` stands where the module was (``pipe.unet``), under the recording proxy's transparency
rules: ``__class__`` is forwarded (``isinstance(pipe.unet, UNet2DConditionModel)`` holds), every attribute read or
write goes to the original module (``.config``, ``.dtype``, ``.device``, ``.to()``), everything the stand-in owns
lives under the ``_st_`` prefix. A call of an exported method (``forward`` through ``__call__``, ``vae.decode``):

1. binds args / kwargs to parameter names and flattens them exactly like the recorder did
   (:func:`shapetrace.proxy.bind_call`, :func:`shapetrace.tree.flatten`);
2. checks the call against the manifest -- frozen constants, structure (a tensor where a tensor was recorded, None
   where None was), dtypes, static dims, dims tied together, ranges and constraints -- and raises
   :class:`~shapetrace.RuntimeMismatchError` naming the argument or dim and what to do, instead of returning
   wrong numbers;
3. feeds the runtime numpy, and rebuilds the original output structure from the manifest's ``output_tree``
   (``UNet2DConditionOutput``, tuples, ``AutoencoderKLOutput`` holding a ``DiagonalGaussianDistribution``...) with
   torch tensors of the recorded dtype on the inputs' device, honouring ``return_dict``.

A method that was not exported (``vae.encode`` of a text-to-image export, ``vae.forward``), and any module of the
object with no exported graph at all (it gets a stand-in too), runs on the original module in PyTorch and says so
once per (path, method) with a :class:`PyTorchFallbackWarning`; :meth:`Runtime.summary` lists every graph with
where it ran, how often and how long. Constraints the dim evaluator cannot read are set aside (``unchecked``); the
runtime itself still refuses a shape its graph cannot take.

Argument matching rules (what counts as "the same call"):

- a parameter the call leaves out counts as its signature default, on both sides;
- ``None`` and "not passed" are the same for ``**kwargs`` parameters (no default to compare with);
- numbers compare by value (``1 == 1.0``), but ``True`` is not ``1``;
- lists and tuples are interchangeable (modules index them alike);
- a ``torch.Generator`` (or None in its place) is never part of a graph and always matches;
- a Python number may stand for a 0-d tensor input (``timestep=501`` for ``tensor(501)``).

``return_dict``: an export whose graph froze ``return_dict=False`` (a tuple with field names) answers a
``return_dict=True`` call with the ``ModelOutput`` class from the method's return annotation, and the reverse
with ``output.to_tuple()`` -- the same leaves either way.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from . import dims as dims_mod
from . import tree
from .errors import RuntimeMismatchError, SignatureFileError
from .export import MANIFEST
from .proxy import RecordingProxy, _method_info, _recordable, bind_call
from .recording import dtype_from_name, read_json, to_numpy
from .walker import find_module_paths, format_path, parse_path, replace, resolve

__all__ = ["load", "Runtime", "RuntimeProxy", "GraphStats", "PyTorchFallbackWarning", "psnr", "max_abs_diff",
           "BACKENDS"]

#: ``backend=`` choices and the manifest ``files`` key each runs.
BACKENDS = {"openvino": "openvino", "onnxruntime": "onnx"}
_MISSING = object()


class PyTorchFallbackWarning(UserWarning):
    """A method with no exported graph ran on the original module in PyTorch (warned once per path and method)."""


# ================================================================================================ comparisons
def _as_array(x: Any) -> np.ndarray:
    """An image / array / tensor / list of images as a float64 array (PIL images as 0..255)."""
    if isinstance(x, torch.Tensor):
        return to_numpy(x).astype(np.float64)
    if isinstance(x, (list, tuple)):
        return np.stack([_as_array(v) for v in x])
    return np.asarray(x, dtype=np.float64)


def _data_range(a: np.ndarray, b: np.ndarray) -> float:
    top = max(float(a.max(initial=0.0)), float(b.max(initial=0.0)))
    return 255.0 if top > 1.0 else 1.0


def psnr(a: Any, b: Any, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio of ``a`` against ``b`` in dB (``inf`` when identical).

    ``a`` / ``b``: arrays, tensors, PIL images or lists of them, same shape. ``data_range`` defaults to 1.0 for
    values in [0, 1] (``output_type="np"``) and 255 otherwise (PIL images, uint8 arrays).
    """
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"psnr: shapes differ, {x.shape} vs {y.shape}")
    rng = float(data_range) if data_range is not None else _data_range(x, y)
    mse = float(np.mean((x - y) ** 2)) if x.size else 0.0
    if not math.isfinite(mse):
        return float("nan")
    return float("inf") if mse == 0 else 10.0 * math.log10(rng * rng / mse)


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest ``|a - b|`` (same conventions as :func:`psnr`)."""
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"max_abs_diff: shapes differ, {x.shape} vs {y.shape}")
    return float(np.max(np.abs(x - y))) if x.size else 0.0


# ================================================================================================ records
@dataclass(frozen=True)
class GraphStats:
    """What one graph (or one fall-through method) did during a :class:`Runtime`'s life."""

    graph: str
    ran_on: str  # "openvino:CPU", "onnxruntime:CPU" or "torch"
    calls: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.graph}: {self.ran_on}, {self.calls} calls, {self.seconds:.3f}s"


# ================================================================================================ helpers
def _output_class(cls: type, method: str) -> type | None:
    """The ``ModelOutput`` / ``BaseOutput`` class named in ``cls.method``'s return annotation (if exactly one)."""
    import collections
    import dataclasses

    fn = inspect.getattr_static(cls, method, None)
    if isinstance(fn, (staticmethod, classmethod)):
        fn = fn.__func__
    found: list[type] = []

    def collect(tp: Any) -> None:
        if isinstance(tp, type):
            if issubclass(tp, collections.OrderedDict) and dataclasses.is_dataclass(tp):
                found.append(tp)
            return
        for arg in getattr(tp, "__args__", ()) or ():
            collect(arg)

    try:
        collect(typing.get_type_hints(fn).get("return"))
    except Exception:  # unresolvable annotations: no class, the caller says what to do
        return None
    unique = list(dict.fromkeys(found))
    return unique[0] if len(unique) == 1 else None


def _is_generator_node(node: Mapping[str, Any]) -> bool:
    return node["t"] == "opaque" and "Generator" in node.get("type", "") and node.get("type", "").startswith("torch")


def _is_none(node: Mapping[str, Any]) -> bool:
    return node["t"] == "const" and node["value"] is None


def _describe(node: Any) -> str:
    if node is _MISSING:
        return "nothing"
    t = node["t"]
    if t == "const":
        return repr(tree._const_value(node))
    if t == "tensor":
        return "a tensor"
    if t == "opaque":
        return f"a {node['type']}"
    if t in ("list", "tuple"):
        return f"a {t} of {len(node['items'])}"
    if t == "dict":
        return f"a dict with keys {node['keys']}"
    return f"a {node.get('cls', t).rsplit(':', 1)[-1]}"


def _const_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    va, vb = tree._const_value(a), tree._const_value(b)
    if isinstance(va, bool) or isinstance(vb, bool):
        return type(va) is type(vb) and va == vb
    if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
        return va == vb or (va != va and vb != vb)
    return a["type"] == b["type"] and va == vb


_SYM_CALLS = (("torch.sym_max(", "Max("), ("torch.sym_min(", "Min("), ("sym_max(", "Max("), ("sym_min(", "Min("))


def _checkable(constraints: Iterable[str], dims: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """Constraints :func:`shapetrace.dims.check_constraints` can evaluate (``torch.sym_max`` spelt ``Max``), and
    the ones it cannot (kept aside, not checked: the runtime itself still refuses a shape its graph cannot take)."""
    examples = {n: int(d.get("example", 1)) for n, d in dims.items()}
    ok: list[str] = []
    skipped: list[str] = []
    for c in constraints:
        text = c
        for a, b in _SYM_CALLS:
            text = text.replace(a, b)
        try:
            dims_mod.evaluate(text, examples)
        except (ValueError, SyntaxError, TypeError):
            skipped.append(c)
            continue
        except (KeyError, ZeroDivisionError):
            pass
        ok.append(text)
    return ok, skipped


def _np_dtype(name: str) -> Any:
    return np.float32 if name == "bfloat16" else np.dtype(name)


# ================================================================================================ one graph
class _Served:
    """One exported graph behind a runner: checks a call, feeds the runner, rebuilds the output."""

    def __init__(self, runtime: "Runtime", entry: Mapping[str, Any], module: torch.nn.Module, runner: Any,
                 static_shapes: bool) -> None:
        self.runtime = runtime
        self.entry = entry
        self.name: str = entry["name"]
        self.path: str = entry["module"]
        self.method: str = entry["method"]
        self.runner = runner
        self.static_shapes = static_shapes
        self.lock = threading.Lock()
        info = _method_info(type(module), self.method)
        self.signature = info.signature
        self.defaults: dict[str, Any] = {}
        if self.signature is not None:
            for p in self.signature.parameters.values():
                if p.default is not inspect.Parameter.empty:
                    self.defaults[p.name] = p.default
        self.params = {p["name"]: p for p in entry["input_tree"]["params"]}
        self.inputs = {i["name"]: i for i in entry["inputs"]}
        self.outputs = [(o["name"], o.get("key", o["name"]), dtype_from_name(o["dtype"])) for o in entry["outputs"]]
        self.dims: dict[str, dict] = dict(entry.get("dims") or {})
        self.constraints, self.unchecked = _checkable(entry.get("constraints") or [], self.dims)
        self.output_tree: dict = entry["output_tree"]
        self.output_class = _output_class(type(module), self.method)
        self._shapes_ok: set[tuple] = set()
        self.calls = 0
        self.seconds = 0.0

    # ------------------------------------------------------------------------------------------ errors
    def _where(self) -> str:
        label = self.path if self.method == "forward" else f"{self.path}.{self.method}"
        return f"graph {self.name!r} ({label}, {self.runtime.backend})"

    def _fail(self, problems: Sequence[str]) -> RuntimeMismatchError:
        body = "\n  - ".join(problems)
        return RuntimeMismatchError(
            f"{self._where()} cannot answer this call; the export does not cover it:\n  - {body}\n"
            f"(or run this module in PyTorch: load(..., graphs=[...]) without {self.name!r})")

    # ------------------------------------------------------------------------------------------ binding
    def _default_node(self, name: str) -> Any:
        if name in self.defaults:
            return tree._flatten(self.defaults[name], name, {})
        return _MISSING

    def bind(self, args: tuple, kwargs: dict) -> tuple[dict[str, dict], dict[str, Any]]:
        """The call as ``({param: node}, {flat name: leaf})``, like the recorder saw it."""
        leaves: dict[str, Any] = {}
        nodes = {n: tree._flatten(v, n, leaves) for n, _k, v in bind_call(self.signature, args, kwargs)}
        return nodes, leaves

    def match(self, nodes: Mapping[str, dict], leaves: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], Any]:
        """Check the call's arguments against the recorded ones; return (feed, device of the tensor inputs)."""
        problems: list[str] = []
        feed: dict[str, Any] = {}
        for name in list(self.params) + [n for n in nodes if n not in self.params]:
            if name == "return_dict":
                continue  # rebuilt either way (see the module docstring)
            rec = self.params[name]["node"] if name in self.params else self._default_node(name)
            got = nodes[name] if name in nodes else self._default_node(name)
            if rec is _MISSING and got is not _MISSING and _is_none(got):
                continue
            if got is _MISSING and rec is not _MISSING and _is_none(rec):
                continue
            if rec is _MISSING or got is _MISSING:
                problems.append(f"{name}: this call passes {_describe(got)}, the recorded call passed "
                                f"{_describe(rec)}; record a call that passes {name} the way you call it")
                continue
            self._compare(name, rec, got, leaves, feed, problems)
        device = None
        for v in feed.values():
            if isinstance(v, torch.Tensor):
                device = v.device
                break
        if not problems:
            problems.extend(self._check_tensors(feed))
        if problems:
            raise self._fail(problems)
        arrays: dict[str, np.ndarray] = {}
        for n, v in feed.items():
            spec = self.inputs[n]
            arrays[n] = to_numpy(v) if isinstance(v, torch.Tensor) else np.asarray(v, dtype=_np_dtype(spec["dtype"]))
        return arrays, device

    def _compare(self, name: str, rec: dict, got: dict, leaves: Mapping[str, Any], feed: dict,
                 problems: list[str]) -> None:
        rt, gt = rec["t"], got["t"]
        if rt == "tensor":
            spec = self.inputs.get(rec["name"])
            if spec is None:
                problems.append(f"{name}: the manifest lists no input {rec['name']!r}; re-export")
            elif gt == "tensor":
                feed[rec["name"]] = leaves[got["name"]]
            elif gt == "const" and isinstance(got["value"], (int, float)) and not isinstance(got["value"], bool) \
                    and len(spec["shape"]) == 0:
                feed[rec["name"]] = got["value"]  # a number for a 0-d tensor input (timestep=501, promoted scalars)
            else:
                problems.append(f"{name}: the graph takes a tensor here (input {rec['name']!r}), this call passes "
                                f"{_describe(got)}; record a call that passes {name} like this one")
            return
        if _is_generator_node(rec) or _is_generator_node(got):
            if (_is_generator_node(rec) or _is_none(rec)) and (_is_generator_node(got) or _is_none(got)):
                return
        if rt == "const" and gt == "const":
            if not _const_equal(rec, got):
                value, frozen = _describe(got), _describe(rec)
                if isinstance(tree._const_value(got), (int, float)) and not isinstance(tree._const_value(got), bool) \
                        and isinstance(tree._const_value(rec), (int, float)):
                    hint = (f"record a call with {name}={value} too (beside {name}={frozen}), so it is exported "
                            f"as an input")
                else:
                    hint = (f"only int / float arguments that vary across the recorded calls become graph inputs, "
                            f"others stay frozen: record and export a run that passes {name}={value}, and load "
                            f"that export")
                problems.append(f"{name}={value}, but the export froze {name}={frozen} into the graph; {hint}")
            return
        if rt == "opaque" and gt == "opaque":
            if rec.get("type") != got.get("type"):
                problems.append(f"{name}: this call passes {_describe(got)}, the recorded call passed "
                                f"{_describe(rec)}; record a call like this one")
            return
        if rt in ("list", "tuple") and gt in ("list", "tuple"):
            if len(rec["items"]) != len(got["items"]):
                problems.append(f"{name}: this call passes {_describe(got)}, the graph was exported for "
                                f"{_describe(rec)}; record a call like this one")
                return
            keys = rec.get("fields") or list(range(len(rec["items"])))
            for k, r, g in zip(keys, rec["items"], got["items"]):
                self._compare(f"{name}[{k!r}]" if isinstance(k, str) else f"{name}[{k}]", r, g, leaves, feed,
                              problems)
            return
        if rt in ("dict", "object") and gt == rt:
            if rt == "object" and rec.get("cls") != got.get("cls"):
                problems.append(f"{name}: this call passes {_describe(got)}, the recorded call passed "
                                f"{_describe(rec)}")
                return
            rk, gk = dict(zip(rec["keys"], rec["items"])), dict(zip(got["keys"], got["items"]))
            for k in list(rk) + [k for k in gk if k not in rk]:
                r, g = rk.get(k, _MISSING), gk.get(k, _MISSING)
                if r is _MISSING or g is _MISSING:
                    if (r is _MISSING and _is_none(g)) or (g is _MISSING and _is_none(r)):
                        continue
                    problems.append(f"{name}[{k!r}]: this call passes {_describe(g)}, the recorded call passed "
                                    f"{_describe(r)}; record a call like this one")
                    continue
                self._compare(f"{name}[{k!r}]", r, g, leaves, feed, problems)
            return
        if rt == "const" and rec["value"] is None:
            problems.append(f"{name}: this call passes {_describe(got)}, but {name} was None when recorded, so "
                            f"the graph has no input for it; record (and export) a call that passes {name}")
            return
        problems.append(f"{name}: this call passes {_describe(got)}, the recorded call passed {_describe(rec)}; "
                        f"record a call that passes {name} like this one")

    def _check_tensors(self, feed: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        shapes: dict[str, tuple[int, ...]] = {}
        for n, v in feed.items():
            spec = self.inputs[n]
            if isinstance(v, torch.Tensor):
                want = spec["dtype"]
                got = str(v.dtype).replace("torch.", "")
                if got != want:
                    problems.append(f"input {n!r} is {got}, the graph was exported for {want}; cast it (or the "
                                    f"module) to {want}, or record and export the pipeline in {got}")
                shapes[n] = tuple(v.shape)
            else:
                shapes[n] = ()
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            problems.append(f"this call gives no value for input(s) {', '.join(map(repr, missing))}; re-export")
        if problems:
            return problems
        key = tuple(shapes[n] for n in self.inputs)
        if key in self._shapes_ok:
            return problems
        if self.static_shapes:
            for n, shape in shapes.items():
                ex = tuple(self.inputs[n].get("example_shape") or ())
                if shape != ex:
                    problems.append(f"input {n!r} has shape {list(shape)}, but load(static_shapes=True) fixed "
                                    f"this graph to the recorded {list(ex)}; load with static_shapes=False to run "
                                    f"other sizes")
            if problems:
                return problems
        values: dict[str, int] = {}
        where: dict[str, str] = {}
        derived: list[tuple[str, int, str]] = []
        for n, shape in shapes.items():
            want = list(self.inputs[n]["shape"])
            if len(want) != len(shape):
                problems.append(f"input {n!r} has rank {len(shape)} (shape {list(shape)}), the graph was exported "
                                f"for rank {len(want)} ({want}); record a call like this one")
                continue
            for d, (w, s) in enumerate(zip(want, shape)):
                if isinstance(w, int):
                    if w != s:
                        problems.append(
                            f"input {n!r} has size {s} at dim {d}, but the graph was exported with a fixed size "
                            f"{w} there; export with dynamic={{{self.name!r}: {{{n!r}: [{d}]}}}} (or record calls "
                            f"where it varies) to make it dynamic")
                elif w in self.dims:
                    if w in values and values[w] != s:
                        problems.append(f"dim {w!r} is {values[w]} in {where[w]} but {s} in {n}.{d}; the export "
                                        f"ties them together (they must be equal)")
                    else:
                        values.setdefault(w, s)
                        where.setdefault(w, f"{n}.{d}")
                else:
                    derived.append((w, s, f"{n}.{d}"))
        if problems:
            return problems
        for expr, s, at in derived:
            try:
                expected = dims_mod.evaluate(expr, values)
            except (KeyError, ValueError, ZeroDivisionError, SyntaxError):
                continue
            if expected != s:
                problems.append(f"{at} is {s}, but the export ties it to {expr} = {expected}")
        failed = list(dict.fromkeys(dims_mod.check_constraints(self.constraints, values, self.dims)))
        if failed:
            sizes = ", ".join(f"{k}={v}" for k, v in values.items())
            problems.append(f"this call's sizes ({sizes}) break the export's constraint(s) {'; '.join(failed)}; "
                            f"the graph only covers sizes that satisfy them (torch.export fixed the model's "
                            f"size-dependent branches and ties to the recorded call's side): call it at such sizes")
        if not problems:
            self._shapes_ok.add(key)
        return problems

    # ------------------------------------------------------------------------------------------ output
    def _wants_dict(self, module: torch.nn.Module, nodes: Mapping[str, dict]) -> bool | None:
        node = nodes.get("return_dict")
        if node is not None and node["t"] == "const" and isinstance(node["value"], bool):
            return node["value"]
        default = self.defaults.get("return_dict", _MISSING)
        if isinstance(default, bool):
            return default
        config = getattr(module, "config", None)
        for attr in ("return_dict", "use_return_dict"):
            try:
                value = getattr(config, attr, None)
            except Exception:  # a config property that raises: no answer from it
                value = None
            if isinstance(value, bool):
                return value
        return None

    def rebuild(self, module: torch.nn.Module, nodes: Mapping[str, dict], leaves: Mapping[str, Any]) -> Any:
        spec = self.output_tree
        wants = self._wants_dict(module, nodes)
        recorded_tuple = spec["t"] == "tuple" and bool(spec.get("fields")) and not spec.get("cls")
        if wants is True and recorded_tuple:
            if self.output_class is None:
                raise RuntimeMismatchError(
                    f"{self._where()}: this call asks for return_dict=True, the graph was exported from a "
                    f"return_dict=False call and the output class cannot be read from "
                    f"{type(module).__name__}.{self.method}'s return annotation; pass return_dict=False, or "
                    f"record a call with return_dict=True")
            fields = {f: tree.unflatten(item, leaves) for f, item in zip(spec["fields"], spec["items"])}
            return self.output_class(**fields)
        if wants is False and spec["t"] == "object":
            return tree.unflatten(spec, leaves, as_tuple=True)
        return tree.unflatten(spec, leaves)

    # ------------------------------------------------------------------------------------------ call
    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        t0 = time.perf_counter()
        nodes, leaves = self.bind(args, kwargs)
        feed, device = self.match(nodes, leaves)
        try:
            with self.lock:
                result = self.runner.infer(feed)
        except Exception as e:  # a shape the checks let through but the compiled graph refuses, a device error...
            shapes = ", ".join(f"{n}{list(a.shape)}" for n, a in feed.items())
            raise RuntimeMismatchError(f"{self._where()} failed on {shapes}: {type(e).__name__}: "
                                       f"{str(e).strip()[:500]}") from e
        out: dict[str, Any] = {}
        for name, key, dtype in self.outputs:
            arr = np.asarray(result[name])
            t = torch.from_numpy(arr if arr.flags.writeable and arr.flags.c_contiguous else np.array(arr))
            if t.dtype != dtype:
                t = t.to(dtype)
            out[key] = t.to(device) if device is not None and device.type != "cpu" else t
        value = self.rebuild(module, nodes, out)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return value


# ================================================================================================ the stand-in
class RuntimeProxy:
    """Stands in for a module while a :class:`Runtime` is open: exported methods run on the runtime.

    Everything else (attribute reads / writes, ``config``, ``dtype``, ``to()``, ``isinstance``) goes to the original
    module, exactly as with :class:`~shapetrace.RecordingProxy`.
    """

    __slots__ = ("_st_wrapped", "_st_path", "_st_runtime", "_st_served", "__weakref__")
    _st_kind = "runtime"

    def __init__(self, wrapped: torch.nn.Module, path: str, runtime: "Runtime", served: Mapping[str, _Served]) -> None:
        object.__setattr__(self, "_st_wrapped", wrapped)
        object.__setattr__(self, "_st_path", path)
        object.__setattr__(self, "_st_runtime", runtime)
        object.__setattr__(self, "_st_served", dict(served))

    # ---- identity ------------------------------------------------------------------------------------
    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(proxy, UNet2DConditionModel) holds
        return type(object.__getattribute__(self, "_st_wrapped"))

    @property
    def __wrapped__(self) -> torch.nn.Module:
        return object.__getattribute__(self, "_st_wrapped")

    def __repr__(self) -> str:
        wrapped = object.__getattribute__(self, "_st_wrapped")
        path = object.__getattribute__(self, "_st_path")
        runtime = object.__getattribute__(self, "_st_runtime")
        methods = ", ".join(object.__getattribute__(self, "_st_served")) or "nothing"
        return f"<RuntimeProxy {path!r} for {type(wrapped).__name__}, {methods} on {runtime.backend}>"

    def __copy__(self):
        raise RuntimeMismatchError(f"cannot copy {self!r} while it runs on {self._st_runtime.backend}; copy the "
                                   f"object before load() or after close()")

    def __deepcopy__(self, memo):
        raise RuntimeMismatchError(f"cannot deepcopy {self!r} while it runs on {self._st_runtime.backend}; copy "
                                   f"the object before load() or after close()")

    def __reduce_ex__(self, protocol):
        raise RuntimeMismatchError(f"cannot pickle {self!r} while it runs on {self._st_runtime.backend}; pickle "
                                   f"the object before load() or after close()")

    # ---- calls ---------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        wrapped = object.__getattribute__(self, "_st_wrapped")
        served = object.__getattribute__(self, "_st_served").get("forward")
        if served is not None:
            return served(wrapped, args, kwargs)
        return object.__getattribute__(self, "_st_runtime")._fall_through(
            object.__getattribute__(self, "_st_path"), wrapped, "forward", wrapped, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        wrapped = object.__getattribute__(self, "_st_wrapped")
        value = getattr(wrapped, name)
        if not callable(value) or getattr(value, "__self__", None) is not wrapped:
            return value
        served = object.__getattribute__(self, "_st_served").get(name)
        if served is not None:
            def run(*args: Any, **kwargs: Any) -> Any:
                return served(wrapped, args, kwargs)

            run.__name__ = name
            run.__wrapped__ = value  # type: ignore[attr-defined]
            return run
        if name == "forward" or _recordable(type(wrapped), name):
            runtime = object.__getattribute__(self, "_st_runtime")
            path = object.__getattribute__(self, "_st_path")

            def fallen(*args: Any, **kwargs: Any) -> Any:
                return runtime._fall_through(path, wrapped, name, value, args, kwargs)

            fallen.__name__ = name
            fallen.__wrapped__ = value  # type: ignore[attr-defined]
            return fallen

        def forwarded(*args: Any, **kwargs: Any) -> Any:  # .to() / .eval() return the stand-in, not the module
            result = value(*args, **kwargs)
            return self if result is wrapped else result

        forwarded.__name__ = name
        forwarded.__wrapped__ = value  # type: ignore[attr-defined]
        return forwarded

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_st_wrapped"), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(object.__getattribute__(self, "_st_wrapped"), name)

    def __dir__(self) -> Iterable[str]:
        return dir(object.__getattribute__(self, "_st_wrapped"))

    def __len__(self) -> int:
        return len(object.__getattribute__(self, "_st_wrapped"))

    def __iter__(self) -> Iterator:
        return iter(object.__getattribute__(self, "_st_wrapped"))

    def __getitem__(self, key: Any) -> Any:
        return object.__getattribute__(self, "_st_wrapped")[key]

    def __contains__(self, key: Any) -> bool:
        return key in object.__getattribute__(self, "_st_wrapped")

    def __bool__(self) -> bool:
        return bool(object.__getattribute__(self, "_st_wrapped"))

    def __eq__(self, other: Any) -> bool:
        wrapped = object.__getattribute__(self, "_st_wrapped")
        return other is self or other is wrapped

    def __hash__(self) -> int:
        return hash(object.__getattribute__(self, "_st_wrapped"))


# ================================================================================================ the runtime
class Runtime:
    """The graphs of one export serving one object; a context manager. Made by :func:`load`.

    ``served`` maps each exported graph to where it runs; :meth:`stats` / :meth:`summary` add what ran in
    PyTorch (methods that were not exported) and how often / how long. :meth:`close` (or leaving the
    ``with`` block) puts the original modules back and frees the runtimes.
    """

    def __init__(self, obj: Any, out_dir: Path, backend: str, device: str) -> None:
        self._obj = obj
        self.out_dir = out_dir
        self.backend_name = backend
        self.device = device
        self.backend = f"{backend}:{device}"
        self._graphs: dict[str, _Served] = {}
        self._installed: list[tuple[tuple, torch.nn.Module, RuntimeProxy]] = []
        self._runners: list[Any] = []
        self._torch: dict[str, list] = {}  # fall-through "path.method" -> [calls, seconds]
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._closed = False

    # ---- what ran where --------------------------------------------------------------------------------
    @property
    def served(self) -> Mapping[str, str]:
        """Graph name -> where it runs: ``"openvino:CPU"`` for exported graphs, ``"torch"`` for the methods that
        fell through to PyTorch so far."""
        out = {name: self.backend for name in self._graphs}
        out.update({name: "torch" for name in self._torch})
        return MappingProxyType(out)

    def stats(self) -> tuple[GraphStats, ...]:
        rows = [GraphStats(n, self.backend, g.calls, round(g.seconds, 4)) for n, g in self._graphs.items()]
        with self._lock:
            rows += [GraphStats(n, "torch", c, round(s, 4)) for n, (c, s) in self._torch.items()]
        return tuple(rows)

    def summary(self) -> str:
        """A table: graph, where it ran, calls, seconds."""
        rows = [("graph", "ran on", "calls", "seconds")]
        rows += [(s.graph, s.ran_on, str(s.calls), f"{s.seconds:.3f}") for s in self.stats()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

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
        finally:
            self._installed = []
            for r in reversed(self._runners):
                try:
                    r.__exit__(None, None, None)
                except Exception:  # freeing a runtime never hides the restore
                    pass
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
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                row = self._torch.setdefault(name, [0, 0.0])
                row[0] += 1
                row[1] += time.perf_counter() - t0


# ================================================================================================ load()
def _read_manifest(out: Path) -> dict:
    if out.exists() and not out.is_dir():
        raise SignatureFileError(f"{out} is a file; pass the folder export_all() wrote")
    data = read_json(out / MANIFEST, what="export manifest")
    graphs = data.get("graphs")
    if not isinstance(graphs, list) or not all(isinstance(g, dict) and isinstance(g.get("name"), str)
                                               for g in graphs):
        raise SignatureFileError(f"{out / MANIFEST} has no valid 'graphs' list; re-create it with export_all")
    for g in graphs:
        if g.get("error") is None:
            for key in ("module", "method", "class", "files", "inputs", "outputs", "input_tree", "output_tree"):
                if key not in g:
                    raise SignatureFileError(f"{out / MANIFEST}: graph {g['name']!r} lacks {key!r}; re-create it "
                                             f"with export_all")
    return data


def _error_text(err: Any) -> str:
    if isinstance(err, Mapping):
        return f"{err.get('type', 'error')}: {str(err.get('message', ''))[:200]}"
    return str(err)[:200]


def _openvino_runner(out: Path, entry: Mapping[str, Any], device: str, precision: str, threads: int | None,
                     static_shapes: bool, config: Mapping[str, Any]) -> Any:
    """``open_runner("openvino", ...)`` with extra ``compile_model`` properties (streams, user config)."""
    from .backends import openvino_backend as ovb
    from .backends.base import by_name_or_position, match_inputs, model_file
    from .errors import VerifyError

    class _ConfiguredOpenVINORunner(ovb.OpenVINORunner):
        # OpenVINORunner._activate with `config` merged into compile_model's properties
        def _activate(self) -> None:
            ov = ovb.import_openvino()
            core = ov.Core()
            try:
                model = core.read_model(self.path)
            except Exception as e:
                raise VerifyError(f"openvino cannot read {self.path} ({type(e).__name__}: {str(e)[:300]}); "
                                  f"re-run export_all") from e
            in_index = match_inputs(self.input_names, [set(p.get_names()) for p in model.inputs], self.label)
            if self.example_shapes:
                model.reshape({i: list(self.example_shapes[n]) for n, i in zip(self.input_names, in_index)
                               if i >= 0 and n in self.example_shapes})
            props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": ovb.PRECISIONS[self.precision],
                                     "PERFORMANCE_HINT": "LATENCY"}
            if self.threads:
                props["INFERENCE_NUM_THREADS"] = int(self.threads)
            props.update(config)
            try:
                self._compiled = core.compile_model(model, self.device, props)
            except Exception as e:
                raise VerifyError(f"openvino cannot compile {self.path} for {self.device} with {props} "
                                  f"({type(e).__name__}: {str(e)[:300]})") from e
            self._request = self._compiled.create_infer_request()
            self._in_index = in_index
            self._in_types = [self._np_type(p.get_element_type()) for p in self._compiled.inputs]
            self._out_index = by_name_or_position(
                self.output_names, [set(p.get_names()) for p in self._compiled.outputs], "output", self.label)

    shapes = {i["name"]: i.get("example_shape", i.get("shape")) for i in entry["inputs"]} if static_shapes else None
    return _ConfiguredOpenVINORunner(model_file(out, entry, "openvino"), [i["name"] for i in entry["inputs"]],
                                     [o["name"] for o in entry["outputs"]], device=device, precision=precision,
                                     threads=threads, example_shapes=shapes,
                                     label=f"openvino:{entry['name']}")


def _check_not_wrapped(path: str, module: Any) -> None:
    if type(module) is RecordingProxy:
        raise RuntimeMismatchError(f"{path!r} is being recorded; call load() after the record() block")
    if type(module) is RuntimeProxy:
        raise RuntimeMismatchError(f"{path!r} already runs on {object.__getattribute__(module, '_st_runtime')!r}; "
                                   f"close that runtime first")


def load(obj: Any, out_dir: str | Path, *, backend: str = "openvino", device: str = "CPU", precision: str = "f32",
         static_shapes: bool = False, threads: int | None = None, streams: int | str | None = None,
         config: Mapping[str, Any] | None = None, graphs: Iterable[str] | None = None,
         strict: bool = True) -> Runtime:
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

    Everything is checked before anything is swapped: a manifest that is missing or corrupt raises
    :class:`~shapetrace.SignatureFileError`; an export made for another object (another class, a missing path, a
    module of another class) or holding failed graphs raises :class:`~shapetrace.RuntimeMismatchError`, leaving
    ``obj`` untouched. Each graph is compiled once here; calls reuse its infer request.
    """
    from . import backends as be

    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose from {', '.join(BACKENDS)}")
    extra: dict[str, Any] = dict(config or {})
    if streams is not None:
        extra.setdefault("NUM_STREAMS", str(streams))
    if extra and backend != "openvino":
        raise ValueError(f"streams= / config= are OpenVINO compile properties; backend={backend!r} takes threads= "
                         f"only")
    out = Path(out_dir)
    manifest = _read_manifest(out)
    where = f"the export in {out}"
    obj_class = tree.qualname(type(obj))
    if manifest.get("object_class") and manifest["object_class"] != obj_class:
        raise RuntimeMismatchError(
            f"{where} was made from a {manifest['object_class'].rsplit(':', 1)[-1]}, not this "
            f"{type(obj).__name__}; load it into the object it was exported from, or record and export this one")
    entries = {g["name"]: g for g in manifest["graphs"]}
    if graphs is not None:
        wanted = [graphs] if isinstance(graphs, str) else list(graphs)
        unknown = [g for g in wanted if g not in entries]
        if unknown:
            raise RuntimeMismatchError(f"graphs={unknown!r} are not in {where}; it holds {', '.join(entries)}")
        entries = {n: entries[n] for n in wanted}
    failed = {n: e for n, e in entries.items() if e.get("error") is not None}
    if failed and strict:
        lines = "; ".join(f"{n}: {_error_text(e['error'])}" for n, e in failed.items())
        raise RuntimeMismatchError(
            f"{where} holds graph(s) that failed to export ({lines}); export them again, or run them in PyTorch "
            f"with load(..., strict=False) or graphs=[...] without them")
    entries = {n: e for n, e in entries.items() if e.get("error") is None}
    if not entries:
        raise RuntimeMismatchError(f"{where} holds no exported graph to serve")
    # every module: present, of the recorded class, not already swapped
    modules: dict[str, tuple[tuple, torch.nn.Module]] = {}
    problems: list[str] = []
    for name, e in entries.items():
        path = e["module"]
        if path in modules:
            continue
        try:
            steps = parse_path(path)
            _, _, module = resolve(obj, steps)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            problems.append(f"graph {name!r}: this {type(obj).__name__} has no module at {path!r}")
            continue
        _check_not_wrapped(path, module)
        if tree.qualname(type(module)) != e.get("class"):
            problems.append(f"graph {name!r}: the module at {path!r} is a {tree.qualname(type(module))}, the export "
                            f"was made from a {e.get('class')}")
            continue
        modules[path] = (steps, module)
    # the modules with no exported graph get a stand-in too, so that their calls are reported as PyTorch calls
    others: list[tuple[tuple, torch.nn.Module]] = []
    for steps, module in find_module_paths(obj):
        if format_path(steps) not in modules and not any(format_path(steps) == e["module"] for e in entries.values()):
            _check_not_wrapped(format_path(steps), module)
            others.append((steps, module))
    kind = BACKENDS[backend]
    for name, e in entries.items():
        rel = (e.get("files") or {}).get(kind)
        if not rel:
            problems.append(f"graph {name!r} has no {kind} file (exported with formats without {kind!r}?); "
                            f"use the other backend or export again")
        elif not (out / rel).is_file():
            raise SignatureFileError(f"{out / rel} (the {kind} file of graph {name!r}) is missing: the export folder "
                                     f"is incomplete; re-run export_all")
    if problems:
        raise RuntimeMismatchError(f"{where} does not fit this {type(obj).__name__}:\n  - " + "\n  - ".join(problems)
                                   + "\nload it into the object it was exported from, or record and export this one")
    # compile everything, then swap
    runtime = Runtime(obj, out, backend, device)
    try:
        by_path: dict[str, dict[str, _Served]] = {}
        for name, e in entries.items():
            if backend == "openvino" and extra:
                runner = _openvino_runner(out, e, device, precision, threads, static_shapes, extra)
            else:
                runner = be.open_runner(backend, out, e, device=device, precision=precision, threads=threads,
                                        static_shapes=static_shapes)
            runner.__enter__()
            runtime._runners.append(runner)
            module = modules[e["module"]][1]
            served = _Served(runtime, e, module, runner, static_shapes)
            runtime._graphs[name] = served
            by_path.setdefault(e["module"], {})[e["method"]] = served
        swaps = [(modules[path][0], modules[path][1], methods) for path, methods in by_path.items()]
        swaps += [(steps, module, {}) for steps, module in others]
        for steps, module, methods in swaps:
            proxy = RuntimeProxy(module, format_path(steps), runtime, methods)
            replace(obj, steps, proxy)
            runtime._installed.append((steps, module, proxy))
    except BaseException:
        runtime.close()
        raise
    return runtime
