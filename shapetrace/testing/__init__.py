"""The offline zoo: tiny, seeded Hugging Face pipelines for tests, examples and the demo.

Every builder here works without network access and without any downloaded
weights: each component is built from a small config and filled with random
weights drawn from a seeded torch RNG (the caller's global RNG state is left
untouched).  The architectures are the real ones (``UNet2DConditionModel``,
``ControlNetModel``, ``AutoencoderKL``, ``CLIPTextModel``, the CMU OpenPose
body network, BERT), only narrow, so that every build plus one short run takes
a few seconds on a couple of CPU cores.  Everything is float32, on the CPU and
in eval mode, and two builds with the same seed give bit-identical outputs.

The pipelines, by key of :data:`EXAMPLES`:

``"controlnet"``
    :func:`controlnet_pipeline`, a ``StableDiffusionControlNetPipeline``.
``"sd"``
    :func:`sd_pipeline`, a ``StableDiffusionPipeline``.
``"img2img"``
    :func:`img2img_pipeline`, a ``StableDiffusionImg2ImgPipeline``.
``"sdxl"``
    :func:`sdxl_pipeline`, a ``StableDiffusionXLPipeline``.
``"openpose"``
    :func:`openpose_detector`, a ``controlnet_aux.OpenposeDetector``.
``"text-classification"``
    :func:`text_classification_pipeline`, a transformers ``TextClassificationPipeline``.

One module per idea, every public name re-exported here:

``tokenizers``
    :func:`tiny_clip_tokenizer`, :func:`tiny_bert_tokenizer`: vocabularies written offline.
``diffusion``
    the SD, img2img, ControlNet and SDXL builders.
``openpose``
    :func:`openpose_detector`, :func:`run_openpose` and the built-in picture :func:`pose_image`.
``text``
    :func:`text_classification_pipeline`.
``examples``
    :class:`Example`, :data:`EXAMPLES` and how each example runs.

diffusers, transformers, controlnet_aux and PIL are imported lazily, inside
the builders, so importing this package costs no more than importing torch.
When one is missing, the builder raises ``ImportError`` naming the extra to
install: ``pip install 'shapetrace[diffusers]'``.

Example::

    from shapetrace.testing import EXAMPLES

    ex = EXAMPLES["controlnet"]
    pipe = ex.build()
    out = ex.run(pipe)                       # 2 steps, 64x64, output_type="np"
    out = ex.run(pipe, height=128, batch=2)  # overrides
"""

from __future__ import annotations

from .diffusion import _wake_controlnet as _wake_controlnet
from .diffusion import controlnet_pipeline, img2img_pipeline, sd_pipeline, sdxl_pipeline
from .examples import DEFAULT_PROMPT, EXAMPLES, Example
from .openpose import (OPENPOSE_DETECT_RESOLUTION, OPENPOSE_IMAGE_RESOLUTION, OPENPOSE_INPUT_SHAPE,
                       openpose_detector, pose_image, run_openpose)
from .text import speech_recognition_pipeline, text_classification_pipeline
from .tokenizers import CLIP_VOCAB_SIZE, tiny_bert_tokenizer, tiny_clip_tokenizer, tiny_whisper_tokenizer

__all__ = [
    "CLIP_VOCAB_SIZE",
    "DEFAULT_PROMPT",
    "EXAMPLES",
    "OPENPOSE_DETECT_RESOLUTION",
    "OPENPOSE_IMAGE_RESOLUTION",
    "OPENPOSE_INPUT_SHAPE",
    "Example",
    "controlnet_pipeline",
    "img2img_pipeline",
    "openpose_detector",
    "pose_image",
    "run_openpose",
    "sd_pipeline",
    "sdxl_pipeline",
    "speech_recognition_pipeline",
    "text_classification_pipeline",
    "tiny_bert_tokenizer",
    "tiny_clip_tokenizer",
    "tiny_whisper_tokenizer",
]
