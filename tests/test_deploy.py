"""Deploying from the export folder alone: ``load_pipeline`` in a separate process rebuilds each exported object
with no PyTorch weight of an exported module, serves every graph, and answers like the exporting process."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import _deploy_cases
import shapetrace
from shapetrace.manifest import MANIFEST

pytest.importorskip("diffusers")
pytest.importorskip("controlnet_aux")

HERE = Path(__file__).resolve().parent
#: the child's loads: (case, load_pipeline options)
LOADS = [("pose_to_image", {}), ("img2img", {}), ("sdxl", {}), ("text_generation", {}),
         ("text_generation", {"stateful": True}), ("speech", {}), ("speech", {"stateful": True}), ("holder", {})]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Every case exported here, its second call run here in PyTorch, then rebuilt and run in a child process."""
    root = tmp_path_factory.mktemp("deploy")
    wants, classes, spec = {}, {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case, (build, record_run, run, export_kwargs) in _deploy_cases.CASES.items():
            obj = build()
            with torch.no_grad(), shapetrace.record(obj):
                record_run(obj)
            # verify=False: the child's answers against this process's PyTorch are the parity check here
            result = shapetrace.export_all(obj, root / case, progress=False, verify=False, **export_kwargs)
            assert result.ok, (case, str(result))
            with torch.no_grad():
                wants[case] = _deploy_cases.comparable(run(obj))
            classes[case] = f"{type(obj).__module__}:{type(obj).__qualname__}"
    for i, (case, options) in enumerate(LOADS):
        spec.append([case, str(root / case), options, str(root / f"result-{i}")])
    (root / "spec.json").write_text(json.dumps(spec))
    child = subprocess.run([sys.executable, str(HERE / "_deploy_child.py"), str(root / "spec.json")],
                           capture_output=True, text=True, timeout=900, cwd=root)
    assert child.returncode == 0, child.stderr[-3000:]
    return root, wants, classes


def _got(root: Path, i: int) -> tuple[dict, dict]:
    result = root / f"result-{i}"
    facts = json.loads((result / "facts.json").read_text())
    if facts["kind"] == "text":
        return {"text": json.loads((result / "output.json").read_text())}, facts
    arrays = np.load(result / "output.npz")
    values = [arrays[k] for k in sorted(arrays.files, key=lambda k: int(k.split("_")[1]))]
    return ({"tensors": values} if facts["kind"] == "tensors" else {"images": values[0]}), facts


@pytest.mark.parametrize("i", range(len(LOADS)), ids=[f"{c}{'-stateful' if o else ''}" for c, o in LOADS])
def test_a_fresh_process_rebuilds_the_object_without_weights_and_answers_alike(deployed, i):
    root, wants, classes = deployed
    case, options = LOADS[i]
    got, facts = _got(root, i)
    want = wants[case]
    # the original class, every exported module's parameters on the meta device, the graphs served by OpenVINO
    assert facts["class"] == classes[case]
    assert facts["devices"] and all(set(d) == {"meta"} for d in facts["devices"].values()), facts["devices"]
    on_openvino = {g for g, on, calls in facts["stats"] if calls and on.startswith("openvino")}
    if options.get("stateful"):
        assert any(g.endswith("(stateful)") for g in on_openvino), facts["stats"]
    else:
        assert {e.name for e in shapetrace.manifest.read(root / case).exported} <= on_openvino, facts["stats"]
    if "text" in want:
        assert got["text"] == want["text"], (got, want)
    elif "images" in want:
        assert got["images"].shape == want["images"].shape
        assert shapetrace.psnr(got["images"], want["images"], data_range=1.0) >= 40.0
    else:
        for a, b in zip(got["tensors"], want["tensors"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_skeleton_names_the_original_classes_and_writes_no_exported_weight(deployed):
    root = deployed[0]
    manifest = shapetrace.manifest.read(root / "pose_to_image")
    skeleton = manifest.skeleton
    assert skeleton["root"]["cls"] == "_deploy_cases:PoseToImage"
    # the detector's body network and the pipeline's modules have graphs: no weights file anywhere for them
    assert not list((root / "pose_to_image").rglob("*.safetensors"))
    # the holder's spare module has no graph: its weights are written once, beside its skeleton node
    spare = skeleton_node = shapetrace.manifest.read(root / "holder").skeleton["root"]["attrs"]["spare"]
    assert skeleton_node["k"] == "module" and (root / "holder" / spare["weights"]).is_file()


def test_a_tampered_manifest_naming_a_file_outside_the_folder_is_refused(deployed, tmp_path):
    root = deployed[0]
    folder = tmp_path / "copy"
    import shutil

    shutil.copytree(root / "holder", folder)
    data = json.loads((folder / MANIFEST).read_text())
    data["graphs"][0]["files"]["openvino"] = "../../../etc/passwd"
    (folder / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(shapetrace.UnsafePathError, match="outside the export folder"):
        shapetrace.load_pipeline(folder)
    data = json.loads((root / "holder" / MANIFEST).read_text())
    data["skeleton"]["root"]["attrs"]["spare"]["weights"] = "/etc/hostname"
    (folder / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(shapetrace.UnsafePathError):
        shapetrace.rebuild(folder)


def test_a_skeleton_never_imports_code_from_the_folder(deployed, tmp_path, monkeypatch):
    root = deployed[0]
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(root / "holder", folder)
    (folder / "planted.py").write_text("raise SystemExit('code from the folder ran')\n")
    data = json.loads((folder / MANIFEST).read_text())
    data["skeleton"]["root"]["cls"] = "planted:Holder"
    (folder / MANIFEST).write_text(json.dumps(data))
    monkeypatch.syspath_prepend(str(folder))  # as if the user ran from inside the folder
    with pytest.raises(shapetrace.SkeletonError, match="inside the export folder"):
        shapetrace.rebuild(folder)
    data["skeleton"]["root"]["cls"] = "os:system"  # a function, not a class: never called
    (folder / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(shapetrace.SkeletonError, match="not a class"):
        shapetrace.rebuild(folder)


def test_an_export_without_a_skeleton_says_to_export_again(deployed, tmp_path):
    root = deployed[0]
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(root / "holder", folder)
    data = json.loads((folder / MANIFEST).read_text())
    del data["skeleton"]
    (folder / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(shapetrace.SkeletonError, match="export it again"):
        shapetrace.load_pipeline(folder)


def test_shapetrace_run_writes_the_image_of_the_exported_pipeline(deployed, tmp_path, capsys):
    from shapetrace._cli.main import main

    root = deployed[0]
    image = tmp_path / "image.png"
    assert main(["run", str(root / "pose_to_image"), "--prompt", "a cat", "--output", str(image)]) == 0
    printed = capsys.readouterr().out
    from PIL import Image

    assert Image.open(image).size == (64, 64)
    # the detector's network and the pipeline's, each on OpenVINO
    assert all(f"\n{g} " in printed for g in ("detector.body_estimation.model", "pipe.controlnet", "pipe.unet"))
    assert printed.count("openvino:CPU") >= 5
    assert main(["run", str(tmp_path / "nowhere")]) == 2


def test_load_serves_an_object_built_without_weights_and_refuses_a_weightless_module_without_a_graph(tmp_path):
    real = _deploy_cases.Holder()
    x = torch.linspace(-1, 1, 24).reshape(3, 8)
    with torch.no_grad(), shapetrace.record(real):
        real.net(torch.ones(2, 8))
    shapetrace.export_all(real, tmp_path / "o", progress=False, verify=False)
    with torch.device("meta"):
        empty = _deploy_cases.Holder()  # what accelerate.init_empty_weights() gives: no storage
    spare = empty.spare
    empty.spare = real.spare  # a module without a graph needs its weights
    with torch.no_grad(), shapetrace.load(empty, tmp_path / "o"):
        got = empty.net(x)
    torch.testing.assert_close(got, real.net(x), rtol=1e-4, atol=1e-5)
    empty.spare = spare
    with pytest.raises(shapetrace.RuntimeMismatchError, match="'spare' has no exported graph and no weights"):
        shapetrace.load(empty, tmp_path / "o")


def test_paths_survive_the_skeleton_and_only_a_plain_private_part_may_be_left_out(tmp_path):
    import threading

    h = _deploy_cases.Holder()
    h._config = {"_name_or_path": Path("/models/tiny")}  # what from_pretrained(Path(...)) leaves in a config
    h._lock = threading.Lock()  # private and not a container: left out, said in the skeleton
    with torch.no_grad(), shapetrace.record(h):
        h.net(torch.ones(2, 8))
    result = shapetrace.export_all(h, tmp_path / "o", progress=False, verify=False)
    assert result.manifest.skeleton["dropped"] == ["Holder._lock"]
    rebuilt = shapetrace.rebuild(tmp_path / "o")
    assert rebuilt._config == h._config and isinstance(rebuilt._config["_name_or_path"], Path)
    assert not hasattr(rebuilt, "_lock")
    h._config["hook"] = threading.Lock()  # inside a private dict: the dict is never left out, so the skeleton fails
    result = shapetrace.export_all(h, tmp_path / "p", progress=False, verify=False)
    assert "Holder._config['hook'] is a lock" in result.manifest.skeleton["error"]
    with pytest.raises(shapetrace.SkeletonError, match="could not write the object's skeleton"):
        shapetrace.load_pipeline(tmp_path / "p")
