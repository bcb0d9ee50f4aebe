"""The checks of one exported graph (what :func:`shapetrace.verify` runs for each): :class:`GraphCheck` opens the
graph's runners, builds its input sets (``example``, ``resized``), finds the reference on each (PyTorch, else the
recorded outputs, else the first backend), runs every backend, compares every output and re-judges a failed float
comparison (padding, sensitivity, ties: :mod:`shapetrace._verify.rejudge`, :mod:`shapetrace._verify.selection`)
or holds a quantized IR to its SNR bound (:mod:`shapetrace._verify.quality`).

Whatever goes wrong inside one graph (a runtime that cannot load or compile its file, an unreadable data file,
running out of memory) is a failed check naming the reason, never an exception: the other graphs go on.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import backends as be
from .. import constraints
from .._core.files import load_npz
from .._core.tree import qualname
from .._core.walker import parse_path, resolve
from .._export.flat import flat_module
from ..backends.base import short_error
from ..backends.openvino_stateful import STATEFUL_FILE, StatefulRunner
from ..errors import RunnerError, VerifyError
from ..manifest import GraphEntry
from .compare import compare_arrays, resolve_tolerance
from .inputs import input_sizes, other_sets, perturbed, resized_inputs
from .quality import judge
from .rejudge import padding_only, within_sensitivity
from .report import ParityCheck
from .selection import rejudged, tied_runs

__all__ = ["CheckOptions", "GraphCheck", "LARGE_OUTPUTS_BYTES", "OnCheck"]

#: ``on_check(check, got, ref)``: sees every compared output's arrays (verify keeps none of them)
OnCheck = Callable[[ParityCheck, np.ndarray, np.ndarray], None]
#: Above this many bytes of example outputs, the resized set tries smaller sizes first.
LARGE_OUTPUTS_BYTES = 256 << 20
_NP_SIZES = {"bfloat16": "float16", "bool": "bool"}
Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class CheckOptions:
    """What :func:`shapetrace.verify` was asked, the same for every graph."""

    backends: Sequence[str]
    atol: float | None = None
    rtol: float | None = None
    tolerances: Mapping[str, Any] | None = None
    device: str = "CPU"
    threads: int | None = None
    seed: int = 0
    on_check: OnCheck | None = None


class GraphCheck:
    """The checks of one graph: ``GraphCheck(out, entry, obj, options, notes, bound).run() -> [ParityCheck]``.
    ``notes`` collects what the report says beside the checks; ``bound`` is a quantized graph's SNR bound (dB).
    Only a wrong ``obj`` (no such module in it) raises, when the check is made, before any work."""

    def __init__(self, out: Path, entry: GraphEntry, obj: Any, options: CheckOptions, notes: list[str],
                 bound: float | None = None) -> None:
        self.out, self.entry, self.name, self.opts = out, entry, entry.name, options
        self.notes, self.bound = notes, bound
        self.module = _live_module(obj, entry) if obj is not None and entry.error is None else None
        self.checks: list[ParityCheck] = []
        self.torch: Any = None  # the torch runner, once open
        self.feeds: dict[str, Outputs] = {}
        self._probes: dict[str, Any] = {}  # set name -> PyTorch's outputs on the perturbed feed (a check failed)
        self._ties: dict[str, Any] = {}  # set name -> selection.TiedRuns, or None

    def run(self) -> list[ParityCheck]:
        if self.entry.error is not None:
            return [ParityCheck.could_not_run(self.name, f"not exported: {self.entry.error}", output="-")]
        try:
            self._run()
        except MemoryError as e:
            self._failed(f"MemoryError: ran out of memory checking this graph{f' ({e})' if str(e) else ''}; its "
                         f"other checks were not run")
        except (RunnerError, VerifyError) as e:
            self._failed(str(e))
        except Exception as e:  # noqa: BLE001 -- one graph never stops the others: its failure is its check
            self._failed(f"{short_error(e)} (while checking this graph)")
        return self.checks

    def _failed(self, why: str, **where: Any) -> None:
        self.checks.append(ParityCheck.could_not_run(self.name, why, **where))

    # ---- the runners
    def _runners(self) -> list[Any]:
        runners, entry, opts = [], self.entry, self.opts
        for b in opts.backends:
            kind = be.FILE_KIND[b]
            if entry.file(kind):
                runners.append(be.open_runner(b, self.out, entry, device=opts.device, threads=opts.threads))
            elif kind == "onnx" and entry.no_onnx:  # degraded on purpose at export: said, not a failure
                others = ", ".join(x for x in opts.backends if x != b) or "no other backend"
                self.notes.append(f"{self.name}: no ONNX file ({entry.no_onnx}); checked on {others} only")
            else:
                self._failed(f"no {kind} file for this graph in the manifest", backend=b)
        return runners

    def _stateful(self) -> Any:
        if "openvino" not in self.opts.backends or not self.entry.file(STATEFUL_FILE):
            return None
        try:
            return StatefulRunner(self.out, self.entry, self.opts.device)
        except Exception as e:  # noqa: BLE001 -- the stateful file's failed check
            self._failed(short_error(e), backend=StatefulRunner.name)
            return None

    def _open(self, stack: contextlib.ExitStack, runner: Any) -> bool:
        """Enter ``runner``; a runtime that cannot load or compile the file is that backend's failed check."""
        try:
            stack.enter_context(runner)
            return True
        except Exception as e:  # noqa: BLE001 -- RunnerError from the runtimes; MemoryError or anything else too
            self._failed(str(e) if isinstance(e, RunnerError) else short_error(e), backend=runner.name)
            return False

    # ---- the sets, one after the other
    def _run(self) -> None:
        sets = _input_sets(self.out, self.entry, self.opts.seed, self.notes)
        recorded = _load(self.out, self.entry, "outputs")
        torch_runner = None
        if self.module is not None:
            torch_runner = be.open_runner("torch", self.out, self.entry, device=_module_device(self.module),
                                          module=self.module)
        runners = self._runners()
        stateful = self._stateful()
        with contextlib.ExitStack() as stack:
            self.torch = torch_runner if torch_runner is not None and self._open(stack, torch_runner) else None
            runners = [r for r in runners if self._open(stack, r)]
            for set_name, feed in sets:
                self._check_set(set_name, feed, sets[0][1], recorded, runners,
                                stateful if set_name == "example" else None)
                self._probes.pop(set_name, None)

    def _reference(self, set_name: str, feed: Outputs, example: Outputs) -> tuple[str | None, Any, Outputs]:
        """PyTorch's outputs on ``feed`` (or, where PyTorch refuses the resized sizes, on other resized sizes it
        takes: the feed then changes too): (reference name, outputs, feed), the name None when PyTorch fails."""
        try:
            return "torch", self.torch.infer(feed), feed
        except Exception as e:  # noqa: BLE001 -- the live module cannot run the flat call: say so, fall back
            sizes = input_sizes(self.entry, feed)
            for how, other in other_sets(self.entry, example, self.opts.seed) if set_name == "resized" else ():
                try:  # the model refuses these sizes (a position table, dims tied in Python): try others
                    ref = self.torch.infer(other)
                except Exception:  # noqa: BLE001 -- the next sizes
                    continue
                self.notes.append(f"{self.name}: PyTorch refused the resized sizes {dict(sizes)} "
                                  f"({short_error(e)[:160]}); resized to {input_sizes(self.entry, other)} ({how}) "
                                  f"instead")
                return "torch", ref, other
            self._failed(short_error(e), backend="torch", input_set=set_name, sizes=sizes)
            return None, None, feed

    def _check_set(self, set_name: str, feed: Outputs, example: Outputs, recorded: Outputs, runners: list[Any],
                   stateful: Any) -> None:
        reference_name, reference = None, None
        if self.torch is not None:
            reference_name, reference, feed = self._reference(set_name, feed, example)
            if reference is not None and set_name == "example":  # the live module still computes the export
                self._compare("torch", "recorded", set_name, reference, recorded, input_sizes(self.entry, feed))
        self.feeds[set_name] = feed
        sizes = input_sizes(self.entry, feed)
        if reference is None and set_name == "example":
            reference_name, reference = "recorded", recorded
        results: list[tuple[str, Outputs]] = []
        for r in [*runners, *([stateful] if stateful is not None else [])]:  # the stateful IR: on the recorded cache
            try:
                results.append((r.name, r.infer(feed)))
            except Exception as e:  # noqa: BLE001 -- a runtime rejecting the inputs (static shapes, ...) fails
                if r is stateful:      # its check; so does the stateful IR, whatever it raises
                    why = short_error(e)
                elif isinstance(e, RunnerError):
                    why = short_error(e.__cause__ or e)
                else:
                    raise
                self._failed(why, backend=r.name, reference=reference_name or "-", input_set=set_name, sizes=sizes)
        if reference is None and results:  # resized without torch: the first backend is the reference
            reference_name, reference = results[0]
            if len(results) == 1:
                self._compare(reference_name, "self", set_name, reference, reference, sizes)
                self.notes.append(f"{self.name}: resized inputs ran on {reference_name} only; checked for NaN, "
                                  f"not values")
            results = results[1:]
        for backend, got in results:
            self._compare(backend, reference_name or "-", set_name, got, reference, sizes)

    # ---- one output
    def _compare(self, backend: str, reference: str, set_name: str, got: Outputs, ref: Outputs,
                 sizes: Mapping[str, int]) -> None:
        opts = self.opts
        for o in self.entry.outputs:
            tol = resolve_tolerance(self.name, o.name, o.dtype, atol=opts.atol, rtol=opts.rtol,
                                    tolerances=opts.tolerances)
            if o.name not in ref:
                self._failed(f"the reference has no output {o.name!r}", backend=backend, reference=reference,
                             input_set=set_name, output=o.name, sizes=sizes)
                continue
            try:
                result = compare_arrays(got[o.name], ref[o.name], atol=tol.atol, rtol=tol.rtol, exact=tol.exact)
            except MemoryError as e:
                self._failed(f"MemoryError: ran out of memory comparing this output ({e})", backend=backend,
                             reference=reference, input_set=set_name, output=o.name, sizes=sizes)
                continue
            held_to = None
            if self.bound is not None and backend == "openvino" and not result.exact:  # quantized: an SNR
                result, held_to = judge(result, got[o.name], ref[o.name], self.bound,
                                        str(self.entry.quantization["mode"]), binding=set_name != "resized")
            elif not result.passed and reference == "torch" and backend != "torch" and not result.exact:
                result = self._rejudged(result, o.name, backend, set_name, got[o.name], ref[o.name], tol)
            self.checks.append(ParityCheck(self.name, backend, reference, set_name, o.name, result, None,
                                           dict(sizes), held_to))
            if opts.on_check is not None:
                opts.on_check(self.checks[-1], got[o.name], ref[o.name])

    def _rejudged(self, result: Any, output: str, backend: str, set_name: str, got: np.ndarray, ref: np.ndarray,
                  tol: Any) -> Any:
        """A failed float comparison against PyTorch, re-judged by the rules that can tell a right export from a
        wrong one there: padding positions, the model's own sensitivity, ties PyTorch broke its own way."""
        name, notes = self.name, self.notes
        result = padding_only(result, output, got, ref, self.feeds.get(set_name, {}), tol, name, backend, set_name,
                              notes)
        if not result.passed:
            result = within_sensitivity(result, output, self._probe(set_name), got, ref, name, backend, set_name,
                                        notes)
        if not result.passed:
            result = rejudged(result, output, self._tied(set_name), got, tol, name, backend, set_name, notes)
        return result

    def _probe(self, set_name: str) -> Outputs | None:
        if set_name not in self._probes:
            try:
                self._probes[set_name] = self.torch.infer(perturbed(self.feeds[set_name], self.opts.seed)) \
                    if self.torch else None
            except Exception:  # noqa: BLE001 -- the probe is a refinement: without it the check stays failed
                self._probes[set_name] = None
        return self._probes[set_name]

    def _tied(self, set_name: str) -> Any:
        if set_name not in self._ties:
            torch_runner, feed = self.torch, self.feeds[set_name]
            self._ties[set_name] = None if torch_runner is None else tied_runs(
                lambda: torch_runner.infer(feed), self.out, self.entry, feed)
        return self._ties[set_name]


def _live_module(obj: Any, entry: GraphEntry) -> Any:
    """The graph's flat wrapper around the live module of ``obj`` (forward(*inputs) -> tuple of outputs)."""
    try:
        _, _, module = resolve(obj, parse_path(entry.module))
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise VerifyError(f"graph {entry.name!r}: no module at {entry.module!r} in this "
                          f"{type(obj).__name__} ({e}); pass the object the export was made from") from e
    if entry.cls and qualname(type(module)) != entry.cls:
        raise VerifyError(f"graph {entry.name!r}: the module at {entry.module!r} is a "
                          f"{type(module).__name__}, the export was made from a {entry.cls.rsplit(':', 1)[-1]}; "
                          f"pass the object the export was made from")
    return flat_module(module, entry)


def _module_device(module: Any) -> str:
    for t in list(module.parameters())[:1] + list(module.buffers())[:1]:
        return str(t.device)
    return "cpu"


def _load(out: Path, entry: GraphEntry, kind: str) -> dict[str, np.ndarray]:
    rel = entry.file(kind)
    if not rel:
        raise VerifyError(f"graph {entry.name!r} names no {kind} file in the manifest; re-run export_all")
    return load_npz(out / rel, f"the example {kind} of graph {entry.name!r}", error=VerifyError)


def _input_sets(out: Path, entry: GraphEntry, seed: int, notes: list[str]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """``example`` (the recorded inputs) and, where a dim can change, ``resized``."""
    example = _load(out, entry, "inputs")
    missing = [n for n in entry.input_names if n not in example]
    if missing:
        raise VerifyError(f"{out / (entry.file('inputs') or '')} lacks input(s) {', '.join(map(repr, missing))} of "
                          f"graph {entry.name!r}; re-run export_all")
    sets: list[tuple[str, dict[str, np.ndarray]]] = [("example", example)]
    # big outputs (an LLM text encoder's logits over its vocabulary): check at smaller sizes, not twice the memory
    large = sum(math.prod(o.example_shape) * np.dtype(_NP_SIZES.get(o.dtype, "float32")).itemsize
                for o in entry.outputs) > LARGE_OUTPUTS_BYTES
    sizes = constraints.alternative_sizes(entry.dims, entry.constraints, smaller_first=large)
    if sizes:
        sets.append(("resized", resized_inputs(entry, example, sizes, seed)))
    else:
        notes.append(f"{entry.name}: no dynamic dim can change; checked on the example inputs only")
    return sets
