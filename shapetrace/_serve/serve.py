"""One exported graph behind a runner, answering calls of the module's method: :class:`ServedGraph`.

A call is bound and flattened exactly like the recorder did (:func:`shapetrace._core.signature.bind_call`,
:func:`shapetrace._core.tree.flatten`), matched against the recorded call (:func:`shapetrace._serve.matching.match_call`), its
tensors checked against the manifest -- dtypes, static dims, dims tied together, ranges and constraints
(:mod:`shapetrace.constraints`) -- and fed to the runner as numpy; the output is rebuilt from the manifest's
``output_tree`` with torch tensors of the recorded dtype on the inputs' device. A call the export cannot answer
raises :class:`~shapetrace.RuntimeMismatchError` naming the argument or dim and what to do, instead of returning
wrong numbers. Constraints the evaluator cannot read are set aside (``unchecked``); the runtime itself still
refuses a shape its graph cannot take.

``return_dict``: an export whose graph froze ``return_dict=False`` (a tuple with field names) answers a
``return_dict=True`` call with the ``ModelOutput`` class from the method's return annotation, and the reverse
with ``output.to_tuple()`` -- the same leaves either way.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .. import constraints
from .._core import inplace, tree
from ..errors import RuntimeMismatchError
from ..manifest import GraphEntry
from .matching import match_call, signature_defaults
from .._record.recording import dtype_from_name, to_numpy
from .._core.signature import bind_call, method_info

__all__ = ["ServedGraph", "ServedMethod"]

_MISSING = object()


def _np_dtype(name: str) -> Any:
    return np.float32 if name == "bfloat16" else np.dtype(name)


class ServedGraph:
    """One exported graph behind a runner: checks a call, feeds the runner, rebuilds the output."""

    def __init__(self, entry: GraphEntry, module: torch.nn.Module, runner: Any, backend: str,
                 static_shapes: bool) -> None:
        self.entry = entry
        self.name = entry.name
        self.runner = runner
        self.backend = backend
        self.static_shapes = static_shapes
        self.lock = threading.Lock()
        info = method_info(type(module), entry.method)
        self.signature = info.signature
        self.output_class = info.output_class
        self.defaults = signature_defaults(self.signature)
        self.params = {p["name"]: p for p in entry.input_tree["params"]}
        self.inputs = {i.name: i for i in entry.inputs}
        self.outputs = [(o.name, o.key, dtype_from_name(o.dtype)) for o in entry.outputs]
        self.dims = dict(entry.dims)
        self.constraints, self.unchecked = constraints.checkable(entry.constraints, self.dims)
        # the recorded call's shapes are always accepted: the graph was exported, run and verified at them, so a
        # constraint reading false there (a guard derived at a traced size 2, a mistranslation) does not bind there
        self._shapes_ok: set[tuple] = {tuple(tuple(i.example_shape) for i in entry.inputs)}
        self.calls = 0
        self.seconds = 0.0

    def _where(self) -> str:
        return f"graph {self.name!r} ({self.entry.label}, {self.backend})"

    def _fail(self, problems: Sequence[str]) -> RuntimeMismatchError:
        body = "\n  - ".join(problems)
        return RuntimeMismatchError(
            f"{self._where()} cannot answer this call; the export does not cover it:\n  - {body}\n"
            f"(or run this module in PyTorch: load(..., graphs=[...]) without {self.name!r})")

    # ------------------------------------------------------------------------------------------ input
    def bind(self, args: tuple, kwargs: dict) -> tuple[dict[str, dict], dict[str, Any]]:
        """The call as ``({param: node}, {flat name: leaf})``, like the recorder saw it."""
        leaves: dict[str, Any] = {}
        nodes = {n: tree.flatten(v, n, leaves)[0] for n, _k, v in bind_call(self.signature, args, kwargs)}
        return nodes, leaves

    def match(self, nodes: Mapping[str, dict], leaves: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], Any]:
        """Check the call against the recorded one; return (feed, device of the tensor inputs)."""
        feed, problems = match_call(self.params, nodes, leaves, self.defaults, self.inputs)
        for n in self.entry.complex_inputs:  # exported as its (..., 2) real view
            if isinstance(feed.get(n), torch.Tensor) and feed[n].is_complex():
                feed[n] = torch.view_as_real(feed[n].resolve_conj())
        device = next((v.device for v in feed.values() if isinstance(v, torch.Tensor)), None)
        if not problems:
            problems.extend(self._check_tensors(feed))
        if problems:
            raise self._fail(problems)
        arrays: dict[str, np.ndarray] = {}
        for n, v in feed.items():
            arrays[n] = to_numpy(v) if isinstance(v, torch.Tensor) else np.asarray(v, dtype=_np_dtype(self.inputs[n].dtype))
        return arrays, device

    def index_problems(self, feed: Mapping[str, Any]) -> list[str]:
        """Integer inputs the graph uses as rows of a fixed table (token / position embeddings) holding an index
        past it: PyTorch raises there, a runtime may read another row and answer wrong numbers."""
        problems = []
        for n, last in self.entry.index_bounds.items():
            v = feed.get(n)
            if v is not None and getattr(v, "numel", lambda: 0)() and int(v.max()) > int(last):
                problems.append(f"input {n!r} holds {int(v.max())}, but the graph looks it up in a table of "
                                f"{int(last) + 1} rows (PyTorch raises IndexError here): keep it below "
                                f"{int(last) + 1} (e.g. a prompt plus max_new_tokens within the model's maximum length)")
        return problems

    def _check_tensors(self, feed: Mapping[str, Any]) -> list[str]:
        """Why the runtime cannot answer this feed, rule by rule (dtypes and missing inputs and index bounds; the
        fixed shapes of ``static_shapes``; ranks, fixed sizes and tied dims; derived sizes and constraints): the
        first rule that finds a problem answers. A shape key that passed once is not checked again."""
        shapes = {n: tuple(v.shape) if isinstance(v, torch.Tensor) else () for n, v in feed.items()}
        problems = self._dtype_problems(feed) + self._missing(feed) + self.index_problems(feed)
        key = tuple(shapes[n] for n in self.inputs) if not problems else None
        if problems or key in self._shapes_ok:
            return problems
        problems = self._static_problems(shapes)
        if problems:
            return problems
        problems, values, derived = self._size_problems(shapes)
        if problems:
            return problems
        problems = self._relation_problems(values, derived)
        if not problems:
            self._shapes_ok.add(key)
        return problems

    def _dtype_problems(self, feed: Mapping[str, Any]) -> list[str]:
        problems = []
        for n, v in feed.items():
            want, got = self.inputs[n].dtype, str(getattr(v, "dtype", "")).replace("torch.", "")
            if isinstance(v, torch.Tensor) and got != want:
                problems.append(f"input {n!r} is {got}, the graph was exported for {want}; cast it (or the "
                                f"module) to {want}, or record and export the pipeline in {got}")
        return problems

    def _missing(self, feed: Mapping[str, Any]) -> list[str]:
        missing = [n for n in self.inputs if n not in feed]
        return [f"this call gives no value for input(s) {', '.join(map(repr, missing))}; re-export"] if missing else []

    def _static_problems(self, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
        if not self.static_shapes:
            return []
        return [f"input {n!r} has shape {list(shape)}, but load(static_shapes=True) fixed this graph to the "
                f"recorded {list(self.inputs[n].example_shape)}; load with static_shapes=False to run other sizes"
                for n, shape in shapes.items() if shape != tuple(self.inputs[n].example_shape)]

    def _size_problems(self, shapes: Mapping[str, tuple[int, ...]]
                       ) -> tuple[list[str], dict[str, int], list[tuple[str, int, str]]]:
        """Ranks, fixed sizes and dims the export ties together; also the value of every named dim and the
        sizes given by an expression (checked by :meth:`_relation_problems`)."""
        problems: list[str] = []
        values: dict[str, int] = {}
        where: dict[str, str] = {}
        derived: list[tuple[str, int, str]] = []
        for n, shape in shapes.items():
            want = list(self.inputs[n].shape)
            if len(want) != len(shape):
                problems.append(f"input {n!r} has rank {len(shape)} (shape {list(shape)}), the graph was exported "
                                f"for rank {len(want)} ({want}); record a call like this one")
                continue
            for d, (w, s) in enumerate(zip(want, shape)):
                if isinstance(w, int) and w != s:
                    problems.append(
                        f"input {n!r} has size {s} at dim {d}, but the graph was exported with a fixed size "
                        f"{w} there; export with dynamic={{{self.name!r}: {{{n!r}: [{d}]}}}} (or record calls "
                        f"where it varies) to make it dynamic")
                elif isinstance(w, int):
                    continue
                elif w in self.dims and w in values and values[w] != s:
                    problems.append(f"dim {w!r} is {values[w]} in {where[w]} but {s} in {n}.{d}; the export "
                                    f"ties them together (they must be equal)")
                elif w in self.dims:
                    values.setdefault(w, s)
                    where.setdefault(w, f"{n}.{d}")
                else:
                    derived.append((w, s, f"{n}.{d}"))
        return problems, values, derived

    def _relation_problems(self, values: Mapping[str, int], derived: list[tuple[str, int, str]]) -> list[str]:
        problems = []
        for expr, s, at in derived:
            try:
                expected = constraints.evaluate(expr, values)
            except (KeyError, ValueError, ZeroDivisionError, SyntaxError):
                continue
            if expected != s:
                problems.append(f"{at} is {s}, but the export ties it to {expr} = {expected}")
        failed = list(dict.fromkeys(constraints.check(self.constraints, values, self.dims)))
        if failed:
            sizes = ", ".join(f"{k}={v}" for k, v in values.items())
            problems.append(f"this call's sizes ({sizes}) break the export's constraint(s) {'; '.join(failed)}; "
                            f"the graph only covers sizes that satisfy them (torch.export fixed the model's "
                            f"size-dependent branches and ties to the recorded call's side): call it at such sizes")
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
        spec = self.entry.output_tree
        wants = self._wants_dict(module, nodes)
        recorded_tuple = spec["t"] == "tuple" and bool(spec.get("fields")) and not spec.get("cls")
        if wants is True and recorded_tuple:
            if self.output_class is None:
                raise RuntimeMismatchError(
                    f"{self._where()}: this call asks for return_dict=True, the graph was exported from a "
                    f"return_dict=False call and the output class cannot be read from "
                    f"{type(module).__name__}.{self.entry.method}'s return annotation; pass return_dict=False, or "
                    f"record a call with return_dict=True")
            fields = {f: tree.unflatten(item, leaves) for f, item in zip(spec["fields"], spec["items"])}
            return self.output_class(**fields)
        if wants is False and spec["t"] == "object":
            return tree.unflatten(spec, leaves, as_tuple=True)
        return tree.unflatten(spec, leaves)

    # ------------------------------------------------------------------------------------------ call
    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        return self.answer(module, *self.bind(args, kwargs), call=(args, kwargs))

    def answer(self, module: torch.nn.Module, nodes: Mapping[str, dict], leaves: Mapping[str, Any],
               call: tuple[tuple, dict] | None = None) -> Any:
        """Answer a bound call (see :meth:`bind`); the tensors the recorded call put into its arguments' lists
        (``updated.*`` outputs) are put into this ``call``'s arguments too."""
        t0 = time.perf_counter()
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
        updates = {k[len(inplace.UPDATED):]: v for k, v in out.items() if k.startswith(inplace.UPDATED)}
        updates.update(self.entry.output_tree.get("updated") or {})  # markers the recorded call left ("Rep")
        if updates and call is not None:
            inplace.write_back([(n, v) for n, _k, v in bind_call(self.signature, *call)], updates)
        with self.lock:  # counted under the lock: calls from several threads all count
            self.calls += 1
            self.seconds += time.perf_counter() - t0
        return value


class ServedMethod:
    """One method of a module served by one or more graph variants (a decoder's first step without a cache and its
    later steps with one): each call goes to the variant recorded with the same structure (:func:`tree.skeleton`;
    a single variant takes every call and says what differs, as before)."""

    def __init__(self, variants: Sequence[ServedGraph]) -> None:
        self.variants = list(variants)
        self.structures = [_structure({p["name"]: p["node"] for p in v.entry.input_tree["params"]},
                                      frozenset(v.entry.promoted)) for v in self.variants]

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        first = self.variants[0]
        nodes, leaves = first.bind(args, kwargs)
        if len(self.variants) == 1:
            return first.answer(module, nodes, leaves, (args, kwargs))
        shape = _structure(nodes, frozenset())
        for v, recorded in zip(self.variants, self.structures):
            if recorded == shape:
                return v.answer(module, nodes, leaves, (args, kwargs))
        names = ", ".join(v.name for v in self.variants)
        raise RuntimeMismatchError(
            f"{first._where()}: this call's structure (which arguments are tensors, None, caches of which "
            f"length) matches none of the recorded variants ({names}); record a run that calls it this way")


def _structure(nodes: Mapping[str, Mapping[str, Any]], promoted: frozenset[str]) -> list:
    """A call's structure by parameter name (None and "not passed" alike; promoted scalars as constants)."""
    return sorted((name, tree.skeleton(node, promoted, name)) for name, node in nodes.items()
                  if not (node["t"] == "const" and node["value"] is None))
