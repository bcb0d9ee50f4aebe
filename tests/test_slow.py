"""Full-size checks (``pytest -m slow`` / ``make test-slow``): the SD 1.5 UNet architecture, random weights."""

import json
from pathlib import Path

import pytest
import torch

import shapetrace

CONFIGS = Path(__file__).resolve().parent.parent / "bench" / "configs"

# Export peak RSS (the whole process: weights included) over the graph's fp32 weights. The project's target is
# <= 2x; bench/results/RESULTS.md (section 2, "Export", and "Export memory: UNet met (1.55x)") measured the SD 1.5 UNet at
# 5.34 GB peak for 3.44 GB of weights = 1.55x, both as VmHWM of a fresh child and as the manifest's sampled
# peak_rss_bytes. The 0.45x between the two (~1.5 GB) absorbs what an earlier test left in this process.
PEAK_OVER_WEIGHTS_BOUND = 2.0


def _reset_vm_hwm() -> bool:
    """Reset the kernel's peak RSS of this process (VmHWM) to its current RSS; False where Linux does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.slow
def test_full_size_sd15_unet_exports_within_memory(tmp_path):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads((CONFIGS / "sd15-unet.json").read_text())).eval()
    holder = {"unet": unet}
    with shapetrace.record(holder) as rec, torch.no_grad():
        holder["unet"](torch.randn(2, 4, 32, 32), torch.tensor(999), encoder_hidden_states=torch.randn(2, 77, 768))
    out = tmp_path / "o"
    hwm_reset = _reset_vm_hwm()
    # verify=False here and verify() below, so that the kernel's peak is the export's alone (verify loads the
    # graphs into ONNX Runtime and OpenVINO, which holds more copies of the weights on purpose)
    result = shapetrace.export_all(holder, out, recording=rec, progress=False, verify=False)
    export_vm_hwm = _vm_hwm() if hwm_reset else None
    assert result.ok, str(result)
    entry = result.manifest.graphs[0].to_json()
    weights = entry["weights_bytes"]
    assert weights > 3e9
    bound = PEAK_OVER_WEIGHTS_BOUND * weights
    assert entry["peak_rss_bytes"] is not None and entry["peak_rss_bytes"] > weights  # measured, weights included
    assert entry["peak_rss_bytes"] <= bound, (
        f"export peak RSS (sampled) {entry['peak_rss_bytes'] / 1e9:.2f} GB = "
        f"{entry['peak_rss_bytes'] / weights:.2f}x the {weights / 1e9:.2f} GB of weights; bound "
        f"{PEAK_OVER_WEIGHTS_BOUND}x")
    if export_vm_hwm is not None:  # the kernel's figure also catches peaks inside C++ calls the sampler misses
        assert export_vm_hwm <= bound, (
            f"export peak RSS (VmHWM) {export_vm_hwm / 1e9:.2f} GB = {export_vm_hwm / weights:.2f}x the "
            f"{weights / 1e9:.2f} GB of weights; bound {PEAK_OVER_WEIGHTS_BOUND}x")
    assert (out / entry["files"]["onnx"]).exists() and (out / entry["files"]["openvino"]).exists()
    assert entry["inputs"][0]["shape"] == ["batch", 4, "height", "width"]
    assert any(d.startswith("height") for d in entry["dims"])
    report = shapetrace.verify(out, holder)
    assert report, str(report)
