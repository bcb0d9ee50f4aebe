"""``shapetrace run OUT``: rebuild the exported object from its folder alone (:func:`shapetrace.load_pipeline`), run
it once on a call built from the options, write what it returns, and print which graph ran where.

The call is built as ``export`` builds its recorded call (prompt, image, size, steps, ``--call-json``; a
transformers pipeline by its task). ``--output FILE``: images as PNG (``FILE``, then ``FILE-1.png``...), text as
UTF-8, anything else as JSON; without it the output is printed. Exit status: 0 it ran, 2 unusable input (no such
folder, an export without a skeleton, a call the export cannot answer): one ``shapetrace: error: ...`` line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._report.e2e import images_of
from .._serve.deployed import load_pipeline, runtime_of
from .._sources.hf import CallOptions, call_for
from ..errors import SourceError
from .callopts import add_call_arguments, call_json, check_sizes
from .exitcodes import EXIT_OK

__all__ = ["add_run_command", "run_folder", "write_output"]


def add_run_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``run`` to a CLI's subparsers."""
    p = subparsers.add_parser(
        "run", help="rebuild the exported object from OUT alone (no PyTorch weights) and run it once",
        description="Rebuild the object exported into OUT from its skeleton, every exported module served on the "
                    "runtime, run it once on a call built from the options and write its output.",
        epilog="exit status: 0 it ran, 2 unusable input (no export, no skeleton, a call the export cannot answer).")
    p.add_argument("out", metavar="OUT", help="an export folder written by export_all / shapetrace export")
    call = p.add_argument_group("the call (default: a built-in call for the object's class, as export's)")
    add_call_arguments(call, "transformers pipeline task (default: the pipeline's own)")
    serve = p.add_argument_group("serving (as shapetrace.load)")
    serve.add_argument("--backend", choices=("openvino", "onnxruntime"), default="openvino",
                       help="the runtime (default: %(default)s)")
    serve.add_argument("--device", default="CPU", help="the runtime's device (default: %(default)s)")
    serve.add_argument("--precision", choices=("f32", "bf16", "f16"), default="f32",
                       help="OpenVINO inference precision (default: %(default)s)")
    serve.add_argument("--stateful", action="store_true", help="serve a decoder step from its stateful IR")
    serve.add_argument("--cache-dir", metavar="DIR", default=None,
                       help="OpenVINO model cache: a second run compiles nothing")
    p.add_argument("--output", metavar="FILE", default=None, help="where to write the output (default: print it)")
    p.set_defaults(func=run_folder)
    return p


def _options(args: argparse.Namespace) -> CallOptions:
    call_kwargs = call_json(args)
    check_sizes(args)
    if not Path(args.out).is_dir():
        raise SourceError(f"OUT {args.out} is not a folder; pass the folder export_all wrote")
    return CallOptions(args.prompt, args.image, args.height, args.width, args.steps, args.max_new_tokens,
                       call_kwargs, args.seed, args.task)


def run_folder(args: argparse.Namespace) -> int:
    """The ``run`` command (see the module docstring); returns the exit status."""
    options = _options(args)
    t0 = time.perf_counter()
    obj = load_pipeline(args.out, backend=args.backend, device=args.device, precision=args.precision,
                        stateful=args.stateful, **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    runtime = runtime_of(obj)
    try:
        print(f"loaded {type(obj).__name__} from {args.out} in {time.perf_counter() - t0:.1f}s "
              f"({len(runtime.served)} graphs on {runtime.backend})", flush=True)
        run, shown = call_for(obj, options)
        print("call: " + ", ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
        t1 = time.perf_counter()
        output = run()
        print(f"ran in {time.perf_counter() - t1:.1f}s\n", flush=True)
        print(runtime.summary())
        written = write_output(output, Path(args.output)) if args.output else []
    finally:
        runtime.close()
    if written:
        print("\nwrote " + ", ".join(map(str, written)))
    elif not args.output:
        print("\n" + _text(output))
    return EXIT_OK


def _text(output: Any) -> str:
    if isinstance(output, str):
        return output
    try:
        return json.dumps(output, indent=2, default=_jsonable)
    except (TypeError, ValueError):
        return repr(output)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return repr(value)


def write_output(output: Any, path: Path) -> list[Path]:
    """Write ``output``: its images as PNG (``path``, ``path-1.png``...), else text or JSON; the files written."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = images_of(output)
    if images:
        paths = [path if i == 0 else path.with_name(f"{path.stem}-{i}.png") for i in range(len(images))]
        for p, image in zip(paths, images):
            Image.fromarray((np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)).save(p, format="PNG")
        return paths
    path.write_text(_text(output), encoding="utf-8")
    return [path]
