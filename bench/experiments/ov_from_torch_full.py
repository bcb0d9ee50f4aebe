"""Peak RSS of converting the full-size SD 1.5 UNet to OpenVINO IR straight from the torch module.

Usage: .venv/bin/python bench/experiments/ov_from_torch_full.py   (needs ~6 GB; writes /tmp/ovfull/unet.xml)
"""
import json, time, torch, warnings, os, sys
warnings.filterwarnings("ignore")
import shapetrace, openvino as ov
from diffusers import UNet2DConditionModel
from shapetrace._export.graph_export import PeakRSS as _PeakRSS
torch.manual_seed(0)
unet = UNet2DConditionModel.from_config(json.load(open("bench/configs/sd15-unet.json"))).eval()
class H: pass
h = H(); h.unet = unet
with shapetrace.record(h) as rec, torch.no_grad():
    h.unet(torch.randn(2, 4, 32, 32), torch.tensor(999), encoder_hidden_states=torch.randn(2, 77, 768))
plan = shapetrace.prepare(h, "unet")
os.makedirs("/tmp/ovfull", exist_ok=True)
base = _PeakRSS.current()
t = time.time()
with _PeakRSS() as rss:
    m = ov.convert_model(plan.module, example_input=plan.args, input=[(s, d) for _, s, d in plan.openvino_input])
    t1 = time.time() - t
    ov.save_model(m, "/tmp/ovfull/unet.xml", compress_to_fp16=False)
print(f"base {base/1e9:.2f} GB peak {rss.peak/1e9:.2f} GB convert {t1:.1f}s total {time.time()-t:.1f}s weights 3.44GB")
print([str(p.get_partial_shape()) for p in m.inputs])
