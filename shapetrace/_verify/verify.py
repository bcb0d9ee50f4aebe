"""Prove that the exported graphs compute what PyTorch computes: :func:`verify`, the orchestration.

``verify(out_dir)`` runs every exported graph of an export folder on ONNX Runtime and OpenVINO (f32) and compares
each output with a reference, on two input sets per graph:

``example``
    the recorded example inputs (``<graph>.inputs.npz``).
``resized``
    new inputs that change every dynamic dim to another valid size (ranges and constraints respected:
    :func:`shapetrace.constraints.alternative_sizes`), drawn by :func:`shapetrace._verify.inputs.resized_inputs`
    (float inputs like the example's, integers within the recorded range, masks like padding; seeded).

The reference is PyTorch when the live object is passed (``verify(out_dir, pipe)``: the module is run through the
graph's flat wrapper on both sets, and also checked against the recorded outputs). From the folder alone, the
recorded ``<graph>.outputs.npz`` is the reference on ``example``, and on ``resized`` the first backend is the
reference of the others (with a single backend, ``resized`` only proves that the graph runs without NaN).

How outputs are compared (tolerances by dtype, NaN / inf / bool rules, the metrics) is :mod:`shapetrace._verify.compare`;
the records and the printed table are :mod:`shapetrace._verify.report`. Default tolerances (:data:`DEFAULT_TOLERANCES`, by
the output's dtype): float32 ``atol=1e-4, rtol=1e-3``, float16 ``atol=1e-2, rtol=1e-2``, bfloat16 ``atol=5e-2,
rtol=5e-2``, float64 ``atol=1e-7, rtol=1e-6``. Per-graph / per-output overrides:
``verify(..., tolerances={"unet": {"atol": 1e-3}, "unet:sample": {"rtol": 1e-2}})``.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .. import backends as be
from .. import constraints
from .. import manifest as manifest_mod
from ..backends.base import short_error
from .compare import (DEFAULT_TOLERANCES, OutputComparison, Tolerance, check_tolerance_keys, compare_arrays,
                      resolve_tolerance)
from ..errors import RunnerError, VerifyError
from .._core.files import load_npz
from .._export.flat import flat_module
from .inputs import input_sizes, other_sets, perturbed, resized_inputs
from ..manifest import GraphEntry, Manifest
from .._core.isa import cpu_isa
from .quality import held_out_checks, isa_notes, judge, quantized_bound
from .report import ParityCheck, ParityReport, render_report
from .rejudge import padding_only, within_sensitivity
from .selection import rejudged, tied_runs
from ..backends.openvino_stateful import STATEFUL_FILE, StatefulRunner
from .._core.tree import qualname
from .._core.walker import parse_path, resolve

__all__ = ["DEFAULT_TOLERANCES", "Tolerance", "OutputComparison", "ParityCheck", "ParityReport", "compare_arrays",
           "resolve_tolerance", "resized_inputs", "verify", "render_report"]


#: ``on_check(check, got, ref)``: sees every compared output's arrays (verify keeps none of them)
OnCheck = Callable[[ParityCheck, np.ndarray, np.ndarray], None]


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


def verify(out_dir: str | os.PathLike, obj: Any = None, *, backends: Iterable[str] = ("onnxruntime", "openvino"),
           atol: float | None = None, rtol: float | None = None,
           tolerances: Mapping[str, Mapping[str, float]] | None = None, graphs: Iterable[str] | None = None,
           device: str = "CPU", threads: int | None = None, seed: int = 0, write: bool = True,
           on_check: OnCheck | None = None, min_snr_db: float | Mapping[str, float] | None = None) -> ParityReport:
    """Run every exported graph in ``out_dir`` on ``backends`` and compare with a reference (module docstring).

    Args:
        out_dir: a folder written by :func:`shapetrace.export_all`.
        obj: the live object the export was made from; makes PyTorch the reference on both input sets.
        backends: any of ``"onnxruntime"``, ``"openvino"`` (OpenVINO runs with ``INFERENCE_PRECISION_HINT=f32``).
            A backend for which the export holds no file at all is left out, with a note.
        atol: overrides the float default of :data:`DEFAULT_TOLERANCES` for every float output.
        rtol: likewise, the relative tolerance.
        tolerances: per graph / per output overrides, applied after ``atol`` / ``rtol``; keys are a graph name or
            ``"graph:output"``, values ``{"atol": ..., "rtol": ...}`` (either key optional)::

                verify(out, tolerances={"unet": {"atol": 1e-3}, "vae.decode:sample": {"rtol": 1e-2}})

        graphs: check only these graphs (default: all).
        device: passed to the runners (``"CPU"``).
        threads: passed to the runners (default: the usable cores, at most 8).
        seed: seeds the ``resized`` input set.
        write: store the report as the manifest's ``"parity"`` (atomic rewrite).
        on_check: called as ``on_check(check, got, ref)`` with the arrays of every compared output, as each check
            is made (the HTML report's histograms and worst elements: :class:`shapetrace._report.evidence.EvidenceLog`).
        min_snr_db: the output SNR (dB) a quantized graph's OpenVINO checks must reach instead of the float
            tolerances (one value, or ``{graph: dB}``); default the bound its export recorded (20 dB unless
            chosen). Its held-out quality measured at export is judged against the same bound (input set
            ``held-out``).

    Returns the :class:`ParityReport` (truthy when every check passed). A problem of one graph -- a runtime that
    cannot load or compile its file, an unreadable data file, running out of memory -- is that graph's failed check
    (verdict ERROR, the reason in ``error``) and the other graphs go on. Raises only for the whole folder or the
    arguments: :class:`SignatureFileError` for a missing / corrupt / newer manifest, :class:`VerifyError` for files
    the manifest names that are not in the folder (checked before any work), bad tolerances / graphs / backends or
    an ``obj`` that lacks a graph's module, ``ImportError`` naming the extra to install when a runtime is missing.
    """
    out = Path(out_dir)
    manifest = manifest_mod.read(out)
    check_tolerance_keys(tolerances, {e.name: e.output_names for e in manifest.graphs})
    names, unknown = manifest_mod.pick(manifest.names, graphs)
    if unknown:
        raise VerifyError(f"graphs={unknown!r} are not in this export; it holds {', '.join(manifest.names)}")
    entries = [e for e in manifest.graphs if e.name in names]
    backends = tuple(backends)
    bad = [b for b in backends if b not in be.BACKENDS]
    if bad or not backends:
        raise VerifyError(f"backends={backends!r}: choose from {', '.join(be.BACKENDS)}")
    notes: list[str] = []
    usable = []
    for b in backends:
        kind = be.FILE_KIND[b]
        if any(e.file(kind) for e in entries):
            usable.append(b)
        elif any(e.ok for e in entries):
            notes.append(f"{b}: the export holds no {kind} files; not checked")
    for b in usable:  # fail early, before any work, when a runtime is missing
        (be.onnxruntime_backend.import_onnxruntime if b == "onnxruntime" else be.openvino_backend.import_openvino)()
    if not usable and any(e.ok for e in entries):
        raise VerifyError(f"nothing to compare in {out}: no graph has a file for {', '.join(backends)}")
    _check_files_present(out, entries, usable)

    isa = cpu_isa() if "openvino" in usable else None
    checks: list[ParityCheck] = []
    for entry in entries:
        bound = quantized_bound(entry, min_snr_db)
        if bound is not None and isa is not None:
            notes.extend(isa_notes(entry, isa))
        checks.extend(_verify_graph(out, entry, obj, usable, atol, rtol, tolerances, device, threads, seed, notes,
                                    on_check, bound))
        if bound is not None and "openvino" in usable:
            checks.extend(held_out_checks(entry, bound))
            if 0 in ((entry.quantization or {}).get("calibration") or {}).get("calls", []):
                notes.append(f"{entry.name}: its example inputs (call 0) also calibrated it; the held-out rows are "
                             f"measured on calls it never saw")
    report = ParityReport(tuple(checks), str(out), tuple(usable), tuple(notes), str(isa) if isa else "")
    if write:
        manifest_mod.store_parity(out, report.to_json())
    return report


def _verify_graph(out: Path, entry: GraphEntry, obj: Any, backends: Sequence[str], atol: float | None,
                  rtol: float | None, tolerances: Mapping[str, Any] | None, device: str, threads: int | None,
                  seed: int, notes: list[str], on_check: OnCheck | None = None,
                  bound: float | None = None) -> list[ParityCheck]:
    """The checks of one graph. Whatever goes wrong inside one graph (a runtime that cannot load or compile its
    file, an unreadable data file, running out of memory) is a failed check naming the reason, never an exception:
    the other graphs go on. Only a wrong ``obj`` (no such module in it) raises, before any work."""
    name = entry.name
    if entry.error is not None:
        return [ParityCheck.could_not_run(name, f"not exported: {entry.error}", output="-")]
    module = _live_module(obj, entry) if obj is not None else None
    checks: list[ParityCheck] = []
    try:
        _check_graph(out, entry, module, backends, atol, rtol, tolerances, device, threads, seed, notes, on_check,
                     checks, bound)
    except MemoryError as e:
        checks.append(ParityCheck.could_not_run(name, f"MemoryError: ran out of memory checking this "
                                                f"graph{f' ({e})' if str(e) else ''}; its other checks were not run"))
    except (RunnerError, VerifyError) as e:
        checks.append(ParityCheck.could_not_run(name, str(e)))
    except Exception as e:  # one graph never stops the others: its failure is its check
        checks.append(ParityCheck.could_not_run(name, f"{short_error(e)} (while checking this graph)"))
    return checks


def _open(stack: contextlib.ExitStack, runner: Any, name: str, checks: list[ParityCheck]) -> bool:
    """Enter ``runner``; a runtime that cannot load or compile the file is that backend's failed check."""
    try:
        stack.enter_context(runner)
        return True
    except Exception as e:  # RunnerError from the runtimes; MemoryError or anything else loading the model too
        reason = str(e) if isinstance(e, RunnerError) else short_error(e)
        checks.append(ParityCheck.could_not_run(name, reason, backend=runner.name))
        return False


def _check_graph(out: Path, entry: GraphEntry, module: Any, backends: Sequence[str], atol: float | None,
                 rtol: float | None, tolerances: Mapping[str, Any] | None, device: str, threads: int | None,
                 seed: int, notes: list[str], on_check: OnCheck | None, checks: list[ParityCheck],
                 bound: float | None = None) -> None:
    name = entry.name
    sets = _input_sets(out, entry, seed, notes)
    recorded = _load(out, entry, "outputs")
    torch_runner = None
    if module is not None:
        torch_runner = be.open_runner("torch", out, entry, device=_module_device(module), module=module)
    runners = []
    for b in backends:
        kind = be.FILE_KIND[b]
        if entry.file(kind):
            runners.append(be.open_runner(b, out, entry, device=device, threads=threads))
        elif kind == "onnx" and entry.no_onnx:  # degraded on purpose at export: said, not a failure
            notes.append(f"{name}: no ONNX file ({entry.no_onnx}); checked on "
                         f"{', '.join(x for x in backends if x != b) or 'no other backend'} only")
        else:
            checks.append(ParityCheck.could_not_run(name, f"no {kind} file for this graph in the manifest", backend=b))

    def compare(backend: str, reference: str, set_name: str, got: Mapping[str, np.ndarray],
                ref: Mapping[str, np.ndarray], set_sizes: Mapping[str, int]) -> None:
        for o in entry.outputs:
            tol = resolve_tolerance(name, o.name, o.dtype, atol=atol, rtol=rtol, tolerances=tolerances)
            if o.name not in ref:
                checks.append(ParityCheck(name, backend, reference, set_name, o.name, None,
                                          f"the reference has no output {o.name!r}", set_sizes))
                continue
            try:
                result = compare_arrays(got[o.name], ref[o.name], atol=tol.atol, rtol=tol.rtol, exact=tol.exact)
            except MemoryError as e:
                checks.append(ParityCheck(name, backend, reference, set_name, o.name, None,
                                          f"MemoryError: ran out of memory comparing this output ({e})", set_sizes))
                continue
            held_to = None
            if bound is not None and backend == "openvino" and not result.exact:  # quantized: an SNR, not atol
                result, held_to = judge(result, got[o.name], ref[o.name], bound, str(entry.quantization["mode"]),
                                        binding=set_name != "resized")
            elif not result.passed and reference == "torch" and backend != "torch" and not result.exact:
                result = padding_only(result, o.name, got[o.name], ref[o.name], feeds.get(set_name, {}), tol,
                                       name, backend, set_name, notes)
                if not result.passed:
                    result = within_sensitivity(result, o.name, probe(set_name), got[o.name], ref[o.name], name,
                                                 backend, set_name, notes)
                if not result.passed:
                    result = rejudged(result, o.name, tied(set_name), got[o.name], tol, name, backend, set_name,
                                      notes)
            checks.append(ParityCheck(name, backend, reference, set_name, o.name, result, None, set_sizes, held_to))
            if on_check is not None:
                on_check(checks[-1], got[o.name], ref[o.name])

    probes: dict[str, Any] = {}  # set name -> PyTorch's outputs on the perturbed feed (when a check failed)
    feeds: dict[str, Mapping[str, np.ndarray]] = {}

    def probe(set_name: str) -> Mapping[str, np.ndarray] | None:
        if set_name not in probes:
            try:
                probes[set_name] = torch_runner.infer(perturbed(feeds[set_name], seed)) if torch_runner else None
            except Exception:  # the probe is a refinement: without it the check stays failed
                probes[set_name] = None
        return probes[set_name]

    selections: dict[str, Any] = {}  # set name -> selection.TiedRuns, or None

    def tied(set_name: str) -> Any:
        if set_name not in selections:
            selections[set_name] = None if torch_runner is None else tied_runs(
                lambda: torch_runner.infer(feeds[set_name]), out, entry, feeds[set_name])
        return selections[set_name]

    stateful = None
    if "openvino" in backends and entry.file(STATEFUL_FILE):
        try:
            stateful = StatefulRunner(out, entry, device)
        except Exception as e:
            checks.append(ParityCheck.could_not_run(name, short_error(e), backend=StatefulRunner.name))
    with contextlib.ExitStack() as stack:
        if torch_runner is not None and not _open(stack, torch_runner, name, checks):
            torch_runner = None
        runners = [r for r in runners if _open(stack, r, name, checks)]
        for set_name, feed in sets:
            feeds[set_name] = feed
            set_sizes = input_sizes(entry, feed)
            reference_name, reference = None, None
            if torch_runner is not None:
                try:
                    reference_name, reference = "torch", torch_runner.infer(feed)
                except Exception as e:  # the live module cannot run the flat call: say so, fall back
                    reference_name, reference = None, None
                    for how, other in other_sets(entry, sets[0][1], seed) if set_name == "resized" else ():
                        try:  # the model refuses these sizes (a position table, dims tied in Python): try others
                            reference_name, reference = "torch", torch_runner.infer(other)
                        except Exception:
                            continue
                        notes.append(f"{name}: PyTorch refused the resized sizes {dict(set_sizes)} "
                                     f"({short_error(e)[:160]}); resized to {input_sizes(entry, other)} ({how}) "
                                     f"instead")
                        feed, set_sizes = other, input_sizes(entry, other)
                        feeds[set_name] = feed
                        break
                    if reference is None:
                        checks.append(ParityCheck.could_not_run(name, short_error(e), backend="torch", input_set=set_name, sizes=set_sizes))
                if reference is not None and set_name == "example":  # the live module still computes the export
                    compare("torch", "recorded", set_name, reference, recorded, set_sizes)
            if reference is None and set_name == "example":
                reference_name, reference = "recorded", recorded
            results: list[tuple[str, dict[str, np.ndarray]]] = []
            for r in runners:
                try:
                    results.append((r.name, r.infer(feed)))
                except RunnerError as e:  # a runtime rejecting the inputs (static shapes, ...) is a failed check
                    checks.append(ParityCheck.could_not_run(name, short_error(e.__cause__ or e), backend=r.name,
                                                            reference=reference_name or "-", input_set=set_name,
                                                            sizes=set_sizes))
            if stateful is not None and set_name == "example":  # the stateful IR, on the recorded cache
                try:
                    results.append((stateful.name, stateful.infer(feed)))
                except Exception as e:
                    checks.append(ParityCheck.could_not_run(name, short_error(e), backend=stateful.name,
                                                            reference=reference_name or "-", input_set=set_name,
                                                            sizes=set_sizes))
            if reference is None and results:  # resized without torch: the first backend is the reference
                reference_name, reference = results[0]
                if len(results) == 1:
                    compare(reference_name, "self", set_name, reference, reference, set_sizes)
                    notes.append(f"{name}: resized inputs ran on {reference_name} only; checked for NaN, not values")
                results = results[1:]
            for backend, got in results:
                compare(backend, reference_name or "-", set_name, got, reference, set_sizes)
            del results, reference
            probes.pop(set_name, None)


#: Above this many bytes of example outputs, the resized set tries smaller sizes first.
LARGE_OUTPUTS_BYTES = 256 << 20
_NP_SIZES = {"bfloat16": "float16", "bool": "bool"}


def _check_files_present(out: Path, entries: Sequence[GraphEntry], backends: Sequence[str]) -> None:
    """Every file the manifest names for the checks to run must be in the folder: a missing one means the folder is
    incomplete (copied in part, a file deleted), which no check can report on -- raise before any work."""
    missing = []
    for e in entries:
        if not e.ok:
            continue
        for kind in ("inputs", "outputs", *(be.FILE_KIND[b] for b in backends)):
            rel = e.file(kind)
            extra = {"openvino": [rel[:-4] + ".bin"] if rel and rel.endswith(".xml") else [],
                     "onnx": list(e.files.get("onnx_data") or [])}.get(kind, [])
            for f in [rel, *extra] if rel else []:
                if not (out / f).is_file():
                    missing.append((e.name, f"{out / f} not found (the {kind} file of graph {e.name!r})"))
    if missing:
        graphs = sorted({g for g, _ in missing})
        raise VerifyError(f"{'; '.join(m for _, m in missing)}; the export folder is incomplete: re-run export_all "
                          f"(or verify the other graphs: graphs=[...] without {', '.join(map(repr, graphs))})")


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
