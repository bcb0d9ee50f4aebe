"""Full-size checks (``pytest -m slow`` / ``make test-slow``): the SD 1.5 UNet architecture, random weights."""

import json
from pathlib import Path

import pytest
import torch

import shapetrace

CONFIGS = Path(__file__).resolve().parent.parent / "bench" / "configs"


@pytest.mark.slow
def test_full_size_sd15_unet_exports_within_memory(tmp_path):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads((CONFIGS / "sd15-unet.json").read_text())).eval()
    holder = {"unet": unet}
    with shapetrace.record(holder) as rec, torch.no_grad():
        holder["unet"](torch.randn(2, 4, 32, 32), torch.tensor(999), encoder_hidden_states=torch.randn(2, 77, 768))
    result = shapetrace.export_all(holder, tmp_path / "o", recording=rec, progress=False)
    assert result.ok, str(result)
    entry = result.manifest["graphs"][0]
    assert entry["weights_bytes"] > 3e9
    assert (tmp_path / "o" / entry["files"]["onnx"]).exists() and (tmp_path / "o" / entry["files"]["openvino"]).exists()
    assert entry["inputs"][0]["shape"] == ["batch", 4, "height", "width"]
    assert any(d.startswith("height") for d in entry["dims"])
