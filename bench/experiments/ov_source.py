"""Which source converts to OpenVINO fastest / leanest / most exactly: torch module, exported program or ONNX file.

Usage: .venv/bin/python bench/experiments/ov_source.py {torch|exported_program|onnx} [graph]   (tiny SD pipeline; one source per process)
"""
import sys, time, resource, json, torch, numpy as np, warnings
warnings.filterwarnings("ignore")
import shapetrace, openvino as ov
from shapetrace.testing import EXAMPLES
src = sys.argv[1]; graph = sys.argv[2] if len(sys.argv) > 2 else "unet"
ex = EXAMPLES["sd"]; pipe = ex.build()
with shapetrace.record(pipe) as rec: ex.run(pipe)
plan = shapetrace.prepare(pipe, graph)
with torch.no_grad(): ref = plan.module(*plan.args)
import gc; gc.collect()
base = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
t = time.time()
if src == "torch":
    m = ov.convert_model(plan.module, example_input=plan.args, input=plan.openvino_input)
elif src == "exported_program":
    ep = torch.export.export(plan.module, plan.args, dynamic_shapes=plan.dynamic_shapes)
    m = ov.convert_model(ep)
else:
    ep = torch.export.export(plan.module, plan.args, dynamic_shapes=plan.dynamic_shapes)
    torch.onnx.export(ep, (), dynamo=True, input_names=list(plan.input_names), output_names=list(plan.output_names)).save("/tmp/ovsrc/m.onnx")
    m = ov.convert_model("/tmp/ovsrc/m.onnx")
dt = time.time() - t
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
c = ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
out = c([a.numpy() for a in plan.args])
err = max(float(np.abs(out[c.output(i)] - r.numpy()).max()) for i, r in enumerate(ref))
dyn = [str(p.get_partial_shape()) for p in m.inputs][:2]
print(json.dumps({"source": src, "seconds": round(dt, 2), "peak_rss_mb_over_base": (hwm - base)//1024, "max_abs_err": err, "input_shapes": dyn}))
