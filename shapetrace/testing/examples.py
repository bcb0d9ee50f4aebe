"""The registry of offline examples: :class:`Example` records in :data:`EXAMPLES`, and how each one runs.

Each :class:`Example` says how to build and run one pipeline and which module paths (``expected_modules``) and
graphs (``expected_graphs``) a recording of one run must find.  A graph is named by the module path when the
module's ``forward`` is called (``"unet"``) and by ``"path.method"`` when the pipeline calls another method of the
module directly (``"vae.decode"``).  Every run is small and deterministic: 2 steps at 64x64 for the diffusion
pipelines, a fixed generator seed, :data:`DEFAULT_PROMPT`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._sources.defaults import DEFAULT_PROMPT
from .diffusion import SD_SIZE, controlnet_pipeline, img2img_pipeline, sd_pipeline, sdxl_pipeline
from .openpose import openpose_detector, pose_image, run_openpose
from .text import text_classification_pipeline

__all__ = ["DEFAULT_PROMPT", "EXAMPLES", "Example"]

_STEPS = 2
_RUN_SEED = 0


@dataclass(frozen=True)
class Example:
    """One offline pipeline: how to build it, run it once, and what a recording of that run must hold.

    Attributes:
        name: the key in :data:`EXAMPLES`.
        build: builds the object (seed 0).
        run: ``run(obj, **overrides)`` calls the object once with small defaults and
            returns its output (deterministic: fixed generator seed).
        expected_modules: dotted paths of every ``torch.nn.Module`` reachable from the
            object without passing through another module, sorted.
        expected_graphs: the graphs one default run calls, sorted: a module path for a
            ``forward`` call, ``"path.method"`` for another method called directly.
        description: one line for humans.
    """

    name: str
    build: Callable[[], object]
    run: Callable[..., object]
    expected_modules: tuple[str, ...]
    expected_graphs: tuple[str, ...]
    description: str = ""


def _prompts(batch: int | None, prompt: str | list[str]) -> str | list[str]:
    if batch is None:
        return prompt
    if isinstance(prompt, list):
        raise ValueError("pass either batch= or a list of prompts, not both")
    return [prompt] * batch


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _run_diffusion(
    pipe: Any,
    *,
    batch: int | None = None,
    seed: int = _RUN_SEED,
    prompt: str | list[str] = DEFAULT_PROMPT,
    **overrides: Any,
) -> Any:
    """Text-to-image run: 2 steps, 64x64, ``output_type="np"``.

    ``batch=n`` repeats the prompt n times (every graph then sees batch n, or 2n
    under classifier-free guidance); ``seed`` seeds the generator; any other
    keyword (``height``, ``width``, ``num_images_per_prompt``, ``guidance_scale``,
    ...) goes to the pipeline as is.
    """
    kwargs: dict[str, Any] = dict(
        num_inference_steps=_STEPS, height=SD_SIZE, width=SD_SIZE, output_type="np", generator=_generator(seed)
    )
    kwargs.update(overrides)
    return pipe(_prompts(batch, prompt), **kwargs)


def _run_controlnet(pipe: Any, *, image: Any = None, **overrides: Any) -> Any:
    """:func:`_run_diffusion` with ``image=pose_image()`` as the control image."""
    return _run_diffusion(pipe, image=pose_image() if image is None else image, **overrides)


def _run_img2img(
    pipe: Any,
    *,
    image: Any = None,
    height: int = SD_SIZE,
    width: int = SD_SIZE,
    batch: int | None = None,
    seed: int = _RUN_SEED,
    prompt: str | list[str] = DEFAULT_PROMPT,
    **overrides: Any,
) -> Any:
    """Image-to-image run on ``pose_image(width, height)``: 2 steps, ``strength=0.75``, ``output_type="np"``.

    The img2img pipeline has no ``height`` / ``width`` arguments: they size the
    init image instead.  With 2 steps and strength 0.75 the UNet runs once.
    """
    kwargs: dict[str, Any] = dict(
        num_inference_steps=_STEPS, strength=0.75, output_type="np", generator=_generator(seed)
    )
    kwargs.update(overrides)
    init = pose_image(width, height) if image is None else image
    return pipe(_prompts(batch, prompt), image=init, **kwargs)


def _run_openpose(
    det: Any, *, image: Any = None, width: int | None = None, height: int | None = None, **overrides: Any
) -> Any:
    """:func:`run_openpose`; ``width`` / ``height`` size the default :func:`pose_image`."""
    if "batch" in overrides:  # the detector would silently swallow it through its **kwargs
        raise ValueError("OpenposeDetector takes one image per call: batch= is not supported")
    if image is None and (width is not None or height is not None):
        image = pose_image(width or 192, height or 256)
    return run_openpose(det, image, **overrides)


def _run_text_classification(
    pipe: Any, *, batch: int | None = None, text: str | list[str] = DEFAULT_PROMPT, **overrides: Any
) -> Any:
    """Classify ``text`` (``batch=n`` repeats it n times); ``overrides`` go to the pipeline call."""
    return pipe(_prompts(batch, text), **overrides)


EXAMPLES: dict[str, Example] = {
    ex.name: ex
    for ex in (
        Example(
            name="controlnet",
            build=controlnet_pipeline,
            run=_run_controlnet,
            expected_modules=("controlnet", "text_encoder", "unet", "vae"),
            expected_graphs=("controlnet", "text_encoder", "unet", "vae.decode"),
            description="StableDiffusionControlNetPipeline, tiny UNet/ControlNet/VAE/CLIP, pose_image() control",
        ),
        Example(
            name="sd",
            build=sd_pipeline,
            run=_run_diffusion,
            expected_modules=("text_encoder", "unet", "vae"),
            expected_graphs=("text_encoder", "unet", "vae.decode"),
            description="StableDiffusionPipeline, tiny UNet/VAE/CLIP",
        ),
        Example(
            name="img2img",
            build=img2img_pipeline,
            run=_run_img2img,
            expected_modules=("text_encoder", "unet", "vae"),
            expected_graphs=("text_encoder", "unet", "vae.decode", "vae.encode"),
            description="StableDiffusionImg2ImgPipeline on pose_image(64, 64), strength 0.75",
        ),
        Example(
            name="sdxl",
            build=sdxl_pipeline,
            run=_run_diffusion,
            expected_modules=("text_encoder", "text_encoder_2", "unet", "vae"),
            expected_graphs=("text_encoder", "text_encoder_2", "unet", "vae.decode"),
            description="StableDiffusionXLPipeline, two tiny CLIP encoders, text_time added conditioning",
        ),
        Example(
            name="openpose",
            build=openpose_detector,
            run=_run_openpose,
            expected_modules=("body_estimation.model", "face_estimation.model", "hand_estimation.model"),
            expected_graphs=("body_estimation.model",),
            description="controlnet_aux OpenposeDetector, real networks, random weights, body only",
        ),
        Example(
            name="text-classification",
            build=text_classification_pipeline,
            run=_run_text_classification,
            expected_modules=("model",),
            expected_graphs=("model",),
            description="transformers text-classification pipeline, tiny BertForSequenceClassification",
        ),
    )
}
