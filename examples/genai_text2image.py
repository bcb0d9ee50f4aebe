"""OpenVINO GenAI on shapetrace's export, offline: record a tiny Stable Diffusion (or SDXL) pipeline on one prompt,
export with genai=True, and draw another prompt with GenAI's Text2ImagePipeline from the same initial latents as
PyTorch -- the prompt tokenized by the converted tokenizer, the image compared in PSNR.

    .venv/bin/python examples/genai_text2image.py [sd|sdxl] [OUT]
"""

import sys
import warnings

import numpy as np
import openvino as ov
import openvino_genai as og
import torch

import shapetrace
from shapetrace.testing.examples import EXAMPLES

warnings.simplefilter("ignore")
name = sys.argv[1] if len(sys.argv) > 1 else "sd"
out = sys.argv[2] if len(sys.argv) > 2 else f"genai-{name}-out"
example = EXAMPLES[name]  # a real diffusers pipeline class around tiny random-weight components

pipe = example.build()
with shapetrace.record(pipe):
    example.run(pipe)  # the examples' prompt, 2 steps, 64x64
result = shapetrace.export_all(pipe, out, overwrite=True, progress=False, verify=False, genai=True)
print(result)


class Latents(og.Generator):
    """GenAI's random generator handing out the given initial latents."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def next(self):
        raise NotImplementedError

    def randn_tensor(self, shape):
        return ov.Tensor(self.values.copy())


prompt, steps = "a photo of a cat on a red chair at night", dict(num_inference_steps=3, guidance_scale=7.0,
                                                                  height=64, width=64)
noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
genai = og.Text2ImagePipeline(f"{out}/genai", "CPU", INFERENCE_PRECISION_HINT="f32")
got = genai.generate(prompt, generator=Latents(noise.numpy()), **steps).data[0]  # uint8 HWC
want = (pipe(prompt, latents=noise.clone(), output_type="np", **steps).images[0] * 255).round().astype(np.uint8)
other = (pipe("dog", latents=noise.clone(), output_type="np", **steps).images[0] * 255).round().astype(np.uint8)


def psnr(a, b):
    return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


print(f"GenAI Text2ImagePipeline {got.shape} {got.dtype} vs PyTorch {type(pipe).__name__}, same latents: "
      f"PSNR {psnr(got, want):.1f} dB (max |diff| {np.abs(got.astype(int) - want).max()} of 255)")
print(f"vs PyTorch on another prompt ('dog'): PSNR {psnr(got, other):.1f} dB")
