"""Deploy from the export folder alone: export a ControlNet pipeline in one process, run it in another that never
loads a PyTorch weight of it.

Runs offline as is, on the tiny pipeline of ``shapetrace.testing`` (real architecture, random weights). Usage:
``python examples/deploy_from_folder.py [OUT_DIR]`` (default ``examples-out/deploy``): the build step here, then
the deployment step twice, each in a fresh ``python`` process (this file with ``--deploy``): cold, then with
OpenVINO's model cache filled by the first.
"""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import shapetrace

CALL = dict(height=64, width=64, num_inference_steps=3, output_type="np")


def build(out: Path) -> None:
    """Process 1, the build machine: record, export (the skeleton is written beside the graphs), keep the image."""
    from shapetrace.testing import controlnet_pipeline, pose_image

    pipe = controlnet_pipeline()
    with shapetrace.record(pipe):
        pipe("chef in the kitchen", pose_image(), generator=torch.Generator().manual_seed(0), **CALL)
    result = shapetrace.export_all(pipe, out / "export", overwrite=True, progress=False)
    print(result)
    image = pipe("a dancer on the beach", pose_image(), generator=torch.Generator().manual_seed(1), **CALL).images
    np.save(out / "torch.npy", image)


def deploy(out: Path) -> None:
    """Process 2, the deployment: nothing of the pipeline's PyTorch weights on disk or in memory."""
    from shapetrace.testing import pose_image

    t0 = time.perf_counter()
    pipe = shapetrace.load_pipeline(out / "export", backend="openvino", cache_dir=out / "ov-cache")
    print(f"{type(pipe).__name__} rebuilt from {out / 'export'} and compiled in {time.perf_counter() - t0:.2f}s")
    image = pipe("a dancer on the beach", pose_image(), generator=torch.Generator().manual_seed(1), **CALL).images
    runtime = shapetrace.runtime_of(pipe)
    print(runtime.summary())
    runtime.close()
    print(f"unet parameters on: {', '.join({p.device.type for p in pipe.unet.parameters()})}")
    want = np.load(out / "torch.npy")
    print(f"vs the build process's PyTorch image: PSNR {shapetrace.psnr(image, want, data_range=1.0):.1f} dB")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--deploy"]
    out = Path(args[0] if args else "examples-out/deploy")
    if "--deploy" in sys.argv:
        deploy(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        build(out)
        for _ in ("cold", "the model cache filled"):  # the second start reads the compiled graphs from the cache
            subprocess.run([sys.executable, __file__, str(out), "--deploy"], check=True)
