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

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


from .. import backends as be
from .. import manifest as manifest_mod
from .compare import (DEFAULT_TOLERANCES, OutputComparison, Tolerance, check_tolerance_keys, compare_arrays,
                      resolve_tolerance)
from ..errors import VerifyError
from .inputs import resized_inputs
from ..manifest import GraphEntry
from .._core.isa import cpu_isa
from .quality import held_out_checks, isa_notes, quantized_bound
from .genai_check import BACKEND as GENAI_BACKEND
from .genai_check import genai_checks
from .graph_check import CheckOptions, GraphCheck, OnCheck
from .report import ParityCheck, ParityReport, render_report

__all__ = ["DEFAULT_TOLERANCES", "Tolerance", "OutputComparison", "ParityCheck", "ParityReport", "compare_arrays",
           "resolve_tolerance", "resized_inputs", "verify", "render_report"]


def verify(out_dir: str | os.PathLike, obj: Any = None, *, backends: Iterable[str] = ("onnxruntime", "openvino"),
           atol: float | None = None, rtol: float | None = None,
           tolerances: Mapping[str, Mapping[str, float]] | None = None, graphs: Iterable[str] | None = None,
           device: str = "CPU", threads: int | None = None, seed: int = 0, write: bool = True,
           on_check: OnCheck | None = None, min_snr_db: float | Mapping[str, float] | None = None,
           genai: bool = True) -> ParityReport:
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
        genai: also check the export's GenAI folder (``export_all(..., genai=True)``) in OpenVINO GenAI against
            the live object's PyTorch, at another size than the recorded one (backend ``genai``, graph
            ``genai/``: :mod:`shapetrace._verify.genai_check`); without ``obj`` a note says it was not checked.

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
    options = CheckOptions(tuple(usable), atol, rtol, tolerances, device, threads, seed, on_check)
    for entry in entries:
        bound = quantized_bound(entry, min_snr_db)
        if bound is not None and isa is not None:
            notes.extend(isa_notes(entry, isa))
        checks.extend(GraphCheck(out, entry, obj, options, notes, bound).run())
        if bound is not None and "openvino" in usable:
            checks.extend(held_out_checks(entry, bound))
            if 0 in ((entry.quantization or {}).get("calibration") or {}).get("calls", []):
                notes.append(f"{entry.name}: its example inputs (call 0) also calibrated it; the held-out rows are "
                             f"measured on calls it never saw")
    if genai and graphs is None:
        folder = genai_checks(out, manifest, obj, seed, notes)
        checks.extend(folder)
        usable += [GENAI_BACKEND] if folder else []
    report = ParityReport(tuple(checks), str(out), tuple(usable), tuple(notes), str(isa) if isa else "")
    if write:
        manifest_mod.store_parity(out, report.to_json())
    return report


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


