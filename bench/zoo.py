"""The benchmark's models: full-size SD 1.5 + OpenPose ControlNet architectures with random weights, built offline.

Two suites share one code path:

``full``
    the published SD 1.5 / ControlNet-OpenPose configs in ``bench/configs/`` (UNet ~860M, ControlNet ~361M,
    CLIP text encoder ~123M, VAE ~84M parameters) and the real OpenPose body network (~52M), 256x256, 4 steps.
``quick``
    the tiny offline pipelines of :mod:`shapetrace.testing` (same classes, narrow), 64x64, 2 steps.

Every component is built under its own seed (``seed + offset``), so the benchmark process and an export child
process that builds one component alone get bit-identical weights (checked with :func:`fingerprint`).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

CONFIGS = Path(__file__).resolve().parent / "configs"

#: graph name -> (module path in its object, object key); the object key picks the pipeline or the detector
GRAPHS = {
    "text_encoder": ("text_encoder", "pipe"),
    "controlnet": ("controlnet", "pipe"),
    "unet": ("unet", "pipe"),
    "vae.decode": ("vae", "pipe"),
    "body_estimation.model": ("body_estimation.model", "openpose"),
}

#: run settings per suite
RUNS = {
    "full": dict(height=256, width=256, steps=4, guidance_scale=7.5),
    "quick": dict(height=64, width=64, steps=2, guidance_scale=7.5),
}

_OFFSETS = {"unet": 0, "vae": 1, "text_encoder": 2, "controlnet": 3, "body_estimation.model": 4}


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def _import_open_pose() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux import open_pose
        from controlnet_aux.open_pose import model as op_model
    return open_pose, op_model


# --------------------------------------------------------------------------------------------- components
def build_component(suite: str, component: str, seed: int = 0) -> torch.nn.Module:
    """One module of the suite: ``unet``, ``vae``, ``text_encoder``, ``controlnet`` or ``body_estimation.model``."""
    if component == "body_estimation.model":  # the real network in both suites
        _, op_model = _import_open_pose()
        with seeded(seed + _OFFSETS[component]):
            return op_model.bodypose_model().eval()
    if suite == "quick":
        from shapetrace import testing

        return getattr(testing.controlnet_pipeline(seed), component)
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with seeded(seed + _OFFSETS[component]):
        if component == "unet":
            return UNet2DConditionModel.from_config(_config("sd15-unet.json")).eval()
        if component == "vae":
            return AutoencoderKL.from_config(_config("sd15-vae.json")).eval()
        if component == "text_encoder":
            return CLIPTextModel(CLIPTextConfig(**_config("sd15-text-encoder.json"))).eval()
        if component == "controlnet":
            from shapetrace.testing import _wake_controlnet  # re-initialise the zero convs

            net = ControlNetModel.from_config(_config("sd15-controlnet-openpose.json")).eval()
            _wake_controlnet(net)
            return net
    raise ValueError(f"unknown component {component!r}")


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config({
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
        "timestep_spacing": "leading"})


def build_pipeline(suite: str, seed: int = 0) -> Any:
    """A real ``StableDiffusionControlNetPipeline`` (random weights, tiny CLIP tokenizer, DDIM from a dict)."""
    if suite == "quick":
        from shapetrace import testing

        return testing.controlnet_pipeline(seed)
    from diffusers import StableDiffusionControlNetPipeline
    from shapetrace.testing import tiny_clip_tokenizer

    parts = {c: build_component(suite, c, seed) for c in ("unet", "vae", "text_encoder", "controlnet")}
    pipe = StableDiffusionControlNetPipeline(tokenizer=tiny_clip_tokenizer(), scheduler=_scheduler(),
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_openpose(suite: str, seed: int = 0) -> Any:
    """A ``controlnet_aux.OpenposeDetector`` whose body network is :func:`build_component` (hand / face unused)."""
    open_pose, op_model = _import_open_pose()

    class _Unused:  # the detector only touches hand / face when include_hand / include_face
        model = None

    body = open_pose.Body.__new__(open_pose.Body)
    body.model = build_component(suite, "body_estimation.model", seed)
    return open_pose.OpenposeDetector(body, _Unused(), _Unused())


def control_image(suite: str) -> Any:
    from shapetrace.testing import pose_image

    r = RUNS[suite]
    return pose_image(width=r["width"], height=r["height"])


def run_pipeline(pipe: Any, suite: str, seed: int = 0) -> Any:
    """One text-to-image run; returns the image as a float array in [0, 1] (N, H, W, 3)."""
    r = RUNS[suite]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.inference_mode():
        out = pipe("chef in the kitchen", image=control_image(suite), num_inference_steps=r["steps"],
                   height=r["height"], width=r["width"], guidance_scale=r["guidance_scale"], output_type="np",
                   generator=gen)
    return out.images


def run_openpose(det: Any) -> Any:
    from shapetrace.testing import run_openpose as run

    with torch.inference_mode():
        return run(det)


def fingerprint(module: torch.nn.Module) -> float:
    """A cheap checksum of the weights (float64 sum of every parameter)."""
    with torch.no_grad():
        return float(sum(p.double().sum() for p in module.parameters()))


class Holder:
    """A bare object that holds one component at its pipeline path, for an export child process."""

    def __init__(self, path: str, module: torch.nn.Module) -> None:
        head, _, tail = path.partition(".")
        if tail:
            inner = Holder(tail, module)
            setattr(self, head, inner)
        else:
            setattr(self, head, module)
