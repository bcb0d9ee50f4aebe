"""The command line through the real entry point (`python -m shapetrace`): output and exit codes 0 / 1 / 2."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import shapetrace
from shapetrace._cli import main as cli

from _tiny import Tiny, shift_linear_weights, tiny_inputs

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "shapetrace", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def _one_error_line(proc, *phrases):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shapetrace: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------ verify


def test_verify_passes_with_exit_0_and_stores_the_parity(tiny):
    proc = run_cli("verify", tiny)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["graph", "backend", "vs", "inputs", "output"]
    assert lines[-1] == "parity ok: 9 checks passed"  # 3 outputs x (ORT, OpenVINO on example; OV vs ORT resized)
    assert sum(line.endswith(" pass") for line in lines) == 9
    parity = json.loads((tiny / "manifest.json").read_text())["parity"]
    assert parity["passed"] is True and parity["num_checks"] == 9 and parity["backends"] == ["onnxruntime",
                                                                                            "openvino"]


def test_verify_mismatch_exits_1_naming_the_graph_and_output(tiny):
    shift_linear_weights(tiny, 0.05)
    proc = run_cli("verify", tiny, "--backends", "onnxruntime")
    assert proc.returncode == 1, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("parity FAILED: ")
    assert "worst: graph 'tiny' output 'h' on onnxruntime vs recorded (example inputs): max abs error" in last
    assert json.loads((tiny / "manifest.json").read_text())["parity"]["passed"] is False


@pytest.mark.parametrize("breakage,phrases", [
    ("no manifest", ["manifest.json not found", "is this a folder written by shapetrace?"]),
    ("corrupt json", ["is not a readable export manifest", "re-create it"]),
    ("format_version 99", ["format_version 99, newer than this shapetrace reads (1); upgrade shapetrace"]),
    ("missing onnx", ["tiny.onnx not found (the onnx file of graph 'tiny')", "re-run export_all"]),
])
def test_unusable_input_exits_2_with_one_line(tiny, breakage, phrases):
    manifest = tiny / "manifest.json"
    if breakage == "no manifest":
        manifest.unlink()
    elif breakage == "corrupt json":
        manifest.write_text(manifest.read_text()[:-40])
    elif breakage == "format_version 99":
        manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), format_version=99)))
    else:
        (tiny / "tiny.onnx").unlink()
    _one_error_line(run_cli("verify", tiny), *phrases)


def test_verify_flags_reach_verify_in_process(tiny, capsys):
    # float noise between the runtimes (~1e-7) fails at zero tolerance and passes at 1e-5
    assert cli.main(["verify", str(tiny), "--atol", "0", "--rtol", "0", "--no-write"]) == cli.EXIT_FAILED
    assert cli.main(["verify", str(tiny), "--atol", "1e-5", "--rtol", "0", "--no-write"]) == cli.EXIT_OK
    assert cli.main(["verify", str(tiny), "--graphs", "tiny", "--backends", "openvino", "--no-write"]) == 0
    assert json.loads((tiny / "manifest.json").read_text())["parity"] is None
    assert cli.main(["verify", str(tiny), "--backends", "tensorrt"]) == cli.EXIT_UNUSABLE
    assert "shapetrace: error: backends=('tensorrt',): choose from onnxruntime, openvino" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ inspect


def test_inspect_an_export_folder(tiny):
    proc = run_cli("inspect", tiny)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "graph tiny  (model.forward, Tiny)" in text
    assert "parity: not verified" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["x", "float32", "[batch,", "seq,", "8]", "example", "[2,", "5,", "8]"] in lines
    with np.load(tiny / "tiny.inputs.npz") as z:
        lo, hi = int(z["ids"].min()), int(z["ids"].max())
    assert ["ids", "int64", "[batch,", "seq]", "example", "[2,", "5]", "values", f"{lo}..{hi}"] in lines
    assert ["positive", "bool", "[batch,", "seq,", "4]", "example", "[2,", "5,", "4]"] in lines
    assert ["batch", "min", "1", "max", "-", "example", "2"] in lines
    assert ["seq", "min", "1", "max", "64", "example", "5"] in lines


def test_inspect_a_recording_folder(tmp_path, capsys):
    torch.manual_seed(0)
    holder = {"model": Tiny().eval()}
    with shapetrace.record(holder) as rec:
        holder["model"](*tiny_inputs())
    rec.save(tmp_path / "rec")
    assert cli.main(["inspect", str(tmp_path / "rec" / "signatures.json")]) == 0  # the file itself works too
    out = capsys.readouterr().out
    assert out == str(shapetrace.Recording.load(tmp_path / "rec")) + "\n"
    assert "float32[2, 5, 8]" in out


def test_inspect_refuses_a_folder_that_is_neither(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path)]) == cli.EXIT_UNUSABLE
    err = capsys.readouterr().err.strip()
    assert err == f"shapetrace: error: {tmp_path} holds neither manifest.json (an export) nor signatures.json " \
                  f"(a recording)"


def test_inspect_shows_graphs_that_failed_and_the_stored_parity(tiny, capsys):
    manifest = json.loads((tiny / "manifest.json").read_text())
    manifest["graphs"].append({"name": "vae.encode", "module": "vae", "method": "encode", "class": "x:Vae",
                               "files": {}, "error": {"type": "FlattenError", "message": "cannot flatten it"}})
    manifest["parity"] = {"passed": False, "summary": "parity FAILED: 1 of 9 checks; worst: ..."}
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["inspect", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "2 graphs, 1 exported" in out and "parity FAILED: 1 of 9 checks" in out
    assert "graph vae.encode  (vae.encode, Vae)\n  error: FlattenError: cannot flatten it" in out


# ------------------------------------------------------------------------------------------ parser


def test_no_command_prints_usage_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage: shapetrace" in capsys.readouterr().err


def test_extra_commands_plug_in(monkeypatch, capsys):
    def register(subparsers):
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--fail", action="store_true")

        def run(args):
            if args.fail:
                raise shapetrace.ExportError("cannot export: \nthe folder is read-only")
            print("hello")
            return 0

        p.set_defaults(func=run)

    monkeypatch.setattr(cli, "EXTRA_COMMANDS", [register])
    assert cli.main(["hello"]) == 0 and capsys.readouterr().out == "hello\n"
    assert cli.main(["hello", "--fail"]) == 2
    assert capsys.readouterr().err == "shapetrace: error: cannot export: the folder is read-only\n"
