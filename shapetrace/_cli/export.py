"""``shapetrace export SOURCE OUT``: record one run of SOURCE, export every graph to ONNX + OpenVINO IR, verify,
and optionally write the HTML report. SOURCE is a folder saved with ``save_pretrained``, ``module:function`` or
``path/to/file.py:function`` (:mod:`shapetrace._sources.sources`); ``--model DIR`` is optimum-cli's spelling of SOURCE.

Prints what it runs, the recorded signature table, per-graph progress (elapsed time, size), the parity table, and a
last line with the verdict. Exit status as for ``verify``: 0 everything exported and passed, 1 a graph failed to
export or a parity check failed, 2 unusable input (bad option, a SOURCE that cannot be loaded or run, an existing
export without ``--overwrite``): one ``shapetrace: error: ...`` line, nothing written.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .._report import e2e
from .._sources import sources
from ..errors import SourceError
from .._report.evidence import EvidenceLog
from .callopts import add_call_arguments, call_json, check_sizes
from .exitcodes import EXIT_FAILED, EXIT_OK
from .._flow.export_all import export_all
from .._report.html import write_report
from ..manifest import MANIFEST
from .._sources.sources import CallOptions

__all__ = ["add_export_command", "run_export", "EPILOG"]

EPILOG = """\
SOURCE
  DIR                     a folder saved with save_pretrained: a diffusers pipeline (model_index.json) or a
                          transformers model (config.json; task from its architecture or --task). It runs once on
                          a call built from the options, or on a default call for its class. Never downloads.
  module:function         user code (module importable from here, or path/to/file.py:function). The function
  file.py:function        takes no argument and returns (obj, run): shapetrace records run() (or run(obj)); or it
                          takes record= (shapetrace.record) and records obj itself, then returns obj.

exit status: 0 exported and verified, 1 a graph failed to export or a parity check failed, 2 unusable input.
"""


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def add_export_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export`` to a CLI's subparsers."""
    p = subparsers.add_parser(
        "export", help="record a run of SOURCE, export every graph to ONNX + OpenVINO IR and verify it",
        description="Record one run of SOURCE, export every torch module it called to ONNX and OpenVINO IR with "
                    "dynamic axes, and verify parity on ONNX Runtime and OpenVINO.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", metavar="SOURCE", help="a save_pretrained folder, module:function or "
                   "file.py:function")
    p.add_argument("out", nargs="?", metavar="OUT", help="the export folder to write")
    p.add_argument("-m", "--model", metavar="SOURCE", default=None, help="SOURCE, optimum-cli style "
                   "(`shapetrace export --model DIR OUT`)")
    call = p.add_argument_group("the call that is recorded (default: a built-in call for the pipeline's class)")
    add_call_arguments(call, "transformers pipeline task (default: from config.json), or text-to-image / "
                             "image-to-image / inpainting for a diffusers folder")
    call.add_argument("--library", choices=("diffusers", "transformers"), default=None,
                      help="which library loads the folder (default: by its files)")
    call.add_argument("--trust-remote-code", action="store_true", help="allow the folder's own model code")
    call.add_argument("--include", default=None, help="record only these module paths / globs (comma separated)")
    call.add_argument("--exclude", default=None, help="do not record these module paths / globs (comma separated)")
    ex = p.add_argument_group("export (as shapetrace.export_all)")
    ex.add_argument("--formats", default="onnx,openvino", help="comma separated (default: %(default)s)")
    ex.add_argument("--graphs", default=None, help="export only these recorded graphs (comma separated)")
    ex.add_argument("--static", action="store_true", help="no dynamic dim (dynamic='static')")
    ex.add_argument("--dynamic", metavar="JSON", default=None,
                    help="which dims are dynamic: '{\"unet\": {\"sample\": [0, 2, 3]}}' (default: auto)")
    ex.add_argument("--fp16", action="store_true", help="compress OpenVINO IR weights to fp16")
    ex.add_argument("--weight-format", choices=("fp32", "fp16"), default=None,
                    help="optimum-cli's spelling: fp16 is --fp16 (int8 / int4 are not supported yet)")
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    ex.add_argument("--openvino-from", choices=("auto", "torch", "onnx"), default="auto",
                    help="what the IR is converted from (default: %(default)s)")
    ex.add_argument("--genai", action="store_true",
                    help="also write OUT/genai/, the folder OpenVINO GenAI opens: LLMPipeline (a decoder-only "
                         "language model's generate), WhisperPipeline (a speech-recognition encoder-decoder's) or "
                         "Text2ImagePipeline (a diffusers text-to-image pipeline); any other object: a one-line "
                         "note, the rest exports")
    ex.add_argument("--overwrite", action="store_true", help="replace an export already in OUT")
    ver = p.add_argument_group("verify")
    ver.add_argument("--no-verify", action="store_true", help="skip the parity checks")
    ver.add_argument("--backends", default="onnxruntime,openvino", help="comma separated (default: %(default)s)")
    ver.add_argument("--atol", type=float, default=None, help="absolute tolerance for every float output")
    ver.add_argument("--rtol", type=float, default=None, help="relative tolerance for every float output")
    ver.add_argument("--report", metavar="FILE", default=None,
                     help="write the HTML parity report (with the pipeline's images on each runtime) to FILE")
    p.set_defaults(func=run_export)
    return p


def _options(args: argparse.Namespace) -> tuple[str, Path, CallOptions, dict[str, Any]]:
    """Check every argument before any work; SourceError (exit 2) for the first that is wrong."""
    source, out = args.source, args.out
    if args.model is not None:
        if out is not None:
            raise SourceError(f"pass SOURCE either as --model or as the first argument, not both "
                              f"({args.model!r} and {source!r})")
        source, out = args.model, source
    if source is None or out is None:
        raise SourceError("export needs SOURCE and OUT: shapetrace export SOURCE OUT (see shapetrace export --help)")
    call_kwargs = call_json(args)
    dynamic: Any = "static" if args.static else "auto"
    if args.dynamic:
        if args.static:
            raise SourceError("pass --static or --dynamic, not both")
        try:
            dynamic = json.loads(args.dynamic)
        except ValueError as e:
            raise SourceError(f"--dynamic is not valid JSON ({e})") from e
    check_sizes(args)
    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise SourceError(f"OUT {out} is a file; pass a folder for the export")
    if (out_path / MANIFEST).exists() and not args.overwrite:
        raise SourceError(f"{out} already holds an export ({MANIFEST}); pass --overwrite to replace it")
    formats = _csv(args.formats) or []
    backends = _csv(args.backends) or []
    options = CallOptions(args.prompt, args.image, args.height, args.width, args.steps, args.max_new_tokens,
                          call_kwargs, args.seed, args.task, args.library, args.trust_remote_code)
    export_kwargs = dict(formats=formats, graphs=_csv(args.graphs), dynamic=dynamic, overwrite=args.overwrite,
                         opset=args.opset, compress_to_fp16=args.fp16 or args.weight_format == "fp16",
                         openvino_from=args.openvino_from, verify=not args.no_verify, genai=args.genai)
    if not args.no_verify:
        export_kwargs.update(backends=tuple(backends), atol=args.atol, rtol=args.rtol)
    return source, out_path, options, export_kwargs


def run_export(args: argparse.Namespace) -> int:
    """The ``export`` command (see the module docstring); returns the exit status."""
    source_spec, out, options, export_kwargs = _options(args)
    include, exclude = _csv(args.include), _csv(args.exclude)
    t0 = time.perf_counter()
    source = sources.open_source(source_spec, options, include=include, exclude=exclude)
    call = ", ".join(f"{k}={v}" for k, v in source.call.items())
    print(f"source: {source.label}" + (f"\ncall: {call}" if call else ""), flush=True)
    rec = sources.record_source(source, include=include, exclude=exclude, seed=options.seed)
    print(f"recorded {len(rec.graphs)} graphs in {time.perf_counter() - t0:.1f}s\n", flush=True)
    print(str(rec), flush=True)
    print(f"\nexport -> {out}", flush=True)
    log = EvidenceLog() if args.report and export_kwargs["verify"] else None
    if log is not None:
        export_kwargs["on_check"] = log
    result = export_all(source.obj, out, recording=rec, progress=True, **export_kwargs)
    print(str(result))
    if result.parity is not None:
        print()
        print(str(result.parity))
    if args.report:
        images, note = _end_to_end(source, out, result, options.seed, export_kwargs)
        path = write_report(args.report, result.manifest, result.parity, out_dir=str(out),
                            evidence=log.items if log else (), images=images, images_note=note, recording=rec,
                            title=f"shapetrace export of {source.label.replace(source.spec, Path(source.spec).name)}")
        print(f"\nreport: {path}")
    failed = [g for g in result.graphs.values() if not g]
    seconds = time.perf_counter() - t0
    if failed:
        print(f"export FAILED in {seconds:.1f}s: {len(failed)} of {len(result.graphs)} graphs did not export; "
              f"first: graph {failed[0].name!r}: {(failed[0].error or '')[:300]}")
    elif result.parity is not None and not result.parity:
        print(f"export FAILED in {seconds:.1f}s: {result.parity.summary()}")
    else:
        verified = result.parity.summary() if result.parity is not None else "not verified (--no-verify)"
        print(f"export ok in {seconds:.1f}s: {len(result.graphs)} graphs in {out}; {verified}")
    return EXIT_OK if result.ok else EXIT_FAILED


def _end_to_end(source: sources.Source, out: Path, result: Any, seed: int,
                export_kwargs: dict[str, Any]) -> tuple[list[e2e.RuntimeImages], str]:
    if source.run is None:
        return [], "No end-to-end images: the source function recorded the object itself and gave no callable to " \
                   "run it again (return (obj, run) for them)."
    if source.output is None:
        source.output = sources.run_once(source, seed)
    if not e2e.images_of(source.output):
        return [], f"No end-to-end images: the output of {source.label} holds no image."
    backends = [b for b in export_kwargs.get("backends", ("onnxruntime", "openvino"))
                if (b == "openvino" and "openvino" in export_kwargs["formats"])
                or (b == "onnxruntime" and "onnx" in export_kwargs["formats"])]
    ok = [g.name for g in result.graphs.values() if g]
    print(f"\nend to end: {source.label} on {', '.join(backends)} ({len(ok)} graphs served)", flush=True)
    images = e2e.compare_runtimes(source.obj, out, lambda: sources.run_once(source, seed), source.output, backends)
    for run in images[1:]:
        print(f"  {run.name}: " + (f"PSNR {run.psnr:.1f} dB, max abs {run.max_abs:.2e}" if run.error is None
                                    else f"error: {run.error}"))
    return images, ""
