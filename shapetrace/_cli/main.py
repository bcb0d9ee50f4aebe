"""The command line: ``python -m shapetrace {inspect,verify,export,run,demo} ...`` (also installed as ``shapetrace``).

``inspect PATH [--json]``
    a recording folder (``signatures.json``): the recorded graphs table; an export folder (``manifest.json``):
    every graph's files, inputs and outputs with dim names, dims with their ranges, constraints, constants, errors
    and the stored parity verdict. ``--json``: the same parts as JSON, for scripts (:func:`manifest_parts`).
``verify OUT [--report FILE]``
    runs :func:`shapetrace.verify` on an export folder and prints the :class:`~shapetrace.ParityReport` table;
    ``--report`` also writes the HTML report (:mod:`shapetrace._report.html`).
``export SOURCE OUT``
    records one run of SOURCE (a save_pretrained folder, ``module:function``, ``file.py:function``), exports and
    verifies it (:mod:`shapetrace._cli.export`).
``run OUT``
    rebuilds the exported object from the folder alone and runs it once on a call built from the options, printing
    which graph ran where and writing its output (:mod:`shapetrace._cli.run`).

Exit status: 0 when everything passed, 1 when a parity check failed (the last line names the worst graph and
output), 2 when the input is unusable (missing / corrupt / newer manifest, missing model files, a runtime not
installed, an unknown option): one line ``shapetrace: error: ...`` on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from . import export as cli_export, demo
from . import run as cli_run
from .. import manifest as manifest_mod
from .._core import table
from ..errors import ShapetraceError, SignatureFileError
from .._report.evidence import EvidenceLog
from .exitcodes import EXIT_FAILED, EXIT_OK, EXIT_UNUSABLE
from .._report.html import write_report
from ..manifest import MANIFEST, Manifest
from .._record.recording import Recording
from .._verify.verify import verify

__all__ = ["main", "build_parser", "render_manifest", "manifest_parts", "EXTRA_COMMANDS", "EXIT_OK", "EXIT_FAILED",
           "EXIT_UNUSABLE"]

# ---------------------------------------------------------------------------------------------- extra commands
#: More subcommands (``export``, ``demo``): each is ``register(subparsers)``, which adds its parser and sets
#: ``func=handler`` (``handler(args) -> int``) with ``set_defaults``. Errors they raise are handled like the
#: built-in commands' (ShapetraceError / ImportError -> exit 2).
EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def _register_demo(subparsers: Any) -> None:
    """``demo`` needs the diffusers / onnx / openvino extras: registered only when they import."""
    if demo.demo_unavailable() is None:
        demo.add_demo_command(subparsers)


EXTRA_COMMANDS.append(_register_demo)


def _register_extra_commands(subparsers: Any) -> None:
    for register in EXTRA_COMMANDS:
        register(subparsers)


# ---------------------------------------------------------------------------------------------- inspect
def _cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_file() and path.name in ("manifest.json", "signatures.json"):
        path = path.parent
    if (path / MANIFEST).exists():
        manifest = manifest_mod.read(path)
        print(json.dumps(manifest_parts(manifest, guards=args.guards), indent=2) if args.json
              else render_manifest(manifest))
        return EXIT_OK
    if (path / "signatures.json").exists():
        recording = Recording.load(path)
        print(json.dumps(json.loads((path / "signatures.json").read_text()), indent=2) if args.json
              else str(recording))
        return EXIT_OK
    if not path.exists():
        raise SignatureFileError(f"{path} does not exist")
    raise SignatureFileError(f"{path} holds neither manifest.json (an export) nor signatures.json (a recording)")


def _shape(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _table(rows: Sequence[Sequence[str]], indent: str = "    ") -> list[str]:
    return table.render(rows, rule=False, indent=indent)


def render_manifest(manifest: Manifest) -> str:
    """A readable summary of an export manifest (what ``inspect`` prints for an export folder): per graph its
    files, inputs and outputs with dim names, dims with their ranges, the constraints a call must respect (pruned;
    ``manifest.json`` keeps every raw guard under ``guards``), constants and errors, and the stored parity."""
    lines = [f"export of {manifest.object_class or '?'} (format {manifest.format_version}, "
             f"shapetrace {manifest.shapetrace_version or '?'})"]
    if manifest.tools:
        lines.append("tools: " + ", ".join(f"{k} {v}" for k, v in manifest.tools.items() if v))
    parity = manifest.parity
    if parity is None:
        lines.append("parity: not verified (run `python -m shapetrace verify`)")
    else:
        lines.append(parity.get("summary") or f"parity {'ok' if parity.get('passed') else 'FAILED'}")
    lines.append(f"{len(manifest.graphs)} graphs, {len(manifest.exported)} exported")
    for g in manifest.graphs:
        lines.append("")
        lines.append(f"graph {g.name}  ({g.module or '?'}.{g.method}, {g.cls.rsplit(':', 1)[-1]})")
        if g.error is not None:
            lines.append(f"  error: {g.error}")
            continue
        lines.append("  files: " + ", ".join(f"{k}={v}" for k, v in g.files.items() if v and not isinstance(v, list)))
        lines.append("  inputs:")
        lines.extend(_table([(i.name, i.dtype, _shape(i.shape), f"example {_shape(i.example_shape)}",
                              f"values {i.value_range[0]}..{i.value_range[1]}" if i.value_range else "")
                             for i in g.inputs]))
        lines.append("  outputs:")
        lines.extend(_table([(o.name, o.dtype, _shape(o.shape), f"example {_shape(o.example_shape)}")
                             for o in g.outputs]))
        if g.dims:
            lines.append("  dims:")
            lines.extend(_table([(n, f"min {d.min}", f"max {d.max if d.max is not None else '-'}",
                                  f"example {d.example}") for n, d in g.dims.items()]))
        else:
            lines.append("  dims: none (static)")
        if g.constraints:
            hidden = len(set(g.guards) - set(g.constraints))
            lines.append("  constraints:" + (f" ({hidden} more guards implied by these and the dim ranges: "
                                              f"manifest.json 'guards')" if hidden else ""))
            lines.extend(f"    {c}" for c in g.constraints)
        if g.constants:
            lines.append("  constants: " + ", ".join(f"{k}={v!r}" for k, v in g.constants.items()))
    return "\n".join(lines)


_PART_KEYS = ("name", "module", "method", "class", "files", "inputs", "outputs", "dims", "constraints", "constants",
              "promoted", "specialized", "error")


def manifest_parts(manifest: Manifest, guards: bool = False) -> dict:
    """What ``inspect OUT --json`` prints: the export's header, the parity verdict (without the per-check rows) and
    per graph its files, inputs / outputs with dim names, dims, the pruned ``constraints``, constants and error --
    the manifest's own JSON keys and values (``guards=True`` adds every raw guard)."""
    data = manifest.to_json()
    parity = data.get("parity")
    graphs = []
    for g in data.get("graphs", []):
        part = {k: g.get(k) for k in _PART_KEYS if k in g}
        part["ok"] = g.get("error") is None
        if guards:
            part["guards"] = g.get("guards", [])
        graphs.append(part)
    return {"format_version": data.get("format_version"), "shapetrace_version": data.get("shapetrace_version"),
            "object_class": data.get("object_class"), "created": data.get("created"), "tools": data.get("tools"),
            "parity": None if parity is None else {k: parity.get(k) for k in
                                                   ("passed", "summary", "num_checks", "num_failures", "backends")},
            "graphs": graphs}


# ---------------------------------------------------------------------------------------------- verify
def _cmd_verify(args: argparse.Namespace) -> int:
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    graphs = [g.strip() for g in args.graphs.split(",") if g.strip()] if args.graphs else None
    log = EvidenceLog() if args.report else None
    report = verify(args.out, backends=backends, atol=args.atol, rtol=args.rtol, graphs=graphs,
                    threads=args.threads, write=not args.no_write, on_check=log, min_snr_db=args.min_snr_db)
    print(str(report))
    if args.report:
        path = write_report(args.report, manifest_mod.read(args.out), report, out_dir=str(args.out),
                            evidence=log.items if log else ())
        print(f"report: {path}")
    return EXIT_OK if report else EXIT_FAILED


# ---------------------------------------------------------------------------------------------- parser
class _UsageError(Exception):
    """An argument argparse refuses (unknown option, bad value): main prints it on one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shapetrace", description="Record, export and verify the torch modules inside a pipeline.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="print a recording (signatures.json) or an export (manifest.json)")
    p.add_argument("path", metavar="PATH", help="a recording folder or an export folder")
    p.add_argument("--json", action="store_true", help="print the manifest's parts (or signatures.json) as JSON")
    p.add_argument("--guards", action="store_true", help="with --json: also every raw guard torch.export reported")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("verify", help="run an export on ONNX Runtime / OpenVINO and compare with the recorded outputs")
    p.add_argument("out", metavar="OUT", help="an export folder (with manifest.json)")
    p.add_argument("--backends", default="onnxruntime,openvino", help="comma separated (default: %(default)s)")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance for every float output "
                   "(default: by dtype, 1e-4 for float32)")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance for every float output "
                   "(default: by dtype, 1e-3 for float32)")
    p.add_argument("--min-snr-db", type=float, default=None, help="output SNR a quantized graph must reach "
                   "(default: the bound its export recorded, 20 dB unless chosen)")
    p.add_argument("--graphs", default=None, help="comma separated graph names (default: all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per runtime")
    p.add_argument("--no-write", action="store_true", help="do not store the result in manifest.json")
    p.add_argument("--report", metavar="FILE", default=None, help="also write the HTML parity report to FILE")
    p.set_defaults(func=_cmd_verify)

    cli_export.add_export_command(sub)
    cli_run.add_run_command(sub)
    _register_extra_commands(sub)
    return parser


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 parity failed, 2 unusable input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        message = " ".join(str(e).split())
        words = list(sys.argv[1:] if argv is None else argv)
        command = next((w for w in words if not w.startswith("-")), None)
        if command in _commands(parser):
            message = message.replace(f"(see {parser.prog} --help)", f"(see {parser.prog} {command} --help)")
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return EXIT_UNUSABLE
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_UNUSABLE
    try:
        return int(func(args))
    except (ShapetraceError, ImportError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `shapetrace inspect OUT | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
