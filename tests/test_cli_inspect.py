"""`shapetrace inspect`: the pruned constraints of an export, and `--json` for scripts."""

import json
import shutil

import pytest
import torch

import shapetrace
from shapetrace._cli import main as cli

from _tiny import Tiny, tiny_inputs


@pytest.fixture
def tiny(tiny_dir, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(tiny_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["graphs"][0]
    entry["guards"] = ["(seq % 2) == 0", "seq != 1", "batch < 2147483648"]
    entry["constraints"] = ["(seq % 2) == 0"]  # what pruning keeps: the others follow from the dim ranges
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_inspect_shows_the_pruned_constraints_and_counts_the_rest(tiny, capsys):
    assert cli.main(["inspect", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "  constraints: (2 more guards implied by these and the dim ranges: manifest.json 'guards')\n" \
           "    (seq % 2) == 0\n" in out
    assert "seq != 1" not in out


def test_inspect_json_prints_the_manifest_parts(tiny, capsys):
    assert cli.main(["inspect", str(tiny), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format_version"] == 1 and data["object_class"] == "builtins:dict" and data["parity"] is None
    (graph,) = data["graphs"]
    assert graph["name"] == "tiny" and graph["ok"] is True and graph["error"] is None
    assert graph["files"]["onnx"] == "tiny.onnx"
    assert [(i["name"], i["shape"]) for i in graph["inputs"]] == [("x", ["batch", "seq", 8]), ("ids", ["batch", "seq"])]
    assert graph["dims"]["seq"] == {"min": 1, "max": 64, "example": 5, "sources": []}
    assert graph["constraints"] == ["(seq % 2) == 0"] and "guards" not in graph
    assert "input_tree" not in graph and "timings" not in graph  # the parts a script needs, not the internals


def test_inspect_json_with_guards_and_the_stored_parity(tiny, capsys):
    assert cli.main(["verify", str(tiny), "--backends", "onnxruntime"]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(tiny), "--json", "--guards"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["graphs"][0]["guards"] == ["(seq % 2) == 0", "seq != 1", "batch < 2147483648"]
    stored = json.loads((tiny / "manifest.json").read_text())["parity"]
    assert data["parity"] == {"passed": True, "summary": stored["summary"], "num_checks": stored["num_checks"],
                              "num_failures": 0, "backends": ["onnxruntime"]}  # the verdict, not every check


def test_inspect_json_of_a_recording_is_its_signatures_file(tmp_path, capsys):
    torch.manual_seed(0)
    holder = {"model": Tiny().eval()}
    with shapetrace.record(holder) as rec:
        holder["model"](*tiny_inputs())
    rec.save(tmp_path / "rec")
    assert cli.main(["inspect", str(tmp_path / "rec"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == json.loads((tmp_path / "rec" / "signatures.json").read_text())
    assert data["graphs"][0]["inputs"][0]["shape"] == [2, 5, 8]
