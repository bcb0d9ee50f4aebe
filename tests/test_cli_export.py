"""`shapetrace export SOURCE OUT`: save_pretrained folders (diffusers, transformers) and file.py:function sources
through the real entry point, their options, and unusable sources / options (exit 2, one line, nothing written)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from shapetrace._cli import main as cli
from shapetrace._sources import sources
from shapetrace._sources.hf import task_of
from shapetrace.testing import sd_pipeline, text_classification_pipeline

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=600, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "shapetrace", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def one_error_line(proc_or_err, *phrases, rc=None):
    """The contract of exit 2: one `shapetrace: error: ...` line on stderr, no traceback."""
    if isinstance(proc_or_err, subprocess.CompletedProcess):
        assert proc_or_err.returncode == 2, (proc_or_err.stdout, proc_or_err.stderr)
        assert proc_or_err.stdout == ""
        err = proc_or_err.stderr
    else:
        err = proc_or_err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shapetrace: error: "), err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd") / "sd"
    sd_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tc_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-tc") / "tc"
    text_classification_pipeline().save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ folders


def test_export_a_saved_diffusers_folder_with_call_options(sd_folder, tmp_path):
    out = tmp_path / "export"
    proc = run_cli("export", sd_folder, out, "--height", 96, "--width", 64, "--steps", 1, "--prompt", "a red cat",
                   "--graphs", "unet,vae.decode", "--backends", "onnxruntime")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert f"source: StableDiffusionPipeline from {sd_folder}" in text
    assert "prompt='a red cat', height=96, width=64, num_inference_steps=1" in text
    # the recorded signature table, the per-graph progress lines and the parity table are printed
    assert any(line.startswith("unet ") and "sample: float32[2, 4, 12, 8]" in line for line in text.splitlines())
    assert any(line.startswith("  unet: ") and line.endswith(" MB") for line in text.splitlines())
    assert "graph       backend      vs" in text and "parity ok:" in text
    assert text.strip().splitlines()[-1].startswith("export ok in ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["object_class"].endswith(":StableDiffusionPipeline")
    assert [g["name"] for g in manifest["graphs"]] == ["unet", "vae.decode"]  # --graphs
    assert manifest["parity"]["passed"] is True and manifest["parity"]["backends"] == ["onnxruntime"]
    unet = manifest["graphs"][0]
    assert unet["inputs"][0]["example_shape"] == [2, 4, 12, 8]  # --height 96 --width 64 reached the pipeline
    assert (out / unet["files"]["onnx"]).is_file() and (out / unet["files"]["openvino"]).is_file()


def test_export_a_saved_transformers_folder_with_the_default_call(tc_folder, tmp_path):
    out = tmp_path / "export"
    proc = run_cli("export", "--model", tc_folder, out, "--formats", "openvino", "--backends", "openvino")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(text-classification)" in proc.stdout  # the task read from config.json's architectures
    assert "inputs='chef in the kitchen'" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    (graph,) = manifest["graphs"]
    assert graph["name"] == "model" and graph["class"].endswith(":BertForSequenceClassification")
    assert graph["files"]["onnx"] is None and graph["files"]["openvino"] == "model.xml"  # --formats openvino
    assert "input_ids" in [i["name"] for i in graph["inputs"]]
    assert manifest["parity"]["passed"] is True


def test_task_from_the_config():
    assert task_of({"architectures": ["BertForSequenceClassification"]}) == "text-classification"
    assert task_of({"architectures": ["GPT2LMHeadModel"]}) == "text-generation"
    assert task_of({"architectures": ["ViTForImageClassification"]}) == "image-classification"
    assert task_of({"architectures": ["Unknown"]}) is None and task_of({}) is None


# ------------------------------------------------------------------------------------------ functions

_SOURCE = '''
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 3)

    def forward(self, x):
        return torch.tanh(self.lin(x))


class Holder:
    def __init__(self):
        torch.manual_seed(0)
        self.net = Net().eval()


def build():
    return Holder(), lambda obj: obj.net(torch.randn(2, 5, 6))


def build_and_record(record):
    holder = Holder()
    with record(holder):
        holder.net(torch.randn(4, 6))
    return holder


def broken():
    raise ValueError("the weights are not where I thought")


def forgets_to_run():
    return Holder()
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent(_SOURCE))
    return path


def test_export_from_a_file_function_source(user_file, tmp_path):
    out = tmp_path / "export"
    proc = run_cli("export", f"{user_file}:build", out, "--backends", "onnxruntime,openvino")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(line.startswith("net ") and "x: float32[2, 5, 6]" in line for line in proc.stdout.splitlines())
    manifest = json.loads((out / "manifest.json").read_text())
    (graph,) = manifest["graphs"]
    assert graph["name"] == "net" and graph["class"].endswith(":Net")
    assert graph["inputs"][0]["shape"][0] == "batch"  # dynamic axes as with export_all
    assert manifest["parity"]["passed"] is True
    with np.load(out / "net.inputs.npz") as z:
        assert z["x"].shape == (2, 5, 6)


def test_a_function_may_record_the_object_itself(user_file, tmp_path, capsys):
    out = tmp_path / "export"
    assert cli.main(["export", f"{user_file}:build_and_record", str(out), "--backends", "onnxruntime"]) == 0
    assert any(line.startswith("net ") and "x: float32[4, 6]" in line for line in capsys.readouterr().out.splitlines())
    assert json.loads((out / "manifest.json").read_text())["graphs"][0]["inputs"][0]["example_shape"] == [4, 6]


def test_module_function_source_is_imported_from_the_working_directory(user_file, monkeypatch):
    monkeypatch.chdir(user_file.parent)
    monkeypatch.syspath_prepend(str(user_file.parent))
    src = sources.open_source("mine:build")
    rec = sources.record_source(src)
    assert list(rec.graphs) == ["net"] and src.output.shape == (2, 5, 3)


# ------------------------------------------------------------------------------------------ unusable input


def test_a_missing_folder_exits_2_with_one_line(tmp_path):
    proc = run_cli("export", tmp_path / "nowhere", tmp_path / "out")
    one_error_line(proc, "nowhere: no such folder", "save_pretrained")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case,argv,phrases", [
    ("hub id", ["runwayml/stable-diffusion-v1-5"], ["looks like a hub model id: shapetrace never downloads"]),
    ("empty folder", ["{empty}"], ["holds neither model_index.json (a diffusers pipeline) nor config.json"]),
    ("config without weights", ["{config_only}"],
     ["holds config.json but no weights", "'bert-base-uncased'", "never downloads"]),
    ("index without a component", ["{no_unet}"], ["names component 'unet'", "is missing; shapetrace never downloads"]),
    ("function raises", ["{file}:broken"], ["mine.py:broken: broken() raised ValueError: the weights are not where"]),
    ("no such function", ["{file}:nothere"], ["has no 'nothere'; callables there: ", "build_and_record"]),
    ("function returns no runner", ["{file}:forgets_to_run"], ["returned a Holder and nothing that runs it"]),
    ("no such module", ["not_a_module_anywhere:build"], ["no module named 'not_a_module_anywhere'"]),
    ("unknown option", ["{file}:build", "--frobnicate"],
     ["unrecognized arguments: --frobnicate (see shapetrace export --help)"]),
    ("bad call json", ["{file}:build", "--call-json", "guidance=5"], ["--call-json is not valid JSON"]),
    ("OUT missing", [], ["export needs SOURCE and OUT"]),
])
def test_unusable_sources_and_options_exit_2_with_one_line(case, argv, phrases, user_file, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps({"_name_or_path": "bert-base-uncased",
                                                          "architectures": ["BertModel"]}))
    no_unet = tmp_path / "no_unet"
    no_unet.mkdir()
    (no_unet / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                          "unet": ["diffusers", "UNet2DConditionModel"]}))
    names = {"empty": tmp_path / "empty", "config_only": config_only, "no_unet": no_unet, "file": user_file}
    args = [a.format(**names) for a in argv]
    out = tmp_path / "out"
    if case != "OUT missing":
        args.insert(1 if len(args) > 1 else len(args), str(out))
    assert cli.main(["export", *args]) == cli.EXIT_UNUSABLE
    captured = capsys.readouterr()
    one_error_line(captured.err, *phrases)
    assert not out.exists()


def test_an_existing_export_is_refused_before_loading_anything(user_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    assert cli.main(["export", f"{user_file}:broken", str(out)]) == 2  # refused before broken() runs
    one_error_line(capsys.readouterr().err, "already holds an export (manifest.json); pass --overwrite")


def test_a_call_the_pipeline_refuses_exits_2(tc_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["export", str(tc_folder), str(out), "--call-json", '{"function_to_apply": "cube"}']) == 2
    one_error_line(capsys.readouterr().err, "running TextClassificationPipeline (text-classification)", "raised")
    assert not out.exists()


def test_call_json_keywords_the_pipeline_does_not_take_are_refused(sd_folder, tmp_path, capsys):
    # StableDiffusionPipeline.__call__ has **kwargs, which would swallow a misspelt keyword silently
    assert cli.main(["export", str(sd_folder), str(tmp_path / "out"), "--call-json", '{"guidance": 5}']) == 2
    one_error_line(capsys.readouterr().err, "--call-json: StableDiffusionPipeline.__call__ takes no 'guidance'",
                   "guidance_scale")
    assert not (tmp_path / "out").exists()
