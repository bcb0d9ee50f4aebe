"""OpenPose -> ControlNet on OpenVINO: record a pipeline once, export every graph, run it again on the IR.

Runs offline as is, on the tiny pipelines of ``shapetrace.testing`` (real architectures, random weights); swap in
``OpenposeDetector.from_pretrained(...)`` / ``StableDiffusionControlNetPipeline.from_pretrained(...)`` for real
weights. Usage: ``python examples/controlnet_openpose.py [OUT_DIR]`` (default ``examples-out/controlnet_openpose``).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import shapetrace
from shapetrace._verify.images import max_abs_diff, psnr
from shapetrace.testing import controlnet_pipeline, openpose_detector, pose_image, run_openpose

out = Path(sys.argv[1] if len(sys.argv) > 1 else "examples-out/controlnet_openpose")
out.mkdir(parents=True, exist_ok=True)

# 1. a pose map from a picture (random weights find no keypoints: the map is blank, the pipeline runs all the same)
detector = openpose_detector()
pose = Image.fromarray(np.asarray(run_openpose(detector, pose_image()), dtype=np.uint8))
pipe = controlnet_pipeline()


def generate():
    return pipe("chef in the kitchen", pose, height=64, width=64, num_inference_steps=3, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


# 2. record one run: every module call, with shapes, dtypes and constants
with shapetrace.record(pipe) as recording:
    generate()
print(recording)

# 3. export each graph to ONNX + OpenVINO IR with dynamic axes, and verify each against PyTorch
result = shapetrace.export_all(pipe, out / "export", overwrite=True, progress=False)
print(result)
print(result.parity.summary())

# 4. the same call on PyTorch, then with every exported module running on OpenVINO
reference = generate()
with shapetrace.load(pipe, out / "export", backend="openvino", device="CPU") as runtime:
    image = generate()
    bigger = pipe(["chef in the kitchen"] * 2, pose, height=96, width=96, num_inference_steps=3,
                  output_type="np", generator=torch.Generator().manual_seed(0)).images  # another size and batch
print(runtime.summary())
print(f"openvino vs torch: PSNR {psnr(image, reference):.1f} dB, max abs difference "
      f"{max_abs_diff(image, reference):.1e}; 96x96 batch 2: {bigger.shape}")
Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(out / "openvino.png")
print(f"wrote {out / 'openvino.png'}")
