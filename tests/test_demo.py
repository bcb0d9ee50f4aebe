"""The demo (``python -m shapetrace demo``): the seed scenario end to end, offline (about 2.5 minutes on 2 cores)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from shapetrace._cli.demo import PSNR_BOUND, add_demo_command, demo_unavailable, main, run_demo
from shapetrace._serve.runtime import psnr


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = main(["--out", str(out)])
    return rc, out, text.getvalue()


def test_demo_writes_images_export_and_summary(demo):
    rc, out, text = demo
    assert rc == 0, text[-3000:]
    for name in ("input.png", "pose.png", "torch.png", "openvino.png", "summary.json", "export/manifest.json",
                 "export/unet.xml", "export/unet.bin", "export/unet.onnx", "export/controlnet.xml"):
        assert (out / name).is_file(), name
    torch_png, ov_png = (np.asarray(Image.open(out / n)) for n in ("torch.png", "openvino.png"))
    assert torch_png.shape == ov_png.shape == (64, 64, 3)
    assert torch_png.std() > 0  # a real (noisy) image, not a constant
    assert psnr(ov_png, torch_png) >= PSNR_BOUND
    summary = json.loads((out / "summary.json").read_text())
    assert summary["export_ok"] and summary["parity_ok"] and summary["image_ok"]
    assert summary["psnr_db"] >= PSNR_BOUND and summary["max_abs_diff"] < 1e-3
    assert summary["served"] == {"text_encoder": "openvino:CPU", "controlnet": "openvino:CPU",
                                 "unet": "openvino:CPU", "vae.decode": "openvino:CPU"}
    assert set(summary["timings_s"]) == {"pose", "build", "record", "export", "torch", "load", "openvino"}
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert manifest["parity"]["passed"] is True


def test_demo_prints_every_table(demo):
    rc, out, text = demo
    assert "graph         calls  inputs" in text  # the signature table
    assert "const conditioning_scale=1.0" in text
    assert "export to" in text and ": ok" in text  # the export table
    assert "need atol  verdict" in text and "parity ok:" in text  # the parity table
    assert "ran on" in text and "openvino:CPU" in text  # what ran where
    assert "final image, openvino vs torch: PSNR" in text
    assert "timings:" in text and "total" in text
    assert text.rstrip().endswith("demo ok")


def test_demo_command_plugs_into_a_cli():
    parser = argparse.ArgumentParser(prog="shapetrace")
    add_demo_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--out", "somewhere", "--steps", "2"])
    assert args.func is run_demo and args.out == "somewhere" and args.steps == 2
    assert args.backend == "openvino" and args.device == "CPU" and args.verify is True and args.model is None


def test_demo_unavailable_names_what_is_missing_and_the_extra(monkeypatch):
    assert demo_unavailable() is None  # everything the demo needs is installed here
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an uninstalled package looks like to import
    assert demo_unavailable() == "the demo needs openvino, which is not installed: pip install 'shapetrace[openvino]'"
    monkeypatch.setitem(sys.modules, "controlnet_aux", None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert demo_unavailable() == ("the demo needs controlnet_aux, PIL, openvino, which are not installed: "
                                  "pip install 'shapetrace[diffusers,openvino]'")


@pytest.mark.parametrize("argv, message", [
    (["--controlnet", "."], "--controlnet needs --model"),
    (["--model", "/no/such/folder"], "--model /no/such/folder: no such folder"),
    (["--size", "60"], "--size 60: use a multiple of 8"),
    (["--image", "/no/such.png"], "--image /no/such.png: no such file"),
])
def test_demo_refuses_bad_arguments_before_any_work(tmp_path, capsys, argv, message):
    assert main(["--out", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
